"""Helpers the tests share: tiny denoisers, models, inputs, suite files and plugin objects.

Imported as ``tests.helpers``; the fixtures built on them live in ``conftest.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import diffbench
from diffbench import plugins
from diffbench.schedule import NoiseSchedule

TINY_DATASET = "spirals[n_train=200,n_test=50]"
TINY_DENOISER = "mlp[width=16,depth=1]"


def hooks_for(estimators=(), datasets=(), denoisers=()):
    """A plugin object registering the given classes through the three hooks."""

    class HookPlugin:
        @diffbench.hookimpl
        def register_estimators(self, register):
            for cls in estimators:
                register(cls)

        @diffbench.hookimpl
        def register_datasets(self, register):
            for cls in datasets:
                register(cls)

        @diffbench.hookimpl
        def register_denoisers(self, register):
            for cls in denoisers:
                register(cls)

    return HookPlugin()


def estimator(name, **params):
    return plugins.get("estimator", name).cls(**params)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def points(n=5, dim=2, seed=3):
    return torch.randn(n, dim, generator=gen(seed))


class ClassConstant(torch.nn.Module):
    """eps_hat = means[c], whatever x_t and t are: the true l2 error is 1 + mean(means[c]^2)."""

    def __init__(self, means: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means)

    def forward(self, x_t, t, c):
        return self.means[c].expand_as(x_t).clone()


class Recorder(torch.nn.Module):
    """A small deterministic denoiser that remembers every (x_t, t, c) it was called with."""

    def __init__(self, dim: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(dim, dim, generator=gen))
        self.register_buffer("label", torch.randn(num_classes, dim, generator=gen))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x_t, t, c):
        self.calls.append((x_t.clone(), t.clone(), c.clone()))
        return x_t @ self.weight + self.label[c] + t[:, None].to(x_t.dtype) / 1000

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, t, c = zip(*self.calls, strict=True)
        return torch.cat(x), torch.cat(t), torch.cat(c)


def make_model(module: torch.nn.Module, num_classes: int = 3, dim: int = 2, timesteps: int = 1000, **kw):
    return diffbench.ConditionalModel(module, NoiseSchedule("linear", timesteps), num_classes, (dim,), **kw)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_suite(path: Path, train: dict | None = None, **keys) -> Path:
    """Write a tiny suite TOML (tiny spirals, tiny mlp, cpu, 1 repeat, 50 train steps); keys override."""
    values = {
        "datasets": [TINY_DATASET],
        "denoisers": [TINY_DENOISER],
        "estimators": ["shared-noise"],
        "trials": [1, 2],
        "devices": ["cpu"],
        "repeats": 1,
        **keys,
    }
    lines = [f"{key} = {toml_value(value)}" for key, value in values.items()]
    lines += ["[train]"] + [f"{k} = {toml_value(v)}" for k, v in (train or {"steps": 50}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


class TimeProfile(torch.nn.Module):
    """eps_hat = f_c(t) * ones with f_c(t) = a_c * cos(pi t / T) + b_c 1[t < T/5]: a class-dependent function of t.

    Its exact l2 error for class c averaged over uniform t is mean_t w_t (1 + f_c(t)^2).
    """

    def __init__(self, T: int = 1000) -> None:
        super().__init__()
        t = torch.arange(T, dtype=torch.float64)
        a = torch.tensor([0.0, 1.0, -0.5])[:, None]
        b = torch.tensor([0.0, 0.0, 1.5])[:, None]
        self.register_buffer("f", (a * torch.cos(math.pi * t / T) + b * (t < T / 5)).float())  # [K, T]

    def forward(self, x_t, t, c):
        return self.f[c, t][:, None].expand_as(x_t).clone()

    def exact(self, weights: torch.Tensor) -> torch.Tensor:
        return (weights.double() * (1 + self.f.double().square())).mean(1)
