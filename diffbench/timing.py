"""Clocks and timing loops: an estimator against the bare module's forward passes, interleaved, on one device.

Also single-sample latency: one test sample classified alone per call. What the timed values
come to (medians, IQRs, intervals of the median, and when the repeats have settled) is
``diffbench.summary``'s.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffbench.model import ConditionalModel
from diffbench.summary import EFFICIENCY_CEILING, Summary, ninetieth_percentile, settle

MIN_REGION_S = 0.005  # each timed region (one side of a repeat) lasts at least this long
TIMED_PASS_S = 0.012  # a longer pass is timed on a subset of about this much work (see timed_samples)
WARMUP_S = 0.05  # untimed passes (the caller's first one included) before anything is timed
MIN_LATENCY_CALLS = 20  # single-sample calls before the interval of their median is trusted
MIN_SETTLED_REPEATS = 10  # repeats before the intervals may settle (5 is the fewest whose range reaches 90%)

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


@dataclass
class Throughput:
    samples_per_s: float
    samples_per_s_iqr: float
    samples_per_s_ci_low: float  # CONFIDENCE interval of the median over repeats (order statistics)
    samples_per_s_ci_high: float
    evals_per_s: float
    bare_rows_per_s: float
    efficiency: float  # median over repeats of (estimator evals/s) / (bare rows/s) in the same repeat
    efficiency_iqr: float
    efficiency_ci_low: float
    efficiency_ci_high: float
    inner_passes: int
    repeats: int
    noisy: bool  # the repeats never settled (summary.settle), or efficiency stayed above EFFICIENCY_CEILING
    rel_iqr: float  # IQR / median of samples_per_s
    warmup_s: float  # untimed warm-up, the caller's first pass included
    timing_note: str  # why the cell is noisy, empty when it is not

    @classmethod
    def of(
        cls,
        rates: Summary,
        efficiency: Summary,
        evals_per_s: float,
        bare_rows_per_s: float,
        inner: int,
        warmup_s: float,
    ) -> Throughput:
        """The table's offline timing columns from the summaries of samples/s and efficiency over the repeats."""
        return cls(
            samples_per_s=rates.median,
            samples_per_s_iqr=rates.iqr,
            samples_per_s_ci_low=rates.ci_low,
            samples_per_s_ci_high=rates.ci_high,
            evals_per_s=evals_per_s,
            bare_rows_per_s=bare_rows_per_s,
            efficiency=efficiency.median,
            efficiency_iqr=efficiency.iqr,
            efficiency_ci_low=efficiency.ci_low,
            efficiency_ci_high=efficiency.ci_high,
            inner_passes=inner,
            repeats=rates.count,
            noisy=not rates.settled,
            rel_iqr=rates.rel_iqr,
            warmup_s=warmup_s,
            timing_note=rates.unsettled,
        )


@dataclass
class Latency:
    """Single-stream latency: one test sample classified alone per call."""

    latency_p50_ms: float
    latency_p90_ms: float
    latency_iqr_ms: float
    latency_ci_low_ms: float  # CONFIDENCE interval of p50
    latency_ci_high_ms: float
    repeats: int  # timed calls
    bare_latency_p50_ms: float  # the bare module on the same rows (NFE of each call), chunked the same way
    efficiency: float  # median over calls of (bare call's time) / (the estimator call's time just before it)
    efficiency_ci_low: float
    efficiency_ci_high: float
    noisy: bool  # the calls never settled (summary.settle) within the time cap, or fewer than MIN_LATENCY_CALLS
    samples_per_s: float  # 1 / p50: one sample per call
    timing_note: str

    @classmethod
    def of(cls, call_s: list[float], calls: Summary, efficiency: Summary, bare_s: list[float]) -> Latency:
        """The table's single-sample columns from the calls' seconds, their summaries, and the bare calls' seconds."""
        return cls(
            latency_p50_ms=calls.median * 1e3,
            latency_p90_ms=ninetieth_percentile(call_s) * 1e3,
            latency_iqr_ms=calls.iqr * 1e3,
            latency_ci_low_ms=calls.ci_low * 1e3,
            latency_ci_high_ms=calls.ci_high * 1e3,
            repeats=calls.count,
            bare_latency_p50_ms=Summary.of(bare_s).median * 1e3,
            efficiency=efficiency.median,
            efficiency_ci_low=efficiency.ci_low,
            efficiency_ci_high=efficiency.ci_high,
            noisy=not calls.settled,
            samples_per_s=1.0 / calls.median,
            timing_note=calls.unsettled,
        )


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


def timed_samples(n: int, pass_s: float, rows_per_sample: float, max_batch: int) -> int:
    """How many of ``n`` test samples a timed pass covers: all, unless one pass outlasts TIMED_PASS_S.

    Throughput needs many short timed regions, not passes over the whole test set: a longer
    pass is cut to an evenly spaced subset of about TIMED_PASS_S of work (``pass_s`` is one pass
    over all ``n``), enough that a pass's fixed costs (drawing noise, building indices: about 15
    small operations) stay at 1-2% of it (they read 1-2 points of efficiency lower than at 25 ms,
    for half the timing cost), and never below two full ``max_batch`` chunks of rows, so the
    network sees the chunk size it sees on the whole set.
    """
    if pass_s <= TIMED_PASS_S or n <= 1:
        return n
    wanted = math.ceil(n * TIMED_PASS_S / pass_s)
    chunks = math.ceil(2 * max_batch / max(rows_per_sample, 1e-9))
    return min(n, max(wanted, chunks))


def evenly_spaced(n: int, m: int) -> torch.Tensor:
    """``m`` indices spread evenly over ``range(n)`` (all of them when m >= n): a subset that keeps the mix."""
    if m >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, m).round().long()


class InterleavedRegions:
    """The timed regions of ``measure``: ``inner`` estimator passes, and the bare module on the same rows.

    The bare reference is (re)built on the rows per pass the estimator last evaluated, and warmed
    as long as one region before it is first timed.
    """

    def __init__(
        self, run_pass: Callable[[], object], model: ConditionalModel, inner: int, generator: torch.Generator
    ) -> None:
        self.run_pass, self.model, self.inner, self.generator = run_pass, model, inner, generator
        self.bare: BareForward | None = None

    def estimator_region(self) -> tuple[float, int]:
        """Seconds of one estimator region and the NFE it spent."""
        self.model.reset_nfe()
        seconds = max(timed(lambda: [self.run_pass() for _ in range(self.inner)], self.model.device), 1e-9)
        return seconds, self.model.reset_nfe()

    def bare_region(self) -> float:
        return max(timed(lambda ref=self.bare: [ref() for _ in range(self.inner)], self.model.device), 1e-9)

    def repeat(self, bare_first: bool) -> tuple[float, int, float, int]:
        """One repeat: the estimator's seconds and NFE, the bare region's seconds and rows per pass.

        ``bare_first`` times the bare region first, once there is a warm one to time.
        """
        if self.bare is not None and bare_first:
            bare_s = self.bare_region()
            est_s, nfe = self.estimator_region()
        else:
            est_s, nfe = self.estimator_region()
            rows = max(1, nfe // self.inner)
            if self.bare is None or self.bare.rows != rows:
                self.bare = BareForward(self.model, rows, self.generator)
                [self.bare() for _ in range(self.inner)]  # warm the reference as long as one region
            bare_s = self.bare_region()
        return est_s, nfe, bare_s, self.bare.rows


def measure(
    run_pass: Callable[[], object],
    model: ConditionalModel,
    n_samples: int,
    generator: torch.Generator,
    *,
    first_pass_s: float,
    min_repeats: int = 5,
    max_time_s: float = 10.0,
    max_repeats: int = 1000,
) -> Throughput:
    """Time ``run_pass`` (one classification of ``n_samples``) and the bare forward, interleaved.

    After a warm-up of WARMUP_S (``first_pass_s`` is the caller's already-run pass) each
    region repeats the pass enough times to last MIN_REGION_S. A repeat is an estimator region
    and a bare region on the same rows, side by side, in alternating order (so a machine that
    speeds up or slows down during a repeat favours neither). Short regions and many repeats:
    on a shared machine the noise between adjacent regions hardly shrinks with their length, so
    more, shorter repeats pin the medians down faster. Repeats go on until they have settled
    (``summary.settle``: after at least ``min_repeats`` and MIN_SETTLED_REPEATS, the CONFIDENCE
    intervals of the median samples/s and of the median efficiency have narrowed, and efficiency
    is not above EFFICIENCY_CEILING); or until ``max_time_s`` has been spent repeating (at least
    one repeat) or ``max_repeats``. A cell that stops unsettled is ``noisy``, with the reason in
    ``timing_note``. NFE is read from the model's counter over the timed regions.
    """
    warmup_s, pass_s = warm_up(run_pass, model.device, first_pass_s)
    inner = calibrate(run_pass, model.device, pass_s)
    regions = InterleavedRegions(run_pass, model, inner, generator)
    est_rates, eval_rates, bare_rates, efficiencies = [], [], [], []
    started = clock()
    while True:
        est_s, nfe, bare_s, bare_rows = regions.repeat(bare_first=len(est_rates) % 2 == 1)
        evals_rate = nfe / est_s
        bare_rate = bare_rows * inner / bare_s
        est_rates.append(n_samples * inner / est_s)
        eval_rates.append(evals_rate)
        bare_rates.append(bare_rate)
        efficiencies.append(evals_rate / bare_rate)
        rates, efficiency = settle(
            est_rates,
            efficiencies,
            minimum=max(min_repeats, MIN_SETTLED_REPEATS),
            unit="repeat",
            metric="samples/s",
            ceiling=EFFICIENCY_CEILING,
        )
        if rates.settled or len(est_rates) >= max_repeats or clock() - started >= max_time_s:
            break
    evals_per_s, bare_rows_per_s = Summary.of(eval_rates).median, Summary.of(bare_rates).median
    return Throughput.of(rates, efficiency, evals_per_s, bare_rows_per_s, inner, warmup_s)


def measure_latency(
    run_one: Callable[[int], object],
    model: ConditionalModel,
    generator: torch.Generator,
    *,
    max_time_s: float = 2.0,
    min_count: int = MIN_LATENCY_CALLS,
    max_count: int = 200,
    bare_as: Callable[[BareForward], Callable[[], object]] | None = None,
) -> Latency:
    """Single-stream latency (MLPerf): ``run_one(i)`` classifies the i-th test sample alone.

    One untimed warm-up call, then timed calls i = 0, 1, ..., each followed by the bare
    module timed on that call's NFE rows. Stops once ``min_count`` calls are done and they have
    settled (``summary.settle``: the CONFIDENCE intervals of the median latency (relative) and of
    the median per-call efficiency are within SETTLED_RATE and SETTLED_EFFICIENCY); or after
    ``max_count`` calls, or once ``max_time_s`` has gone by and ``min_count`` calls are done
    (always at least one). Unsettled is ``noisy``. ``bare_as`` wraps each bare reference to run
    the way the calls run (a CUDA graph: ``cuda_graphs.bare_runner``).
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
    call_s, bare_s, ratios = [], [], []
    started = clock()
    while True:
        i = len(call_s)
        model.reset_nfe()
        call_s.append(max(timed(lambda i=i: run_one(i), device), 1e-9))
        rows = model.reset_nfe()
        bare_s.append(timed(bare_for(rows), device) if rows else 0.0)
        ratios.append(bare_s[-1] / call_s[-1])
        count = len(call_s)
        calls, efficiency = settle(call_s, ratios, minimum=max(min_count, 1), unit="call", metric="latency")
        if count >= max_count or (count >= min_count and (calls.settled or clock() - started >= max_time_s)):
            break
    return Latency.of(call_s, calls, efficiency, bare_s)
