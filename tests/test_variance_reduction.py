"""The variance-reduced estimators `stratified`, `antithetic` and `importance`."""

import math

import pytest
import torch

from diffbench.montecarlo import timestep_weights
from tests.helpers import TimeProfile, estimator, gen, make_model, points

SHARED = [
    ("stratified", {}),
    ("stratified", {"mode": "even"}),
    ("antithetic", {}),
    ("antithetic", {"stratify": True}),
    ("importance", {}),
    ("importance", {"stratify": True, "weighting": "elbo"}),
]


def fitted(name, model, **params):
    est = estimator(name, **params)
    y = torch.arange(300) % model.num_classes
    est.fit(model, points(300, dim=model.data_shape[0], seed=9), y, gen(5))
    return est


@pytest.mark.parametrize(("name", "params"), SHARED)
def test_shared_noise_variants_cost_trials_times_classes(name, params, recorder_model):
    estimator(name, **params).errors(recorder_model, points(5), 7, gen())
    assert recorder_model.nfe == 5 * 7 * 3
    x, t, _ = recorder_model.module.rows()
    _, counts = torch.unique(torch.cat([x, t[:, None].to(x.dtype)], 1), dim=0, return_counts=True)
    assert (counts == 3).all(), "each x_t is scored against every class"


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
