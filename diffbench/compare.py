"""Compare two runs cell by cell: accuracy and speed, and whether each change is beyond noise.

Rules (also in the README and ``diffbench compare --help``):

- Cells match on ``dataset_label, denoiser_label, estimator_label, trials, device, seed`` and on
  ``scenario, dtype, compile`` where a run has them. A run that predates one of these columns is taken
  to hold one value of it: the other run's value when that run holds just one, else the value every
  run measured before the column existed (``OLDER_RUNS_MEASURED``). Only cells ``ok`` in both compare.
- Accuracy, where both runs stored per-sample predictions of the same test points (``diffbench compare``,
  through ``paired.compare_folders``): McNemar's exact test on the points one run got right and the
  other wrong, beyond noise when p < 0.05 (two-sided), with a paired bootstrap 95% CI of the
  difference (columns ``accuracy_test``, ``accuracy_p``, ``accuracy_diff_ci_low``/``_high``).
- Accuracy otherwise (runs without predictions, or of different test points; and ``compare_runs`` alone):
  pooled two-proportion z-test on ``accuracy`` and ``n_test``; beyond noise when |z| > 1.96 (95%,
  two-sided). It treats the two test sets as independent samples, which is conservative when both
  runs classified the same points.
- Speed (``samples_per_s``, higher is better; ``latency_p50_ms``/``latency_p90_ms``, lower is better):
  beyond noise when |B - A| exceeds the noise band, both runs' IQRs over timed repeats added
  (``summary.noise_band``: ``samples_per_s_iqr``, ``latency_iqr_ms``; for latency without an IQR
  column, p90 - p50). One repeat has an IQR of 0, so then every difference counts.
- Machine speed: a shared machine's speed drifts by 10-25% between runs minutes apart, and the bare network
  (timed in every cell beside the estimator) drifts with it. Where both runs of a cell ran on the same host and
  device and timed the bare network, B's speed is first put at A's machine speed (multiplied by
  ``bare_A / bare_B``: ``bare_rows_per_s`` for samples/s, ``bare_latency_p50_ms`` for latency), and the verdict
  and the regression gate judge that (``*_ratio_vs_network``); the raw ``B/A`` is shown beside it.
  ``absolute=True`` (``--absolute-speed``) judges the raw figures, e.g. after changing the network or torch.
- Regression at PCT: accuracy worse beyond noise (by whichever test decided the cell) and lower by more
  than PCT percentage points, or a speed metric worse beyond noise and by more than PCT percent
  (samples/s ratio B/A < 1 - PCT/100, latency ratio > 1 + PCT/100).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from diffbench.cell import KEY
from diffbench.summary import noise_band, within_noise

OLDER_RUNS_MEASURED = {"scenario": "offline", "dtype": "float32", "compile": False}  # before these columns were
IDENTITY = [k for k in (*KEY, "scenario") if k not in OLDER_RUNS_MEASURED]  # in every run's table
Z_95 = 1.959963984540054
ALWAYS_SHOWN = ("estimator_label", "trials")  # in every cell name, even where all cells share them
SAME_ACCURACY = "same"
SAME_SPEED = "same (within noise)"
NOT_MEASURED = "n/a"
# speed metric -> the bare network's figure of the same cell, which the machine's speed moves alike
MACHINE_REFERENCE = {
    "samples_per_s": "bare_rows_per_s",
    "latency_p50_ms": "bare_latency_p50_ms",
    "latency_p90_ms": "bare_latency_p50_ms",
}
SAME_MACHINE = ("hostname", "device_name")  # a cell's speed is put at A's machine speed only when these agree
# (column, higher is better, short name for the text table)
SPEED_METRICS = [
    ("samples_per_s", True, "samples/s"),
    ("latency_p50_ms", False, "p50 ms"),
    ("latency_p90_ms", False, "p90 ms"),
]


class CompareError(ValueError):
    """The two runs cannot be compared (no shared cell, or a run with one cell twice)."""


@dataclass
class Comparison:
    """One row per cell finished in both runs, and the cells that could not be compared."""

    table: pd.DataFrame
    key: list[str]
    constant: dict[str, object] = field(default_factory=dict)  # key columns with one value in both runs
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # in both runs but not ok in both


def accuracy_z(acc_a: pd.Series, n_a: pd.Series, acc_b: pd.Series, n_b: pd.Series) -> pd.Series:
    """Pooled two-proportion z statistic of B's accuracy against A's (0 when both are 0 or both 1)."""
    pooled = (acc_a * n_a + acc_b * n_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return ((acc_b - acc_a) / se).where(se != 0, 0.0)


def accuracy_verdict(z: pd.Series) -> pd.Series:
    verdict = np.select([z.isna(), z > Z_95, z < -Z_95], [NOT_MEASURED, "better", "worse"], SAME_ACCURACY)
    return pd.Series(verdict, index=z.index)


def speed_verdict(a: pd.Series, b: pd.Series, spread: pd.Series, higher_is_better: bool) -> pd.Series:
    """faster / slower when |B - A| exceeds ``spread`` (the noise band of both runs' IQRs), else same."""
    improved = b > a if higher_is_better else b < a
    verdict = np.select(
        [a.isna() | b.isna() | spread.isna(), within_noise(a, b, spread), improved],
        [NOT_MEASURED, SAME_SPEED, "faster"],
        "slower",
    )
    return pd.Series(verdict, index=a.index)


def aligned(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """The identity key both runs can be matched on, and copies of the runs ready to merge on it."""
    a, b = a.copy(), b.copy()
    key = list(IDENTITY)
    for column, older in OLDER_RUNS_MEASURED.items():
        if column not in a and column not in b:
            continue
        for frame, other in ((a, b), (b, a)):
            if column not in frame:
                values = other[column].dropna().unique()
                frame[column] = values[0] if len(values) == 1 else older
        key.append(column)
    missing = [c for c in IDENTITY + ["status"] if c not in a or c not in b]
    if missing:
        raise CompareError(f"a results table lacks the column(s) {', '.join(missing)}; is it from `diffbench run`?")
    for column in key:
        if not (pd.api.types.is_numeric_dtype(a[column]) and pd.api.types.is_numeric_dtype(b[column])):
            a[column], b[column] = (f[column].astype(object).where(f[column].notna(), "").astype(str) for f in (a, b))
    for name, frame in (("A", a), ("B", b)):
        if frame.duplicated(key).any():
            raise CompareError(f"run {name} holds some cell more than once (matched on {', '.join(key)})")
    return key, a, b


def cell_names(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Short names such as 'shared-noise 8 trials' from the given key columns."""

    def word(column: str, value: object) -> str:
        return str(value) if column != "trials" else f"{value} trial" + ("" if str(value) == "1" else "s")

    return [" ".join(word(c, v) for c, v in row.items()) for _, row in frame[columns].iterrows()]


def compare_runs(a: pd.DataFrame, b: pd.DataFrame, absolute: bool = False) -> Comparison:
    """Side-by-side accuracy and speed of every cell finished in both runs, with verdicts.

    Accuracy verdicts here are the unpaired z-test's; ``paired.compare_folders`` replaces them with
    McNemar's where both runs stored predictions of the same points. Speed verdicts judge B put at
    A's machine speed where both runs timed the bare network on the same host and device (see the
    module docstring), unless ``absolute``.
    """
    key, a, b = aligned(a, b)
    both = a[key + ["status"]].merge(b[key + ["status"]], on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    varying = [c for c in key if c in ALWAYS_SHOWN or both[c].nunique(dropna=False) > 1]
    constant = {c: both[c].iloc[0] for c in key if c not in varying}
    shared = both["_merge"] == "both"
    ok = shared & (both["status_a"] == "ok") & (both["status_b"] == "ok")
    if not shared.any():
        raise CompareError(f"the runs share no cell (matched on {', '.join(key)})")
    if not ok.any():
        raise CompareError(f"the runs share {int(shared.sum())} cell(s) but none finished ok in both")

    measured = ["n_test", "accuracy", "samples_per_s", "samples_per_s_iqr"]
    measured += [c for c in ("latency_p50_ms", "latency_p90_ms", "latency_iqr_ms") if c in a and c in b]
    measured += [c for c in (*dict.fromkeys(MACHINE_REFERENCE.values()), *SAME_MACHINE) if c in a and c in b]
    cells = a.loc[a["status"] == "ok", key + measured].merge(
        b.loc[b["status"] == "ok", key + measured], on=key, suffixes=("_a", "_b")
    )
    table = cells[key].copy()
    for name in ("accuracy_a", "accuracy_b"):
        table[name] = cells[name]
    table["accuracy_diff"] = cells["accuracy_b"] - cells["accuracy_a"]
    table["accuracy_z"] = accuracy_z(cells["accuracy_a"], cells["n_test_a"], cells["accuracy_b"], cells["n_test_b"])
    table["accuracy_verdict"] = accuracy_verdict(table["accuracy_z"])
    for metric, higher_is_better, _ in SPEED_METRICS:
        if f"{metric}_a" not in cells:
            continue
        value_a, value_b = cells[f"{metric}_a"], cells[f"{metric}_b"]
        factor = pd.Series(np.nan, index=cells.index) if absolute else machine_factor(cells, metric)
        at_a_speed = factor.notna()
        judged_b = value_b.where(~at_a_speed, value_b * factor)
        spread = speed_spread(cells, metric, factor.fillna(1.0))
        table[f"{metric}_a"], table[f"{metric}_b"] = value_a, value_b
        table[f"{metric}_ratio"] = value_b / value_a
        table[f"{metric}_ratio_vs_network"] = (value_b * factor) / value_a
        table[f"{metric}_verdict"] = speed_verdict(value_a, judged_b, spread, higher_is_better)
        table[f"{metric}_noise"] = spread
    return Comparison(
        table=table.reset_index(drop=True),
        key=key,
        constant=constant,
        only_a=cell_names(both[both["_merge"] == "left_only"], varying),
        only_b=cell_names(both[both["_merge"] == "right_only"], varying),
        failed=cell_names(both[shared & ~ok], varying),
    )


def machine_factor(cells: pd.DataFrame, metric: str) -> pd.Series:
    """``bare_A / bare_B`` per cell: what puts B's ``metric`` at A's machine speed; NaN where it cannot.

    NaN where a run lacks the bare network's figure (older runs, failed cells) or the cell ran on
    another host or device in B (then the difference is the machine's, and it is the point).
    """
    reference = MACHINE_REFERENCE[metric]
    if f"{reference}_a" not in cells:
        return pd.Series(np.nan, index=cells.index)
    factor = cells[f"{reference}_a"] / cells[f"{reference}_b"]
    usable = np.isfinite(factor) & (factor > 0)
    for column in SAME_MACHINE:
        if f"{column}_a" in cells:
            usable &= cells[f"{column}_a"].astype(str) == cells[f"{column}_b"].astype(str)
    return factor.where(usable)


def speed_spread(cells: pd.DataFrame, metric: str, factor_b: pd.Series | float = 1.0) -> pd.Series:
    """The noise band of a speed metric (``summary.noise_band``): both runs' IQRs added, B's scaled by ``factor_b``.

    Latency without an IQR column (older runs) takes p90 - p50 for the IQR.
    """
    if metric == "samples_per_s":
        return noise_band(cells["samples_per_s_iqr_a"], cells["samples_per_s_iqr_b"], factor_b)
    if "latency_iqr_ms_a" in cells:
        return noise_band(cells["latency_iqr_ms_a"], cells["latency_iqr_ms_b"], factor_b)
    spread = {run: cells[f"latency_p90_ms_{run}"] - cells[f"latency_p50_ms_{run}"] for run in "ab"}
    return noise_band(spread["a"], spread["b"], factor_b)


def find_regressions(comparison: Comparison, pct: float) -> list[str]:
    """One line per cell that got worse beyond noise by more than ``pct`` (see the module docstring)."""
    table = comparison.table
    varying = [c for c in comparison.key if c not in comparison.constant]
    found = []
    for name, (_, row) in zip(cell_names(table, varying), table.iterrows(), strict=True):
        reasons = []
        drop = round(row["accuracy_a"] - row["accuracy_b"], 9)
        if row["accuracy_verdict"] == "worse" and drop > pct / 100:
            reasons.append(f"accuracy {row['accuracy_a']:.3f} -> {row['accuracy_b']:.3f}")
        for metric, higher_is_better, short in SPEED_METRICS:
            if row.get(f"{metric}_verdict") != "slower":
                continue
            judged = row.get(f"{metric}_ratio_vs_network")
            ratio = round(row[f"{metric}_ratio"] if judged is None or pd.isna(judged) else judged, 9)
            if (ratio < 1 - pct / 100) if higher_is_better else (ratio > 1 + pct / 100):
                reasons.append(f"{short} x{ratio:.2f}")
        if reasons:
            found.append(f"{name} ({', '.join(reasons)})")
    return found


def format_comparison(comparison: Comparison) -> str:
    """The comparison as text: what all cells share, a side-by-side table per scenario, counts, unmatched cells.

    Each table shows the speed metrics measured in its scenario (samples/s offline; latency
    p50 and p90 one sample at a time).
    """
    table = comparison.table
    varying = [c for c in comparison.key if c not in comparison.constant]
    lines = []
    if comparison.constant:
        lines.append("all cells: " + ", ".join(f"{k}={v}" for k, v in comparison.constant.items()))
    by_scenario = "scenario" in varying
    blocks = table.groupby("scenario", sort=False) if by_scenario else [(None, table)]
    for scenario, block in blocks:
        if scenario is not None:
            lines += ["", f"scenario: {scenario}"]
        lines.append(side_by_side(block, [c for c in varying if c != "scenario"]).to_string(index=False))
    counts = [verdict_counts("accuracy", table["accuracy_verdict"])]
    counts += [
        verdict_counts(short, table[f"{metric}_verdict"])
        for metric, _, short in SPEED_METRICS
        if f"{metric}_verdict" in table and (table[f"{metric}_verdict"] != NOT_MEASURED).any()
    ]
    lines += ["", f"{len(table)} cells compared: " + "; ".join(counts)]
    corrected = [c for c in table if c.endswith("_ratio_vs_network") and table[c].notna().any()]
    if corrected:
        machine = (table["samples_per_s_ratio"] / table["samples_per_s_ratio_vs_network"]).median()
        lines.append(
            "speed verdicts put B at A's machine speed (B x bare network A / B, same host and device; "
            f"'vs net' column): the bare network ran {machine:.2f}x as fast in B (median over cells); "
            "--absolute-speed judges the raw figures"
            if pd.notna(machine)
            else "speed verdicts put B at A's machine speed where both runs timed the bare network ('vs net' column)"
        )
    for label, names in (
        ("only in A", comparison.only_a),
        ("only in B", comparison.only_b),
        ("in both but not ok in both (not compared)", comparison.failed),
    ):
        if names:
            listed = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
            lines.append(f"{len(names)} {'cell' if len(names) == 1 else 'cells'} {label}: {listed}")
    return "\n".join(lines)


def side_by_side(block: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The text table of some compared cells: their key columns, accuracy, and each speed metric measured."""
    shown = block[columns].copy()
    shown["acc A"] = block["accuracy_a"].map("{:.3f}".format)
    shown["acc B"] = block["accuracy_b"].map("{:.3f}".format)
    shown["B-A"] = block["accuracy_diff"].map("{:+.3f}".format)
    shown["accuracy"] = block["accuracy_verdict"]
    for metric, _, short in SPEED_METRICS:
        if f"{metric}_verdict" not in block or (block[f"{metric}_verdict"] == NOT_MEASURED).all():
            continue
        number = latency_text if "latency" in metric else "{:,.0f}".format
        shown[f"{short} A"] = block[f"{metric}_a"].map(number)
        shown[f"{short} B"] = block[f"{metric}_b"].map(number)
        shown[f"{short} B/A"] = block[f"{metric}_ratio"].map("{:.2f}x".format)
        corrected = block.get(f"{metric}_ratio_vs_network")
        if corrected is not None and corrected.notna().any():
            shown[f"{short} B/A vs net"] = corrected.map(lambda r: "" if pd.isna(r) else f"{r:.2f}x")
        shown[short] = block[f"{metric}_verdict"]
    return shown


def latency_text(ms: float) -> str:
    """Milliseconds to three significant figures (0.240, 19.4; whole from 100: 1,250)."""
    return f"{ms:,.0f}" if abs(ms) >= 100 else f"{ms:#.3g}"


def verdict_counts(metric: str, verdicts: pd.Series) -> str:
    """'samples/s 3 faster, 2 same (within noise)': how often each verdict came, not counting n/a."""
    counts = verdicts[verdicts != NOT_MEASURED].value_counts(sort=False)
    return f"{metric} " + ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
