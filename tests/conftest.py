"""Shared fixtures: tiny models, tiny suite files, a CLI runner and plugin isolation."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import diffbench  # noqa: E402
from diffbench import plugins  # noqa: E402
from diffbench.cli import main  # noqa: E402
from diffbench.schedule import NoiseSchedule  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads
# that contend with other processes make every small op up to 100x slower.
torch.set_num_threads(1)

TINY_DATASET = "spirals[n_train=200,n_test=50]"
TINY_DENOISER = "mlp[width=16,depth=1]"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test leaks plugins into another, sees plugins of other installed packages, reads
    DIFFBENCH_PLUGINS or touches ~/.cache: each test gets a fresh plugin set with the built-ins."""
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    monkeypatch.delenv(plugins.ALLOW_ENV_VAR, raising=False)
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path / "default-cache"))
    modules = set(sys.modules)
    with plugins.using():
        yield
    for name in set(sys.modules) - modules:
        if name.startswith("diffbench_file_plugin_"):
            del sys.modules[name]


@pytest.fixture
def register_plugin():
    """``register_plugin(obj)`` registers a plugin object for this test only."""
    registered = []

    def register(obj, name: str | None = None):
        plugins.pm.register(obj, name=name)
        registered.append(obj)
        return obj

    yield register
    for obj in registered:
        if plugins.pm.is_registered(obj):
            plugins.pm.unregister(obj)


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


@pytest.fixture
def recorder_model():
    return make_model(Recorder(dim=2, num_classes=3), num_classes=3, dim=2)


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


@pytest.fixture
def suite_file(tmp_path):
    """``suite_file(**keys)`` writes a tiny suite into tmp_path and returns its path."""

    def write(name: str = "tiny.toml", **keys) -> Path:
        return write_suite(tmp_path / name, **keys)

    return write


@pytest.fixture
def cli():
    """``cli(*args, env=None)`` invokes the diffbench command in-process and returns the click Result."""
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]
