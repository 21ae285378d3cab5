"""The baseline Monte Carlo estimators: `full-mc`, `shared-noise` and `truncated`.

Each draws its timesteps and noise for all samples x trials (x classes) at once and
hands every row to ``model.eps`` in one call; the model chunks and counts them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import diffbench
from diffbench.schedule import q_sample

LOSSES = ("l2", "l1", "huber")


def elementwise_loss(diff: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "l2":
        return diff.square()
    if loss == "l1":
        return diff.abs()
    return F.huber_loss(diff, torch.zeros_like(diff), reduction="none")


def class_errors(
    model: diffbench.ConditionalModel,
    x: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    loss: str = "l2",
) -> torch.Tensor:
    """Per-trial denoising errors ``[B, R, K]`` of every class.

    Shared noise: ``t [B, R]`` and ``eps [B, R, *shape]``, the same x_t scored against
    every class. Independent noise: ``t [B, R, K]`` and ``eps [B, R, K, *shape]``.
    """
    B, R, K = x.shape[0], t.shape[1], model.num_classes
    shape = model.data_shape
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
    return elementwise_loss(eps_hat - target, loss).flatten(3).mean(-1)


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
