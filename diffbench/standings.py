"""Who wins: the best estimator at each NFE budget (and whether it beats the runner-up), and ranks across problems.

A *problem* is one dataset x denoiser on one device (in one run, when several are compared).
A *budget* is one of the NFE-per-sample values measured for that problem; at a budget, each
estimator is represented by its most accurate cell that costs no more than the budget, so
estimators whose cells cost different NFE (adaptive, sequential) are compared fairly.

The best estimator is compared with the runner-up by the paired test (McNemar's exact test
and a paired bootstrap CI, ``diffbench.paired``) when the run stored both cells' per-sample
predictions; otherwise by the unpaired two-proportion z-test, and the row says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diffbench import paired, results
from diffbench.compare import Z_95, accuracy_z

PROBLEM = ["dataset_label", "denoiser_label", "device"]
NFE_TOLERANCE = 1e-6
READ = ["cell_id", "estimator_label", "trials", "nfe_per_sample", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
        "n_test", "samples_per_s"]  # fmt: skip


def problems(frame: pd.DataFrame) -> list[tuple]:
    """The problems of a table (offline, ok rows), in table order; with ``run`` first when present."""
    columns = (["run"] if "run" in frame else []) + PROBLEM
    return list(frame.groupby(columns, sort=False).groups)


def problem_columns(frame: pd.DataFrame) -> list[str]:
    return (["run"] if "run" in frame else []) + PROBLEM


def best_within(panel: pd.DataFrame, budget: float) -> pd.DataFrame:
    """Each estimator's most accurate cell costing at most ``budget`` NFE per sample, best first."""
    within = panel[panel["nfe_per_sample"] <= budget * (1 + NFE_TOLERANCE)]
    within = within.sort_values(["accuracy", "nfe_per_sample"], ascending=[False, True], kind="stable")
    return within.drop_duplicates("estimator_label")


def best_columns(best: pd.Series, budget: float) -> dict:
    """A standings row's columns for the best cell at ``budget``: its estimator, trials, NFE, accuracy and CI."""
    return {
        "budget_nfe": budget,
        "best": best["estimator_label"],
        "best_trials": int(best["trials"]),
        "best_nfe": best["nfe_per_sample"],
        "accuracy": best["accuracy"],
        "ci_low": best["accuracy_ci_low"],
        "ci_high": best["accuracy_ci_high"],
    }


@dataclass
class Verdict:
    """The best cell against the runner-up."""

    test: str
    diff: float  # accuracy(best) - accuracy(runner-up)
    ci_low: float  # paired bootstrap CI of diff (NaN for the unpaired test)
    ci_high: float
    p_value: float  # McNemar's p (paired) or the z-test's two-sided p (unpaired)
    beyond_noise: bool


def best_against_runner_up(best: pd.Series, runner_up: pd.Series, outcomes: dict) -> Verdict:
    """Whether ``best`` beats ``runner_up`` beyond noise: paired when both have predictions of the same points."""
    a, b = outcomes.get(runner_up.get("cell_id")), outcomes.get(best.get("cell_id"))
    if paired.same_points(a, b):
        result = paired.paired_test(a[1], b[1])
        return Verdict(
            paired.PAIRED_TEST, result.diff, result.ci_low, result.ci_high, result.p_value, result.verdict == "better"
        )
    z = float(
        accuracy_z(
            pd.Series([runner_up["accuracy"]]),
            pd.Series([runner_up["n_test"]]),
            pd.Series([best["accuracy"]]),
            pd.Series([best["n_test"]]),
        ).iloc[0]
    )
    p_value = math.erfc(abs(z) / math.sqrt(2))
    diff = best["accuracy"] - runner_up["accuracy"]
    return Verdict(paired.UNPAIRED_TEST, diff, math.nan, math.nan, p_value, z > Z_95)


def summary_table(frame: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per problem and NFE budget: the best estimator, its CI, the runner-up and the test between them."""
    outcomes = paired.correctness(predictions) if not predictions.empty else {}
    rows = []
    columns = problem_columns(frame)
    for key, panel in frame.groupby(columns, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for budget in sorted(panel["nfe_per_sample"].unique()):
            ranked = best_within(panel, budget)
            best = ranked.iloc[0]
            row = {
                **dict(zip(columns, key, strict=True)),
                **best_columns(best, budget),
                "runner_up": "",
            }
            if len(ranked) > 1:
                second = ranked.iloc[1]
                verdict = best_against_runner_up(best, second, outcomes)
                row.update(
                    runner_up=second["estimator_label"],
                    runner_up_trials=int(second["trials"]),
                    runner_up_accuracy=second["accuracy"],
                    diff=verdict.diff,
                    diff_ci_low=verdict.ci_low,
                    diff_ci_high=verdict.ci_high,
                    p_value=verdict.p_value,
                    test=verdict.test,
                    beyond_noise=verdict.beyond_noise,
                )
            rows.append(row)
    return pd.DataFrame(rows)


def ranking(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Estimators ranked across every problem and budget: mean rank (1 = best), wins, and mean rank per problem.

    At each problem's budget, the estimators present are ranked by their best accuracy within it
    (ties share the mean rank); a win is a rank of 1 there, shared wins counted for each. Returns
    the ranking (best mean rank first) and how many problems it spans.
    """
    columns = problem_columns(frame)
    ranks = []
    for key, panel in frame.groupby(columns, sort=False):
        name = " · ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        for budget in sorted(panel["nfe_per_sample"].unique()):
            ranked = best_within(panel, budget)
            if len(ranked) < 2:
                continue
            rank = ranked["accuracy"].rank(ascending=False, method="average")
            ranks.append(pd.DataFrame({"problem": name, "estimator": ranked["estimator_label"], "rank": rank}))
    if not ranks:
        return pd.DataFrame(columns=["estimator", "mean_rank", "wins", "budgets"]), 0
    every = pd.concat(ranks, ignore_index=True)
    table = every.groupby("estimator", sort=False).agg(
        mean_rank=("rank", "mean"), wins=("rank", lambda r: int((r == 1).sum())), budgets=("rank", "size")
    )
    per_problem = every.pivot_table(index="estimator", columns="problem", values="rank", aggfunc="mean", sort=False)
    table = table.join(per_problem).sort_values(["mean_rank", "wins"], ascending=[True, False])
    return table.reset_index(), every["problem"].nunique()


def offline_ok(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows the summary and ranking read: offline scenario, finished ok, with dtype/compile in the label."""
    narrow = frame[
        [c for c in ["run", *PROBLEM, *READ, "status", "scenario", "kind", "dtype", "compile"] if c in frame]
    ]
    if not {"accuracy", "nfe_per_sample"} <= set(narrow.columns):  # no cell finished: a table of failures only
        return narrow.iloc[:0]
    ok = results.with_variant_labels(results.offline(narrow[narrow["status"] == "ok"]))  # narrow: pandas is faster
    ok = ok.astype({c: object for c in ok.columns if pd.api.types.is_string_dtype(ok[c])})
    return ok[np.isfinite(ok["accuracy"].astype(float)) & (ok["nfe_per_sample"] > 0)].reset_index(drop=True)
