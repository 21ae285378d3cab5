"""The tidy results table: provenance, atomic writes, reading back and the terminal summary."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import diffbench
from diffbench.noise import with_flip_rate_ratio

TABLE = "results.parquet"
CSV = "results.csv"
REGIONS = "regions.parquet"
SAMPLES = "samples.parquet"
RELIABILITY = "reliability.parquet"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
BASELINE = "full-mc"  # variance_reduction is measured against this estimator in the same run


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (well behaved at 0 and 1)."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def git_commit() -> str:
    """The commit of the diffbench source tree, with ``-dirty`` if it has changes; '' outside git."""
    root = Path(diffbench.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_name()


def provenance() -> dict[str, Any]:
    """What every row records about the software and machine that produced it."""
    return {
        "diffbench_version": diffbench.__version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        **{f"env_{var.lower()}": os.environ.get(var, "") for var in THREAD_VARS},
        "cpu_name": cpu_name(),
        "cuda_devices": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())),
        "hostname": platform.node(),
        "git_commit": git_commit(),
        "command": " ".join(["diffbench", *sys.argv[1:]]),
    }


def param_columns(prefix: str, params: dict[str, Any]) -> dict[str, Any]:
    return {f"p_{prefix}_{k}": (str(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in params.items()}


def replace_atomically(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader (or a run killed half-way) never sees a half-written file; the file gets the
    usual permissions of a new file, not mkstemp's owner-only ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write parquet or csv atomically: never a half-written table."""
    if path.suffix == ".csv":
        replace_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
    else:
        replace_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))


def with_variance_reduction(frame: pd.DataFrame) -> pd.DataFrame:
    """variance_reduction = full-mc's gap_variance / this cell's, at the same pair, device, trials and seed."""
    if "gap_variance" not in frame:
        return frame
    keys = ["dataset_label", "denoiser_label", "device", "trials", "seed", "scenario", "dtype", "compile"]
    keys = [k for k in keys if k in frame]
    base = frame[(frame["estimator"] == BASELINE) & (frame["status"] == "ok")]
    base = base.drop_duplicates(keys)[keys + ["gap_variance"]].rename(columns={"gap_variance": "_baseline"})
    merged = frame.drop(columns=["variance_reduction"], errors="ignore").merge(base, on=keys, how="left")
    merged["variance_reduction"] = merged["_baseline"] / merged["gap_variance"]
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

    return frame.assign(concurrent=[overlaps(r) for r in frame.itertuples()])


def tidy(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The results table from saved rows: with the concurrency marks, variance reduction and flip-rate ratio."""
    if not rows:
        return pd.DataFrame(columns=["status"])
    return with_flip_rate_ratio(with_variance_reduction(with_concurrency(pd.DataFrame(rows))), BASELINE)


def with_variant_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Append dtype and compile to estimator labels when a run holds more than one such variant."""
    if not {"dtype", "compile"} <= set(frame.columns) or len(frame[["dtype", "compile"]].drop_duplicates()) < 2:
        return frame
    suffix = " [" + frame["dtype"].astype(str) + frame["compile"].map({True: ", compiled", False: ""}) + "]"
    return frame.assign(estimator_label=frame["estimator_label"] + suffix)


def offline(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the offline scenario (one per cell): what accuracy plots and summaries use."""
    return frame[frame["scenario"] == "offline"] if "scenario" in frame else frame


def read_table(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / TABLE
    if not path.is_file():
        raise FileNotFoundError(f"'{run_dir}' holds no {TABLE}; give the folder a `diffbench run` wrote")
    return pd.read_parquet(path)


def summary(frame: pd.DataFrame) -> str:
    """Accuracy by estimator x trials, and throughput at the largest trials, as text."""
    ok = with_variant_labels(offline(frame[frame["status"] == "ok"]))
    if ok.empty:
        return "no cell finished"
    parts = []
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
    return "\n\n".join(parts)
