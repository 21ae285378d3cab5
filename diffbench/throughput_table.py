"""Throughput of the same cells on several devices and variants, side by side, as a markdown table.

Made from any run folders (their results tables): each finished cell is keyed by data x denoiser,
estimator and trials, and each (device, dtype, compile) variant found becomes a column. Two tables:
``offline`` (samples/s, efficiency in brackets) and ``single`` (latency p50, efficiency in
brackets, ``graph`` where the call ran as a CUDA graph), each with the best CUDA variant's speed-up
over CPU float32 where both ran. This is what ``python -m diffbench.gpu_reference`` prints for README.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from diffbench import results
from diffbench.cuda_graphs import GRAPHED
from diffbench.rundir import RunFolder

KEY = ["dataset_label", "denoiser_label", "estimator_label", "trials"]
DTYPE_ORDER = {"float32": 0, "bfloat16": 1, "float16": 2}
CPU_BASELINE = ("cpu", "float32", False)


def load_rows(folders: list[Path]) -> pd.DataFrame:
    """The finished rows of every folder, one per cell, scenario and variant (a later folder's row wins)."""
    frames = []
    for folder in folders:
        frame = RunFolder(folder).read_table()
        frames.append(frame[(frame["status"] == "ok") & ~results.is_reference(frame)])  # estimators' cells only
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if rows.empty:
        return rows
    defaults = {"dtype": "float32", "compile": False, "scenario": "offline", "single_mode": ""}
    rows = rows.assign(**{c: rows[c].fillna(v) if c in rows else v for c, v in defaults.items()})
    rows["compile"] = rows["compile"].astype(bool)
    return rows.drop_duplicates([*KEY, "scenario", "device", "dtype", "compile"], keep="last")


def variant_name(variant: tuple[str, str, bool]) -> str:
    device, dtype, compiled = variant
    return f"{device} {dtype}{' compiled' if compiled else ''}"


def variants(rows: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """The (device, dtype, compile) variants present: CPU first, then by dtype, eager before compiled."""
    found = {(d, t, bool(c)) for d, t, c in rows[["device", "dtype", "compile"]].itertuples(index=False)}
    return sorted(found, key=lambda v: (v[0] != "cpu", v[0], DTYPE_ORDER.get(v[1], 9), v[1], v[2]))


def offline_cell(row: pd.Series | None) -> str:
    if row is None:
        return "—"
    return f"{row['samples_per_s']:,.0f}/s ({row['efficiency']:.2f})"


def single_cell(row: pd.Series | None) -> str:
    if row is None or pd.isna(row.get("latency_p50_ms")):
        return "—"
    graphed = ", graph" if row.get("single_mode") == GRAPHED else ""
    return f"{row['latency_p50_ms']:.3g} ms ({row['efficiency']:.2f}{graphed})"


def speedup(by_variant: dict[tuple[str, str, bool], pd.Series], single: bool) -> str:
    """The best CUDA variant against CPU float32: samples/s ratio (offline) or p50 ratio (single)."""
    cpu = by_variant.get(CPU_BASELINE)
    cuda = [row for (device, _, _), row in by_variant.items() if device == "cuda"]
    if cpu is None or not cuda:
        return "—"
    if single:
        best = min(row["latency_p50_ms"] for row in cuda)
        return f"{cpu['latency_p50_ms'] / best:.1f}×" if best > 0 else "—"
    return f"{max(row['samples_per_s'] for row in cuda) / cpu['samples_per_s']:.1f}×"


def scenario_table(rows: pd.DataFrame, scenario: str) -> str:
    """One markdown table: a row per cell, a column per variant, and the CUDA speed-up where CPU ran too."""
    rows = rows[rows["scenario"] == scenario]
    if rows.empty:
        return ""
    columns = variants(rows)
    single = scenario == "single"
    with_speedup = CPU_BASELINE in columns and any(v[0] == "cuda" for v in columns)
    head = ["data × denoiser", "estimator", "trials", *map(variant_name, columns)]
    head += ["best CUDA ÷ CPU"] if with_speedup else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, denoiser, estimator, trials), cell in rows.groupby(KEY, sort=False):
        by_variant = {(r["device"], r["dtype"], bool(r["compile"])): r for _, r in cell.iterrows()}
        shown = [(single_cell if single else offline_cell)(by_variant.get(v)) for v in columns]
        tail = [speedup(by_variant, single)] if with_speedup else []
        lines.append(
            "| " + " | ".join([f"{dataset} × {denoiser}", f"`{estimator}`", str(trials), *shown, *tail]) + " |"
        )
    return "\n".join(lines)


def machines(rows: pd.DataFrame) -> str:
    """One line per device: its name, and for CPU the threads torch used."""
    parts = []
    for device, group in rows.groupby("device", sort=True):
        name = group["device_name"].iloc[0] if "device_name" in group else device
        threads = ""
        if device == "cpu" and "threads" in group:
            count = int(group["threads"].iloc[0])
            threads = f", {count} thread{'s' if count != 1 else ''}"
        parts.append(f"{device}: {name}{threads}")
    torch_version = f"; torch {rows['torch_version'].iloc[0]}" if "torch_version" in rows else ""
    return "; ".join(parts) + torch_version


def eager_reasons(rows: pd.DataFrame) -> list[str]:
    """The distinct reasons CUDA single-sample calls ran eagerly (a capture refused or failed)."""
    cuda = rows[(rows["scenario"] == "single") & (rows["device"] == "cuda")]
    modes = cuda["single_mode"].astype(str)
    return sorted({m for m in modes if m and m != GRAPHED})


def markdown(rows: pd.DataFrame) -> str:
    """Both tables with a line on the machines, ready to paste into README."""
    if rows.empty:
        return "no finished cell in these folders"
    parts = [f"Measured on {machines(rows)}."]
    offline = scenario_table(rows, "offline")
    if offline:
        parts.append(
            "Offline (the whole test set at once): samples/s (efficiency against the bare network).\n\n" + offline
        )
    single = scenario_table(rows, "single")
    if single:
        parts.append(
            "Single (one sample per call): latency p50 (efficiency against the bare network on the same rows; "
            "`graph`: the call ran as a CUDA graph).\n\n" + single
        )
        reasons = eager_reasons(rows)
        if reasons:
            parts.append("CUDA single-sample calls that ran eagerly: " + "; ".join(f"`{r}`" for r in reasons) + ".")
    return "\n\n".join(parts) + "\n"


def table_from_folders(folders: list[Path]) -> str:
    """``markdown`` of the finished cells of these run folders (FileNotFoundError or TableError for a bad one)."""
    return markdown(load_rows(folders))
