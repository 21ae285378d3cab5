"""Denoiser `resmlp`: residual MLP blocks with FiLM (scale and shift) conditioning on time and class."""

from __future__ import annotations

import math

import torch
from diffbench_plugins.layers import ConditionedNet
from torch import nn

import diffbench


class FiLMBlock(nn.Module):
    """h + Linear(SiLU(Linear(LayerNorm(h) * (1 + scale) + shift))), scale and shift from the condition."""

    def __init__(self, width: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        nn.init.zeros_(self.fc2.weight)  # each block starts as the identity
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, dim=1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(nn.functional.silu(self.fc1(z)))


class ResMLPNet(ConditionedNet):
    def __init__(self, data_dim: int, num_classes: int, width: int, blocks: int, emb_dim: int) -> None:
        super().__init__()
        self.add_condition(emb_dim, width, num_classes)
        self.inp = nn.Linear(data_dim, width)
        self.blocks = nn.ModuleList(FiLMBlock(width, width) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, data_dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cond = nn.functional.silu(self.condition(t, c, x_t.dtype))
        h = self.inp(x_t.flatten(1))
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h).view_as(x_t)


class ResMLP(diffbench.Denoiser):
    """Residual MLP with FiLM conditioning: any data shape, flattened."""

    name = "resmlp"
    params = {"width": 128, "blocks": 3, "emb_dim": 32}

    def validate(self) -> None:
        if min(self.params.values()) < 1:
            raise diffbench.ParamError("resmlp needs width, blocks and emb_dim of at least 1")

    def build(self, data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        p = self.params
        return ResMLPNet(math.prod(data_shape), num_classes, p["width"], p["blocks"], p["emb_dim"])


@diffbench.hookimpl
def register_denoisers(register):
    register(ResMLP)
