"""Several runs on one report page: each against the first, cell by cell, with ``diffbench compare``'s verdicts."""

from __future__ import annotations

import math

import pandas as pd

from diffbench import paired
from diffbench.compare import SPEED_METRICS, CompareError, cell_names
from diffbench.report_format import esc, html_table, p_text, verdict_tag
from diffbench.report_runs import Run


def comparison_section(base: Run, other: Run) -> str:
    """One run against another, cell by cell: a table per scenario with the speed metrics it measured."""
    try:
        comparison, used = paired.compare_folders(base.path, other.path)
    except CompareError as exc:
        return f"<p>{esc(other.name)} against {esc(base.name)}: not comparable ({esc(exc)}).</p>"
    table = comparison.table
    varying = [c for c in comparison.key if c not in comparison.constant]
    by_scenario = "scenario" in varying
    blocks = table.groupby("scenario", sort=False) if by_scenario else [(None, table)]
    tables = []
    for scenario, block in blocks:
        if scenario is not None:
            tables.append(f"<h4>scenario: {esc(scenario)}</h4>")
        tables.append(comparison_table(block, [c for c in varying if c != "scenario"]))
    constant = ", ".join(f"{k}={v}" for k, v in comparison.constant.items())
    counts = table["accuracy_verdict"].value_counts()
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    unmatched = []
    for label, names in (
        ("only in A", comparison.only_a),
        ("only in B", comparison.only_b),
        ("not ok in both", comparison.failed),
    ):
        if names:
            unmatched.append(f"{len(names)} {label}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
    return (
        f"<h3>B = {esc(other.name)} against A = {esc(base.name)}</h3>"
        f"<p>{len(table)} cells compared (accuracy: {esc(summary)}). {esc(used[0].upper() + used[1:])}."
        + (f" All cells: {esc(constant)}." if constant else "")
        + "</p>"
        + "".join(tables)
        + "".join(f"<p class='small'>{esc(u)}</p>" for u in unmatched)
    )


def comparison_table(block: pd.DataFrame, columns: list[str]) -> str:
    shown = pd.DataFrame({"cell": cell_names(block, columns)})
    shown["accuracy A"] = block["accuracy_a"].map("{:.3f}".format).to_numpy()
    shown["accuracy B"] = block["accuracy_b"].map("{:.3f}".format).to_numpy()
    ci = [
        "" if math.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]"
        for lo, hi in zip(block["accuracy_diff_ci_low"], block["accuracy_diff_ci_high"], strict=True)
    ]
    shown["B − A [95% CI]"] = [f"{d:+.3f}{c}" for d, c in zip(block["accuracy_diff"], ci, strict=True)]
    shown["p"] = block["accuracy_p"].map(p_text).to_numpy()
    shown["accuracy"] = block["accuracy_verdict"].map(verdict_tag).to_numpy()
    raw = {"accuracy"}
    for metric, _, short in SPEED_METRICS:
        verdicts = block.get(f"{metric}_verdict")
        if verdicts is None or (verdicts == "n/a").all():
            continue
        number = (lambda v: f"{v:,.0f}") if metric == "samples_per_s" else (lambda v: f"{v:.3g}")
        shown[f"{short} A"] = block[f"{metric}_a"].map(lambda v, f=number: "" if pd.isna(v) else f(v)).to_numpy()
        shown[f"{short} B"] = block[f"{metric}_b"].map(lambda v, f=number: "" if pd.isna(v) else f(v)).to_numpy()
        shown[f"{short} B/A"] = block[f"{metric}_ratio"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}x").to_numpy()
        shown[short] = verdicts.map(lambda v: verdict_tag(v) if v != "n/a" else "n/a").to_numpy()
        raw.add(short)
    numeric = set(shown.columns) - {"cell"} - raw
    return html_table(shown, numeric=numeric, raw_html=raw)
