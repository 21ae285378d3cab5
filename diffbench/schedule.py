"""DDPM noise schedules and forward diffusion."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")


def make_betas(kind: str = "linear", num_timesteps: int = 1000) -> torch.Tensor:
    """Betas in float64: linear 1e-4..0.02 (Ho et al.) scaled to T, or cosine (Nichol & Dhariwal)."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
    if kind == "linear":
        scale = 1000 / num_timesteps  # keeps the total noise of Ho et al.'s T = 1000 schedule
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64).clamp(max=0.999)
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule '{kind}'; choose one of {', '.join(SCHEDULES)}")


class NoiseSchedule:
    """Holds betas and alphas_cumprod of one schedule; float64 on the CPU, cast on request."""

    def __init__(self, kind: str = "linear", num_timesteps: int = 1000) -> None:
        self.kind = kind
        self.num_timesteps = num_timesteps
        self.betas = make_betas(kind, num_timesteps)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor, kind: str = "custom") -> NoiseSchedule:
        """The schedule a pretrained model brought, from its ``alphas_cumprod [T]`` (named ``kind`` in the table)."""
        abar = torch.as_tensor(alphas_cumprod).detach().double().cpu()
        if abar.dim() != 1 or abar.numel() < 2:
            raise ValueError(f"alphas_cumprod must be a [T] tensor with T >= 2, got shape {list(abar.shape)}")
        if not (torch.all(abar >= 0) and torch.all(abar < 1) and torch.all(abar[1:] <= abar[:-1])):
            raise ValueError("alphas_cumprod must decrease from below 1 towards 0, within [0, 1)")
        schedule = cls.__new__(cls)
        schedule.kind = kind
        schedule.num_timesteps = abar.numel()
        schedule.alphas_cumprod = abar
        schedule.betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
        return schedule

    def describe(self) -> dict[str, object]:
        return {"schedule": self.kind, "num_timesteps": self.num_timesteps}


def q_sample(alphas_cumprod: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, broadcasting abar_t over trailing dims.

    ``t`` may have more dims than one: it is matched against the leading dims of ``eps``.
    """
    abar = alphas_cumprod[t].to(eps.dtype)
    abar = abar.reshape(*t.shape, *([1] * (eps.dim() - t.dim())))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps
