"""Generative against discriminative: the best estimator at each NFE budget against the best reference classifier.

A reference row (``kind`` = reference, ``diffbench.reference_cell``) classified the same fixed test
subset as every estimator cell of its dataset, so the two are compared point by point: McNemar's
exact test on the test points both classified, with a paired bootstrap CI of the difference, where
the run stored both rows' per-sample predictions (``diffbench.paired``); otherwise the unpaired
two-proportion z-test, and the row says which (``standings.best_against_runner_up``).
"""

from __future__ import annotations

import math

import pandas as pd

from diffbench import paired, results, standings
from diffbench.paired import ALPHA
from diffbench.report_format import esc, format_value, html_table, p_text, trials_text, verdict_tag

#: What each row of ``best_vs_reference`` holds (diff = estimator's accuracy - reference's).
COLUMNS = [
    *standings.PROBLEM, "budget_nfe", "best", "best_trials", "best_nfe", "accuracy", "ci_low", "ci_high",
    "reference", "reference_accuracy", "reference_ci_low", "reference_ci_high",
    "diff", "diff_ci_low", "diff_ci_high", "p_value", "test", "verdict",
]  # fmt: skip


def best_references(frame: pd.DataFrame) -> pd.DataFrame:
    """The most accurate finished reference row per dataset (and run, when several are shown), best first."""
    refs = results.references(frame)
    refs = refs[refs["status"] == "ok"] if "status" in refs else refs
    if refs.empty:
        return refs
    keys = (["run"] if "run" in refs else []) + ["dataset_label"]
    return refs.sort_values("accuracy", ascending=False, kind="stable").drop_duplicates(keys)


def verdict(diff: float, p_value: float) -> str:
    """``estimator better``, ``reference better`` or ``same`` (no difference beyond noise at 95%)."""
    if math.isnan(p_value) or p_value >= ALPHA:
        return "same"
    return "estimator better" if diff > 0 else "reference better"


def best_vs_reference(frame: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per problem and NFE budget: the best estimator within it against the best reference of its dataset."""
    best_refs = best_references(frame)
    ok = standings.offline_ok(frame)
    if best_refs.empty or ok.empty:
        return pd.DataFrame(columns=COLUMNS)
    outcomes = paired.correctness(predictions) if not predictions.empty else {}
    columns = standings.problem_columns(ok)
    rows = []
    for key, panel in ok.groupby(columns, sort=False):
        problem = dict(zip(columns, key if isinstance(key, tuple) else (key,), strict=True))
        match = best_refs["dataset_label"] == problem["dataset_label"]
        if "run" in problem:
            match &= best_refs["run"] == problem["run"]
        if not match.any():
            continue
        ref = best_refs[match].iloc[0]
        for budget in sorted(panel["nfe_per_sample"].unique()):
            best = standings.best_within(panel, budget).iloc[0]
            test = standings.best_against_runner_up(best, ref, outcomes)
            rows.append(
                {
                    **problem,
                    **standings.best_columns(best, budget),
                    "reference": ref["estimator_label"],
                    "reference_accuracy": ref["accuracy"],
                    "reference_ci_low": ref["accuracy_ci_low"],
                    "reference_ci_high": ref["accuracy_ci_high"],
                    "diff": test.diff,
                    "diff_ci_low": test.ci_low,
                    "diff_ci_high": test.ci_high,
                    "p_value": test.p_value,
                    "test": test.test,
                    "verdict": verdict(test.diff, test.p_value),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def interval(value: float, low: float, high: float, signed: bool = False) -> str:
    form = "{:+.3f}" if signed else "{:.3f}"
    text = form.format(value)
    return text if math.isnan(low) else f"{text} [{form.format(low)}, {form.format(high)}]"


TAGS = {"estimator better": "better", "reference better": "worse", "same": "same"}


def shown_rows(block: pd.DataFrame) -> pd.DataFrame:
    """One problem's rows as the report shows them."""
    rows = []
    for _, r in block.iterrows():
        tag = verdict_tag(TAGS[r["verdict"]]).replace(f"{TAGS[r['verdict']]}</span>", f"{esc(r['verdict'])}</span>")
        reference = interval(r["reference_accuracy"], r["reference_ci_low"], r["reference_ci_high"])
        rows.append(
            {
                "NFE budget (≤)": format_value("nfe", r["budget_nfe"]),
                "best estimator": f"{r['best']} ({trials_text(r['best_trials'])})",
                "accuracy [95% CI]": interval(r["accuracy"], r["ci_low"], r["ci_high"]),
                "best reference [95% CI]": f"{r['reference']}: {reference}",
                "estimator - reference [95% CI]": interval(r["diff"], r["diff_ci_low"], r["diff_ci_high"], signed=True),
                "p": p_text(r["p_value"]),
                "verdict": tag,
                "test": str(r["test"]).split(" ")[0],
            }
        )
    return pd.DataFrame(rows)


def references_section(frame: pd.DataFrame, predictions: pd.DataFrame) -> str:
    """The report's section: per problem, the best estimator at each budget against the best reference."""
    table = best_vs_reference(frame, predictions)
    if table.empty:
        return "<p>No reference classifier ran beside the estimators (add them with <code>-r logistic</code>).</p>"
    parts = []
    for key, block in table.groupby(standings.problem_columns(table), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        parts.append(f"<h3>{esc(' x '.join(str(k) for k in key[:-1]) + f' on {key[-1]}')}</h3>")
        parts.append(html_table(shown_rows(block), numeric={"NFE budget (≤)", "p"}, raw_html={"verdict"}))
    parts.append(
        "<p class='small'>Reference classifiers train on the same training split and classify the same test points "
        "as the estimators (no denoiser, no NFE). At each budget the best estimator (its most accurate cell within "
        "the budget) is tested against the most accurate reference of the dataset: McNemar's exact test on the "
        "test points both classified, difference CI by the paired bootstrap, where both stored per-sample "
        "predictions; otherwise the unpaired two-proportion z-test. <b>verdict</b>: which is better beyond noise "
        "at 95%, or <i>same</i>.</p>"
    )
    return "\n".join(parts)
