"""How a claim's comparisons become a verdict: B against A on the same test points, per budget, then per model.

Each claim compares rows of one model (``dataset_label`` x ``denoiser_label``) that classified the same
test points: B against A at the same trials budget (or NFE), by McNemar's exact paired test and a paired
bootstrap CI where both cells' per-sample predictions are given (``paired``), else by an unpaired
two-proportion z-test with a Wald CI of the difference. A comparison is *better* or *worse* when its
test rejects "same accuracy" at 95%, else *same*. A claim's verdict per model:

- "B beats A" claims (1-4): holds when B is better at some budget and worse at none; does not hold when B
  is worse at some budget and better at none; inconclusive at this size otherwise.
- "B reaches A" claims (5, and 6 "competitive"): holds when B is not worse by more than ``MARGIN``
  (its CI's low end at or above -MARGIN) and, for 5, costs fewer NFE; does not hold when B is worse
  (or, for 5, costs as many NFE or more); inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
from scipy.stats import norm

from diffbench.paired import ALPHA, paired_test, same_points

HOLDS, FAILS, INCONCLUSIVE, MISSING = "holds", "does not hold", "inconclusive at this size", "not measured"
#: Accuracy a "reaches" or "competitive" claim may give up (its CI's low end may not fall below -MARGIN).
MARGIN = 0.02


@dataclass(frozen=True)
class Comparison:
    """B against A on the same test points: accuracy(B) - accuracy(A), its 95% CI, the test and its p-value."""

    what: str
    acc_a: float
    acc_b: float
    n: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str

    @property
    def direction(self) -> str:
        if not self.p_value < ALPHA:
            return "same"
        return "better" if self.diff > 0 else "worse"

    def line(self) -> str:
        return (
            f"| {self.what} | {self.diff:+.3f} ({self.acc_b:.3f} vs {self.acc_a:.3f}, n={self.n}) "
            f"| [{self.ci_low:+.3f}, {self.ci_high:+.3f}] | {self.test} | {self.p_value:.3g} | {self.direction} |"
        )


@dataclass
class Finding:
    """One claim on one model: the comparisons behind it, the verdict and why."""

    model: str
    verdict: str
    why: str
    comparisons: list[Comparison] = field(default_factory=list)


@dataclass
class Claim:
    number: int | str
    statement: str
    paper: str
    findings: list[Finding]
    needs: str  # which rows the claim reads, said when they are missing

    @property
    def verdict(self) -> str:
        measured = {f.verdict for f in self.findings if f.verdict != MISSING}
        if not measured:
            return MISSING
        return measured.pop() if len(measured) == 1 else "mixed (see each model)"


def compare(a: pd.Series, b: pd.Series, outcomes: dict, what: str) -> Comparison:
    """B's row against A's: paired where both cells' predictions of the same points are in ``outcomes``."""
    pa, pb = outcomes.get(a.get("cell_id")), outcomes.get(b.get("cell_id"))
    if same_points(pa, pb):
        r = paired_test(pa[1], pb[1])
        acc_a, acc_b = float(pa[1].mean()), float(pb[1].mean())
        return Comparison(what, acc_a, acc_b, r.n, r.diff, r.ci_low, r.ci_high, r.p_value, "paired McNemar")
    return unpaired(what, float(a["accuracy"]), int(a["n_test"]), float(b["accuracy"]), int(b["n_test"]))


def unpaired(what: str, acc_a: float, n_a: int, acc_b: float, n_b: int) -> Comparison:
    """B against A from accuracies alone: a two-proportion z-test and the Wald CI of the difference."""
    diff = acc_b - acc_a
    half = norm.ppf(1 - ALPHA / 2) * math.sqrt(acc_a * (1 - acc_a) / n_a + acc_b * (1 - acc_b) / n_b)
    pooled = (acc_a * n_a + acc_b * n_b) / (n_a + n_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p = 1.0 if spread == 0 else float(2 * norm.sf(abs(diff) / spread))
    return Comparison(what, acc_a, acc_b, min(n_a, n_b), diff, diff - half, diff + half, p, "unpaired z")


def beats(model: str, comparisons: list[Comparison], winner: str) -> Finding:
    """The verdict of "B beats A" over every budget compared."""
    ways = [c.direction for c in comparisons]
    better, worse = ways.count("better"), ways.count("worse")
    tally = f"{winner} better at {better}, worse at {worse}, no detectable difference at {ways.count('same')}"
    if better and not worse:
        return Finding(model, HOLDS, tally, comparisons)
    if worse and not better:
        return Finding(model, FAILS, tally, comparisons)
    return Finding(model, INCONCLUSIVE, tally, comparisons)


def reaches(model: str, comparisons: list[Comparison], cheaper: Iterable[bool] | None = None) -> Finding:
    """The verdict of "B reaches A" (non-inferior within MARGIN; and cheaper where ``cheaper`` is given)."""
    cheap = list(cheaper) if cheaper is not None else [True] * len(comparisons)
    worse = any(c.direction == "worse" for c in comparisons)
    if worse or not all(cheap):
        why = "significantly worse in a comparison" if worse else "no fewer NFE"
        return Finding(model, FAILS, why, comparisons)
    if all(c.ci_low >= -MARGIN for c in comparisons):
        return Finding(model, HOLDS, f"every difference's CI stays above -{MARGIN}", comparisons)
    return Finding(model, INCONCLUSIVE, f"a CI reaches below -{MARGIN}: too few test points to tell", comparisons)
