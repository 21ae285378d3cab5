"""The run folders a report shows, read back through ``RunFolder``: the table, predictions, suite, skips and the
single-timestep accuracies."""

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
    timesteps: pd.DataFrame | None = None  # the single-timestep accuracies; None: the run saved none
    drawn: dict = field(default_factory=dict, repr=False)  # its figures once read or drawn, by whether to draw


def load_run(path: Path, name: str) -> Run:
    """A run folder as the report reads it; ReportError (one line) when it holds no results table."""
    folder = RunFolder(path)
    try:
        frame = folder.read_table()
    except (FileNotFoundError, TableError) as exc:
        raise ReportError(str(exc)) from None
    predictions, suite, skipped = folder.read_predictions(), folder.read_suite(), folder.read_skipped()
    try:
        timesteps = folder.read_timesteps()
    except TableError as exc:  # a damaged figure table: the page without its section's reading, saying why
        folder.problems.append(f"{exc}; the single-timestep accuracies are left out")
        timesteps = None
    return Run(folder.path, name, frame, predictions, suite, skipped, folder.problems, timesteps)


def run_names(paths: list[Path]) -> list[str]:
    """Short distinct names for run folders: the folder name, or more of the path where names clash."""
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]
