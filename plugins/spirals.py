"""Dataset `spirals`: two interlaced 2-D spirals, one per class."""

from __future__ import annotations

import math

import torch

import diffbench


class Spirals(diffbench.Dataset):
    name = "spirals"
    params = {"n_train": 4000, "n_test": 1000, "noise": 0.04, "turns": 1.0}

    def validate(self) -> None:
        p = self.params
        if p["n_train"] < 2 or p["n_test"] < 2:
            raise diffbench.ParamError("spirals needs n_train and n_test of at least 2")
        if p["noise"] < 0 or p["turns"] <= 0:
            raise diffbench.ParamError("spirals needs noise >= 0 and turns > 0")

    def _draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 2
        # sqrt makes points evenly spread along the arc rather than crowded at the centre
        r = torch.rand(n, generator=generator).sqrt()
        angle = r * self.params["turns"] * 2 * math.pi + y * math.pi
        x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
        x = x + self.params["noise"] * torch.randn(n, 2, generator=generator)
        return (x * 1.5).float(), y.long()

    def load(self, seed: int) -> diffbench.Splits:
        generator = torch.Generator().manual_seed(seed)
        train_x, train_y = self._draw(self.params["n_train"], generator)
        test_x, test_y = self._draw(self.params["n_test"], generator)
        return diffbench.Splits(train_x, train_y, test_x, test_y, ["spiral 0", "spiral 1"])


@diffbench.hookimpl
def register_datasets(register):
    register(Spirals)
