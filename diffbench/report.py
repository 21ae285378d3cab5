"""One self-contained HTML page from one or more run folders: read it offline, print it, send it.

Everything is inlined: the figures as base64 PNG, the style sheet and the table's script
(``assets/``), the table's data as JSON. The page makes no network request.

Sections: the question and the summary (best estimator per problem at each NFE budget, with its
CI and whether it beats the runner-up beyond noise), the ranking across problems, the results
table (sortable, filterable, CSV of the filtered view), the figures, failed and skipped cells,
provenance. With several run folders: the runs compared cell by cell (``diffbench compare``'s
verdicts, paired where possible) and side by side on shared plots, then each run's own sections.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

import diffbench
from diffbench import paired, results, rundir, standings
from diffbench.atomic import replace_atomically
from diffbench.compare import SPEED_METRICS, cell_names

ASSETS = Path(__file__).parent / "assets"
REPORT = "report.html"
# the page may load nothing from anywhere: images only from data: URLs, style and script only inline
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
QUESTION = "Which estimator gives the best accuracy for the compute, on this model and this hardware?"
# (file, title, how to read it); shown in this order when the run folder has the file
FIGURES = [
    (
        "accuracy_vs_nfe.png",
        "Accuracy against compute",
        "Test accuracy against denoiser evaluations per sample (NFE), one line per estimator, 95% Wilson "
        "bands; the circled cells form the Pareto frontier (no other cell is both cheaper and more accurate).",
    ),
    (
        "throughput.png",
        "Throughput, efficiency and latency",
        "Samples per second (median, IQR bars) and efficiency (evals/s over the bare network's forward rows/s on "
        "the same device, 1 = no overhead) against trials; single-sample latency p50 where measured.",
    ),
    (
        "flip_rate.png",
        "How often answers change",
        "Flip rate: the share of test samples whose predicted class differs between two independent repeats of "
        "the estimator; right, as a ratio to full-mc's flip rate at the same NFE (below 1: steadier answers for "
        "the same compute).",
    ),
    (
        "reliability.png",
        "Reliability of the calibrated probabilities",
        "Each estimator at its largest trials: accuracy against confidence per bin. Marker area and the histogram "
        "beneath show how many samples each bin holds; hollow grey points hold fewer than 10 and are left off "
        "the line.",
    ),
    (
        "truncation_windows.png",
        "Truncation windows",
        "Accuracy of the truncated estimator over t_min x t_max: which timesteps carry the class.",
    ),
    (
        "decision_regions.png",
        "Decision regions",
        "Each estimator's predicted class over the plane (shaded by confidence), test points on top.",
    ),
    (
        "model_samples.png",
        "The model's own samples",
        "Samples drawn from the conditional model per class beside the test data: did the model learn the data?",
    ),
]
KEY_COLUMNS = [
    "run",
    "dataset_label",
    "denoiser_label",
    "estimator_label",
    "trials",
    "device",
    "scenario",
    "dtype",
    "compile",
    "status",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "nfe_per_sample",
    "samples_per_s",
    "efficiency",
    "latency_p50_ms",
    "latency_p90_ms",
    "flip_rate",
    "flip_rate_vs_full_mc",
    "gap_variance",
    "variance_reduction",
    "ece",
    "nll",
    "peak_memory_mb",
    "wall_s",
    "error",
]
HELP = {
    "accuracy": "share of test samples classified correctly (seeded pass)",
    "nfe_per_sample": "denoiser evaluations per test sample, read from the model's counter",
    "samples_per_s": "median samples classified per second over timed repeats",
    "efficiency": "evals/s over the bare network's forward rows/s on the same device (1 = no overhead)",
    "flip_rate": "share of samples whose predicted class changes between two independent repeats",
    "flip_rate_vs_full_mc": "flip rate over full-mc's at the same NFE per sample (below 1: steadier)",
    "gap_variance": "variance of the true-vs-rival error gap across repeats, times NFE",
    "variance_reduction": "full-mc's gap_variance over this cell's at equal trials",
}
PROVENANCE = [
    "diffbench_version",
    "torch_version",
    "cuda_version",
    "python_version",
    "device_name",
    "cpu_name",
    "cuda_devices",
    "threads",
    "interop_threads",
    "env_omp_num_threads",
    "env_mkl_num_threads",
    "hostname",
    "git_commit",
    "command",
]


class ReportError(ValueError):
    """A folder given to ``diffbench report`` is not a run folder."""


@dataclass
class Run:
    """One run folder as the report reads it."""

    path: Path
    name: str
    frame: pd.DataFrame  # the full results table
    predictions: pd.DataFrame
    suite: dict | None
    skipped: list[str] | None  # None: the folder predates skip records


def load_run(path: Path, name: str) -> Run:
    path = Path(path)
    try:
        frame = results.read_table(path)
    except FileNotFoundError as exc:
        raise ReportError(str(exc)) from None
    suite_file = path / "suite.json"
    suite = json.loads(suite_file.read_text()) if suite_file.is_file() else None
    skipped_file = path / rundir.SKIPPED
    skipped = json.loads(skipped_file.read_text()) if skipped_file.is_file() else None
    if skipped is None and (path / rundir.SETTINGS).is_file() and (path / "cells").is_dir():
        skipped = []  # a run that keeps skip records and skipped nothing
    return Run(path, name, frame, paired.read_predictions(path), suite, skipped)


def run_names(paths: list[Path]) -> list[str]:
    """Short distinct names for run folders: the folder name, or more of the path where names clash."""
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


# formatting --------------------------------------------------------------------------------
def format_value(column: str, value: object) -> str:
    """A cell as the table shows it: each metric with the precision that means something for it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    v = float(value)
    if column.endswith("_at"):
        return datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if column.startswith("flip_rate") and column != "flip_rate_vs_full_mc":
        return f"{100 * v:.1f}%"
    if isinstance(value, (int, np.integer)) or (v.is_integer() and column in ("trials", "seed", "n_test")):
        return f"{int(v):,}"
    if "accuracy" in column or column in ("efficiency", "ece", "brier", "nll", "temperature", "p_value"):
        return f"{v:.3f}"
    if column.endswith("_mb") or (column.endswith("_per_s") and abs(v) >= 100):
        return f"{v:,.0f}"
    if "nfe" in column:
        return f"{v:,.4g}"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def constant_columns(frame: pd.DataFrame) -> dict[str, object]:
    """Identity columns among the key columns that hold one value in every row (hidden by default, said once)."""
    identity = ["run", "dataset_label", "denoiser_label", "device", "scenario", "dtype", "compile", "status"]
    return {c: frame[c].iloc[0] for c in identity if c in frame and len(frame) and frame[c].nunique(dropna=False) == 1}


def table_data(frame: pd.DataFrame) -> dict:
    """The results table as the page's script reads it: columns (kind, shown by default), raw values, text.

    Shown by default: the key columns, less identity columns that hold one value throughout
    (empty columns too); the rest appear with "all columns".
    """
    ordered = [c for c in KEY_COLUMNS if c in frame] + [c for c in frame.columns if c not in KEY_COLUMNS]
    frame = frame[ordered]
    hidden = set(constant_columns(frame)) | {c for c in ordered if frame[c].isna().all()}
    columns, raw, text = [], [], []
    for name in ordered:
        series = frame[name]
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        shown = name in KEY_COLUMNS and name not in hidden and not (name == "error" and (series.fillna("") == "").all())
        columns.append({"name": name, "kind": "num" if numeric else "text", "shown": shown})
        if name in HELP:
            columns[-1]["help"] = HELP[name]
    for record in frame.itertuples(index=False, name=None):
        raw.append([json_value(v) for v in record])
        text.append([format_value(c, v) for c, v in zip(ordered, record, strict=True)])
    return {"columns": columns, "rows": raw, "text": text}


def json_value(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    return value if isinstance(value, (int, float, str)) else str(value)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def verdict_tag(verdict: str) -> str:
    """A verdict as a coloured tag that also carries a glyph, so it reads without colour too."""
    kind = {"better": "better", "faster": "better", "worse": "worse", "slower": "worse"}.get(verdict, "same")
    glyph = {"better": "\u25b2 ", "worse": "\u25bc "}[kind] if kind != "same" else "= "
    return f'<span class="verdict v-{kind}">{glyph}{esc(verdict)}</span>'


def html_table(frame: pd.DataFrame, numeric: set[str] = frozenset(), raw_html: set[str] = frozenset()) -> str:
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{esc(c)}</th>' for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            value = row[c] if c in raw_html else esc(row[c])
            cells.append(f'<td class="{"num" if c in numeric else ""}">{value}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


# sections ----------------------------------------------------------------------------------
def trials_text(trials: int) -> str:
    return f"{trials} trial" + ("" if trials == 1 else "s")


def p_text(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def summary_section(frame: pd.DataFrame, predictions: pd.DataFrame) -> str:
    ok = standings.offline_ok(frame)
    if ok.empty:
        return "<p>No cell finished, so there is nothing to summarise.</p>"
    table = standings.summary_table(ok, predictions)
    columns = standings.problem_columns(ok)
    parts = []
    for key, block in table.groupby(columns, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        title = " x ".join(str(k) for k in key if k != key[-1]) + f" on {key[-1]}"
        top = block.iloc[-1]
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(f'<p class="headline">{esc(headline(top))}</p>')
        shown = pd.DataFrame(
            {
                "NFE budget (≤)": block["budget_nfe"].map(lambda v: format_value("nfe", v)),
                "best estimator": [
                    f"{esc(r['best'])} <span class='small'>({trials_text(r['best_trials'])}, "
                    f"{format_value('nfe', r['best_nfe'])} NFE)</span>"
                    for _, r in block.iterrows()
                ],
                "accuracy [95% CI]": [
                    f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for _, r in block.iterrows()
                ],
                "runner-up": [
                    f"{esc(r['runner_up'])} ({r['runner_up_accuracy']:.3f})" if r["runner_up"] else "—"
                    for _, r in block.iterrows()
                ],
                "difference [95% CI]": [difference_text(r) for _, r in block.iterrows()],
                "p": [p_text(r.get("p_value", math.nan)) if r["runner_up"] else "" for _, r in block.iterrows()],
                "beyond noise?": [beyond_text(r) for _, r in block.iterrows()],
                "test": [esc(r.get("test", "")).split(" ")[0] if r["runner_up"] else "" for _, r in block.iterrows()],
            }
        )
        parts.append(
            html_table(
                shown,
                numeric={"NFE budget (≤)", "p"},
                raw_html={"best estimator", "runner-up", "beyond noise?"},
            )
        )
    parts.append(
        "<p class='small'><b>beyond noise?</b>: whether the best beats the runner-up beyond noise at 95%. "
        "At each budget every estimator is represented by its most accurate cell costing at most that "
        "many NFE per sample. The best is tested against the runner-up with McNemar's exact test on the test points "
        "both classified (difference CI: paired bootstrap, 10,000 resamples) when the run stored per-sample "
        "predictions; otherwise with the unpaired two-proportion z-test, which is conservative.</p>"
    )
    return "\n".join(parts)


def headline(row: pd.Series) -> str:
    text = (
        f"At {format_value('nfe', row['budget_nfe'])} NFE per sample, {row['best']} "
        f"({trials_text(row['best_trials'])}) is the most accurate: {row['accuracy']:.3f} "
        f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    )
    if not row["runner_up"]:
        return text + "."
    how = "beats" if row["beyond_noise"] else "cannot be told apart from"
    p = p_text(row["p_value"])
    p = p if p.startswith("<") else f"= {p}"
    runner_up = f"the runner-up {row['runner_up']} ({row['runner_up_accuracy']:.3f})"
    return text + f"; it {how} {runner_up} beyond noise ({row['test']}, p {p})."


def difference_text(row: pd.Series) -> str:
    if not row["runner_up"]:
        return ""
    text = f"{row['diff']:+.3f}"
    if not math.isnan(row.get("diff_ci_low", math.nan)):
        text += f" [{row['diff_ci_low']:+.3f}, {row['diff_ci_high']:+.3f}]"
    return text


def beyond_text(row: pd.Series) -> str:
    if not row["runner_up"]:
        return "only one estimator"
    return verdict_tag("better") if row["beyond_noise"] else verdict_tag("same")


def ranking_section(frame: pd.DataFrame) -> str:
    ok = standings.offline_ok(frame)
    table, count = standings.ranking(ok)
    if table.empty:
        return "<p>Ranking needs at least two estimators on one problem.</p>"
    shown = table.copy()
    shown["mean_rank"] = shown["mean_rank"].map("{:.2f}".format)
    for column in shown.columns[4:]:
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    shown = shown.rename(
        columns={"estimator": "estimator", "mean_rank": "mean rank", "wins": "wins", "budgets": "budgets ranked"}
    )
    note = (
        f"<p>Across {count} problem{'s' if count != 1 else ''} (dataset x denoiser x device"
        f"{', per run' if 'run' in ok else ''}): at each problem's NFE budgets, the estimators present are ranked by "
        "their best accuracy within the budget (1 = best, ties share the mean rank). <b>mean rank</b> over every "
        "problem and budget, <b>wins</b>: budgets where it ranked first; then its mean rank on each problem.</p>"
    )
    numeric = set(shown.columns) - {"estimator"}
    return note + html_table(shown, numeric=numeric)


def table_section(frame: pd.DataFrame) -> str:
    data = json.dumps(table_data(frame), allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    return f"""
<div class="controls">
  <input type="search" id="table-search" placeholder="search every shown column" aria-label="search the table">
  <label><input type="checkbox" id="all-columns"> all {frame.shape[1]} columns</label>
  <button type="button" id="table-reset">reset</button>
  <button type="button" id="csv-download">download CSV of this view</button>
  <span id="row-count" class="small"></span>
</div>
<p class="small">Click a column name to sort (again to reverse). Filter a column by text it contains
(<code>!text</code>: does not contain) or, for numbers, <code>&lt;0.9</code>, <code>&gt;=4</code>,
<code>=8</code>, <code>4..16</code>.
The CSV holds the rows and columns shown, unrounded.</p>
{constant_note(frame)}<div class="scroll"><table id="results"><thead></thead><tbody></tbody></table></div>
<script type="application/json" id="table-data">{data}</script>"""


def constant_note(frame: pd.DataFrame) -> str:
    constant = constant_columns(frame)
    if not constant:
        return ""
    said = ", ".join(f"<code>{esc(k)}</code> = {esc(format_value(k, v))}" for k, v in constant.items())
    return f"<p class='small'>Every row has {said} (hidden; tick <i>all columns</i> to show them).</p>"


def figure_html(title: str, caption: str, png: bytes) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{esc(title)}">'
        f"<figcaption><b>{esc(title)}.</b> {esc(caption)}</figcaption></figure>"
    )


def run_figures(run: Run, draw: bool = True) -> list[tuple[str, str, bytes]]:
    """The run's figures as PNG bytes: the folder's own, or (``draw``) drawn afresh elsewhere when it has none."""
    found = [(t, c, (run.path / f).read_bytes()) for f, t, c in FIGURES if (run.path / f).is_file()]
    if found or not draw:
        return found
    from diffbench import plots

    with tempfile.TemporaryDirectory() as tmp:
        plots.plot_run(run.path, out=Path(tmp))
        return [(t, c, (Path(tmp) / f).read_bytes()) for f, t, c in FIGURES if (Path(tmp) / f).is_file()]


def figures_section(run: Run, draw: bool = True) -> str:
    figures = run_figures(run, draw)
    if not figures:
        return (
            "<p>No figure: no cell finished, or the run was made with --no-plots "
            "(<code>diffbench report</code> draws them).</p>"
        )
    notes = []
    if "flip_rate" not in run.frame:
        notes.append("<p class='small'>This run predates the flip rate, so it has no flip-rate figure.</p>")
    return "\n".join(notes + [figure_html(*f) for f in figures])


def failures_section(run: Run) -> str:
    frame = run.frame
    failed = frame[frame["status"] != "ok"].drop_duplicates("cell_id") if "cell_id" in frame else frame.iloc[:0]
    parts = []
    if failed.empty:
        parts.append("<p>No cell failed.</p>")
    else:
        columns = [
            c
            for c in ["dataset_label", "denoiser_label", "estimator_label", "trials", "device", "dtype"]
            if c in failed
        ]
        shown = failed[columns + ["error"]].rename(columns={c: c.removesuffix("_label") for c in columns})
        parts.append(f"<p>{len(failed)} cell{'s' if len(failed) != 1 else ''} failed:</p>")
        parts.append(html_table(shown))
    if run.skipped is None:
        parts.append(
            "<p class='small'>This run folder predates skip records: why cells were skipped is in its log.</p>"
        )
    elif not run.skipped:
        parts.append("<p>Nothing was skipped.</p>")
    else:
        items = "".join(f"<li>{esc(line)}</li>" for line in run.skipped)
        parts.append(f"<p>Skipped (never measured):</p><ul>{items}</ul>")
    return "\n".join(parts)


def provenance_section(run: Run) -> str:
    frame = run.frame
    rows = []
    for column in PROVENANCE:
        if column in frame:
            values = [str(v) for v in frame[column].dropna().unique() if str(v) != ""]
            rows.append((column, "; ".join(values) if values else "—"))
    if {"started_at", "finished_at"} <= set(frame.columns) and frame["started_at"].notna().any():
        start, end = frame["started_at"].min(), frame["finished_at"].max()
        rows.append(("cells measured", f"{format_value('started_at', start)} to {format_value('x_at', end)} UTC"))
    table = html_table(pd.DataFrame(rows, columns=["what", "value"])) if rows else "<p>No provenance columns.</p>"
    suite = ""
    if run.suite is not None:
        suite = f"<details><summary>suite settings (suite.json)</summary><pre>{esc(json.dumps(run.suite, indent=2))}</pre></details>"  # noqa: E501
    return table + suite


def run_intro(run: Run) -> str:
    frame = run.frame
    cells = frame["cell_id"].nunique() if "cell_id" in frame else len(frame)
    failed = frame[frame["status"] != "ok"]["cell_id"].nunique() if "cell_id" in frame else 0
    parts = [f"{cells} cells ({cells - failed} finished, {failed} failed)"]
    for column, word in (
        ("dataset_label", "datasets"),
        ("denoiser_label", "denoisers"),
        ("estimator_label", "estimators"),
    ):
        if column in frame:
            parts.append(f"{word}: {', '.join(map(str, dict.fromkeys(frame[column].dropna())))}")
    if "trials" in frame:
        parts.append("trials: " + ", ".join(str(int(t)) for t in sorted(frame["trials"].dropna().unique())))
    if "device" in frame:
        parts.append("devices: " + ", ".join(map(str, dict.fromkeys(frame["device"].dropna()))))
    paired_note = (
        "per-sample predictions stored (paired tests)"
        if not run.predictions.empty
        else "no per-sample predictions (unpaired tests)"
    )
    return f"<p class='meta'>{esc(' · '.join(parts))} · {esc(paired_note)}</p>"


# several runs ------------------------------------------------------------------------------
def comparison_section(base: Run, other: Run) -> str:
    """One run against another, cell by cell: a table per scenario with the speed metrics it measured."""
    from diffbench.compare import CompareError

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


def runs_side_by_side(runs: list[Run]) -> bytes | None:
    """Accuracy against NFE and samples/s against trials, every run on the same axes (line style = run)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from diffbench.plots import PALETTE, PANEL

    frames = [standings.offline_ok(r.frame).assign(run=r.name) for r in runs]
    frame = (
        pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(not f.empty for f in frames) else None
    )
    if frame is None:
        return None
    keys = list(frame.groupby(PANEL, sort=False).groups)
    labels = list(dict.fromkeys(frame["estimator_label"]))
    colors = dict(zip(labels, sns.color_palette(PALETTE, len(labels)), strict=True))
    styles = dict(zip([r.name for r in runs], ["-", "--", ":", "-."] * len(runs), strict=False))
    markers = dict(zip([r.name for r in runs], ["o", "s", "^", "D", "v"] * len(runs), strict=False))
    fig, axes = plt.subplots(2, len(keys), figsize=(6.5 * len(keys), 8.5), squeeze=False)
    for col, key in enumerate(keys):
        panel = frame.set_index(PANEL).loc[[key]].reset_index()
        first = panel["device"].iloc[0]
        panel = panel[panel["device"] == first]
        for (label, run), line in panel.groupby(["estimator_label", "run"], sort=False):
            line = line.sort_values("nfe_per_sample")
            kw = {"color": colors[label], "ls": styles[run], "marker": markers[run], "ms": 4}
            axes[0][col].plot(line["nfe_per_sample"], line["accuracy"], label=f"{label} · {run}", **kw)
            if "samples_per_s" in line:
                axes[1][col].plot(line["trials"], line["samples_per_s"], **kw)
        axes[0][col].set(
            xscale="log", ylabel="test accuracy", xlabel="NFE per sample", title=f"{key[0]} x {key[1]} ({first})"
        )
        axes[1][col].set(xscale="log", yscale="log", ylabel="samples / s (offline)", xlabel="trials")
        axes[0][col].legend(fontsize=7)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


# the page ----------------------------------------------------------------------------------
def page(title: str, nav: list[tuple[str, str]], body: str) -> str:
    css = (ASSETS / "report.css").read_text()
    script = (ASSETS / "report.js").read_text()
    links = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{esc(title)}</title>
<style>{css}</style>
</head>
<body>
<main>
<header>
<h1>{esc(title)}</h1>
<p class="question">{esc(QUESTION)}</p>
<p class="meta">Written by diffbench {esc(diffbench.__version__)} on {made}; a self-contained page
(no network needed).</p>
<nav>{links}</nav>
</header>
{body}
</main>
<script>{script}</script>
</body>
</html>
"""


def single_run_body(run: Run, draw: bool) -> tuple[list[tuple[str, str]], str]:
    nav = [
        ("summary", "Summary"),
        ("ranking", "Ranking"),
        ("table", "Results table"),
        ("figures", "Figures"),
        ("failures", "Failed and skipped"),
        ("provenance", "Provenance"),
    ]
    body = f"""
{run_intro(run)}
<section id="summary"><h2>Summary: the best estimator at each NFE budget</h2>{summary_section(run.frame, run.predictions)}</section>
<section id="ranking"><h2>Ranking of estimators</h2>{ranking_section(run.frame)}</section>
<section id="table"><h2>Results table</h2>{table_section(run.frame)}</section>
<section id="figures"><h2>Figures</h2>{figures_section(run, draw)}</section>
<section id="failures"><h2>Failed and skipped cells</h2>{failures_section(run)}</section>
<section id="provenance"><h2>Provenance</h2>{provenance_section(run)}</section>
"""  # noqa: E501
    return nav, body


def multi_run_body(runs: list[Run], draw: bool) -> tuple[list[tuple[str, str]], str]:
    nav = [
        ("comparison", "Comparison"),
        ("side-by-side", "Side by side"),
        ("ranking", "Ranking"),
        ("table", "Results table"),
    ] + [(f"run-{i}", run.name) for i, run in enumerate(runs)]
    comparisons = "".join(comparison_section(runs[0], other) for other in runs[1:])
    together = runs_side_by_side(runs)
    side = (
        figure_html(
            "Runs side by side",
            "Top: accuracy against NFE per sample; bottom: offline samples per second against trials. Colour = "
            "estimator, line style and marker = run.",
            together,
        )
        if together
        else "<p>No finished cell to draw.</p>"
    )
    combined = pd.concat([r.frame.assign(run=r.name) for r in runs], ignore_index=True)
    listing = "".join(f"<li><b>{esc(r.name)}</b>: <code>{esc(r.path)}</code></li>" for r in runs)
    sections = []
    for i, run in enumerate(runs):
        sections.append(
            f"""<section id="run-{i}"><h2>Run {esc(run.name)}</h2>{run_intro(run)}
<h3>Summary</h3>{summary_section(run.frame, run.predictions)}
<details><summary>Figures</summary>{figures_section(run, draw)}</details>
<h3>Failed and skipped cells</h3>{failures_section(run)}
<details><summary>Provenance</summary>{provenance_section(run)}</details></section>"""
        )
    body = f"""
<p class="meta">{len(runs)} runs; A = the first, each other run is B against it.</p><ul>{listing}</ul>
<section id="comparison"><h2>Comparison, cell by cell</h2>
<p class="small">Accuracy verdicts: McNemar's exact test where both runs classified the same test points (B − A CI by
paired bootstrap), else the two-proportion z-test; speed: beyond noise when |B − A| exceeds both runs' IQRs added.</p>
{comparisons}</section>
<section id="side-by-side"><h2>Side by side</h2>{side}</section>
<section id="ranking"><h2>Ranking of estimators across runs and problems</h2>{ranking_section(combined)}</section>
<section id="table"><h2>Results table (every run)</h2>{table_section(combined)}</section>
{"".join(sections)}
"""
    return nav, body


def build_report(run_dirs: list[Path], draw: bool = True) -> str:
    """The HTML page of one run folder, or of several compared.

    ``draw``: draw the figures of a folder that holds none (a run made with --no-plots).
    """
    if not run_dirs:
        raise ReportError("give at least one run folder")
    runs = [load_run(p, n) for p, n in zip(run_dirs, run_names(run_dirs), strict=True)]
    if len(runs) == 1:
        nav, body = single_run_body(runs[0], draw)
        title = f"diffbench report: {runs[0].name}"
    else:
        nav, body = multi_run_body(runs, draw)
        title = f"diffbench report: {len(runs)} runs compared"
    return page(title, nav, body)


def write_report(run_dirs: list[Path], out: Path, draw: bool = True) -> Path:
    """Write the report atomically to ``out``."""
    text = build_report([Path(p) for p in run_dirs], draw)
    replace_atomically(Path(out), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return Path(out)
