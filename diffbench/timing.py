"""Timing an estimator against the bare module's forward passes, interleaved, on one device.

Also single-sample latency: one test sample classified alone per call.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffbench.model import ConditionalModel

MIN_REGION_S = 0.1  # each timed region lasts at least this long, to swamp timer noise
WARMUP_S = 0.25  # untimed passes (the caller's first one included) before anything is timed
LATENCY_NOISY_REL_IQR = 0.25  # single calls jitter more than 0.1 s regions, so latency gets a looser bar

clock: Callable[[], float] = time.perf_counter  # every timing reads this; tests swap in a fake clock


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn`` takes, with the device synchronised before and after."""
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


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
    noisy: bool  # the repeats disagree by more than rel_iqr allows, or fewer than 3 of them
    rel_iqr: float  # IQR / median of samples_per_s
    warmup_s: float  # untimed warm-up, the caller's first pass included


@dataclass
class Latency:
    """Single-stream latency: one test sample classified alone per call."""

    latency_p50_ms: float
    latency_p90_ms: float
    latency_iqr_ms: float
    repeats: int  # timed calls
    bare_latency_p50_ms: float  # the bare module on the same rows (NFE of each call), chunked the same way
    efficiency: float  # bare_latency_p50_ms / latency_p50_ms
    noisy: bool  # fewer than min_count calls, or IQR / p50 > LATENCY_NOISY_REL_IQR
    samples_per_s: float  # 1 / p50: one sample per call


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


def timed_region(run: Callable[[], object], device: torch.device, estimate_s: float, min_s: float) -> tuple[int, float]:
    """Calls of ``run`` in one timed region lasting at least ``min_s`` (4 tries), and its seconds.

    ``estimate_s`` (one call's time, perhaps a cold overestimate) sets the first guess;
    a region that comes out short is scaled up and timed again.
    """
    calls = max(1, math.ceil(min_s / max(estimate_s, 1e-6)))
    for attempt in range(4):
        region_s = timed(lambda n=calls: [run() for _ in range(n)], device)
        if region_s >= min_s or attempt == 3:
            break
        calls = max(calls + 1, math.ceil(calls * 1.2 * min_s / max(region_s, 1e-6)))
    return calls, region_s


def calibrate(run_pass: Callable[[], object], device: torch.device, first_pass_s: float) -> int:
    """Passes per timed region so that a warm region lasts at least MIN_REGION_S.

    The first pass is cold (allocations, lazy init) and can be several times slower than
    a warm one, so the estimate from it is checked on warm regions and scaled up.
    """
    return timed_region(run_pass, device, first_pass_s, MIN_REGION_S)[0]


def warm_up(run_pass: Callable[[], object], device: torch.device, first_pass_s: float) -> tuple[float, float]:
    """Untimed passes until WARMUP_S has gone by, counting the caller's first pass.

    Returns the whole warm-up's seconds and an estimate of one pass (the warm passes' mean,
    or the first pass when it alone was warm-up enough).
    """
    warm = []
    while first_pass_s + sum(warm) < WARMUP_S:
        warm.append(timed(run_pass, device))
    return first_pass_s + sum(warm), statistics.mean(warm) if warm else first_pass_s


def measure(
    run_pass: Callable[[], object],
    model: ConditionalModel,
    n_samples: int,
    generator: torch.Generator,
    *,
    first_pass_s: float,
    min_repeats: int = 3,
    max_time_s: float = 10.0,
    rel_iqr: float = 0.05,
    max_repeats: int = 50,
) -> Throughput:
    """Time ``run_pass`` (one classification of ``n_samples``) and the bare forward, interleaved.

    After a warm-up of WARMUP_S (``first_pass_s`` is the caller's already-run pass) each
    region repeats the pass enough times to last MIN_REGION_S. Repeats of (estimator region,
    bare region on the same rows) go on until at least ``min_repeats`` agree within
    ``rel_iqr`` (IQR / median of samples/s), ``max_time_s`` has been spent repeating (at
    least one repeat, even below ``min_repeats``) or ``max_repeats``. NFE is read from the
    model's counter over the timed regions.
    """
    device = model.device
    warmup_s, pass_s = warm_up(run_pass, device, first_pass_s)
    inner = calibrate(run_pass, device, pass_s)
    est_rates, eval_rates, bare_rates, efficiencies = [], [], [], []
    bare: BareForward | None = None
    started = clock()
    while True:
        model.reset_nfe()
        est_s = max(timed(lambda: [run_pass() for _ in range(inner)], device), 1e-9)
        nfe = model.reset_nfe()
        if bare is None or bare.rows != max(1, nfe // inner):
            bare = BareForward(model, max(1, nfe // inner), generator)
            bare()  # warm the reference too
        bare_s = max(timed(lambda ref=bare: [ref() for _ in range(inner)], device), 1e-9)
        evals_rate = nfe / est_s
        bare_rate = bare.rows * inner / bare_s
        est_rates.append(n_samples * inner / est_s)
        eval_rates.append(evals_rate)
        bare_rates.append(bare_rate)
        efficiencies.append(evals_rate / bare_rate)
        samples, samples_iqr = median_iqr(est_rates)
        spread = samples_iqr / samples if samples > 0 else math.inf
        repeats = len(est_rates)
        agreed = repeats >= min_repeats and spread <= rel_iqr
        if agreed or repeats >= max_repeats or clock() - started >= max_time_s:
            break
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
        noisy=spread > rel_iqr or repeats < 3,
        rel_iqr=spread,
        warmup_s=warmup_s,
    )


def measure_latency(
    run_one: Callable[[int], object],
    model: ConditionalModel,
    generator: torch.Generator,
    *,
    max_time_s: float = 2.0,
    min_count: int = 10,
    max_count: int = 200,
    bare_as: Callable[[BareForward], Callable[[], object]] | None = None,
) -> Latency:
    """Single-stream latency (MLPerf): ``run_one(i)`` classifies the i-th test sample alone.

    One untimed warm-up call, then timed calls i = 0, 1, ..., each followed by the bare
    module timed on that call's NFE rows. Stops after ``max_count`` calls, or once
    ``max_time_s`` has gone by and ``min_count`` calls are done (always at least one).
    ``bare_as`` wraps each bare reference to run the way the calls run (a CUDA graph:
    ``cuda_graphs.bare_runner``).
    """
    device = model.device
    bares: dict[int, Callable[[], object]] = {}

    def bare_for(rows: int) -> Callable[[], object]:
        if rows not in bares:
            bare = BareForward(model, rows, generator)
            bares[rows] = bare if bare_as is None else bare_as(bare)
            bares[rows]()  # warm
        return bares[rows]

    model.reset_nfe()
    run_one(0)
    if warm_rows := model.reset_nfe():
        bare_for(warm_rows)
    call_s, bare_s = [], []
    started = clock()
    while True:
        i = len(call_s)
        model.reset_nfe()
        call_s.append(timed(lambda i=i: run_one(i), device))
        rows = model.reset_nfe()
        bare_s.append(timed(bare_for(rows), device) if rows else 0.0)
        count = len(call_s)
        if count >= max_count or (count >= min_count and clock() - started >= max_time_s):
            break
    p50, iqr = median_iqr(call_s)
    p90 = statistics.quantiles(call_s, n=10, method="inclusive")[8] if count > 1 else call_s[0]
    bare_p50 = statistics.median(bare_s)
    return Latency(
        latency_p50_ms=p50 * 1e3,
        latency_p90_ms=p90 * 1e3,
        latency_iqr_ms=iqr * 1e3,
        repeats=count,
        bare_latency_p50_ms=bare_p50 * 1e3,
        efficiency=bare_p50 / p50 if p50 > 0 else math.nan,
        noisy=count < min_count or (iqr / p50 if p50 > 0 else math.inf) > LATENCY_NOISY_REL_IQR,
        samples_per_s=1.0 / p50 if p50 > 0 else math.inf,
    )
