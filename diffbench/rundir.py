"""A run folder on disk: each finished cell saved atomically, the settings it ran with, resuming.

Layout of ``DIR``:

- ``run.json``: the settings (suite, devices, checkpoint) that ``--resume`` must match;
- ``suite.json``: the suite that ran;
- ``cells/<id>.parquet``: one finished cell's rows (one per scenario), written atomically
  the moment it finishes; ``cells/<id>.bins.parquet``: its reliability bins;
  ``cells/<id>.predictions.parquet``: its per-sample labels and predictions (the seeded pass);
- ``skipped.json``: the lines that said why a pair or a dtype was skipped;
- ``cache.json`` (``--errors bank``): the cache folders the run's error banks went to (``diffbench.bank_file``);
- ``parts/<group>.<kind>.parquet``: figure data (samples, regions, timesteps) per trained model;
- ``results.parquet``/``results.csv``, ``predictions.parquet`` and the figure tables: rebuilt
  from the above, atomically, at most every few seconds while cells finish (the runner's
  ``TABLES_EVERY_S``, 5 s), always at the end of a run and on any exception; a run killed at any
  point leaves a readable table, and ``--resume`` rebuilds it from the cells' own files; a reader
  whose table lags ``cells/`` rebuilds it too (``table_lag``). One process writes a folder at a time
  (``folder_lock``: ``start`` takes an OS-level lock, ``release`` lets it go at the end of the run; it
  goes with the process however that dies).

The folder's file names are known here alone: the report, the plots, the paired tests and the
throughput table read a run back through ``RunFolder``'s readers (``read_table``, ``read_suite``,
``read_skipped``, ``read_predictions`` and the figure parts ``read_reliability_bins``,
``read_samples``, ``read_regions``, ``read_timesteps``; a figure table older than its parts, from a run
killed between the two, is merged afresh from ``parts/``). The plots' PNG names are declared with the plots.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from diffbench import results
from diffbench.atomic import replace_atomically, write_atomic
from diffbench.folder_lock import busy_line, held, try_lock_folder, unlock_folder
from diffbench.table_lag import cell_files, parts_lag, rebuilt_order, table_is_empty, table_lags

SETTINGS = "run.json"
SUITE = "suite.json"
SKIPPED = "skipped.json"
PREDICTIONS = "predictions.parquet"
CELL_SIDE_FILES = (".bins.parquet", ".predictions.parquet")  # beside each cell's rows in cells/
WRITE_CHECK = ".diffbench-write-check-"  # the file check_writable_folder writes and deletes
#: Each kind of figure data saved per model in parts/, and the table merged from them.
FIGURE_PARTS = {"samples": results.SAMPLES, "regions": results.REGIONS, "timesteps": results.TIMESTEPS}


class ResumeError(ValueError):
    """A run folder cannot be resumed with the settings given."""


class FolderError(ValueError):
    """A folder the run must write into cannot be written (under a file, read-only, on /proc...)."""


class NoFinishedCellError(FileNotFoundError):
    """A run folder whose run stopped before its first cell finished: nothing to read yet."""


class TableWriteError(RuntimeError):
    """The results table could not be written; the finished cells' own files are kept."""


def check_writable_folder(path: Path, what: str) -> None:
    """Create ``path`` if needed and write (then delete) a file in it; else FolderError in one line.

    Run before anything trains, so an unusable ``--out`` or ``--cache`` costs nothing.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderError(f"{what} '{path}' is a file, not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=WRITE_CHECK):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise FolderError(f"{what} '{path}' cannot be written ({reason}); give a folder you can write to") from None


def storable(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with every column parquet cannot hold as it is (mixed types, ints past int64) as text.

    Returns the columns converted; a finished cell is saved with them rather than lost.
    """
    converted = []
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        try:
            pa_array(frame[column])
        except Exception:  # pyarrow's own error types for mixed or out-of-range values
            converted.append(column)
    if converted:
        frame = frame.assign(**{c: frame[c].map(lambda v: v if v is None else str(v)) for c in converted})
    return frame, converted


def pa_array(column: pd.Series) -> None:
    import pyarrow as pa

    pa.array(column, from_pandas=True)


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


def cell_identity(rows: list[dict[str, Any]], file_ident: str) -> str:
    """The cell a saved file holds: the ``cell_id`` inside its rows (the file name only for old files)."""
    ids = {r.get("cell_id") for r in rows}
    only = ids.pop() if len(ids) == 1 else None
    return only if isinstance(only, str) and only else file_ident


class RunFolder:
    """The files of one run; keeps the finished cells' rows in memory to rebuild the table cheaply."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.cells_dir = self.path / "cells"
        self.parts_dir = self.path / "parts"
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.bins: dict[str, list[dict[str, Any]]] = {}
        self.predictions: dict[str, pd.DataFrame] = {}
        self.rebuilt = False  # read_table rebuilt the tables from cells/ (kept in memory where not written back)
        self.problems: list[str] = []  # lines a reader said about damaged files it read around

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
        self.take_lock()
        if resume:
            old = self.settings()
            if old is None:
                raise ResumeError(f"'{self.path}' holds no {SETTINGS}: it is not a diffbench run folder to resume")
            if old != settings:
                raise ResumeError(
                    f"cannot resume '{self.path}': its settings differ ({describe_differences(old, settings)}); "
                    "resume with the same settings, or start a new run with another --out"
                )
            self.remove_leftovers()
            self.load(log)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            for name, data in ((SETTINGS, settings), (SUITE, settings.get("suite", {}))):
                text = json.dumps(data, indent=2)
                replace_atomically(self.path / name, lambda tmp, text=text: Path(tmp).write_text(text))

    def take_lock(self) -> None:
        """Hold the folder for this process (one writer at a time); ResumeError when another process writes it."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not try_lock_folder(self.path):
            raise ResumeError(busy_line(self.path))

    def release(self) -> None:
        """Let the folder go at the end of a run: the next run or --resume of it, here or elsewhere, may write it."""
        unlock_folder(self.path)

    def remove_leftovers(self) -> None:
        """Delete the temporary files a process killed half-way left: an atomic write's ``*.tmp``, the write
        check's file; never a table."""
        for folder in (self.path, self.cells_dir, self.parts_dir):
            for tmp in [*folder.glob("*.tmp"), *folder.glob(f"{WRITE_CHECK}*")]:
                tmp.unlink(missing_ok=True)

    def check_writable(self) -> None:
        """FolderError (one line) unless this run's folder can be created and written."""
        check_writable_folder(self.path, "--out")

    # cells ------------------------------------------------------------------------------
    def load(self, log=print, rename_damaged: bool = True) -> None:
        """Read every finished cell saved so far (a file is there only once complete).

        A cell whose files cannot be read (damaged after the run wrote them) is said in one
        line, its files are renamed ``*.unreadable``, and it counts as missing: it runs again.
        """
        if not self.cells_dir.is_dir():
            return
        for path in sorted(self.cells_dir.glob("*.parquet")):
            if path.name.endswith(CELL_SIDE_FILES):
                continue
            ident = path.name[: -len(".parquet")]
            bins = self.cells_dir / f"{ident}.bins.parquet"
            try:
                rows = pd.read_parquet(path).to_dict("records")
                cell_bins = pd.read_parquet(bins).to_dict("records") if bins.is_file() else []
            except Exception as exc:  # pyarrow raises its own types for damaged files
                for damaged in (path, bins) if rename_damaged else ():
                    if damaged.is_file():
                        damaged.replace(damaged.with_name(damaged.name + ".unreadable"))
                log(f"cell {ident} in {self.cells_dir} is unreadable ({type(exc).__name__}: {exc}); it runs again")
                continue
            ident = cell_identity(rows, ident)  # a renamed or copied file holds the same cell: one entry
            if ident in self.rows:
                log(f"{path} holds cell {ident} again (a copy?); its rows are counted once")
                continue
            self.rows[ident], self.bins[ident] = rows, cell_bins
            predictions = self.cells_dir / f"{ident}.predictions.parquet"
            if predictions.is_file():
                try:
                    self.predictions[ident] = pd.read_parquet(predictions)
                except Exception:  # predictions are a bonus: a damaged file loses the paired test, not the cell
                    if rename_damaged:
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
    ) -> str:
        """Save one cell atomically: bins and predictions first, then rows (whose presence means finished).

        Columns parquet cannot hold as they are are saved as text (``storable``); returns a line
        saying so, else ''.
        """
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        if bins:
            write_atomic(storable(pd.DataFrame(bins))[0], self.cells_dir / f"{ident}.bins.parquet")
        saved = self.cells_dir / f"{ident}.predictions.parquet"
        if predictions is not None:
            frame = pd.DataFrame({"cell_id": ident, **predictions})
            write_atomic(frame, saved)
            self.predictions[ident] = frame
        elif self.predictions.pop(ident, None) is not None:  # a rerun that failed: no stale predictions
            saved.unlink(missing_ok=True)
        frame, converted = storable(pd.DataFrame(rows))
        write_atomic(frame, self.cells_dir / f"{ident}.parquet")
        self.rows[ident], self.bins[ident] = frame.to_dict("records") if converted else rows, bins
        if converted:
            return f"cell {ident}: column(s) {', '.join(converted)} saved as text (parquet cannot hold their values)"
        return ""

    def save_part(self, group: str, kind: str, frame: pd.DataFrame) -> None:
        write_atomic(frame, self.parts_dir / f"{group}.{kind}.parquet")

    # tables -----------------------------------------------------------------------------
    def table(self, order: list[str]) -> pd.DataFrame:
        """Every saved row, cells in grid order (cells of an older grid last)."""
        known = [i for i in order if i in self.rows] + [i for i in self.rows if i not in set(order)]
        rows = [r for i in known for r in self.rows[i]]
        return results.tidy(rows)

    def write_tables(self, order: list[str]) -> pd.DataFrame:
        """Rebuild the results table and the figure tables from the saved parts, atomically.

        Raises TableWriteError (the cells' own files stay) when a table cannot be written.
        """
        try:
            return self._write_tables(order)
        except Exception as exc:
            raise TableWriteError(
                f"cannot write the tables of '{self.path}' ({type(exc).__name__}: {exc}); every finished cell is "
                f"kept in {self.cells_dir}, and `diffbench run --resume {self.path}` rebuilds the table"
            ) from exc

    def _write_tables(self, order: list[str]) -> pd.DataFrame:
        frame = storable(self.table(order))[0]
        write_atomic(frame, self.path / results.TABLE)
        write_atomic(frame, self.path / results.CSV)
        bins = [b for i in order for b in self.bins.get(i, [])]
        if bins:
            write_atomic(storable(pd.DataFrame(bins))[0], self.path / results.RELIABILITY)
        predictions = [self.predictions[i] for i in order if i in self.predictions]
        if predictions:
            write_atomic(pd.concat(predictions, ignore_index=True), self.path / PREDICTIONS)
        for kind, name in FIGURE_PARTS.items():
            parts = self.part_files(kind)
            if parts:
                merged = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
                write_atomic(merged, self.path / name)
        return frame

    def part_files(self, kind: str) -> list[Path]:
        """The figure parts of one kind, one per model, in a fixed order."""
        return sorted(self.parts_dir.glob(f"*.{kind}.parquet")) if self.parts_dir.is_dir() else []

    # skips ------------------------------------------------------------------------------
    def note_skipped(self, line: str) -> None:
        """Keep a line that said why something was skipped (once), in ``skipped.json``."""
        lines = self.read_skipped() or []
        if line not in lines:
            text = json.dumps([*lines, line], indent=1)
            replace_atomically(self.path / SKIPPED, lambda tmp: Path(tmp).write_text(text))

    def keeping_skips(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` that also keeps every 'skipping ...' line in the folder."""

        def log_and_keep(message: str) -> None:
            log(message)
            if message.startswith("skipping "):
                self.note_skipped(message)

        return log_and_keep

    # reading a run back (report, plots, compare) ------------------------------------------
    def read_table(self, required_ok: tuple[str, ...] = results.REQUIRED_OK) -> pd.DataFrame:
        """The results table, with every finished cell; FileNotFoundError or TableError (one line) when none.

        A table whose cells finished must have the ``required_ok`` columns, numeric. Where ``cells/``
        holds a cell newer than the table or missing from it (a run killed between two rebuilds),
        the tables are rebuilt from ``cells/``: written back when the folder is writable and no run
        writes it, else kept in memory. NoFinishedCellError for a run stopped before its first cell.
        """
        cells = cell_files(self.cells_dir, CELL_SIDE_FILES)
        if cells and table_lags(self.path / results.TABLE, cells):
            frame = self.rebuild_tables()
            if not frame.empty:
                return frame
        path = self.path / results.TABLE
        if (not path.is_file() and self.holds_run()) or (path.is_file() and not cells and table_is_empty(path)):
            raise NoFinishedCellError(
                f"'{self.path}' holds no finished cell yet (its run stopped before the first cell finished); "
                f"finish it with `diffbench run --resume {self.path}`"
            )
        return results.read_table(self.path, required_ok)

    def rebuild_tables(self) -> pd.DataFrame:
        """The tables from ``cells/`` (cells in the old table's order, then as they finished), read back as saved."""
        self.rows, self.bins, self.predictions = {}, {}, {}
        self.load(log=self.problems.append, rename_damaged=False)
        order = rebuilt_order(self.path / results.TABLE, self.rows)
        self.rebuilt, locked_here = True, False
        try:
            locked_here = not held(self.path) and try_lock_folder(self.path)
            if held(self.path):  # no other process writes the folder
                self._write_tables(order)
                return results.read_table(self.path, ())
        except OSError:  # a read-only folder, a full disk: the rebuilt table serves from memory
            pass
        finally:
            if locked_here:
                unlock_folder(self.path)
        buffer = io.BytesIO()
        storable(self.table(order))[0].to_parquet(buffer, index=False)
        return pd.read_parquet(buffer)

    def read_suite(self) -> dict[str, Any] | None:
        """The suite that ran; None for a folder that does not hold it (or holds it damaged: said in ``problems``)."""
        return self.read_json(SUITE)

    def read_skipped(self) -> list[str] | None:
        """The lines that said why something was skipped; None for a folder that predates skip records."""
        if (self.path / SKIPPED).is_file():
            return self.read_json(SKIPPED)
        if (self.path / SETTINGS).is_file() and self.cells_dir.is_dir():
            return []  # a run that keeps skip records and skipped nothing
        return None

    def read_json(self, name: str) -> Any:
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.problems.append(f"'{path}' is unreadable ({type(exc).__name__}: {exc}); it is left out")
            return None

    def read_predictions(self) -> pd.DataFrame:
        """The per-sample predictions of every cell (empty for runs from before they were stored, or damaged)."""
        path = self.path / PREDICTIONS
        if self.rebuilt and self.predictions:
            return pd.concat(self.predictions.values(), ignore_index=True)
        if path.is_file():
            try:
                return results.read_parquet_file(path)
            except results.TableError as exc:
                self.problems.append(f"{exc}; the paired tests are left out")
        return pd.DataFrame(columns=["cell_id", "sample", "label", "pred", "test_digest"])

    def read_reliability_bins(self) -> pd.DataFrame | None:
        """Every cell's reliability bins; None when the run saved none."""
        return self.read_figure_table(results.RELIABILITY)

    def read_samples(self) -> pd.DataFrame | None:
        """The models' own samples beside test data (figure data); None when the run saved none."""
        return self.read_figure_table(results.SAMPLES, "samples")

    def read_regions(self) -> pd.DataFrame | None:
        """The estimators' decision regions over the plane (figure data); None when the run saved none."""
        return self.read_figure_table(results.REGIONS, "regions")

    def read_timesteps(self) -> pd.DataFrame | None:
        """The single-timestep classifier's accuracy at each t per model (figure data); None when the run saved none."""
        return self.read_figure_table(results.TIMESTEPS, "timesteps")

    def read_figure_table(self, name: str, kind: str | None = None) -> pd.DataFrame | None:
        """A figure table; merged afresh (in memory) from ``parts/`` where a part of ``kind`` is newer than it."""
        path = self.path / name
        parts = self.part_files(kind) if kind is not None else []
        if parts and parts_lag(path, parts):
            return pd.concat([results.read_parquet_file(p) for p in parts], ignore_index=True)
        return results.read_parquet_file(path) if path.is_file() else None
