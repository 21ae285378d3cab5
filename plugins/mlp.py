"""Denoiser `mlp`: sinusoidal time embedding + learned class embedding into an MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

import diffbench


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps ``t [N]`` -> ``[N, dim]`` (Transformer / DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class MLPNet(nn.Module):
    def __init__(self, data_dim: int, num_classes: int, width: int, depth: int, emb_dim: int):
        super().__init__()
        self.emb_dim = emb_dim
        self.time = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.label = nn.Embedding(num_classes, width)
        self.inp = nn.Linear(data_dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, data_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        temb = timestep_embedding(t, self.emb_dim).to(x_t.dtype)
        h = self.inp(x_t.flatten(1)) + self.time(temb) + self.label(c)
        for layer in self.hidden:
            h = layer(nn.functional.silu(h))
        return self.out(nn.functional.silu(h)).view_as(x_t)


class MLP(diffbench.Denoiser):
    """Sinusoidal time embedding + learned class embedding added into a SiLU MLP: any data shape, flattened."""

    name = "mlp"
    params = {"width": 128, "depth": 3, "emb_dim": 32}

    def validate(self) -> None:
        if min(self.params.values()) < 1:
            raise diffbench.ParamError("mlp needs width, depth and emb_dim of at least 1")

    def build(self, data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        p = self.params
        return MLPNet(math.prod(data_shape), num_classes, p["width"], p["depth"], p["emb_dim"])


@diffbench.hookimpl
def register_denoisers(register):
    register(MLP)
