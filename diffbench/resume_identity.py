"""What ``--resume`` checks before it measures a model again: that its data and model are the ones its finished
cells were measured on.

A finished cell's rows record what it classified: the fixed test subset's rule and digest, the held-out part,
and a pretrained model's source, revision, schedule and output type. The run's settings (``run.json``) match on
resume, but the files behind them may have changed since (a dataset edited on disk, another snapshot of a
pretrained model). So each model, once its data (then its module) is prepared again, is checked against what its
first finished cell recorded; a change fails that model's remaining cells with one line naming the cell, the key
and the fix (a new --out), so one table never mixes two test sets or two models. Finished cells are kept, and
the other models of the run go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diffbench.contract import DataError

#: The recorded columns that name what a model classified, and what a change of each means.
DATA_KEYS = ("test_subset", "test_digest", "heldout_n", "heldout_from")
MODEL_KEYS = ("model_source", "model_revision", "prediction_type", "learned_variance", "schedule", "num_timesteps")
MODEL_KEYS += ("latent",)


class IdentityChanged(DataError):
    """A resumed model's data or module differs from what its finished cells recorded."""


@dataclass(frozen=True)
class Recorded:
    """What a model's first finished cell recorded of its data and module (its ``DATA_KEYS`` and ``MODEL_KEYS``,
    as text)."""

    folder: str
    cell: str  # how the line names that cell: its estimator, trials and id
    values: tuple[tuple[str, str], ...]


def as_text(value: Any) -> str | None:
    """A recorded or prepared value as comparable text (numpy scalars as Python's); None for an absent one."""
    value = value.item() if hasattr(value, "item") else value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def recorded(folder: Path, cell_ids: list[str], rows: dict[str, list[dict[str, Any]]]) -> Recorded | None:
    """The identity the first of ``cell_ids`` with one recorded (None where none did)."""
    for ident in cell_ids:
        for row in rows.get(ident, []):
            values = tuple((k, v) for k in DATA_KEYS + MODEL_KEYS if (v := as_text(row.get(k))) is not None)
            if values:
                cell = f"{row.get('estimator_label', '?')} at {row.get('trials', '?')} trials ({ident})"
                return Recorded(str(folder), cell, values)
    return None


def check(then: Recorded | None, now: dict[str, Any]) -> None:
    """IdentityChanged (one line) where a key both recorded and prepared ``now`` differs."""
    for key, value in then.values if then is not None else ():
        found = as_text(now.get(key))
        if found is None or found == value:
            continue
        what, mixed = ("data", "test sets") if key in DATA_KEYS else ("model", "models")
        raise IdentityChanged(
            f"cannot resume '{then.folder}': its finished cell {then.cell} recorded {key} {value!r}, but the {what} "
            f"now gives {found!r} (it changed since); its finished cells are kept and its other cells not measured, "
            f"so the table never mixes two {mixed}: start a new run with another --out"
        )


def with_recorded(plans: list, folder: Path, rows: dict[str, list[dict[str, Any]]], finished: set[str]) -> list:
    """Cell ``plans`` whose model plans carry what their finished cells recorded (for ``check`` once prepared).

    (Plans are typed loosely: ``plan`` imports this module for ``Recorded``.)
    """
    done: dict[str, list[str]] = {}
    for plan in plans:
        done.setdefault(plan.model.group_id, []).extend([plan.id] if plan.id in finished else [])
    models = {}
    for plan in plans:
        group = plan.model.group_id
        if group not in models:  # one model plan per model, as its cells share it
            models[group] = replace(plan.model, recorded=recorded(folder, done[group], rows))
    return [replace(p, model=models[p.model.group_id]) for p in plans]
