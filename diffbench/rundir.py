"""A run folder on disk: each finished cell saved atomically, the settings it ran with, resuming.

Layout of ``DIR``:

- ``run.json``: the settings (suite, devices, checkpoint) that ``--resume`` must match;
- ``suite.json``: the suite that ran;
- ``cells/<id>.parquet``: one finished cell's rows (one per scenario), written atomically
  the moment it finishes; ``cells/<id>.bins.parquet``: its reliability bins;
  ``cells/<id>.predictions.parquet``: its per-sample labels and predictions (the seeded pass);
- ``skipped.json``: the lines that said why a pair or a dtype was skipped;
- ``parts/<group>.<kind>.parquet``: figure data (samples, regions) per trained model;
- ``results.parquet``/``results.csv`` and the figure tables: rebuilt from the above after
  every cell, atomically, so a run killed at any point leaves a readable table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from diffbench import results
from diffbench.atomic import replace_atomically, write_atomic

SETTINGS = "run.json"
SUITE = "suite.json"
SKIPPED = "skipped.json"
PREDICTIONS = "predictions.parquet"


class ResumeError(ValueError):
    """A run folder cannot be resumed with the settings given."""


def describe_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """``trials: [1] then, [1, 2] now; ...`` for every key (nested keys dotted) whose value differs."""
    parts = []
    for key in sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            parts.append(describe_differences(a, b, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return "; ".join(parts)


class RunFolder:
    """The files of one run; keeps the finished cells' rows in memory to rebuild the table cheaply."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.cells_dir = self.path / "cells"
        self.parts_dir = self.path / "parts"
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.bins: dict[str, list[dict[str, Any]]] = {}
        self.predictions: dict[str, pd.DataFrame] = {}

    # settings ---------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run has started here (its settings or its table exist)."""
        return (self.path / SETTINGS).exists() or (self.path / results.TABLE).exists()

    def settings(self) -> dict[str, Any] | None:
        path = self.path / SETTINGS
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ResumeError(f"'{path}' is unreadable ({exc}); start a new run with another --out") from None

    def start(self, settings: dict[str, Any], resume: bool, log=print) -> None:
        """Record the settings of a new run, or check that a resumed run's match; load finished cells."""
        settings = json.loads(json.dumps(settings, default=str))
        if resume:
            old = self.settings()
            if old is None:
                raise ResumeError(f"'{self.path}' holds no {SETTINGS}: it is not a diffbench run folder to resume")
            if old != settings:
                raise ResumeError(
                    f"cannot resume '{self.path}': its settings differ ({describe_differences(old, settings)}); "
                    "resume with the same settings, or start a new run with another --out"
                )
            self.load(log)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            for name, data in ((SETTINGS, settings), (SUITE, settings.get("suite", {}))):
                text = json.dumps(data, indent=2)
                replace_atomically(self.path / name, lambda tmp, text=text: Path(tmp).write_text(text))

    # cells ------------------------------------------------------------------------------
    def load(self, log=print) -> None:
        """Read every finished cell saved so far (a file is there only once complete).

        A cell whose files cannot be read (damaged after the run wrote them) is said in one
        line, its files are renamed ``*.unreadable``, and it counts as missing: it runs again.
        """
        if not self.cells_dir.is_dir():
            return
        for path in sorted(self.cells_dir.glob("*.parquet")):
            if path.name.endswith((".bins.parquet", ".predictions.parquet")):
                continue
            ident = path.name[: -len(".parquet")]
            bins = self.cells_dir / f"{ident}.bins.parquet"
            try:
                rows = pd.read_parquet(path).to_dict("records")
                cell_bins = pd.read_parquet(bins).to_dict("records") if bins.is_file() else []
            except Exception as exc:  # pyarrow raises its own types for damaged files
                for damaged in (path, bins):
                    if damaged.is_file():
                        damaged.replace(damaged.with_name(damaged.name + ".unreadable"))
                log(f"cell {ident} in {self.cells_dir} is unreadable ({type(exc).__name__}: {exc}); it runs again")
                continue
            self.rows[ident], self.bins[ident] = rows, cell_bins
            predictions = self.cells_dir / f"{ident}.predictions.parquet"
            if predictions.is_file():
                try:
                    self.predictions[ident] = pd.read_parquet(predictions)
                except Exception:  # predictions are a bonus: a damaged file loses the paired test, not the cell
                    predictions.replace(predictions.with_name(predictions.name + ".unreadable"))

    def finished(self) -> set[str]:
        """Ids of cells that finished with status ok (failed cells run again on resume)."""
        return {i for i, rows in self.rows.items() if rows and all(r.get("status") == "ok" for r in rows)}

    def save_cell(
        self,
        ident: str,
        rows: list[dict[str, Any]],
        bins: list[dict[str, Any]],
        predictions: dict[str, Any] | None = None,
    ) -> None:
        """Save one cell atomically: bins and predictions first, then rows (whose presence means finished)."""
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        if bins:
            write_atomic(pd.DataFrame(bins), self.cells_dir / f"{ident}.bins.parquet")
        saved = self.cells_dir / f"{ident}.predictions.parquet"
        if predictions is not None:
            frame = pd.DataFrame({"cell_id": ident, **predictions})
            write_atomic(frame, saved)
            self.predictions[ident] = frame
        elif self.predictions.pop(ident, None) is not None:  # a rerun that failed: no stale predictions
            saved.unlink(missing_ok=True)
        write_atomic(pd.DataFrame(rows), self.cells_dir / f"{ident}.parquet")
        self.rows[ident], self.bins[ident] = rows, bins

    def save_part(self, group: str, kind: str, frame: pd.DataFrame) -> None:
        write_atomic(frame, self.parts_dir / f"{group}.{kind}.parquet")

    # tables -----------------------------------------------------------------------------
    def table(self, order: list[str]) -> pd.DataFrame:
        """Every saved row, cells in grid order (cells of an older grid last)."""
        known = [i for i in order if i in self.rows] + [i for i in self.rows if i not in set(order)]
        rows = [r for i in known for r in self.rows[i]]
        return results.tidy(rows)

    def write_tables(self, order: list[str]) -> pd.DataFrame:
        """Rebuild the results table and the figure tables from the saved parts, atomically."""
        frame = self.table(order)
        write_atomic(frame, self.path / results.TABLE)
        write_atomic(frame, self.path / results.CSV)
        bins = [b for i in order for b in self.bins.get(i, [])]
        if bins:
            write_atomic(pd.DataFrame(bins), self.path / results.RELIABILITY)
        predictions = [self.predictions[i] for i in order if i in self.predictions]
        if predictions:
            write_atomic(pd.concat(predictions, ignore_index=True), self.path / PREDICTIONS)
        for kind, name in (("samples", results.SAMPLES), ("regions", results.REGIONS)):
            parts = sorted(self.parts_dir.glob(f"*.{kind}.parquet")) if self.parts_dir.is_dir() else []
            if parts:
                merged = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
                write_atomic(merged, self.path / name)
        return frame

    # skips ------------------------------------------------------------------------------
    def note_skipped(self, line: str) -> None:
        """Keep a line that said why something was skipped (once), in ``skipped.json``."""
        path = self.path / SKIPPED
        lines = json.loads(path.read_text()) if path.is_file() else []
        if line not in lines:
            text = json.dumps([*lines, line], indent=1)
            replace_atomically(path, lambda tmp: Path(tmp).write_text(text))

    def keeping_skips(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` that also keeps every 'skipping ...' line in the folder."""

        def log_and_keep(message: str) -> None:
            log(message)
            if message.startswith("skipping "):
                self.note_skipped(message)

        return log_and_keep
