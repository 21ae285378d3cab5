"""Timing an estimator against the bare module's forward passes, interleaved, on one device.

Also single-sample latency: one test sample classified alone per call.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffbench.model import ConditionalModel

MIN_REGION_S = 0.005  # each timed region (one side of a repeat) lasts at least this long
TIMED_PASS_S = 0.012  # a longer pass is timed on a subset of about this much work (see timed_samples)
WARMUP_S = 0.05  # untimed passes (the caller's first one included) before anything is timed
CONFIDENCE = 0.9  # of the distribution-free interval around each reported median
SETTLED_RATE = 0.1  # timing stops once the median samples/s (latency) is known to within this share of itself
SETTLED_EFFICIENCY = 0.03  # ... and the median efficiency to within this (absolute)
EFFICIENCY_CEILING = 1.02  # an estimator cannot outrun the network it calls: above this, keep timing, then flag
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


def median_iqr(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[2] - q[0]


@functools.lru_cache(maxsize=512)
def _median_ranks(n: int, confidence: float) -> int:
    """The largest k with P(x_(k) <= median <= x_(n+1-k)) >= confidence for n i.i.d. draws (1 if none)."""
    k, below = 1, 0.0  # below = P(Binomial(n, 1/2) <= k - 1)
    while k < (n + 1) // 2:
        below += math.comb(n, k - 1) / 2**n
        if 1 - 2 * (below + math.comb(n, k) / 2**n) < confidence:
            break
        k += 1
    return k


def median_ci(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free interval around the median: order statistics x_(k) and x_(n+1-k).

    k is the largest rank whose interval covers the true median with at least ``confidence``
    (a binomial count of draws below it); unlike the IQR, the interval narrows as repeats are
    added, so a stopping rule on it ends on a busy machine too. Fewer than 5 values cannot
    reach 90%: their interval is the whole range.
    """
    ordered = sorted(values)
    k = _median_ranks(len(ordered), confidence)
    return ordered[k - 1], ordered[len(ordered) - k]


def half_width(values: list[float], scale: float | None = None) -> float:
    """Half the width of ``median_ci(values)``, relative to ``scale`` (default: the median itself)."""
    low, high = median_ci(values)
    scale = statistics.median(values) if scale is None else scale
    return (high - low) / 2 / scale if scale > 0 else math.inf


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
    noisy: bool  # the intervals never narrowed to SETTLED (or efficiency stayed above EFFICIENCY_CEILING)
    rel_iqr: float  # IQR / median of samples_per_s
    warmup_s: float  # untimed warm-up, the caller's first pass included
    timing_note: str  # why the cell is noisy, empty when it is not


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
    noisy: bool  # the intervals never narrowed to SETTLED within the time cap, or fewer than MIN_LATENCY_CALLS
    samples_per_s: float  # 1 / p50: one sample per call
    timing_note: str


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


def unsettled(values: list[float], efficiencies: list[float], minimum: int, unit: str, metric: str) -> str:
    """Why ``values`` (rates or latencies) and their efficiencies have not settled yet ("" once they have).

    Settled: at least ``minimum`` of them, the CONFIDENCE interval of their median within SETTLED_RATE
    of it, and that of the median efficiency within SETTLED_EFFICIENCY.
    """
    if len(values) < minimum:
        return f"only {len(values)} {unit}(s)"
    spread = half_width(values)
    if spread > SETTLED_RATE:
        return f"{metric} median known to +-{spread:.0%} ({CONFIDENCE:.0%} interval)"
    eff_spread = half_width(efficiencies, scale=1.0)
    if eff_spread > SETTLED_EFFICIENCY:
        return f"efficiency median known to +-{eff_spread:.3f} ({CONFIDENCE:.0%} interval)"
    return ""


def settling(rates: list[float], efficiencies: list[float], min_repeats: int) -> str:
    """Why the offline repeats so far have not settled yet ("" once they have): ``unsettled``, or above the ceiling."""
    note = unsettled(rates, efficiencies, max(min_repeats, MIN_SETTLED_REPEATS), "repeat", "samples/s")
    efficiency = statistics.median(efficiencies)
    if note or efficiency <= EFFICIENCY_CEILING:
        return note
    return (
        f"efficiency {efficiency:.3f} above {EFFICIENCY_CEILING}: the bare network ran slower than inside "
        "the estimator (a machine that changed speed between regions)"
    )


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
    more, shorter repeats pin the medians down faster. Repeats go on until, after at least
    ``min_repeats`` (and MIN_SETTLED_REPEATS), the CONFIDENCE intervals of the median
    samples/s (within SETTLED_RATE of it) and of the median efficiency (SETTLED_EFFICIENCY)
    have narrowed and efficiency is not above EFFICIENCY_CEILING; or until ``max_time_s`` has
    been spent repeating (at least one repeat) or ``max_repeats``. A cell that stops unsettled
    is ``noisy``, with the reason in ``timing_note``. NFE is read from the model's counter
    over the timed regions.
    """
    device = model.device
    warmup_s, pass_s = warm_up(run_pass, device, first_pass_s)
    inner = calibrate(run_pass, device, pass_s)
    est_rates, eval_rates, bare_rates, efficiencies = [], [], [], []
    bare: BareForward | None = None

    def estimator_region() -> tuple[float, int]:
        model.reset_nfe()
        seconds = max(timed(lambda: [run_pass() for _ in range(inner)], device), 1e-9)
        return seconds, model.reset_nfe()

    def bare_region() -> float:
        return max(timed(lambda ref=bare: [ref() for _ in range(inner)], device), 1e-9)

    started = clock()
    while True:
        if bare is not None and len(est_rates) % 2:  # odd repeats: the bare network first
            bare_s = bare_region()
            est_s, nfe = estimator_region()
        else:
            est_s, nfe = estimator_region()
            if bare is None or bare.rows != max(1, nfe // inner):
                bare = BareForward(model, max(1, nfe // inner), generator)
                [bare() for _ in range(inner)]  # warm the reference as long as one region
            bare_s = bare_region()
        evals_rate = nfe / est_s
        bare_rate = bare.rows * inner / bare_s
        est_rates.append(n_samples * inner / est_s)
        eval_rates.append(evals_rate)
        bare_rates.append(bare_rate)
        efficiencies.append(evals_rate / bare_rate)
        note = settling(est_rates, efficiencies, min_repeats)
        if not note or len(est_rates) >= max_repeats or clock() - started >= max_time_s:
            break
    samples, samples_iqr = median_iqr(est_rates)
    eff, eff_iqr = median_iqr(efficiencies)
    samples_low, samples_high = median_ci(est_rates)
    eff_low, eff_high = median_ci(efficiencies)
    return Throughput(
        samples_per_s=samples,
        samples_per_s_iqr=samples_iqr,
        samples_per_s_ci_low=samples_low,
        samples_per_s_ci_high=samples_high,
        evals_per_s=statistics.median(eval_rates),
        bare_rows_per_s=statistics.median(bare_rates),
        efficiency=eff,
        efficiency_iqr=eff_iqr,
        efficiency_ci_low=eff_low,
        efficiency_ci_high=eff_high,
        inner_passes=inner,
        repeats=len(est_rates),
        noisy=bool(note),
        rel_iqr=samples_iqr / samples if samples > 0 else math.inf,
        warmup_s=warmup_s,
        timing_note=note,
    )


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
    module timed on that call's NFE rows. Stops once ``min_count`` calls are done and the
    CONFIDENCE intervals of the median latency (relative) and of the median per-call efficiency
    are within SETTLED_RATE and SETTLED_EFFICIENCY; or after ``max_count`` calls, or once ``max_time_s`` has gone by and
    ``min_count`` calls are done (always at least one). Unsettled is ``noisy``. ``bare_as``
    wraps each bare reference to run the way the calls run (a CUDA graph: ``cuda_graphs.bare_runner``).
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
        note = unsettled(call_s, ratios, max(min_count, 1), "call", "latency")
        if count >= max_count or (count >= min_count and (not note or clock() - started >= max_time_s)):
            break
    p50, iqr = median_iqr(call_s)
    p90 = statistics.quantiles(call_s, n=10, method="inclusive")[8] if count > 1 else call_s[0]
    low, high = median_ci(call_s)
    eff_low, eff_high = median_ci(ratios)
    return Latency(
        latency_p50_ms=p50 * 1e3,
        latency_p90_ms=p90 * 1e3,
        latency_iqr_ms=iqr * 1e3,
        latency_ci_low_ms=low * 1e3,
        latency_ci_high_ms=high * 1e3,
        repeats=count,
        bare_latency_p50_ms=statistics.median(bare_s) * 1e3,
        efficiency=statistics.median(ratios),
        efficiency_ci_low=eff_low,
        efficiency_ci_high=eff_high,
        noisy=bool(note),
        samples_per_s=1.0 / p50,
        timing_note=note,
    )
