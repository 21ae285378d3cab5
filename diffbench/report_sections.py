"""The sections of one run on the report page: summary, ranking, figures, which timesteps carry the class,
Li et al.'s claims (where the suite asks for them), failures and skips, provenance."""

from __future__ import annotations

import base64
import json
import math
import tempfile
from pathlib import Path

import pandas as pd

from diffbench import claims, plots, results, rundir, standings
from diffbench.report_format import esc, format_value, html_table, p_text, trials_text, verdict_tag
from diffbench.report_runs import Run

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


def figure_html(title: str, caption: str, png: bytes) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{esc(title)}">'
        f"<figcaption><b>{esc(title)}.</b> {esc(caption)}</figcaption></figure>"
    )


def run_figures(run: Run, draw: bool = True) -> list[tuple[str, str, bytes]]:
    """The run's figures as PNG bytes: the folder's own, or (``draw``) drawn afresh elsewhere when it has none.

    Read (or drawn) once per run and kept on it: several sections show them.
    """
    if draw not in run.drawn:
        found = plots_in(run.path)
        if not found and draw:
            with tempfile.TemporaryDirectory() as tmp:
                plots.plot_run(run.path, out=Path(tmp))
                found = plots_in(Path(tmp))
        run.drawn[draw] = found
    return run.drawn[draw]


def plots_in(folder: Path) -> list[tuple[str, str, bytes]]:
    """Every plot ``folder`` holds, in the report's order: its title, caption and PNG bytes."""
    return [(p.title, p.caption, (folder / p.file).read_bytes()) for p in plots.PLOTS if (folder / p.file).is_file()]


def figures_section(run: Run, draw: bool = True) -> str:
    try:
        figures = run_figures(run, draw)
    except (results.TableError, OSError) as exc:  # damaged figure data: the page without the figures, saying why
        return f"<p>No figure: they could not be drawn ({esc(exc)}).</p>"
    if not figures:
        return (
            "<p>No figure: no cell finished, or the run was made with --no-plots "
            "(<code>diffbench report</code> draws them).</p>"
        )
    notes = []
    if "flip_rate" not in run.frame:
        notes.append("<p class='small'>This run predates the flip rate, so it has no flip-rate figure.</p>")
    own = {plot.title for plot in OWN_SECTION}
    return "\n".join(notes + [figure_html(*f) for f in figures if f[0] not in own])


OWN_SECTION = (plots.TIMESTEP_ACCURACY,)  # figures shown in a section of their own, not among the figures


def timesteps_section(run: Run, draw: bool = True) -> str:
    """Which timesteps carry the class: the single-timestep accuracy figure and, per model, its best t."""
    frame = run.timesteps
    if frame is None or frame.empty:
        return (
            "<p>No single-timestep accuracies: the run predates them, its models are pretrained (whose figure data "
            "is not computed), no cell finished, or a model's classes would cost more than the budget "
            "(said among the skipped).</p>"
        )
    lines = frame.groupby(["dataset_label", "denoiser_label"], sort=False)
    reading = [f"<p>{esc(best_timestep_sentence(line))}</p>" for _, line in lines]
    try:
        figures = [f for f in run_figures(run, draw) if f[0] == plots.TIMESTEP_ACCURACY.title]
    except (results.TableError, OSError) as exc:  # damaged figure data: the reading without the figure
        figures = []
        reading.append(f"<p>The figure could not be drawn ({esc(exc)}).</p>")
    how = (
        "<p class='small'>Each point classifies the test samples from the denoising errors at that one timestep "
        "alone (l2, averaged over the noise draws, shared by the classes): the question behind Li et al.'s "
        "timestep ablation. The noise comes from the design of draws, and in bank mode the errors from the "
        "model's error bank, so they are computed once.</p>"
    )
    return "\n".join([*reading, *(figure_html(*f) for f in figures), how])


def best_timestep_sentence(line: pd.DataFrame) -> str:
    """One model's reading: its best single timestep and that t's accuracy, against its worst."""
    line = line.sort_values("t")
    best, worst = line.loc[line["accuracy"].idxmax()], line.loc[line["accuracy"].idxmin()]
    n, total = int(best["n_test"]), int(best["n_test_total"])
    samples = f"{n} test samples" + (f" (evenly spaced, of {total})" if n < total else "")
    return (
        f"On {best['dataset_label']} x {best['denoiser_label']}, the single timestep t = {int(best['t'])} "
        f"({best['t_fraction']:.0%} of T = {int(best['num_timesteps'])}) carries the class best: accuracy "
        f"{best['accuracy']:.3f} [{best['accuracy_ci_low']:.3f}, {best['accuracy_ci_high']:.3f}] over {samples} "
        f"with {int(best['draws'])} noise draws each, against {worst['accuracy']:.3f} at t = {int(worst['t'])}, "
        f"the worst of the {len(line)} timesteps."
    )


CLAIM_TAGS = {claims.HOLDS: "better", claims.FAILS: "worse"}  # how a claim's verdict is coloured


def claim_tag(verdict: str) -> str:
    """A claim's verdict as a tag coloured (and marked) as the comparisons' verdicts are: holds green."""
    kind = CLAIM_TAGS.get(verdict, "same")
    glyph = {"better": "\u25b2 ", "worse": "\u25bc "}.get(kind, "= ")
    return f'<span class="verdict v-{kind}">{glyph}{esc(verdict)}</span>'


def claims_section(run: Run) -> str:
    """Li et al.'s claims on this run (``diffbench.claims``, as in its claims.md): per claim the verdict, the
    paper's number, each model's finding and the comparisons behind it."""
    parts = [
        "<p class='small'>Each comparison is B minus A on the same test points: McNemar's exact paired test where "
        "both cells' per-sample predictions were stored, else an unpaired two-proportion z-test; 'better' and "
        f"'worse' at p &lt; {claims.ALPHA}. The same text is in the run folder's {esc(claims.CLAIMS_FILE)}.</p>"
    ]
    for claim in claims.check_claims(run.frame, run.predictions, run.timesteps):
        parts.append(
            f"<h3>{esc(claim.number)}. {esc(claim.statement)} {claim_tag(claim.verdict)}</h3><p>{esc(claim.paper)}.</p>"
        )
        items = "".join(f"<li><b>{esc(f.model)}</b>: {esc(f.verdict)} ({esc(f.why)})</li>" for f in claim.findings)
        parts.append(f"<ul>{items}</ul>")
        rows = [
            {
                "B vs A": c.what,
                "effect (B − A)": f"{c.diff:+.3f} ({c.acc_b:.3f} vs {c.acc_a:.3f}, n={c.n})",
                "95% CI": f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]",
                "test": c.test,
                "p": p_text(c.p_value),
                "B is": verdict_tag(c.direction),
            }
            for f in claim.findings
            for c in f.comparisons
        ]
        if rows:
            parts.append(html_table(pd.DataFrame(rows), numeric={"p"}, raw_html={"B is"}))
    return "\n".join(parts)


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
        settings = esc(json.dumps(run.suite, indent=2))
        suite = f"<details><summary>suite settings ({rundir.SUITE})</summary><pre>{settings}</pre></details>"
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
    problems = "".join(f"<p class='small'><b>Left out:</b> {esc(line)}</p>" for line in run.problems)
    return f"<p class='meta'>{esc(' · '.join(parts))} · {esc(paired_note)}</p>{problems}"
