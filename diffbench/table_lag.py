"""Whether a run folder's results table lags its finished cells (a run killed between two rebuilds of it).

The runner rebuilds the table at most every few seconds; each cell's own file is written the
moment it finishes. A reader compares the two and, where the table lags, rebuilds it from the
cells (``RunFolder.read_table``). The figure tables merged from each model's parts lag the same
way (``parts_lag``; ``RunFolder.read_figure_table`` merges them afresh).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def cell_files(cells_dir: Path, side_files: tuple[str, ...]) -> list[Path]:
    """The finished cells' row files: not their side files (bins, predictions: ``side_files``), not damaged ones."""
    if not cells_dir.is_dir():
        return []
    return sorted(p for p in cells_dir.glob("*.parquet") if not p.name.endswith(side_files))


def listed_cells(table: Path) -> list[str]:
    """The cell ids a results table holds, in its order; [] for no table or a damaged one."""
    try:
        return list(dict.fromkeys(pd.read_parquet(table, columns=["cell_id"])["cell_id"]))
    except Exception:  # pyarrow raises its own types for damaged files; an old table may lack cell ids
        return []


def table_lags(table: Path, cells: list[Path]) -> bool:
    """Whether a cell file is newer than the table, or missing from it (or the table is missing or unreadable)."""
    try:
        made = table.stat().st_mtime_ns
    except OSError:
        return True
    if any(cell.stat().st_mtime_ns > made for cell in cells):
        return True
    return not {cell.name[: -len(".parquet")] for cell in cells} <= set(listed_cells(table))


def parts_lag(table: Path, parts: list[Path]) -> bool:
    """Whether a figure part may be newer than the table merged from the parts, or the table is missing.

    A part written in the same clock tick as the table counts as newer: merging again is only work.
    """
    try:
        made = table.stat().st_mtime_ns
    except OSError:
        return bool(parts)
    return any(part.stat().st_mtime_ns >= made for part in parts)


def rebuilt_order(table: Path, rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The cells of a rebuilt table: those the old table held in its order, then the rest as they started."""
    listed = [i for i in listed_cells(table) if i in rows]
    rest = sorted(set(rows) - set(listed), key=lambda i: min((r.get("started_at") or 0) for r in rows[i]))
    return listed + rest


def table_is_empty(table: Path) -> bool:
    """Whether a results table holds no row (written by a run interrupted before its first cell)."""
    try:
        return pd.read_parquet(table).empty
    except Exception:  # a damaged table is reported by the reader that needs it
        return False
