"""Denoiser `dit`: a small Diffusion Transformer over image patches (Peebles & Xie 2023, "DiT").

The image ``[C, H, W]`` is cut into ``patch x patch`` patches, each projected to a token, plus a
learned position embedding. Every transformer block is modulated by the condition (time embedding +
learned class embedding) through adaLN-Zero: the condition sets each LayerNorm's scale and shift and
a gate on each residual branch, the gates starting at zero so every block starts as the identity.
A final adaLN layer maps the tokens back to patches of predicted noise.
"""

from __future__ import annotations

import torch
from diffbench_plugins.layers import ConditionedNet
from torch import nn

import diffbench


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, width))


class DiTBlock(nn.Module):
    """Pre-norm attention and MLP, each branch's norm modulated and its output gated by the condition."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[-1].weight)  # adaLN-Zero: gates start at 0, so the block starts as the identity
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).unsqueeze(1).chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Modulated LayerNorm, then a linear map from each token to its patch of predicted noise."""

    def __init__(self, width: int, patch_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_dim)
        for layer in (self.ada[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(cond).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiTNet(ConditionedNet):
    """``forward(x_t [N, C, H, W], t [N], c [N]) -> eps_hat [N, C, H, W]``; H and W divisible by ``patch``."""

    def __init__(
        self, data_shape: tuple[int, ...], num_classes: int, patch: int, width: int, depth: int, heads: int
    ) -> None:
        super().__init__()
        self.channels, height, wide = data_shape
        self.patch, self.grid = patch, (height // patch, wide // patch)
        self.embed = nn.Conv2d(self.channels, width, patch, stride=patch)  # patchify: one token per patch
        self.pos = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], width) * 0.02)
        self.add_condition(width, width, num_classes)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.final = FinalLayer(width, patch * patch * self.channels)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, L, p*p*C]`` tokens back to ``[N, C, H, W]`` images."""
        (gh, gw), p, ch = self.grid, self.patch, self.channels
        x = x.view(x.shape[0], gh, gw, p, p, ch)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], ch, gh * p, gw * p)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cond = self.condition(t, c, x_t.dtype)
        x = self.embed(x_t).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x, cond)
        return self.unpatchify(self.final(x, cond))


class DiT(diffbench.Denoiser):
    """Small DiT: ``patch`` x ``patch`` patches as tokens, ``depth`` adaLN-Zero blocks of ``width`` and ``heads``."""

    name = "dit"
    params = {"patch": 2, "width": 64, "depth": 4, "heads": 4}
    accepts = "images [C, H, W] with H and W divisible by patch"
    train = {"steps": 3000, "batch_size": 128, "lr": 2e-3}

    def validate(self) -> None:
        p = self.params
        if min(p.values()) < 1:
            raise diffbench.ParamError("dit needs patch, width, depth and heads of at least 1")
        if p["width"] % p["heads"] or p["width"] % 2:
            raise diffbench.ParamError(
                f"dit needs an even width divisible by heads, got width={p['width']}, heads={p['heads']}"
            )

    def supports(self, data_shape: tuple[int, ...]) -> bool:
        patch = self.params["patch"]
        return len(data_shape) == 3 and data_shape[1] % patch == 0 and data_shape[2] % patch == 0

    def build(self, data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        p = self.params
        return DiTNet(tuple(data_shape), num_classes, p["patch"], p["width"], p["depth"], p["heads"])


@diffbench.hookimpl
def register_denoisers(register):
    register(DiT)
