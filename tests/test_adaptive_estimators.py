"""The estimators that spend trials where they are needed: `adaptive` (class elimination) and `sequential`."""

import pytest
import torch
from diffbench_plugins import adaptive as adaptive_module

import diffbench
from diffbench.suite import instantiate
from tests.helpers import ClassConstant, Recorder, estimator, gen, make_model, points


def test_adaptive_params_are_checked_and_parsed():
    for bad in ({"to_keep": "5 1", "n_samples": "50"}, {"to_keep": "a b"}, {"n_samples": "500 50"}, {"mode": "x"}):
        with pytest.raises(diffbench.ParamError):
            estimator("adaptive", **bad)
    assert adaptive_module.parse_ints(" 20 10,5:1/ ") == [20, 10, 5, 1]
    (est,) = instantiate("estimator", 'adaptive[to_keep="5 1",n_samples=50:500]')
    assert est.stages(500, 10) == [(50, 5), (500, 1)]
    assert est.stages(100, 10) == [(10, 5), (100, 1)], "n_samples scaled so the last stage is `trials`"
    assert est.stages(1, 3) == [(1, 3), (1, 1)], "to_keep clipped to K, at least one t per stage"
    assert estimator("adaptive", to_keep="1 5", n_samples="1 2").stages(8, 9) == [(4, 1), (8, 1)]


# -- adaptive ---------------------------------------------------------------------------------------


def test_adaptive_li_stages_evaluate_new_ts_on_the_survivors_only():
    B, K, R = 6, 5, 8
    module = Recorder(dim=2, num_classes=K)
    model = make_model(module, num_classes=K)
    est = estimator("adaptive", to_keep="3 1", n_samples="2 8")
    err = est.errors(model, points(B), R, gen())
    grid = list(range(62, 1000, 125))
    # stage 1: n=2, stride 4 -> grid[2], grid[6] on all 5 classes; stage 2: the other 6 on 3 survivors
    assert model.nfe == B * (2 * K + 6 * 3)
    (x1, t1, c1), (x2, t2, c2) = module.calls
    assert sorted(set(t1.tolist())) == [grid[2], grid[6]] and len(t1) == B * 2 * K
    assert sorted(set(t2.tolist())) == sorted(set(grid) - {grid[2], grid[6]}) and len(t2) == B * 6 * 3
    # the survivors of stage 1 rank above every class dropped there, and were scored in stage 2
    rank = err.argsort(1)
    stage2 = c2.view(B, 6, 3)[:, 0].sort(1).values
    assert torch.equal(rank[:, :3].sort(1).values, stage2)
    assert torch.isfinite(err).all() and torch.equal(err.argmin(1), rank[:, 0])


def test_adaptive_li_with_li_et_al_cifar_schedule_costs_less_than_shared_noise(recorder_model):
    est = estimator("adaptive")  # to_keep "5 1", n_samples "50 500"
    model = make_model(Recorder(dim=2, num_classes=10), num_classes=10)
    est.errors(model, points(3), 500, gen())
    assert model.nfe == 3 * (50 * 10 + 450 * 5)


def test_adaptive_ranks_eliminated_classes_after_survivors():
    mean = torch.tensor([[1.0, 5.0, 0.5, 2.0], [1.0, 5.0, 0.5, 2.0]])
    dropped_at = torch.tensor([[2, 0, 1, 2], [1, 0, 1, 1]])  # 0, 3 (and 2 in row 2) reached the last round
    ranked = adaptive_module.ranked_errors(mean, dropped_at, torch.tensor([[2], [1]]))
    assert ranked.argsort(1).tolist() == [[0, 3, 2, 1], [2, 0, 3, 1]]
    assert torch.equal(ranked[dropped_at == torch.tensor([[2], [1]])], mean[dropped_at == torch.tensor([[2], [1]])])


def test_adaptive_last_stage_keeps_plain_means(recorder_model):
    """One stage on the full grid, then keep 1: nothing is dropped early, so it is stratified[mode=even]."""
    x = points(5)
    ours = estimator("adaptive", to_keep="3 1", n_samples="8 8").errors(recorder_model, x, 8, gen(4))
    even = estimator("stratified", mode="even").errors(recorder_model, x, 8, gen(4))
    assert torch.allclose(ours, even, atol=1e-6)


def test_adaptive_paired_test_drops_clearly_worse_classes_and_stops():
    means = torch.tensor([[0.0, 0.0], [6.0, 6.0], [0.0, 8.0]])
    model = make_model(ClassConstant(means), num_classes=3, dim=2)
    B = 20
    est = estimator("adaptive", mode="paired-test", batch=5, min_scores=5, threshold=0.05)
    err = est.errors(model, points(B), 50, gen())
    assert (err.argmin(1) == 0).all()
    assert model.nfe == B * 5 * 3, "one round on all classes, then every sample has one class left"
    model.reset_nfe()
    never = estimator("adaptive", mode="paired-test", batch=5, min_scores=100)
    never.errors(model, points(B), 50, gen())
    assert model.nfe == B * 50 * 3, "no test before min_scores: the trials cap decides"


# -- sequential -------------------------------------------------------------------------------------


def test_sequential_stops_each_sample_on_its_own():
    B, K, batch, cap = 30, 3, 2, 20
    module = Recorder(dim=2, num_classes=K)
    model = make_model(module, num_classes=K)
    est = estimator("sequential", batch=batch, z=1.0, min_trials=2)
    err = est.errors(model, points(B) * 3, cap, gen())
    used = est.trials_used
    assert torch.isfinite(err).all() and used.shape == (B,)
    assert model.nfe == K * int(used.sum())
    assert len(set(used.tolist())) > 1, "samples stop at different rounds"
    assert ((used % batch == 0) | (used == cap)).all() and used.max() <= cap
    # every round scores exactly the samples that had not yet stopped
    running = [int((used > r * batch).sum()) for r in range(len(module.calls))]
    assert [len(call[1]) for call in module.calls] == [n * batch * K for n in running]
    assert running == sorted(running, reverse=True)


def test_sequential_without_a_decision_runs_to_the_cap(recorder_model):
    est = estimator("sequential", batch=3, z=1e9)
    est.errors(recorder_model, points(4), 10, gen())
    assert est.trials_used.tolist() == [10] * 4 and recorder_model.nfe == 4 * 10 * 3
