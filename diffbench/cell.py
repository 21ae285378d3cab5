"""A cell of the grid and its identity: the one place that says what makes two cells the same.

A cell is dataset x denoiser x estimator(params) x trials x device x seed x dtype x compile.
Its *key* is the table columns that identify it (``KEY``); cells that share a trained model
form a *group* (``GROUP_KEY``). The run folder names files by these keys' hashes, ``compare``
matches runs on them and the results table derives per-cell statistics from them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from diffbench.contract import Plugin

#: The table columns that identify a cell (``dataset_label`` etc. are the plugins' reprs).
KEY = ("dataset_label", "denoiser_label", "estimator_label", "trials", "device", "seed", "dtype", "compile")
#: The columns that identify a trained model: the cells sharing them share one training.
GROUP_KEY = ("dataset_label", "denoiser_label", "seed")
#: Where ``KEY`` columns are compared across cells of one model (one row per cell and scenario).
PEER_KEY = tuple(k for k in KEY if k != "estimator_label") + ("scenario",)


def digest(values: list[Any]) -> str:
    """A stable 16-hex-digit name for a list of JSON-able values."""
    return hashlib.sha256(json.dumps(values, default=str).encode()).hexdigest()[:16]


def key_id(row: dict[str, Any], key: tuple[str, ...] = KEY) -> str:
    """The id of the cell (or, with ``GROUP_KEY``, the model) a table row or identity dict belongs to."""
    return digest([row.get(k) for k in key])


@dataclass(frozen=True)
class Cell:
    """One measured point of the grid; plugins are instances with validated params."""

    dataset: Plugin
    denoiser: Plugin
    estimator: Plugin
    trials: int
    device: str
    seed: int
    dtype: str = "float32"
    compile: bool = False

    def labels(self) -> dict[str, Any]:
        """The ``KEY`` columns of this cell's rows."""
        return {
            "dataset_label": repr(self.dataset),
            "denoiser_label": repr(self.denoiser),
            "estimator_label": repr(self.estimator),
            "trials": self.trials,
            "device": self.device,
            "seed": self.seed,
            "dtype": self.dtype,
            "compile": self.compile,
        }

    @property
    def id(self) -> str:
        return key_id(self.labels())

    @property
    def group_id(self) -> str:
        """The id of the trained model this cell classifies with."""
        return key_id(self.labels(), GROUP_KEY)

    def describe(self) -> str:
        """How a log line names this cell."""
        return f"{self.estimator!r} at {self.trials} trials on {self.device}"


def groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells that share one trained model (same dataset, denoiser and seed), in grid order."""
    found: dict[str, list[Cell]] = {}
    for cell in cells:
        found.setdefault(cell.group_id, []).append(cell)
    return list(found.values())


def unique(cells: list[Cell]) -> tuple[list[Cell], int]:
    """The cells with duplicates (same ``KEY``) dropped, first kept; and how many were dropped."""
    seen: dict[str, Cell] = {}
    for cell in cells:
        seen.setdefault(cell.id, cell)
    return list(seen.values()), len(cells) - len(seen)
