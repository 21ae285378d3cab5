"""Denoiser `mlp`: sinusoidal time embedding + learned class embedding into an MLP."""

from __future__ import annotations

import math

import torch
from diffbench_plugins.layers import ConditionedNet
from torch import nn

import diffbench


class MLPNet(ConditionedNet):
    def __init__(self, data_dim: int, num_classes: int, width: int, depth: int, emb_dim: int):
        super().__init__()
        self.add_condition(emb_dim, width, num_classes)
        self.inp = nn.Linear(data_dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, data_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.inp(x_t.flatten(1)) + self.time_embedding(t, x_t.dtype) + self.label(c)
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
