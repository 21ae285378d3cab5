"""Noise schedules and forward diffusion q(x_t | x_0)."""

import pytest
import torch

from diffbench.schedule import NoiseSchedule, make_betas, q_sample


def test_linear_betas_match_ho_et_al_at_1000_steps():
    betas = make_betas("linear", 1000)
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert (betas.diff() > 0).all()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_cumprod_is_strictly_decreasing_inside_0_1(kind):
    schedule = NoiseSchedule(kind, 1000)
    abar = schedule.alphas_cumprod
    assert abar.shape == (1000,)
    assert (abar > 0).all() and (abar < 1).all()
    assert (abar.diff() < 0).all()
    assert torch.allclose(abar, torch.cumprod(1 - schedule.betas, 0))


def test_cosine_betas_are_valid():
    betas = make_betas("cosine", 1000)
    assert (betas > 0).all() and (betas <= 0.999).all()
    abar = torch.cumprod(1 - betas, 0)
    assert abar[0] > 0.999, "cosine starts almost noise-free"
    assert abar[-1] < 1e-3, "and ends almost pure noise"


def test_unknown_schedule_and_too_few_steps_are_errors():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        make_betas("quadratic", 1000)
    with pytest.raises(ValueError, match="at least 2"):
        NoiseSchedule("linear", 1)


# Regression (bug found by this suite): linear betas scaled by 1000/T reached 1 or more for T <= 20,
# making alphas_cumprod zero or negative (NaN x_t), while suites accept any timesteps >= 2.
@pytest.mark.parametrize("timesteps", [10, 20])
def test_linear_schedule_is_valid_for_short_schedules(timesteps):
    schedule = NoiseSchedule("linear", timesteps)
    assert (schedule.betas < 1).all()
    assert (schedule.alphas_cumprod > 0).all()


def test_q_sample_matches_the_formula():
    abar = NoiseSchedule().alphas_cumprod.float()
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    t = torch.tensor([0, 1, 250, 500, 999])
    expected = abar[t].sqrt()[:, None] * x0 + (1 - abar[t]).sqrt()[:, None] * eps
    assert torch.allclose(q_sample(abar, x0, t, eps), expected)


def test_q_sample_broadcasts_trials_over_samples():
    """t [B, R] with x0 [B, 1, D] and eps [B, R, D]: each trial uses its own t and eps."""
    abar = NoiseSchedule().alphas_cumprod.float()
    gen = torch.Generator().manual_seed(1)
    B, R, D = 4, 3, 2
    x0 = torch.randn(B, 1, D, generator=gen)
    eps = torch.randn(B, R, D, generator=gen)
    t = torch.randint(0, 1000, (B, R), generator=gen)
    out = q_sample(abar, x0, t, eps)
    assert out.shape == (B, R, D)
    for b in range(B):
        for r in range(R):
            a = abar[t[b, r]]
            assert torch.allclose(out[b, r], a.sqrt() * x0[b, 0] + (1 - a).sqrt() * eps[b, r])


@pytest.mark.parametrize("step", [50, 400, 900])
def test_x_t_has_the_forward_process_mean_and_variance(step):
    abar = NoiseSchedule().alphas_cumprod
    n = 200_000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64)
    eps = torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_t = q_sample(abar, x0.expand(n, 2), torch.full((n,), step), eps)
    a = abar[step]
    # sd of the sample mean is sqrt(1 - a) / sqrt(n) <= 0.0023; of the sample variance ~ sqrt(2 / n) (1 - a)
    assert torch.allclose(x_t.mean(0), a.sqrt() * x0, atol=0.01)
    assert torch.allclose(x_t.var(0), (1 - a).expand(2), rtol=0.02)
