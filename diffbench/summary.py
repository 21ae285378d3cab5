"""Repeated measurements summarised: median, IQR and an interval of the median; settled or not, and why.

Every figure diffbench reports as a median over repeats is a ``Summary``: the offline timed repeats
(samples/s and efficiency, ``timing.measure``), the single-sample calls (latency and efficiency,
``timing.measure_latency``) and the NFE per sample over the quality passes. The stopping rule of the
timing loops asks it whether the repeats so far have settled (``settle``), and ``compare`` judges two
runs' medians against the noise band their IQRs make (``noise_band``, ``within_noise``).

The interval of the median is distribution-free: the order statistics x_(k) and x_(n+1-k), with k
the largest rank whose interval covers the true median with at least CONFIDENCE (a binomial count of
draws below it). Unlike the IQR, it narrows as repeats are added, so a stopping rule on it ends on a
busy machine too. Fewer than 5 values cannot reach 90%: their interval is the whole range.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

CONFIDENCE = 0.9  # of the distribution-free interval around each reported median
SETTLED_RATE = 0.1  # timing stops once the median samples/s (latency) is known to within this share of itself
SETTLED_EFFICIENCY = 0.03  # ... and the median efficiency to within this (absolute)
EFFICIENCY_CEILING = 1.02  # an estimator cannot outrun the network it calls: above this, keep timing, then flag

Number = TypeVar("Number")  # a float, or a pandas Series of them (compare's columns)


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


@dataclass(frozen=True)
class Summary:
    """The median of some repeated measurements, their quartiles and the CONFIDENCE interval of the median.

    ``unsettled`` says why a stopping rule would go on measuring (see ``settle``); it is empty once
    the repeats have settled, and for a summary no rule was asked about.
    """

    count: int
    median: float
    q25: float
    q75: float
    ci_low: float  # order statistic x_(k) (see the module docstring)
    ci_high: float  # x_(n+1-k)
    unsettled: str = ""

    @classmethod
    def of(cls, values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
        """The summary of ``values`` (at least one); one value is its own median, quartiles and interval."""
        ordered = sorted(values)
        n = len(ordered)
        if n == 0:
            raise ValueError("a summary needs at least one value")
        q25, _, q75 = statistics.quantiles(ordered, n=4, method="inclusive") if n > 1 else ordered * 3
        k = _median_ranks(n, confidence)
        return cls(n, statistics.median(ordered), q25, q75, ordered[k - 1], ordered[n - k])

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25

    @property
    def rel_iqr(self) -> float:
        """IQR / median (infinite when the median is not positive)."""
        return self.iqr / self.median if self.median > 0 else math.inf

    @property
    def settled(self) -> bool:
        return not self.unsettled

    def half_width(self, scale: float | None = None) -> float:
        """Half the width of the interval of the median, relative to ``scale`` (default: the median itself)."""
        scale = self.median if scale is None else scale
        return (self.ci_high - self.ci_low) / 2 / scale if scale > 0 else math.inf


def median_iqr(values: Sequence[float]) -> tuple[float, float]:
    """The median of ``values`` and their IQR (0 for one value), for callers that need no more of ``Summary``."""
    summary = Summary.of(values)
    return summary.median, summary.iqr


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The distribution-free ``confidence`` interval of the median of ``values`` (see the module docstring)."""
    summary = Summary.of(values, confidence)
    return summary.ci_low, summary.ci_high


def ninetieth_percentile(values: Sequence[float]) -> float:
    """The 90th percentile of ``values`` (inclusive method; the value itself when there is one)."""
    return statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 else values[0]


def why_unsettled(values: Summary, efficiencies: Summary, minimum: int, unit: str, metric: str) -> str:
    """Why timed ``values`` (rates or latencies) and their efficiencies have not settled yet ("" once they have).

    Settled: at least ``minimum`` of them (counted in ``unit``s), the CONFIDENCE interval of their median
    within SETTLED_RATE of it, and that of the median efficiency within SETTLED_EFFICIENCY.
    """
    if values.count < minimum:
        return f"only {values.count} {unit}(s)"
    spread = values.half_width()
    if spread > SETTLED_RATE:
        return f"{metric} median known to +-{spread:.0%} ({CONFIDENCE:.0%} interval)"
    eff_spread = efficiencies.half_width(scale=1.0)
    if eff_spread > SETTLED_EFFICIENCY:
        return f"efficiency median known to +-{eff_spread:.3f} ({CONFIDENCE:.0%} interval)"
    return ""


def settle(
    values: Sequence[float],
    efficiencies: Sequence[float],
    *,
    minimum: int,
    unit: str,
    metric: str,
    ceiling: float | None = None,
) -> tuple[Summary, Summary]:
    """``values`` and their efficiencies summarised, both saying why they have not settled yet (see ``why_unsettled``).

    With a ``ceiling``, a median efficiency above it is unsettled too, once all else has settled: an
    estimator cannot outrun the network it calls, so the machine changed speed between the regions.
    The two settle together, so both summaries carry the same reason.
    """
    rate, efficiency = Summary.of(values), Summary.of(efficiencies)
    why = why_unsettled(rate, efficiency, minimum, unit, metric)
    if not why and ceiling is not None and efficiency.median > ceiling:
        why = (
            f"efficiency {efficiency.median:.3f} above {ceiling}: the bare network ran slower than inside "
            "the estimator (a machine that changed speed between regions)"
        )
    return replace(rate, unsettled=why), replace(efficiency, unsettled=why)


def noise_band(iqr_a: Number, iqr_b: Number, scale_b: Number | float = 1.0) -> Number:
    """How far two runs' medians may lie apart and still be the same: both IQRs added, B's times ``scale_b``.

    ``scale_b`` puts B's figure at A's scale (``compare``: at A's machine speed). One repeat has an
    IQR of 0, so then every difference lies beyond noise.
    """
    return iqr_a + iqr_b * scale_b


def within_noise(a: Number, b: Number, band: Number) -> Number:
    """Whether ``b`` lies within ``band`` of ``a`` (elementwise for Series)."""
    return abs(b - a) <= band
