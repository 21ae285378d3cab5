"""One self-contained HTML page from one or more run folders: read it offline, print it, send it.

Everything is inlined: the figures as base64 PNG, the style sheet and the table's script
(``assets/``), the table's data as JSON. The page makes no network request.

Sections: the question and the summary (best estimator per problem at each NFE budget, with its
CI and whether it beats the runner-up beyond noise), the ranking across problems, the results
table (sortable, filterable, CSV of the filtered view), the figures, which timesteps carry the
class (the single-timestep accuracies), Li et al.'s claims where the run's suite asks for them
(``claims = true``), failed and skipped cells, provenance. With several run
folders: the runs compared cell by cell (``diffbench compare``'s verdicts, paired where possible)
and side by side on shared plots, then each run's own sections.

This module lays out the page; the runs are read in ``report_runs``, values written in
``report_format``, the results table built in ``report_table``, one run's sections in
``report_sections``, runs compared in ``report_compare``, and the figures drawn by ``plots``.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

import diffbench
from diffbench import claims, plots
from diffbench.atomic import replace_atomically
from diffbench.report_compare import comparison_section
from diffbench.report_format import esc
from diffbench.report_runs import ReportError as ReportError  # the error `diffbench report` catches
from diffbench.report_runs import Run, load_run, run_names
from diffbench.report_sections import (
    claims_section,
    failures_section,
    figure_html,
    figures_section,
    provenance_section,
    ranking_section,
    run_intro,
    summary_section,
    timesteps_section,
)
from diffbench.report_table import HELP as HELP  # the table's columns, declared in report_table
from diffbench.report_table import KEY_COLUMNS as KEY_COLUMNS
from diffbench.report_table import table_section
from diffbench.versus_references import references_section

ASSETS = Path(__file__).parent / "assets"
REPORT = "report.html"
# the page may load nothing from anywhere: images only from data: URLs, style only inline, and only the page's own
# script runs (named by its hash), so markup that slipped into the page can never run code
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '{script_hash}'"
QUESTION = "Which estimator gives the best accuracy for the compute, on this model and this hardware?"


def script_hash(script: str) -> str:
    """The content security policy's name for an inline script: ``sha256-`` and its digest in base64."""
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def page(title: str, nav: list[tuple[str, str]], body: str) -> str:
    css = (ASSETS / "report.css").read_text()
    script = (ASSETS / "report.js").read_text()
    policy = CSP.format(script_hash=script_hash(script))
    links = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{policy}">
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
        ("references", "References"),
        ("ranking", "Ranking"),
        ("table", "Results table"),
        ("figures", "Figures"),
        ("timesteps", "Timesteps"),
        ("failures", "Failed and skipped"),
        ("provenance", "Provenance"),
    ]
    claimed = ""
    if claims.asked(run.suite):
        nav.insert(nav.index(("failures", "Failed and skipped")), ("claims", "Claims"))
        claimed = f'<section id="claims"><h2>Does it reproduce the paper?</h2>{claims_section(run)}</section>'
    body = f"""
{run_intro(run)}
<section id="summary"><h2>Summary: the best estimator at each NFE budget</h2>{summary_section(run.frame, run.predictions)}</section>
<section id="references"><h2>Against reference classifiers: the best estimator at each budget vs the best reference</h2>{references_section(run.frame, run.predictions)}</section>
<section id="ranking"><h2>Ranking of estimators</h2>{ranking_section(run.frame)}</section>
<section id="table"><h2>Results table</h2>{table_section(run.frame)}</section>
<section id="figures"><h2>Figures</h2>{figures_section(run, draw)}</section>
<section id="timesteps"><h2>Which timesteps carry the class</h2>{timesteps_section(run, draw)}</section>
{claimed}
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
    together = plots.runs_side_by_side([(r.name, r.frame) for r in runs])
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
<details><summary>Which timesteps carry the class</summary>{timesteps_section(run, draw)}</details>
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
    try:
        replace_atomically(Path(out), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except OSError as exc:  # a read-only folder, a missing one, a full disk
        raise ReportError(
            f"cannot write the report '{out}' ({exc.strerror or exc}); give --out a file you can write"
        ) from None
    return Path(out)
