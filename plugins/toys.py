"""2-D toy datasets: `spirals`, `moons`, `circles`, `checkerboard` and `gaussian-mixture`.

Each draws its train and test points from one seeded generator; sizes, noise and the
shape's own knobs are params. Points are scaled to roughly [-2, 2], where the DDPM
schedule's noise levels span everything from fine detail to pure noise.

``n_train`` and ``n_test`` have no fixed bound, but before anything is drawn the memory the points
will hold is estimated and a size that cannot fit in the memory available now is refused in one
line naming the params and the most that fits (``n_train=10**11`` would ask for terabytes).
"""

from __future__ import annotations

import math

import torch

import diffbench
from diffbench.memory import available_memory, gigabytes

#: Bytes one point holds at the peak of drawing and preparing it: its float32 coordinates and int64 label, the
#: temporaries ``draw`` makes (radii, angles, noise: about 45 bytes measured), and the copies the core makes
#: when it cuts the test subset and holds out part of training.
BYTES_PER_POINT = 96


class Toy2D(diffbench.Dataset):
    """Base of the 2-D toys: subclasses draw ``n`` labelled points in ``draw``."""

    params = {"n_train": 4000, "n_test": 1000, "noise": 0.05}
    class_names: list[str] = []

    def validate(self) -> None:
        p = self.params
        if p["n_train"] < 2 or p["n_test"] < 2:
            raise diffbench.ParamError(f"{self.name} needs n_train and n_test of at least 2")
        if not 0 <= p["noise"] < math.inf:  # NaN too: it would reach the points
            raise diffbench.ParamError(f"{self.name} needs a finite noise >= 0, got {p['noise']}")
        check_points_fit(self.name, p["n_train"], p["n_test"])

    def num_classes(self) -> int:
        return len(self.class_names)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def load(self, seed: int) -> diffbench.Splits:
        generator = torch.Generator().manual_seed(seed)
        train_x, train_y = self.draw(self.params["n_train"], generator)
        test_x, test_y = self.draw(self.params["n_test"], generator)
        names = [f"{self.name} {c}" for c in range(self.num_classes())]
        return diffbench.Splits(train_x.float(), train_y.long(), test_x.float(), test_y.long(), names)

    def jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x + self.params["noise"] * torch.randn(x.shape, generator=generator)


def check_points_fit(name: str, n_train: int, n_test: int, per_test_point: int = 0) -> None:
    """ParamError, in one line, when ``n_train + n_test`` points (with ``per_test_point`` more bytes for each test
    point) cannot fit in the memory available now."""
    need, have = (n_train + n_test) * BYTES_PER_POINT + n_test * per_test_point, available_memory()
    if have is None or need <= have:
        return
    most = have // (BYTES_PER_POINT + per_test_point)
    raise diffbench.ParamError(
        f"{name}: n_train={n_train} and n_test={n_test} need about {gigabytes(need)} of memory, more than the "
        f"{gigabytes(have)} available; give n_train + n_test of at most {most}"
    )


class Spirals(Toy2D):
    """Two interlaced spirals, one per class."""

    name = "spirals"
    params = {"n_train": 4000, "n_test": 1000, "noise": 0.04, "turns": 1.0}
    class_names = ["0", "1"]

    def validate(self) -> None:
        super().validate()
        if not 0 < self.params["turns"] < math.inf:
            raise diffbench.ParamError(f"spirals needs a finite turns > 0, got {self.params['turns']}")

    def draw(self, n, generator):
        y = torch.arange(n) % 2
        # sqrt spreads points evenly along the arc rather than crowding the centre
        r = torch.rand(n, generator=generator).sqrt()
        angle = r * self.params["turns"] * 2 * math.pi + y * math.pi
        x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
        return 1.5 * self.jitter(x, generator), y


class Moons(Toy2D):
    """Two interleaving half circles (as scikit-learn's make_moons)."""

    name = "moons"
    params = {"n_train": 4000, "n_test": 1000, "noise": 0.1}
    class_names = ["0", "1"]

    def draw(self, n, generator):
        y = torch.arange(n) % 2
        angle = torch.rand(n, generator=generator) * math.pi
        upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
        x = torch.where(y[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])
        return 1.5 * self.jitter(x, generator), y


class Circles(Toy2D):
    """A small circle inside a large one."""

    name = "circles"
    params = {"n_train": 4000, "n_test": 1000, "noise": 0.05, "factor": 0.5}
    class_names = ["outer", "inner"]

    def validate(self) -> None:
        super().validate()
        if not 0 < self.params["factor"] < 1:
            raise diffbench.ParamError("circles needs 0 < factor < 1")

    def draw(self, n, generator):
        y = torch.arange(n) % 2
        angle = torch.rand(n, generator=generator) * 2 * math.pi
        radius = torch.where(y == 1, self.params["factor"], 1.0)
        x = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return 1.8 * self.jitter(x, generator), y


class Checkerboard(Toy2D):
    """Points uniform on a ``cells`` x ``cells`` board in [-2, 2]^2; the class is the square's colour."""

    name = "checkerboard"
    params = {"n_train": 4000, "n_test": 1000, "noise": 0.0, "cells": 4}
    class_names = ["black", "white"]

    def validate(self) -> None:
        super().validate()
        if self.params["cells"] < 2:
            raise diffbench.ParamError("checkerboard needs cells >= 2")

    def draw(self, n, generator):
        x = torch.rand(n, 2, generator=generator) * 4 - 2
        square = ((x + 2) / 4 * self.params["cells"]).floor().clamp(max=self.params["cells"] - 1)
        y = (square.sum(1) % 2).long()
        return self.jitter(x, generator), y


class GaussianMixture(Toy2D):
    """``k`` isotropic Gaussians evenly spaced on a circle, one per class; neighbours overlap a little.

    The mixture is known, so ``bayes_log_posterior`` gives the Bayes-optimal classifier.
    """

    name = "gaussian-mixture"
    params = {"n_train": 4000, "n_test": 1000, "k": 8, "radius": 2.0, "std": 0.35}

    def validate(self) -> None:
        p = self.params
        if p["n_train"] < 2 or p["n_test"] < 2:
            raise diffbench.ParamError("gaussian-mixture needs n_train and n_test of at least 2")
        if p["k"] < 2 or not (0 < p["radius"] < math.inf and 0 < p["std"] < math.inf):
            raise diffbench.ParamError("gaussian-mixture needs k >= 2, and a finite radius > 0 and std > 0")
        if p["k"] > p["n_train"]:
            raise diffbench.ParamError(
                f"gaussian-mixture needs k <= n_train (each class needs training points), got k={p['k']} "
                f"and n_train={p['n_train']}"
            )
        # the Bayes posterior holds a distance per test point and class, in float64
        check_points_fit(self.name, p["n_train"], p["n_test"], per_test_point=16 * p["k"])

    def num_classes(self) -> int:
        return self.params["k"]

    def means(self) -> torch.Tensor:
        angle = torch.arange(self.params["k"]) * 2 * math.pi / self.params["k"]
        return self.params["radius"] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def draw(self, n, generator):
        y = torch.arange(n) % self.params["k"]
        return self.means()[y] + self.params["std"] * torch.randn(n, 2, generator=generator), y

    def bayes_log_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """log p(c | x) of the true mixture (equal priors): the best any classifier can do."""
        sq = torch.cdist(x.double(), self.means().double()).square()
        return torch.log_softmax(-sq / (2 * self.params["std"] ** 2), dim=1).to(x.dtype)


@diffbench.hookimpl
def register_datasets(register):
    for cls in (Spirals, Moons, Circles, Checkerboard, GaussianMixture):
        register(cls)
