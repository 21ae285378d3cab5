"""The tidy results table: its file names, derived columns, reading back and the terminal summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from diffbench import columns
from diffbench.cell import PEER_KEY
from diffbench.flip_rate import RATIO, with_flip_rate_ratio

TABLE = "results.parquet"
CSV = "results.csv"
REGIONS = "regions.parquet"
SAMPLES = "samples.parquet"
TIMESTEPS = "timesteps.parquet"
RELIABILITY = "reliability.parquet"


def with_variance_reduction(frame: pd.DataFrame) -> pd.DataFrame:
    """variance_reduction = the baseline's gap_variance / this cell's, at the same model, device, trials and seed.

    The baseline is the estimator whose rows say ``variance_baseline`` (plain Monte Carlo: the
    estimator class's attribute of that name, recorded by the runner).
    """
    if not {"gap_variance", "variance_baseline"} <= set(frame.columns):
        return frame
    keys = [k for k in PEER_KEY if k in frame]
    base = frame[frame["variance_baseline"].fillna(False).astype(bool) & (frame["status"] == "ok")]
    base = base.drop_duplicates(keys)[keys + ["gap_variance"]].rename(columns={"gap_variance": "_baseline"})
    name = columns.derived("variance_reduction")
    merged = frame.drop(columns=[name], errors="ignore").merge(base, on=keys, how="left")
    merged[name] = merged["_baseline"] / merged["gap_variance"]
    return merged.drop(columns=["_baseline"])


def with_concurrency(frame: pd.DataFrame) -> pd.DataFrame:
    """concurrent = the cell ran while another cell, or a training, ran on the same host.

    Intervals come from each row's ``started_at``/``finished_at`` (the cell) and
    ``train_started_at``/``train_finished_at`` (its model's training, when trained in the run).
    """
    if not {"host", "started_at", "finished_at", "cell_id"} <= set(frame.columns):
        return frame
    spans = []
    for row in frame.drop_duplicates("cell_id").itertuples():
        spans.append((row.host, row.started_at, row.finished_at, row.cell_id))
    if "train_started_at" in frame:
        trained = frame.dropna(subset=["train_started_at"]).drop_duplicates(["host", "train_started_at"])
        spans += [(r.host, r.train_started_at, r.train_finished_at, "") for r in trained.itertuples()]

    def overlaps(row) -> bool:
        return any(
            host == row.host and cell != row.cell_id and start < row.finished_at and row.started_at < end
            for host, start, end, cell in spans
        )

    return frame.assign(**{columns.derived("concurrent"): [overlaps(r) for r in frame.itertuples()]})


def tidy(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The results table from saved rows (``columns.row``'s) with the derived columns ``columns.DERIVED`` declares:
    the concurrency marks, variance reduction and flip-rate ratio."""
    if not rows:
        return pd.DataFrame(columns=["status"])
    columns.derived(RATIO)
    return with_flip_rate_ratio(with_variance_reduction(with_concurrency(pd.DataFrame(rows))))


def with_variant_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Append dtype and compile to estimator labels when a run holds more than one such variant."""
    if not {"dtype", "compile"} <= set(frame.columns) or len(frame[["dtype", "compile"]].drop_duplicates()) < 2:
        return frame
    suffix = " [" + frame["dtype"].astype(str) + frame["compile"].map({True: ", compiled", False: ""}) + "]"
    return frame.assign(estimator_label=frame["estimator_label"] + suffix)


def is_reference(frame: pd.DataFrame) -> pd.Series:
    """Which rows are reference classifiers' (``kind`` = reference); a table from before references has none."""
    return frame["kind"].eq("reference") if "kind" in frame else pd.Series(False, index=frame.index)


def references(frame: pd.DataFrame) -> pd.DataFrame:
    """The reference classifiers' rows (one per dataset and reference), never an estimator's."""
    return frame[is_reference(frame)]


def offline(frame: pd.DataFrame) -> pd.DataFrame:
    """The estimators' rows of the offline scenario (one per cell): what accuracy plots and summaries use."""
    frame = frame[~is_reference(frame)]
    return frame[frame["scenario"] == "offline"] if "scenario" in frame else frame


def single(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the single-sample scenario (one per cell; none in a table that predates scenarios)."""
    return frame[frame["scenario"] == "single"] if "scenario" in frame else frame.iloc[0:0]


#: Columns every results table has had; a parquet without them is not a diffbench table.
REQUIRED = ("status", "dataset_label", "denoiser_label", "estimator_label", "trials", "device", "seed")
#: Columns a table with finished cells needs for comparisons; plots also read ``PLOTTED``.
REQUIRED_OK = ("accuracy", "n_test", "samples_per_s")
PLOTTED = (*REQUIRED_OK, "nfe_per_sample")


class TableError(ValueError):
    """A saved table is damaged or not diffbench's (one line naming the file and what is wrong)."""


def read_parquet_file(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A parquet file of a run folder, or TableError saying why it cannot be used."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own types for damaged files
        detail = " ".join(str(exc).split())[:160]
        raise TableError(f"'{path}' is not a readable parquet table ({type(exc).__name__}: {detail})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TableError(f"'{path}' lacks the column(s) {', '.join(missing)}: it is not a table `diffbench run` wrote")
    return frame


def read_table(run_dir: Path, required_ok: tuple[str, ...] = REQUIRED_OK) -> pd.DataFrame:
    """A run folder's results table; FileNotFoundError or TableError (one line) when it cannot be used.

    A table whose cells finished must have the ``required_ok`` columns, numeric.
    """
    path = Path(run_dir) / TABLE
    if not path.is_file():
        raise FileNotFoundError(f"'{run_dir}' holds no {TABLE}; give the folder a `diffbench run` wrote")
    frame = read_parquet_file(path, REQUIRED)
    missing = [c for c in required_ok if c not in frame.columns]
    if missing and (frame["status"] == "ok").any():
        raise TableError(f"'{path}' has finished cells without the column(s) {', '.join(missing)}: it is damaged")
    for column in required_ok:
        if column in frame and not pd.api.types.is_numeric_dtype(frame[column]):
            raise TableError(f"'{path}': column {column} is not numeric ({frame[column].dtype}): it is damaged")
    return frame


def summary(frame: pd.DataFrame) -> str:
    """As text: accuracy by estimator x trials and throughput at the largest trials (offline), and the
    single-sample latency by estimator x trials (single), per dataset x denoiser x device."""
    ok = frame[frame["status"] == "ok"]
    parts = offline_summary(with_variant_labels(offline(ok))) + single_summary(with_variant_labels(single(ok)))
    parts += reference_summary(references(ok))
    return "\n\n".join(parts) if parts else "no cell finished"


def reference_summary(refs: pd.DataFrame) -> list[str]:
    """Each dataset's reference classifiers: accuracy with its 95% interval, fit seconds (or "cached") and samples/s."""
    parts: list[str] = []
    if refs.empty:
        return parts
    for dataset, group in refs.groupby("dataset_label", sort=False):
        lines = [
            f"  {r.estimator_label:<16} {r.accuracy:.3f} [{r.accuracy_ci_low:.3f}, {r.accuracy_ci_high:.3f}]"
            f"  {'fit cached' if getattr(r, 'cache_hit', False) is True else f'fit {r.train_s:.2f}s'}, "
            f"{r.samples_per_s:,.0f} samples/s"
            for r in group.itertuples()
        ]
        parts.append(f"{dataset}: reference classifiers, accuracy [95% CI]\n" + "\n".join(lines))
    return parts


def offline_summary(ok: pd.DataFrame) -> list[str]:
    """Accuracy by estimator x trials, and throughput at the largest trials, per dataset x denoiser x device."""
    parts: list[str] = []
    if ok.empty:
        return parts
    for (dataset, denoiser, device), group in ok.groupby(["dataset_label", "denoiser_label", "device"], sort=False):
        acc = group.pivot_table(index="estimator_label", columns="trials", values="accuracy", sort=False)
        last = group[group["trials"] == group["trials"].max()].set_index("estimator_label")
        speed = last[["nfe_per_sample", "samples_per_s", "efficiency"]]
        bayes = group["bayes_accuracy"].iloc[0] if "bayes_accuracy" in group else math.nan
        optimum = "" if pd.isna(bayes) else f" (Bayes-optimal accuracy {bayes:.3f})"
        parts.append(
            f"{dataset} x {denoiser} on {device}: accuracy by trials{optimum}\n{acc.round(3).to_string()}\n"
            f"at {int(group['trials'].max())} trials:\n{speed.round(2).to_string()}"
        )
    return parts


def single_summary(ok: pd.DataFrame) -> list[str]:
    """Median single-sample latency (ms) by estimator x trials, per dataset x denoiser x device."""
    parts: list[str] = []
    if ok.empty:
        return parts
    for (dataset, denoiser, device), group in ok.groupby(["dataset_label", "denoiser_label", "device"], sort=False):
        latency = group.pivot_table(index="estimator_label", columns="trials", values="latency_p50_ms", sort=False)
        parts.append(
            f"{dataset} x {denoiser} on {device}: single-sample latency p50 (ms) by trials\n"
            f"{latency.round(3).to_string()}"
        )
    return parts
