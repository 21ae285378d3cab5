"""Timing an estimator against the bare module's forward passes, interleaved, on one device."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffbench.model import ConditionalModel

MIN_REGION_S = 0.1  # each timed region lasts at least this long, to swamp timer noise


def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory in the process instead of mmap/munmap for every large tensor.

    glibc serves allocations over 128 KiB-ish by fresh mmaps whose pages fault in on
    every call, which made the same CPU pass vary by 1.6x from repeat to repeat (and the
    estimator look faster than the bare forward it wraps). Raising the mmap threshold to
    its 32 MiB maximum and never trimming makes repeats stable and passes faster.
    Returns whether glibc accepted the settings (False elsewhere, which changes nothing).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn`` takes, with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_iqr(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[2] - q[0]


@dataclass
class Throughput:
    samples_per_s: float
    samples_per_s_iqr: float
    evals_per_s: float
    bare_rows_per_s: float
    efficiency: float
    efficiency_iqr: float
    inner_passes: int
    repeats: int


class BareForward:
    """The module alone on pre-made rows, chunked like ``model.eps``: the reference rate."""

    def __init__(self, model: ConditionalModel, rows: int, generator: torch.Generator) -> None:
        self.model = model
        self.rows = rows
        chunk = min(rows, model.max_batch)
        dev = model.device
        self.x = torch.randn((chunk, *model.data_shape), generator=generator, device=dev, dtype=model.dtype)
        self.t = torch.randint(0, model.num_timesteps, (chunk,), generator=generator, device=dev)
        self.c = torch.randint(0, model.num_classes, (chunk,), generator=generator, device=dev)

    @torch.inference_mode()
    def __call__(self) -> None:
        chunk = self.x.shape[0]
        full, rest = divmod(self.rows, chunk)
        for _ in range(full):
            self.model.module(self.x, self.t, self.c)
        if rest:
            self.model.module(self.x[:rest], self.t[:rest], self.c[:rest])


def calibrate(run_pass: Callable[[], object], device: torch.device, first_pass_s: float) -> int:
    """Passes per timed region so that a warm region lasts at least MIN_REGION_S.

    The first pass is cold (allocations, lazy init) and can be several times slower than
    a warm one, so the estimate from it is checked on warm regions and scaled up.
    """
    inner = max(1, math.ceil(MIN_REGION_S / max(first_pass_s, 1e-6)))
    for _ in range(4):
        region_s = timed(lambda n=inner: [run_pass() for _ in range(n)], device)
        if region_s >= MIN_REGION_S:
            break
        inner = max(inner + 1, math.ceil(inner * 1.2 * MIN_REGION_S / max(region_s, 1e-6)))
    return inner


def measure(
    run_pass: Callable[[], object],
    model: ConditionalModel,
    n_samples: int,
    first_pass_s: float,
    repeats: int,
    generator: torch.Generator,
) -> Throughput:
    """Time ``run_pass`` (one classification of ``n_samples``) and the bare forward, interleaved.

    ``first_pass_s`` (an untimed-for-the-table warm-up pass) calibrates how many passes
    each region repeats so that it lasts at least MIN_REGION_S. NFE is read from the
    model's counter over the timed regions.
    """
    inner = calibrate(run_pass, model.device, first_pass_s)
    est_rates, eval_rates, bare_rates, efficiencies = [], [], [], []
    bare: BareForward | None = None
    for _ in range(repeats):
        model.reset_nfe()
        est_s = timed(lambda: [run_pass() for _ in range(inner)], model.device)
        nfe = model.reset_nfe()
        if bare is None or bare.rows != nfe // inner:
            bare = BareForward(model, max(1, nfe // inner), generator)
            bare()  # warm the reference too
        bare_s = timed(lambda ref=bare: [ref() for _ in range(inner)], model.device)
        evals_rate = nfe / est_s
        bare_rate = bare.rows * inner / bare_s
        est_rates.append(n_samples * inner / est_s)
        eval_rates.append(evals_rate)
        bare_rates.append(bare_rate)
        efficiencies.append(evals_rate / bare_rate)
    samples, samples_iqr = median_iqr(est_rates)
    eff, eff_iqr = median_iqr(efficiencies)
    return Throughput(
        samples_per_s=samples,
        samples_per_s_iqr=samples_iqr,
        evals_per_s=statistics.median(eval_rates),
        bare_rows_per_s=statistics.median(bare_rates),
        efficiency=eff,
        efficiency_iqr=eff_iqr,
        inner_passes=inner,
        repeats=repeats,
    )
