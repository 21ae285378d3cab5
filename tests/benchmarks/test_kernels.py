"""Micro-benchmarks of diffbench's own hot paths (pytest-benchmark); skipped by the default test run.

    python -m pytest tests/benchmarks --benchmark-only --benchmark-autosave      # save a run
    python -m pytest tests/benchmarks --benchmark-only --benchmark-compare      # against the last saved
    python -m pytest tests/benchmarks -o addopts= --benchmark-disable           # each once, as a test

Fixed shapes on a small `mlp` with untrained weights (speed does not depend on training): 256
two-dimensional samples x 8 trials x 2 classes = 4096 rows, chunked at 1024 rows per call, one
CPU thread. Three groups:

- ``estimator``: ``errors()`` of the baseline estimators, and the bare module on the same rows
  in the same chunks (their ratio is the table's ``efficiency``);
- ``overhead``: the same estimators on a module that costs nothing (returns ``x_t``): all that
  is left is the estimator's own work (noise, x_t, gathers, losses), which should stay small;
- ``model``: ``ConditionalModel.eps`` and ``eps_error`` chunked, against the bare module.
"""

from __future__ import annotations

import pytest
import torch

import diffbench
from diffbench import plugins
from diffbench.schedule import NoiseSchedule

B, R, K, D = 256, 8, 2, 2
ROWS = B * R * K
CHUNK = 1024
ESTIMATORS = ["full-mc", "shared-noise", "truncated"]


class Free(torch.nn.Module):
    """A denoiser that costs nothing: eps_hat = x_t."""

    def forward(self, x_t, t, c):
        return x_t


def make_model(module: torch.nn.Module | None = None) -> diffbench.ConditionalModel:
    if module is None:
        torch.manual_seed(0)
        module = plugins.get("denoiser", "mlp").cls(width=64, depth=2).build((D,), K)
    return diffbench.ConditionalModel(module, NoiseSchedule("linear", 1000), K, (D,), max_batch=CHUNK)


def rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, D, generator=g)
    t = torch.randint(0, 1000, (ROWS,), generator=g)
    c = torch.randint(0, K, (ROWS,), generator=g)
    return x, t, c


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def points():
    return torch.randn(B, D, generator=torch.Generator().manual_seed(1))


def run_estimator(benchmark, model, points, name):
    est = plugins.get("estimator", name).cls()
    generator = torch.Generator().manual_seed(0)
    model.reset_nfe()
    est.errors(model, points, R, generator)
    assert model.reset_nfe() == ROWS, "fixed shapes: every baseline scores B x R x K rows"
    benchmark.extra_info["rows"] = ROWS
    out = benchmark(est.errors, model, points, R, generator)
    assert out.shape == (B, K)


@pytest.mark.benchmark(group="estimator")
@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_errors(benchmark, model, points, name):
    run_estimator(benchmark, model, points, name)


@pytest.mark.benchmark(group="estimator")
def test_bare_forward_same_rows(benchmark, model):
    """The reference: the module alone on ROWS rows in CHUNK-row calls (as timing.BareForward)."""
    x, t, c = (a[:CHUNK] for a in rows())

    @torch.inference_mode()
    def bare():
        return [model.module(x, t, c) for _ in range(ROWS // CHUNK)]

    benchmark.extra_info["rows"] = ROWS
    outs = benchmark(bare)
    assert [out.shape for out in outs] == [(CHUNK, D)] * (ROWS // CHUNK)


@pytest.mark.benchmark(group="overhead")
@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_overhead(benchmark, points, name):
    run_estimator(benchmark, make_model(Free()), points, name)


@pytest.mark.benchmark(group="model")
def test_model_eps_chunked(benchmark, model):
    x, t, c = rows()
    benchmark.extra_info["rows"] = ROWS
    out = benchmark(model.eps, x, t, c)
    assert out.shape == (ROWS, D)


@pytest.mark.benchmark(group="model")
def test_model_eps_error_chunked(benchmark, model):
    x, t, c = rows()
    target = torch.randn(ROWS, D, generator=torch.Generator().manual_seed(2))
    benchmark.extra_info["rows"] = ROWS
    out = benchmark(model.eps_error, x, t, c, target)
    assert out.shape == (ROWS,)
    assert torch.allclose(out, (model.eps(x, t, c) - target).square().mean(1))


@pytest.mark.benchmark(group="model")
def test_bare_module_chunked(benchmark, model):
    """The module alone on the same ROWS rows, sliced into the same CHUNK-row calls."""
    x, t, c = rows()

    @torch.inference_mode()
    def bare():
        return [
            model.module(x[start : start + CHUNK], t[start : start + CHUNK], c[start : start + CHUNK])
            for start in range(0, ROWS, CHUNK)
        ]

    benchmark.extra_info["rows"] = ROWS
    outs = benchmark(bare)
    assert torch.equal(torch.cat(outs), model.eps(x, t, c)), "the same rows in the same chunks as ConditionalModel.eps"
