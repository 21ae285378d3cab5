"""The estimators `stratified`, `antithetic`, `importance` (variance reduction) and `adaptive`, `sequential`."""

import math

import pytest
import torch
from conftest import ClassConstant, Recorder, estimator, gen, make_model, points
from diffbench_plugins import adaptive as adaptive_module
from diffbench_plugins.monte_carlo import class_errors, li_timesteps, timestep_weights

import diffbench
from diffbench.suite import instantiate
from diffbench.testing import check_estimator

SHARED = [
    ("stratified", {}),
    ("stratified", {"mode": "even"}),
    ("antithetic", {}),
    ("antithetic", {"stratify": True}),
    ("importance", {}),
    ("importance", {"stratify": True, "weighting": "elbo"}),
]
ALL = [
    *SHARED,
    ("adaptive", {}),
    ("adaptive", {"mode": "paired-test", "min_scores": 2, "batch": 2}),
    ("sequential", {}),
    ("sequential", {"loss": "huber", "stratify": True}),
]


class TimeProfile(torch.nn.Module):
    """eps_hat = f_c(t) * ones with f_c(t) = a_c * cos(pi t / T) + b_c 1[t < T/5]: a class-dependent function of t.

    Its exact l2 error for class c averaged over uniform t is mean_t w_t (1 + f_c(t)^2).
    """

    def __init__(self, T: int = 1000) -> None:
        super().__init__()
        t = torch.arange(T, dtype=torch.float64)
        a = torch.tensor([0.0, 1.0, -0.5])[:, None]
        b = torch.tensor([0.0, 0.0, 1.5])[:, None]
        self.register_buffer("f", (a * torch.cos(math.pi * t / T) + b * (t < T / 5)).float())  # [K, T]

    def forward(self, x_t, t, c):
        return self.f[c, t][:, None].expand_as(x_t).clone()

    def exact(self, weights: torch.Tensor) -> torch.Tensor:
        return (weights.double() * (1 + self.f.double().square())).mean(1)


def fitted(name, model, **params):
    est = estimator(name, **params)
    y = torch.arange(300) % model.num_classes
    est.fit(model, points(300, dim=model.data_shape[0], seed=9), y, gen(5))
    return est


# -- every estimator: shapes, cost, determinism --------------------------------------------------


@pytest.mark.parametrize(("name", "params"), ALL)
def test_shape_finite_and_deterministic(name, params, recorder_model):
    est, x = estimator(name, **params), points(5)
    err = est.errors(recorder_model, x, 6, gen(7))
    assert err.shape == (5, 3) and err.is_floating_point() and torch.isfinite(err).all()
    assert torch.equal(err, est.errors(recorder_model, x, 6, gen(7)))
    assert not torch.equal(err, est.errors(recorder_model, x, 6, gen(8)))
    assert est.errors(recorder_model, x, 1, gen(7)).shape == (5, 3)


@pytest.mark.parametrize(("name", "params"), ALL)
def test_keeps_the_plugin_contract_on_vectors_and_images(name, params):
    check_estimator(estimator(name, **params), trials=4)
    check_estimator(estimator(name, **params), data_shape=(1, 4, 4), num_classes=4, trials=3)


@pytest.mark.parametrize(("name", "params"), SHARED)
def test_shared_noise_variants_cost_trials_times_classes(name, params, recorder_model):
    estimator(name, **params).errors(recorder_model, points(5), 7, gen())
    assert recorder_model.nfe == 5 * 7 * 3
    x, t, _ = recorder_model.module.rows()
    _, counts = torch.unique(torch.cat([x, t[:, None].to(x.dtype)], 1), dim=0, return_counts=True)
    assert (counts == 3).all(), "each x_t is scored against every class"


@pytest.mark.parametrize("name", ["stratified", "antithetic", "importance", "adaptive", "sequential"])
def test_bad_params_are_rejected(name):
    with pytest.raises(diffbench.ParamError, match="loss"):
        estimator(name, loss="l3")
    with pytest.raises(diffbench.ParamError, match="weighting"):
        estimator(name, weighting="vlb")


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


# -- stratified -------------------------------------------------------------------------------------


def test_stratified_random_puts_one_t_in_each_stratum(recorder_model):
    B, R, K = 40, 8, 3
    estimator("stratified").errors(recorder_model, points(B), R, gen())
    _, t, _ = recorder_model.module.rows()
    t = t.view(B, R, K)
    assert (t == t[:, :, :1]).all()
    assert (t[:, :, 0] // 125 == torch.arange(R)).all(), "trial r lies in [125 r, 125 (r + 1))"
    assert len(set(t[:, 0, 0].tolist())) > 10, "every sample draws its own offsets"


def test_stratified_random_strata_for_trials_that_do_not_divide_t(recorder_model):
    B, R = 200, 3
    estimator("stratified").errors(recorder_model, points(B), R, gen())
    t = recorder_model.module.rows()[1].view(B, R, 3)[:, :, 0]
    low = torch.tensor([0, 333, 666])
    high = torch.tensor([333, 666, 999])
    assert ((t >= low) & (t <= high)).all()
    assert t.min() < 20 and t.max() > 980


def test_stratified_even_is_li_et_al_grid(recorder_model):
    B, R = 4, 8
    estimator("stratified", mode="even").errors(recorder_model, points(B), R, gen())
    t = recorder_model.module.rows()[1].view(B, R, 3)
    assert (t == torch.tensor(list(range(1000 // R // 2, 1000, 1000 // R)))[None, :, None]).all()
    assert li_timesteps(1000, 3).tolist() == [166, 499, 832]
    with pytest.raises(ValueError, match="trials"):
        estimator("stratified", mode="even").errors(recorder_model, points(1), 1001, gen())


# -- antithetic -------------------------------------------------------------------------------------


@pytest.mark.parametrize("trials", [6, 5])
def test_antithetic_pairs_are_plus_and_minus_eps_at_one_t(trials, recorder_model):
    B, K = 4, 3
    x0 = points(B)
    estimator("antithetic").errors(recorder_model, x0, trials, gen())
    x, t, _ = recorder_model.module.rows()
    x, t = x.view(B, trials, K, 2)[:, :, 0], t.view(B, trials, K)[:, :, 0]
    pairs = trials // 2
    first, second = x[:, 0 : 2 * pairs : 2], x[:, 1 : 2 * pairs : 2]
    assert torch.equal(t[:, 0 : 2 * pairs : 2], t[:, 1 : 2 * pairs : 2])
    scale = recorder_model.alphas_cumprod[t[:, 0 : 2 * pairs : 2]].sqrt().unsqueeze(-1)
    # x_t(eps) + x_t(-eps) = 2 sqrt(abar_t) x0, and the two differ
    assert torch.allclose((first + second) / 2, scale * x0[:, None], atol=1e-5)
    assert not torch.allclose(first, second)
    if trials % 2:
        assert len(torch.unique(x[:, -1], dim=0)) == B, "the odd trial is one unpaired draw"


# -- importance -------------------------------------------------------------------------------------


def test_importance_before_fit_is_shared_noise_draw_for_draw(recorder_model):
    x = points(6)
    assert estimator("importance").importance_weights() is None
    ours = estimator("importance").errors(recorder_model, x, 4, gen(3))
    shared = estimator("shared-noise").errors(recorder_model, x, 4, gen(3))
    assert torch.equal(ours, shared)


def test_importance_proposal_goes_where_classes_differ_and_weights_average_one_under_q():
    model = make_model(TimeProfile(), num_classes=3, dim=2)
    est = fitted("importance", model, bins=10, fit_trials=2, fit_samples=100)
    assert model.nfe == 100 * 10 * 2 * 3, "fit scores fit_samples x bins x fit_trials x K rows"
    q, w = est.proposal, est.importance_weights()
    assert q.shape == (1000,) and (q >= 0.1 / 1000 - 1e-12).all()
    assert math.isclose(q.sum().item(), 1, rel_tol=1e-9)
    assert math.isclose((q * w).sum().item(), 1, rel_tol=1e-9), "sum_t q(t) w(t) = 1"
    assert q[:200].sum() > q[400:600].sum(), "more mass where class 2's bump sets it apart"
    model.reset_nfe()
    est.errors(model, points(50), 40, gen())
    assert model.nfe == 50 * 40 * 3


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("stratified", {}),
        ("antithetic", {}),
        ("antithetic", {"stratify": True}),
        ("importance", {}),
        ("importance", {"stratify": True}),
        ("importance", {"weighting": "elbo"}),
        ("stratified", {"weighting": "elbo"}),
    ],
)
@pytest.mark.parametrize("trials", [3, 4])
def test_unbiased_for_the_uniform_t_objective(name, params, trials):
    module = TimeProfile()
    model = make_model(module, num_classes=3, dim=4)
    est = fitted(name, model, **params)
    if name == "importance":
        assert est.proposal is not None and est.proposal.max() > 2 * est.proposal.min()
    B = 3000
    err = est.errors(model, points(B, dim=4, seed=1), trials, gen(2)).double()
    expected = module.exact(timestep_weights(model, params.get("weighting", "simple")))
    mean, se = err.mean(0), err.std(0) / math.sqrt(B)
    assert ((mean - expected).abs() < 4 * se + 1e-4).all(), f"{mean} vs {expected} (se {se})"


# -- shared helpers in monte_carlo ------------------------------------------------------------------


def test_timestep_weights(recorder_model):
    assert torch.equal(timestep_weights(recorder_model, "simple"), torch.ones(1000))
    w = timestep_weights(recorder_model, "elbo").double()
    betas, abar = recorder_model.betas.double(), recorder_model.alphas_cumprod.double()
    raw = betas.square() / (2 * betas * (1 - betas) * (1 - abar))
    assert math.isclose(w.mean().item(), 1, rel_tol=1e-5)
    assert torch.allclose(w, raw / raw.mean(), rtol=1e-4)
    with pytest.raises(ValueError, match="weighting"):
        timestep_weights(recorder_model, "vlb")


def test_class_errors_weight_and_class_mask(recorder_model):
    B, R, K = 4, 3, 3
    x, t = points(B), torch.randint(0, 1000, (B, R), generator=gen())
    eps = torch.randn(B, R, 2, generator=gen(1))
    plain = class_errors(recorder_model, x, t, eps)
    weight = torch.rand(B, R, generator=gen(2))
    assert torch.allclose(class_errors(recorder_model, x, t, eps, weight=weight), plain * weight[..., None])
    mask = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    recorder_model.reset_nfe()
    masked = class_errors(recorder_model, x, t, eps, classes=mask)
    assert recorder_model.nfe == int(mask.sum()) * R, "only the marked rows reach the model"
    expanded = mask[:, None].expand(B, R, K)
    assert torch.allclose(masked[expanded], plain[expanded]) and masked[~expanded].isnan().all()


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


# -- through the runner -----------------------------------------------------------------------------


def test_new_estimators_run_through_the_cli(cli, suite_file, tmp_path):
    import pandas as pd

    names = ["stratified", "antithetic", "importance", "adaptive", "sequential[batch=1]"]
    out = tmp_path / "out"
    result = cli("run", "--suite", suite_file(estimators=names, trials=[2]), "--out", out, "--no-plots")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "results.parquet")
    assert (table.status == "ok").all(), table.error.tolist()
    assert set(table.estimator) == {"stratified", "antithetic", "importance", "adaptive", "sequential"}
    assert (table.nfe_per_sample <= 2 * 2 + 1e-9).all()
