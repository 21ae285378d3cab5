"""Dataset `rings`: ``k`` concentric 2-D rings, one class each."""

from __future__ import annotations

import math

import diffbench
import torch


class Rings(diffbench.Dataset):
    """``k`` concentric rings with radii evenly spaced up to 2, one class per ring, Gaussian jitter ``noise``."""

    name = "rings"
    params = {"k": 3, "n_train": 3000, "n_test": 600, "noise": 0.05}

    def validate(self) -> None:
        p = self.params
        if p["k"] < 2:
            raise diffbench.ParamError(f"rings needs k >= 2, got k={p['k']}")
        if p["n_train"] < p["k"] or p["n_test"] < p["k"]:
            raise diffbench.ParamError("rings needs n_train and n_test of at least k (a point on every ring)")
        if p["noise"] < 0:
            raise diffbench.ParamError(f"rings needs noise >= 0, got noise={p['noise']}")

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.params["k"]
        y = torch.arange(n) % k  # classes in turn: balanced
        radius = 2.0 * (y + 1) / k
        angle = torch.rand(n, generator=generator) * 2 * math.pi
        x = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return x + self.params["noise"] * torch.randn(n, 2, generator=generator), y

    def load(self, seed: int) -> diffbench.Splits:
        # Every random number comes from one generator seeded by `seed`: the same seed, the same data.
        generator = torch.Generator().manual_seed(seed)
        train_x, train_y = self.draw(self.params["n_train"], generator)
        test_x, test_y = self.draw(self.params["n_test"], generator)
        names = [f"ring {c}" for c in range(self.params["k"])]
        return diffbench.Splits(train_x, train_y, test_x, test_y, names)
