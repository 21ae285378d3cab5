"""Li et al.'s claims checked on a results table: each claim's measured effect, its test and a verdict (claims.md).

The comparisons and the rules that turn them into a verdict are ``diffbench.verdicts``'s.

A claim whose rows are missing says which rows it needs. Claim 6 reads the rows whose ``kind`` is
'reference' (discriminative classifiers on the same split; ``estimator`` holds the reference's name).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from diffbench.paired import ALPHA, correctness
from diffbench.verdicts import (  # noqa: F401  (the verdict labels and MARGIN are read through this module too)
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    MARGIN,
    MISSING,
    Claim,
    Comparison,
    Finding,
    beats,
    compare,
    reaches,
    unpaired,
)

#: The 2-D toy datasets, where claim 2 expects low-noise windows to win.
POINT_DATASETS = frozenset({"spirals", "moons", "circles", "checkerboard", "gaussian-mixture"})
CLAIMS_FILE = "claims.md"
#: The middle of the t range (fractions of T) where claim 2b expects images' most informative timestep.
MID = (0.25, 0.75)


def usable(table: pd.DataFrame) -> pd.DataFrame:
    """Measured rows, one per cell (the offline scenario's where a cell has both)."""
    rows = table[table["accuracy"].notna()]
    if "status" in rows:
        rows = rows[rows["status"].fillna("ok") == "ok"]
    if "scenario" in rows:
        rows = rows.sort_values("scenario", key=lambda s: s != "offline", kind="stable")
    key = ["cell_id"] if "cell_id" in rows else ["dataset_label", "denoiser_label", "estimator_label", "trials"]
    return rows.drop_duplicates(key)


def estimator_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["kind"] != "reference"] if "kind" in rows else rows


def models(rows: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    for (data, net), part in estimator_rows(rows).groupby(["dataset_label", "denoiser_label"], sort=True):
        yield f"{data} x {net}", part


def param(rows: pd.DataFrame, name: str, default: object) -> pd.Series:
    column = f"p_estimator_{name}"
    return rows[column].fillna(default) if column in rows else pd.Series(default, index=rows.index)


def at_trials(a: pd.DataFrame, b: pd.DataFrame) -> Iterable[tuple[int, pd.Series, pd.Series]]:
    """Rows of A and B at each trials budget both have (the first of each)."""
    for trials in sorted(set(a["trials"]) & set(b["trials"])):
        yield int(trials), a[a["trials"] == trials].iloc[0], b[b["trials"] == trials].iloc[0]


def per_model(rows: pd.DataFrame, check: Callable[[str, pd.DataFrame], Finding | None], needs: str) -> list[Finding]:
    """``check`` on each model's rows; a model without the rows a claim needs says so."""
    found = [check(model, part) or Finding(model, MISSING, f"needs {needs}") for model, part in models(rows)]
    return found or [Finding("(no model)", MISSING, f"needs {needs}")]


def plain(part: pd.DataFrame, estimator: str) -> pd.DataFrame:
    """``estimator``'s rows with l2 loss and simple weighting (the defaults)."""
    keep = (part["estimator"] == estimator) & (param(part, "loss", "l2") == "l2")
    return part[keep & (param(part, "weighting", "simple") == "simple")]


def nfe(row: pd.Series) -> float:
    return float(row.get("nfe_per_sample", math.nan))


def efficiency(full: pd.DataFrame, shared: pd.DataFrame) -> str:
    """How many fewer NFE shared-noise needs to reach full-mc's best accuracy."""
    best = full.loc[full["accuracy"].idxmax()]
    enough = shared[shared["accuracy"] >= best["accuracy"]]
    target = f"full-mc's best accuracy ({best['accuracy']:.3f} at {nfe(best):.0f} NFE)"
    if enough.empty:
        return f"shared-noise never reaches {target}"
    cheapest = enough.loc[enough["nfe_per_sample"].idxmin()]
    return f"shared-noise reaches {target} at {nfe(cheapest):.0f} NFE, {nfe(best) / nfe(cheapest):.3g}x fewer"


def claim_shared_noise(rows: pd.DataFrame, outcomes: dict) -> Claim:
    def check(model: str, part: pd.DataFrame) -> Finding | None:
        full, shared = plain(part, "full-mc"), plain(part, "shared-noise")
        comparisons = [
            compare(a, b, outcomes, f"shared-noise vs full-mc at {t} trials ({nfe(b):.0f} NFE)")
            for t, a, b in at_trials(full, shared)
        ]
        if not comparisons:
            return None
        finding = beats(model, comparisons, "shared-noise")
        finding.why += f"; {efficiency(full, shared)}"
        return finding

    needs = "shared-noise and full-mc rows at a common trials budget"
    paper = "Li et al.: sharing the noise across classes saves about two orders of magnitude of NFE"
    return Claim(1, "Shared noise beats independent noise at equal NFE", paper, per_model(rows, check, needs), needs)


def claim_timesteps(rows: pd.DataFrame, outcomes: dict) -> Claim:
    def check(model: str, part: pd.DataFrame) -> Finding | None:
        grid = plain(part, "stratified")
        grid = grid[param(grid, "mode", "random") == "even"]
        windows = plain(part, "truncated")
        toy = part["dataset"].iloc[0] in POINT_DATASETS
        if toy:  # on 2-D toys the claim is for low-noise windows: t_max below half the schedule
            windows = windows[windows["p_estimator_t_max"] < part["num_timesteps"].iloc[0] / 2]
        comparisons = []
        for t in sorted(set(grid["trials"]) & set(windows["trials"])):
            g = grid[grid["trials"] == t].iloc[0]
            w = windows[windows["trials"] == t].sort_values("accuracy").iloc[-1]  # the best window
            span = f"truncated[{int(w['p_estimator_t_min'])}..{int(w['p_estimator_t_max'])}]"
            a, b, what = (g, w, f"{span} vs the even grid") if toy else (w, g, f"the even grid vs {span}")
            comparisons.append(compare(a, b, outcomes, f"{what} at {t} trials"))
        if not comparisons:
            return None
        return beats(model, comparisons, "the low-noise window" if toy else "the even grid")

    needs = "stratified[mode=even] and truncated rows at a common trials budget"
    paper = (
        "Li et al.: on images an evenly spaced grid over all of t beats narrow windows; on 2-D toys "
        "low-noise windows win. Each window compared is the best one at its budget"
    )
    statement = "The even grid beats narrow windows on images; a low-noise window wins on 2-D toys"
    return Claim(2, statement, paper, per_model(rows, check, needs), needs)


def claim_timestep_peak(timesteps: pd.DataFrame | None) -> Claim:
    """Claim 2b, from the single-timestep accuracies (timesteps.parquet, ``diffbench.timestep_accuracy``).

    On images the best timestep of the middle range (``MID`` of T) against the best one outside it; on 2-D
    toys the best low-noise timestep (below ``MID[0]`` of T) against the best of the rest. Unpaired z-test
    (the figure data keeps no per-sample predictions; both sides classified the same samples, so it is
    conservative).
    """
    needs = "single-timestep accuracies (timesteps.parquet: a model trained by the run, figures not skipped)"
    findings = []
    frame = timesteps if timesteps is not None else pd.DataFrame()
    groups = frame.groupby(["dataset_label", "denoiser_label"], sort=True) if not frame.empty else []
    for (data, net), line in groups:
        model = f"{data} x {net}"
        toy = str(line["dataset"].iloc[0] if "dataset" in line else data).split("[")[0] in POINT_DATASETS
        fraction = line["t_fraction"]
        inside = fraction < MID[0] if toy else (fraction >= MID[0]) & (fraction <= MID[1])
        if not inside.any() or inside.all():
            findings.append(Finding(model, MISSING, f"needs timesteps inside and outside {span_text(toy)}"))
            continue
        a, b, best = top(line[~inside]), top(line[inside]), top(line)
        what = f"best t in {span_text(toy)} (t={int(b['t'])}) vs best elsewhere (t={int(a['t'])})"
        comparison = unpaired(what, float(a["accuracy"]), int(a["n_test"]), float(b["accuracy"]), int(b["n_test"]))
        finding = beats(model, [comparison], f"t in {span_text(toy)}")
        finding.why += (
            f"; the most informative single timestep is t={int(best['t'])} ({best['t_fraction']:.0%} of T), "
            f"accuracy {best['accuracy']:.3f} over {int(best['n_test'])} samples"
        )
        findings.append(finding)
    paper = (
        "Li et al. (timestep ablation): the single most informative timesteps are mid-range on images. On 2-D "
        "toys diffbench expects the low-noise end instead (claim 2's contrast)"
    )
    statement = "The single most informative timesteps are mid-range on images (low-noise on 2-D toys)"
    return Claim("2b", statement, paper, findings or [Finding("(no model)", MISSING, f"needs {needs}")], needs)


def top(rows: pd.DataFrame) -> pd.Series:
    """The most accurate row."""
    return rows.loc[rows["accuracy"].idxmax()]


def span_text(toy: bool) -> str:
    return f"[0, {MID[0]:.0%}) of T" if toy else f"[{MID[0]:.0%}, {MID[1]:.0%}] of T"


def partners(part: pd.DataFrame, name: str, default: str, a_value: str, b_value: str):
    """(A row, B row) pairs that differ only in estimator param ``name`` (A's value, B's value)."""
    others = sorted(c for c in part.columns if c.startswith("p_estimator_") and c != f"p_estimator_{name}")
    rows = part[["estimator", "trials", *others]].itertuples(index=False)
    key = pd.Series(["|".join(map(str, values)) for values in rows], index=part.index)
    value = param(part, name, default)
    for at in part.index[value == b_value]:
        match = part.index[(value == a_value) & (key == key[at])]
        if len(match):
            yield part.loc[match[0]], part.loc[at]


def claim_by_param(rows, outcomes, number, statement, paper, name, default, loser, winner) -> Claim:
    """Claims 3 and 4: ``winner`` beats ``loser`` for estimator param ``name``, all else equal."""

    def check(model: str, part: pd.DataFrame) -> Finding | None:
        comparisons = [
            compare(a, b, outcomes, f"{b['estimator_label']} vs {name}={loser} at {int(b['trials'])} trials")
            for a, b in partners(part, name, default, loser, winner)
        ]
        return beats(model, comparisons, f"{name}={winner}") if comparisons else None

    needs = f"rows of one estimator at {name}={winner} and {name}={loser}, all else equal"
    return Claim(number, statement, paper, per_model(rows, check, needs), needs)


def claim_adaptive(rows: pd.DataFrame, outcomes: dict) -> Claim:
    def check(model: str, part: pd.DataFrame) -> Finding | None:
        adaptive = plain(part, "adaptive")
        fixed = plain(part, "stratified")
        fixed = fixed[param(fixed, "mode", "random") == "even"]
        fixed = fixed if not fixed.empty else plain(part, "shared-noise")
        pairs = list(at_trials(fixed, adaptive))
        if not pairs:
            return None
        comparisons = [
            compare(
                a,
                b,
                outcomes,
                f"{b['estimator_label']} at {t} trials: {nfe(b):.0f} of {a['estimator_label']}'s "
                f"{nfe(a):.0f} NFE ({nfe(b) / nfe(a):.0%})",
            )
            for t, a, b in pairs
        ]
        # A budget at which adaptive spent the whole fixed budget eliminated nothing (one round: too few trials
        # to stop early); it says nothing about elimination, so it is shown but does not count.
        counted = [not eliminated_nothing(a, b) for _, a, b in pairs]
        if not any(counted):
            why = "adaptive spent the whole budget at every trials count (too few trials to eliminate a class)"
            return Finding(model, INCONCLUSIVE, why, comparisons)
        finding = reaches(
            model,
            [c for c, keep in zip(comparisons, counted, strict=True) if keep],
            [nfe(b) < nfe(a) for (_, a, b), keep in zip(pairs, counted, strict=True) if keep],
        )
        if not all(counted):
            finding.why += "; budgets where adaptive eliminated nothing are shown but not counted"
        finding.comparisons = comparisons
        return finding

    needs = "adaptive rows and stratified[mode=even] (or shared-noise) rows at the same trials"
    paper = "Li et al.: 2,750 NFE per CIFAR-10 image instead of 10 x 1,000"
    statement = "Adaptive elimination reaches the fixed-budget accuracy with a fraction of its NFE"
    return Claim(5, statement, paper, per_model(rows, check, needs), needs)


def eliminated_nothing(fixed: pd.Series, adaptive: pd.Series) -> bool:
    """Whether the adaptive row spent the fixed row's whole NFE (to 0.5%): nothing was eliminated."""
    return abs(nfe(adaptive) - nfe(fixed)) <= 0.005 * nfe(fixed)


def claim_references(rows: pd.DataFrame, outcomes: dict) -> Claim:
    needs = "rows with kind 'reference' on a dataset that estimators classified"
    references = rows[rows["kind"] == "reference"] if "kind" in rows else rows.iloc[:0]
    estimators = estimator_rows(rows)
    findings = []
    for data, refs in references.groupby("dataset_label", sort=True):
        mine = estimators[estimators["dataset_label"] == data]
        if mine.empty:
            findings.append(Finding(str(data), MISSING, f"needs {needs}"))
            continue
        best = mine.loc[mine["accuracy"].idxmax()]
        label = f"{best['denoiser_label']} {best['estimator_label']} at {int(best['trials'])} trials"
        comparisons = [compare(ref, best, outcomes, f"{label} vs {ref['estimator']}") for _, ref in refs.iterrows()]
        findings.append(reaches(str(data), comparisons))
    paper = "Li et al.: a diffusion classifier is competitive with discriminative classifiers"
    statement = "The best estimator is competitive with discriminative references on the same split"
    return Claim(6, statement, paper, findings or [Finding("(no reference)", MISSING, f"needs {needs}")], needs)


def check_claims(
    table: pd.DataFrame, predictions: pd.DataFrame | None = None, timesteps: pd.DataFrame | None = None
) -> list[Claim]:
    """Claims 1-6 on ``table``'s measured rows; ``predictions`` (per-sample, as stored by the runner) pair the tests,
    ``timesteps`` (the single-timestep accuracies) give claim 2b."""
    rows = usable(table)
    outcomes = correctness(predictions) if predictions is not None and len(predictions) else {}
    loss_paper = "Li et al.: l1 better on CIFAR-10 (88.4 vs 84.4), l2 better on ImageNet (61.4 vs 59.6)"
    weight_paper = "Li et al. (DiT on ImageNet): uniform weighting 77.5 vs the ELBO's 71.6"
    return [
        claim_shared_noise(rows, outcomes),
        claim_timesteps(rows, outcomes),
        claim_timestep_peak(timesteps),
        claim_by_param(rows, outcomes, 3, "The l1 loss beats l2", loss_paper, "loss", "l2", "l2", "l1"),
        claim_by_param(
            rows,
            outcomes,
            4,
            "Uniform (simple) weighting beats the ELBO's",
            weight_paper,
            "weighting",
            "simple",
            "elbo",
            "simple",
        ),
        claim_adaptive(rows, outcomes),
        claim_references(rows, outcomes),
    ]


def render(claims: list[Claim]) -> str:
    """claims.md: each claim with its verdict, the paper's number, each model's finding and comparisons."""
    lines = [
        "# Does it reproduce the paper?",
        "",
        f"Each comparison is B minus A on the same test points: McNemar's exact paired test where both cells' "
        f"per-sample predictions were stored, else an unpaired two-proportion z-test; 'better'/'worse' at p < "
        f"{ALPHA}. Verdicts: {HOLDS}, {FAILS}, {INCONCLUSIVE}, {MISSING}.",
    ]
    for claim in claims:
        lines += ["", f"## {claim.number}. {claim.statement}: {claim.verdict}", "", claim.paper + ".", ""]
        for finding in claim.findings:
            lines.append(f"- **{finding.model}**: {finding.verdict} ({finding.why})")
        rows = [c.line() for f in claim.findings for c in f.comparisons]
        if rows:
            lines += ["", "| B vs A | effect (B - A) | 95% CI | test | p | B is |", "|---|---|---|---|---|---|"]
            lines += rows
    return "\n".join(lines) + "\n"


def write_claims(
    table: pd.DataFrame,
    folder: Path,
    predictions: pd.DataFrame | None = None,
    timesteps: pd.DataFrame | None = None,
) -> tuple[Path, list[Claim]]:
    """Write ``folder/claims.md`` from ``table`` (and ``predictions``, ``timesteps``); returns its path and claims."""
    claims = check_claims(table, predictions, timesteps)
    path = Path(folder) / CLAIMS_FILE
    path.write_text(render(claims), encoding="utf-8")
    return path, claims


def asked(suite: dict | None) -> bool:
    """Whether a run's suite settings (suite.json) ask for the claims (``claims = true``, as li2023 does)."""
    return bool((suite or {}).get("claims"))


def write_run_claims(folder: Path) -> Path | None:
    """``folder/claims.md`` for a finished run whose suite asks for it; None (nothing written) otherwise."""
    from diffbench.rundir import RunFolder  # the run folder module reads tables through the results module

    run = RunFolder(Path(folder))
    if not asked(run.read_suite()):
        return None
    return write_claims(run.read_table(), run.path, run.read_predictions(), run.read_timesteps())[0]
