"""Paired statistics: two classifiers on the same test points, compared point by point.

Two estimators (or two runs) that classified the same test points disagree only on some of
them. Counting those discordant points is far more sensitive than comparing two accuracies as
if they came from independent test sets:

- McNemar's exact test: under "same accuracy", each discordant point is equally likely to
  favour either side, so the count won by B is Binomial(discordant, 1/2); two-sided p-value.
- A paired bootstrap CI of the accuracy difference: resample test points (keeping each point's
  pair of outcomes together). The per-point difference takes only the values -1, 0, +1, so a
  resample is a multinomial draw of those three counts: exact, and O(resamples).

Per-sample predictions (columns ``cell_id, sample, label, pred, test_digest``) are written by the
runner for the seeded classification pass and read back with ``RunFolder.read_predictions``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binom

from diffbench.rundir import RunFolder

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
PAIRED_TEST = "paired (McNemar exact)"
UNPAIRED_TEST = "unpaired (two-proportion z)"


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (A right and B wrong, and the reverse)."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(only_a, only_b), discordant, 0.5)))


def bootstrap_difference_ci(
    only_a: int, only_b: int, n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile CI of accuracy(B) - accuracy(A) by the paired bootstrap over the n test points."""
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    p = np.array([only_a, n - only_a - only_b, only_b], dtype=float) / n
    counts = rng.multinomial(n, p, size=resamples)
    diffs = (counts[:, 2] - counts[:, 0]) / n
    low, high = np.quantile(diffs, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)


@dataclass
class PairedResult:
    """B against A on the same n points: discordant counts, the difference with its CI, McNemar's p."""

    n: int
    only_a: int  # points A got right and B wrong
    only_b: int  # points B got right and A wrong
    diff: float  # accuracy(B) - accuracy(A)
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def verdict(self) -> str:
        """better / worse when McNemar rejects "same accuracy" at 95%, else same."""
        if self.p_value >= ALPHA:
            return "same"
        return "better" if self.only_b > self.only_a else "worse"


def paired_test(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedResult:
    """Compare two 0/1 correctness vectors over the same test points."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired test needs the same points: {correct_a.shape} and {correct_b.shape} outcomes")
    n = correct_a.size
    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((correct_b & ~correct_a).sum())
    low, high = bootstrap_difference_ci(only_a, only_b, n)
    diff = (only_b - only_a) / n if n else math.nan
    return PairedResult(n, only_a, only_b, diff, low, high, mcnemar_exact(only_a, only_b))


def correctness(predictions: pd.DataFrame) -> dict[str, tuple[str, np.ndarray]]:
    """cell_id -> (test digest, 0/1 correctness in sample order)."""
    out = {}
    for cell, part in predictions.groupby("cell_id", sort=False):
        part = part.sort_values("sample")
        out[cell] = (str(part["test_digest"].iloc[0]), (part["pred"] == part["label"]).to_numpy())
    return out


def same_points(a: tuple[str, np.ndarray] | None, b: tuple[str, np.ndarray] | None) -> bool:
    return a is not None and b is not None and a[0] == b[0] and a[1].shape == b[1].shape


def with_paired_accuracy(
    table: pd.DataFrame, cells_a: pd.Series, cells_b: pd.Series, preds_a: pd.DataFrame, preds_b: pd.DataFrame
) -> pd.DataFrame:
    """A comparison table whose accuracy verdicts come from the paired test where both cells classified the same points.

    ``cells_a``/``cells_b`` give each row's cell_id in run A and B. Adds ``accuracy_test`` (which test
    decided the row), ``accuracy_p`` (McNemar's p, paired rows) and ``accuracy_diff_ci_low/high``
    (paired bootstrap); other rows keep the unpaired z-test verdict.
    """
    table = table.copy()
    outcome_a, outcome_b = correctness(preds_a), correctness(preds_b)
    tests, p_values, lows, highs, verdicts = [], [], [], [], []
    for (_, row), cell_a, cell_b in zip(table.iterrows(), cells_a, cells_b, strict=True):
        a, b = outcome_a.get(cell_a), outcome_b.get(cell_b)
        if same_points(a, b):
            result = paired_test(a[1], b[1])
            tests.append(PAIRED_TEST)
            p_values.append(result.p_value)
            lows.append(result.ci_low)
            highs.append(result.ci_high)
            verdicts.append(result.verdict)
        else:
            tests.append(UNPAIRED_TEST)
            p_values.append(math.nan)
            lows.append(math.nan)
            highs.append(math.nan)
            verdicts.append(row["accuracy_verdict"])
    table["accuracy_verdict"] = verdicts
    table["accuracy_test"] = tests
    table["accuracy_p"] = p_values
    table["accuracy_diff_ci_low"] = lows
    table["accuracy_diff_ci_high"] = highs
    return table


def tests_used(table: pd.DataFrame, preds_a: pd.DataFrame, preds_b: pd.DataFrame) -> str:
    """One line saying which accuracy test decided how many cells, and why the unpaired one where used."""
    counts = table["accuracy_test"].value_counts()
    paired, unpaired = int(counts.get(PAIRED_TEST, 0)), int(counts.get(UNPAIRED_TEST, 0))
    parts = []
    if paired:
        parts.append(f"{PAIRED_TEST} test on the same test points for {paired} cell(s)")
    if unpaired:
        missing = [name for name, preds in (("A", preds_a), ("B", preds_b)) if preds.empty]
        why = (
            f"run{'s' if len(missing) > 1 else ''} {' and '.join(missing)} stored no per-sample predictions"
            if missing
            else "the runs did not classify the same test points"
        )
        parts.append(f"{UNPAIRED_TEST} test for {unpaired} cell(s) ({why})")
    return "accuracy verdicts: " + "; ".join(parts)


def compare_folders(run_a: Path, run_b: Path, absolute: bool = False):
    """``compare_runs`` of two run folders, with paired accuracy verdicts where both hold the same points' predictions.

    Returns the ``Comparison`` (its table gains the columns of ``with_paired_accuracy``) and the
    line saying which test was used.
    """
    from diffbench.compare import aligned, compare_runs

    folder_a, folder_b = RunFolder(run_a), RunFolder(run_b)
    frame_a, frame_b = folder_a.read_table(), folder_b.read_table()
    comparison = compare_runs(frame_a, frame_b, absolute)
    preds_a, preds_b = folder_a.read_predictions(), folder_b.read_predictions()
    key, a, b = aligned(frame_a, frame_b)
    table = comparison.table
    ids = table[key].merge(a[key + ["cell_id"]] if "cell_id" in a else a[key].assign(cell_id=""), on=key, how="left")
    ids = ids.merge(b[key + ["cell_id"]] if "cell_id" in b else b[key].assign(cell_id=""), on=key, how="left")
    comparison.table = with_paired_accuracy(table, ids["cell_id_x"], ids["cell_id_y"], preds_a, preds_b)
    return comparison, tests_used(comparison.table, preds_a, preds_b)
