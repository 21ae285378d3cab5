"""The run folders a report shows, read back through ``RunFolder``: the table, predictions, suite and skips."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from diffbench.results import TableError
from diffbench.rundir import RunFolder


class ReportError(ValueError):
    """A folder given to ``diffbench report`` is not a run folder."""


@dataclass
class Run:
    """One run folder as the report reads it."""

    path: Path
    name: str
    frame: pd.DataFrame  # the full results table
    predictions: pd.DataFrame
    suite: dict | None
    skipped: list[str] | None  # None: the folder predates skip records
    problems: list[str] = field(default_factory=list)  # damaged files read around, said on the page


def load_run(path: Path, name: str) -> Run:
    """A run folder as the report reads it; ReportError (one line) when it holds no results table."""
    folder = RunFolder(path)
    try:
        frame = folder.read_table()
    except (FileNotFoundError, TableError) as exc:
        raise ReportError(str(exc)) from None
    predictions, suite, skipped = folder.read_predictions(), folder.read_suite(), folder.read_skipped()
    return Run(folder.path, name, frame, predictions, suite, skipped, folder.problems)


def run_names(paths: list[Path]) -> list[str]:
    """Short distinct names for run folders: the folder name, or more of the path where names clash."""
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]
