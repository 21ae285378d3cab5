"""Denoiser `unet`: a small class-conditional U-Net for images ``[C, H, W]`` (DDPM / lucidrains style).

Residual blocks with GroupNorm and SiLU at each resolution, strided-conv downsampling and
nearest-neighbour upsampling, with a skip connection from every down block to its mirror up block.
The condition is a sinusoidal time embedding through an MLP plus a learned class embedding; each
residual block takes it as a per-channel scale and shift of its second norm (FiLM), so the class
can steer every layer, which is what a diffusion classifier needs its error to depend on.
"""

from __future__ import annotations

import torch
from diffbench_plugins.layers import ConditionedNet
from torch import nn

import diffbench


class ResBlock(nn.Module):
    """skip(x) + Conv(SiLU(GroupNorm(Conv(SiLU(GroupNorm(x)))) * (1 + scale) + shift)), FiLM from the condition."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.cond = nn.Linear(cond_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as (a projection of) the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.cond(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(nn.functional.silu(h))
        return self.skip(x) + h


def downsample(ch: int) -> nn.Module:
    return nn.Conv2d(ch, ch, 3, stride=2, padding=1)


def upsample(in_ch: int, out_ch: int) -> nn.Module:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1))


class UNetNet(ConditionedNet):
    """``forward(x_t [N, C, H, W], t [N], c [N]) -> eps_hat [N, C, H, W]``; H and W divisible by 2**(levels-1)."""

    def __init__(self, in_ch: int, num_classes: int, channels: int, mults: list[int], blocks: int, groups: int) -> None:
        super().__init__()
        widths = [channels * m for m in mults]
        cond_dim = 4 * channels
        self.add_condition(channels, cond_dim, num_classes)
        self.inp = nn.Conv2d(in_ch, channels, 3, padding=1)

        # Down path: `blocks` residual blocks per level, each output kept for a skip; then halve H and W.
        self.down = nn.ModuleList()
        skip_chs, ch = [], channels
        for level, width in enumerate(widths):
            stage = nn.ModuleList()
            for _ in range(blocks):
                stage.append(ResBlock(ch, width, cond_dim, groups))
                ch = width
                skip_chs.append(ch)
            last = level == len(widths) - 1
            self.down.append(nn.ModuleList([stage, nn.Identity() if last else downsample(ch)]))

        self.mid = ResBlock(ch, ch, cond_dim, groups)

        # Up path mirrors the down path: each block concatenates one skip; then double H and W.
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            stage = nn.ModuleList()
            for _ in range(blocks):
                stage.append(ResBlock(ch + skip_chs.pop(), width, cond_dim, groups))
                ch = width
            up_ch = widths[level - 1] if level > 0 else ch
            self.up.append(nn.ModuleList([stage, upsample(ch, up_ch) if level > 0 else nn.Identity()]))
            ch = up_ch

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, in_ch, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cond = nn.functional.silu(self.condition(t, c, x_t.dtype))
        h = self.inp(x_t)
        skips = []
        for stage, down in self.down:
            for block in stage:
                h = block(h, cond)
                skips.append(h)
            h = down(h)
        h = self.mid(h, cond)
        for stage, up in self.up:
            for block in stage:
                h = block(torch.cat([h, skips.pop()], dim=1), cond)
            h = up(h)
        return self.out(h)


class UNet(diffbench.Denoiser):
    """Small conditional U-Net: ``channels`` base width, one resolution level per entry of ``mults``."""

    name = "unet"
    params = {"channels": 32, "mults": [1, 2], "blocks": 1, "groups": 8}
    accepts = "images [C, H, W] with H and W divisible by 2**(len(mults)-1)"
    train = {"steps": 2000, "batch_size": 128, "lr": 2e-3}

    def validate(self) -> None:
        p = self.params
        if p["channels"] < 1 or p["blocks"] < 1 or p["groups"] < 1:
            raise diffbench.ParamError("unet needs channels, blocks and groups of at least 1")
        if not p["mults"] or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in p["mults"]):
            raise diffbench.ParamError(
                f"unet param 'mults' must be a non-empty list of integers >= 1, got {p['mults']}"
            )
        if p["channels"] % 2:
            raise diffbench.ParamError(f"unet needs an even channels (the time embedding's width), got {p['channels']}")
        bad = [m for m in p["mults"] if (p["channels"] * m) % p["groups"]]
        if bad or p["channels"] % p["groups"]:
            raise diffbench.ParamError(
                f"unet needs groups={p['groups']} to divide channels * every mult (channels={p['channels']}, "
                f"mults={p['mults']}); pick groups that divides {p['channels']}"
            )

    def supports(self, data_shape: tuple[int, ...]) -> bool:
        factor = 2 ** (len(self.params["mults"]) - 1)
        return len(data_shape) == 3 and data_shape[1] % factor == 0 and data_shape[2] % factor == 0

    def build(self, data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        p = self.params
        return UNetNet(data_shape[0], num_classes, p["channels"], list(p["mults"]), p["blocks"], p["groups"])


@diffbench.hookimpl
def register_denoisers(register):
    register(UNet)
