"""diffbench.montecarlo, the estimator maths every estimator shares: draws, weights, losses and class_errors."""

import math

import pytest
import torch
import torch.nn.functional as F

import diffbench
from diffbench.montecarlo import (
    class_errors,
    draw_noise,
    draw_timesteps,
    li_timesteps,
    pointwise_loss,
    stratified_unit,
    timestep_weights,
)
from diffbench.testing import tiny_model
from tests.helpers import ClassConstant, Recorder, TimeProfile, gen, make_model, points


def manual_errors(model, x, t, eps):
    """The errors ``[B, R, K]`` by hand, through model.eps and the textbook x_t (shared noise)."""
    B, R, K = x.shape[0], t.shape[1], model.num_classes
    abar = model.alphas_cumprod[t].unsqueeze(-1)
    x_t = abar.sqrt() * x[:, None] + (1 - abar).sqrt() * eps  # [B, R, D]
    rows = x_t[:, :, None].expand(B, R, K, -1).reshape(B * R * K, -1)
    c = torch.arange(K).repeat(B * R)
    eps_hat = model.eps(rows, t[:, :, None].expand(B, R, K).reshape(-1), c).view(B, R, K, -1)
    return (eps_hat - eps[:, :, None]).square().mean(-1)


def test_is_public_from_the_package():
    assert diffbench.montecarlo.class_errors is class_errors
    assert "montecarlo" in diffbench.__all__


# -- draws ------------------------------------------------------------------------------------------


def test_draw_timesteps_iid_are_uniform_over_the_whole_schedule(recorder_model):
    t = draw_timesteps(recorder_model, 200, 10, gen())
    assert t.shape == (200, 10) and t.dtype == torch.long
    assert t.min() >= 0 and t.max() <= 999 and t.min() < 20 and t.max() > 980
    assert torch.equal(t, draw_timesteps(recorder_model, 200, 10, gen())), "all randomness from the generator"


@pytest.mark.parametrize("trials", [8, 3])
def test_draw_timesteps_stratified_puts_one_t_in_each_stratum(trials, recorder_model):
    t = draw_timesteps(recorder_model, 300, trials, gen(), stratify=True)
    low = (torch.arange(trials) * 1000 / trials).floor().long()
    high = ((torch.arange(trials) + 1) * 1000 / trials).ceil().long()
    assert ((t >= low) & (t < high)).all() and t.max() <= 999
    assert len(set(t[:, 0].tolist())) > 50, "every row draws its own offsets"


def test_stratified_unit_draws_one_value_per_stratum():
    u = stratified_unit(500, 4, gen())
    assert u.dtype == torch.float64 and u.shape == (500, 4)
    assert ((u * 4).floor() == torch.arange(4)).all()


def test_li_timesteps_is_li_et_al_grid():
    assert li_timesteps(1000, 8).tolist() == list(range(62, 1000, 125))
    assert li_timesteps(1000, 3).tolist() == [166, 499, 832]
    assert li_timesteps(10, 10).tolist() == list(range(10))
    with pytest.raises(ValueError, match="lower trials"):
        li_timesteps(1000, 1001)


def test_draw_noise_is_standard_normal_shaped_for_the_model():
    model = make_model(Recorder(dim=3, num_classes=2), num_classes=2, dim=3, dtype=torch.float64)
    eps = draw_noise(model, (4000, 2), gen())
    assert eps.shape == (4000, 2, 3) and eps.dtype == torch.float64
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1) < 0.05
    assert torch.equal(eps, draw_noise(model, (4000, 2), gen()))


# -- weights and losses -----------------------------------------------------------------------------


def test_timestep_weights(recorder_model):
    assert torch.equal(timestep_weights(recorder_model, "simple"), torch.ones(1000))
    w = timestep_weights(recorder_model, "elbo").double()
    betas, abar = recorder_model.betas.double(), recorder_model.alphas_cumprod.double()
    raw = betas.square() / (2 * betas * (1 - betas) * (1 - abar))
    assert math.isclose(w.mean().item(), 1, rel_tol=1e-5)
    assert torch.allclose(w, raw / raw.mean(), rtol=1e-4)
    with pytest.raises(ValueError, match="weighting"):
        timestep_weights(recorder_model, "vlb")


def test_pointwise_losses():
    a, b = torch.randn(50, 3, generator=gen()), torch.randn(50, 3, generator=gen(1)) * 3
    assert torch.equal(pointwise_loss("l2")(a, b), (a - b).square())
    assert torch.equal(pointwise_loss("l1")(a, b), (a - b).abs())
    assert torch.equal(pointwise_loss("huber")(a, b), F.huber_loss(a, b, reduction="none"))
    with pytest.raises(ValueError, match="choose one of l2, l1, huber"):
        pointwise_loss("l3")


# -- class_errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("B", [4, 700])  # 700 x 2 x 3 rows: gathers 2-D rows as single words
def test_class_errors_shared_noise_is_the_textbook_error_and_costs_b_r_k(B, recorder_model):
    R, K = 2, 3
    x, t = points(B), torch.randint(0, 1000, (B, R), generator=gen())
    eps = torch.randn(B, R, 2, generator=gen(1))
    err = class_errors(recorder_model, x, t, eps)
    assert err.shape == (B, R, K) and recorder_model.nfe == B * R * K
    recorder_model.reset_nfe()
    assert torch.allclose(err, manual_errors(recorder_model, x, t, eps), rtol=1e-5, atol=1e-6)
    seen_x, seen_t, seen_c = recorder_model.module.rows()
    assert torch.equal(seen_c[: 2 * K], torch.arange(K).repeat(2)), "rows in (sample, trial, class) order"
    assert torch.equal(seen_t[:K], t[0, 0].expand(K)) and (seen_x[:K] == seen_x[0]).all()


def test_class_errors_independent_noise_scores_one_x_t_per_class(recorder_model):
    B, R, K = 3, 2, 3
    x, t = points(B), torch.randint(0, 1000, (B, R, K), generator=gen())
    eps = torch.randn(B, R, K, 2, generator=gen(1))
    err = class_errors(recorder_model, x, t, eps)
    assert err.shape == (B, R, K) and recorder_model.nfe == B * R * K
    for k in range(K):  # class k's errors: shared-noise errors at that class's own draws
        shared = class_errors(recorder_model, x, t[..., k], eps[:, :, k])[..., k]
        assert torch.allclose(err[..., k], shared)


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
    with pytest.raises(ValueError, match="shared noise"):
        class_errors(recorder_model, x, t[..., None].expand(B, R, K), eps[:, :, None].expand(B, R, K, 2), classes=mask)


def test_class_errors_weighting_multiplies_by_the_timestep_weight(recorder_model):
    B, R = 5, 4
    x, t = points(B), torch.randint(0, 1000, (B, R), generator=gen())
    eps = torch.randn(B, R, 2, generator=gen(1))
    w = timestep_weights(recorder_model, "elbo")[t]
    plain = class_errors(recorder_model, x, t, eps, loss="huber")
    weighted = class_errors(recorder_model, x, t, eps, loss="huber", weighting="elbo")
    assert torch.allclose(weighted, plain * w[..., None])
    extra = torch.rand(B, R, generator=gen(2))
    both = class_errors(recorder_model, x, t, eps, loss="huber", weighting="elbo", weight=extra)
    assert torch.allclose(both, plain * (w * extra)[..., None])


@pytest.mark.parametrize("independent", [False, True])
def test_class_errors_mean_is_unbiased_for_the_l2_error(independent):
    """With eps_hat = m_c, E||eps - m_c||^2 / D = 1 + mean(m_c^2) for every t."""
    means = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [1.0, -1.0, 0.5, 2.0]])
    model = make_model(ClassConstant(means), num_classes=3, dim=4)
    B, R = 2000, 2
    dims = (B, R, 3) if independent else (B, R)
    t = torch.randint(0, 1000, dims, generator=gen(1))
    err = class_errors(model, torch.randn(B, 4, generator=gen(2)), t, draw_noise(model, dims, gen(3))).mean(1)
    mean, se = err.mean(0), err.std(0) / math.sqrt(B)
    assert ((mean - (1 + means.square().mean(1))).abs() < 4 * se).all()


@pytest.mark.parametrize("weighting", ["simple", "elbo"])
def test_stratified_draws_are_unbiased_for_the_uniform_t_objective(weighting):
    module = TimeProfile()
    model = make_model(module, num_classes=3, dim=4)
    B, R = 3000, 3
    t = draw_timesteps(model, B, R, gen(1), stratify=True)
    eps = draw_noise(model, (B, R), gen(2))
    err = class_errors(model, points(B, dim=4), t, eps, weighting=weighting).mean(1).double()
    expected = module.exact(timestep_weights(model, weighting))
    mean, se = err.mean(0), err.std(0) / math.sqrt(B)
    assert ((mean - expected).abs() < 4 * se + 1e-4).all(), f"{mean} vs {expected} (se {se})"


def test_class_errors_on_images():
    K = 4
    model = tiny_model((1, 4, 4), num_classes=K)
    x = torch.randn(3, 1, 4, 4, generator=gen())
    t = draw_timesteps(model, 3, 2, gen(1))
    eps = draw_noise(model, (3, 2), gen(2))
    err = class_errors(model, x, t, eps)
    assert err.shape == (3, 2, K) and torch.isfinite(err).all() and model.nfe == 3 * 2 * K
    x_t = model.q_sample(x[:, None], t, eps)  # [3, 2, 1, 4, 4]
    c = torch.arange(K).repeat(6)
    eps_hat = model.eps(x_t.reshape(6, 1, 4, 4).repeat_interleave(K, 0), t.reshape(6).repeat_interleave(K), c)
    by_hand = (eps_hat - eps.reshape(6, 1, 4, 4).repeat_interleave(K, 0)).square().flatten(1).mean(1)
    assert torch.allclose(err.reshape(-1), by_hand)
