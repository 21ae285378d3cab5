"""The baseline Monte Carlo estimators: `full-mc`, `shared-noise` and `truncated`.

Each draws its timesteps and noise for all samples x trials (x classes) at once and
hands every row to ``model.eps`` in one call; the model chunks and counts them.
The helpers here (``class_errors``, ``elementwise_loss``, ``timestep_weights``) are
shared by the other estimator modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import diffbench
from diffbench.schedule import q_sample

LOSSES = ("l2", "l1", "huber")
WEIGHTINGS = ("simple", "elbo")


def elementwise_loss(diff: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "l2":
        return diff.square()
    if loss == "l1":
        return diff.abs()
    return F.huber_loss(diff, torch.zeros_like(diff), reduction="none")


def timestep_weights(model: diffbench.ConditionalModel, weighting: str = "simple") -> torch.Tensor:
    """Per-timestep loss weights ``w [T]`` on the model's device, averaging 1 over t.

    ``simple``: w_t = 1 (Ho et al.'s L_simple, Li et al.'s choice). ``elbo``: the DDPM
    variational bound's weight on the epsilon error, beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t))
    with sigma_t^2 = beta_t, rescaled to mean 1 so errors stay on the simple scale.
    """
    if weighting == "simple":
        return torch.ones(model.num_timesteps, device=model.device, dtype=model.dtype)
    if weighting != "elbo":
        raise ValueError(f"unknown weighting '{weighting}'; choose one of {', '.join(WEIGHTINGS)}")
    betas, abar = model.betas.double(), model.alphas_cumprod.double()
    w = betas / (2 * (1 - betas) * (1 - abar))
    return (w / w.mean()).to(model.dtype)


def li_timesteps(num_timesteps: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Li et al.'s evenly spaced grid of ``n`` timesteps: ``range(T // n // 2, T, T // n)[:n]``."""
    if not 1 <= n <= num_timesteps:
        raise ValueError(f"an evenly spaced grid of {n} timesteps needs 1 <= n <= T = {num_timesteps}; lower trials")
    step = num_timesteps // n
    return torch.arange(step // 2, num_timesteps, step, device=device)[:n]


def stratified_unit(
    rows: int, trials: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``u [rows, trials]`` in [0, 1), float64: trial r uniform in stratum [r / trials, (r + 1) / trials).

    Every row draws its own offsets. ``floor(u * T)`` is then exactly uniform over {0..T-1}
    when averaged over the strata, for any ``trials`` (also one that does not divide T).
    """
    offsets = torch.rand((rows, trials), generator=generator, device=device, dtype=torch.float64)
    return (torch.arange(trials, device=device, dtype=torch.float64) + offsets) / trials


def draw_timesteps(
    model: diffbench.ConditionalModel, rows: int, trials: int, generator: torch.Generator, stratify: bool = False
) -> torch.Tensor:
    """Uniform timesteps ``t [rows, trials]``: i.i.d. (``shared-noise``'s draw) or one per stratum."""
    T = model.num_timesteps
    if not stratify:
        return torch.randint(0, T, (rows, trials), generator=generator, device=model.device)
    u = stratified_unit(rows, trials, generator, model.device)
    return (u * T).floor().long().clamp_(max=T - 1)


def class_errors(
    model: diffbench.ConditionalModel,
    x: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    loss: str = "l2",
    weight: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-trial denoising errors ``[B, R, K]`` of every class.

    Shared noise: ``t [B, R]`` and ``eps [B, R, *shape]``, the same x_t scored against
    every class. Independent noise: ``t [B, R, K]`` and ``eps [B, R, K, *shape]``.
    ``weight`` (shaped like ``t``) multiplies each trial's error. ``classes`` (shared noise
    only), a bool mask ``[B, K]``, scores only the marked classes of each sample: only those
    rows reach ``model.eps`` (and its NFE count); the unmarked entries of the result are NaN.
    """
    B, R, K = x.shape[0], t.shape[1], model.num_classes
    shape = model.data_shape
    if classes is not None:
        if t.dim() != 2:
            raise ValueError("class_errors: `classes` needs shared noise (t of shape [B, R])")
        x_t = q_sample(model.alphas_cumprod, x.unsqueeze(1), t, eps)
        b, r, k = classes.unsqueeze(1).expand(B, R, K).nonzero(as_tuple=True)
        eps_hat = model.eps(x_t[b, r], t[b, r], k)
        per_row = elementwise_loss(eps_hat - eps[b, r], loss).flatten(1).mean(-1)
        if weight is not None:
            per_row = per_row * weight[b, r]
        out = torch.full((B, R, K), float("nan"), device=per_row.device, dtype=per_row.dtype)
        out[b, r, k] = per_row
        return out
    if t.dim() == 2:
        x_t = q_sample(model.alphas_cumprod, x.unsqueeze(1), t, eps)
        x_rows = x_t.unsqueeze(2).expand(B, R, K, *shape).reshape(-1, *shape)
        t_rows = t.unsqueeze(2).expand(B, R, K).reshape(-1)
        target = eps.unsqueeze(2)
    else:
        x_t = q_sample(model.alphas_cumprod, x[:, None, None], t, eps)
        x_rows = x_t.reshape(-1, *shape)
        t_rows = t.reshape(-1)
        target = eps
    c_rows = torch.arange(K, device=x.device).expand(B, R, K).reshape(-1)
    eps_hat = model.eps(x_rows, t_rows, c_rows).view(B, R, K, *shape)
    errors = elementwise_loss(eps_hat - target, loss).flatten(3).mean(-1)
    if weight is not None:
        errors = errors * (weight.unsqueeze(2) if weight.dim() == 2 else weight)
    return errors


class _MonteCarlo(diffbench.Estimator):
    def validate(self) -> None:
        if self.params["loss"] not in LOSSES:
            raise diffbench.ParamError(
                f"{self.name} param 'loss' must be one of {', '.join(LOSSES)}, got {self.params['loss']!r}"
            )

    def _noise(self, model, x, dims, generator) -> torch.Tensor:
        return torch.randn((*dims, *model.data_shape), generator=generator, device=model.device, dtype=model.dtype)


class FullMC(_MonteCarlo):
    """A fresh timestep and noise for every (sample, trial, class): no shared randomness."""

    name = "full-mc"
    params = {"loss": "l2"}

    def errors(self, model, x, trials, generator):
        dims = (x.shape[0], trials, model.num_classes)
        t = torch.randint(0, model.num_timesteps, dims, generator=generator, device=model.device)
        eps = self._noise(model, x, dims, generator)
        return class_errors(model, x, t, eps, self.params["loss"]).mean(1)


class SharedNoise(_MonteCarlo):
    """One timestep and noise per (sample, trial), shared by all classes (common random numbers)."""

    name = "shared-noise"
    params = {"loss": "l2"}

    def _timesteps(self, model, dims, generator) -> torch.Tensor:
        return torch.randint(0, model.num_timesteps, dims, generator=generator, device=model.device)

    def errors(self, model, x, trials, generator):
        dims = (x.shape[0], trials)
        t = self._timesteps(model, dims, generator)
        eps = self._noise(model, x, dims, generator)
        return class_errors(model, x, t, eps, self.params["loss"]).mean(1)


class Truncated(SharedNoise):
    """Shared noise with timesteps drawn uniformly from ``[t_min, t_max]`` (inclusive)."""

    name = "truncated"
    params = {"loss": "l2", "t_min": 0, "t_max": 300}

    def validate(self) -> None:
        super().validate()
        t_min, t_max = self.params["t_min"], self.params["t_max"]
        if not 0 <= t_min <= t_max:
            raise diffbench.ParamError(f"truncated needs 0 <= t_min <= t_max, got t_min={t_min}, t_max={t_max}")

    def _timesteps(self, model, dims, generator):
        t_max = self.params["t_max"]
        if t_max >= model.num_timesteps:
            raise diffbench.ParamError(
                f"truncated t_max={t_max} is outside the model's timesteps [0, {model.num_timesteps}); lower t_max"
            )
        low = self.params["t_min"]
        return torch.randint(low, t_max + 1, dims, generator=generator, device=model.device)


@diffbench.hookimpl
def register_estimators(register):
    register(FullMC)
    register(SharedNoise)
    register(Truncated)
