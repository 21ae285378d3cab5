"""Portable error banks: a run's banks and everything that replays them, in one self-describing file.

``diffbench bank export RUN_DIR FILE`` gathers, per model the run scored with ``--errors bank``, the bank's
entries (draw keys and per-loss errors ``[N, K, L]`` from the cache's shards) and the *model record*: the
test and held-out samples exactly as the cells classified them, the class names, the schedule
(``alphas_cumprod`` and ``betas``), the data shape, the prediction type and the identity columns of its
rows. ``diffbench rescore`` (``diffbench.rescore``) replays estimators from the file alone.

The file is a NumPy ``.npz`` archive (zip of ``.npy`` arrays, compressed), written and read with
``allow_pickle=False``: numpy is a core dependency (safetensors is only the ``[diffusers]`` extra's), any
numpy reads it, and no array can carry code. Array ``header`` is a JSON string: ``format``, ``version``,
the ``design`` of draws it replays (``DESIGN``), and one entry per model; the model ``i``'s arrays are
``m<i>_keys``, ``m<i>_values``, ``m<i>_test_x``, ``m<i>_test_y``, ``m<i>_heldout_x``, ``m<i>_heldout_y``,
``m<i>_alphas_cumprod`` and ``m<i>_betas``. ``docs/bank-file.md`` describes every field.

The model record is written at run time (``record_model``, by ``measurement.bank_scorer``) beside the shards,
as ``<cache>/banks/<key>/model-<group id>.npz`` (one bank may serve several seeds of one pretrained model);
the run folder records its cache folders in ``cache.json``.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffbench import columns
from diffbench.atomic import replace_atomically
from diffbench.bank import ErrorBank
from diffbench.cell import GROUP_KEY, key_id
from diffbench.checkpoints import default_cache_dir
from diffbench.montecarlo import LOSSES
from diffbench.quality import GAP_REPEATS, GAP_SAMPLES
from diffbench.rundir import RunFolder

FORMAT = "diffbench-error-bank"
# 2: noise keyed by (t, occurrence) where the timestep is known; 3: draws from a distribution thin the slots
VERSION = 3
#: What a bank's entries replay: the draws' generator, the losses of each entry, the passes' streams.
DESIGN = {
    "draws": "diffbench.draws: splitmix64 uniforms per (seed, sample hash, stream, slot); Box-Muller noise per "
    "(seed, sample hash, stream, t, occurrence), or per slot where no timestep is known; timesteps from a "
    "distribution p by thinning the slots with a second uniform per slot (V < p(t) / max p)",
    "draw_key": "diffbench.bank.draw_key(sample hash, t, noise hash)",
    "losses": list(LOSSES),
    "streams": ["fit", "test", "calibration", *[f"repeat-{r + 1}" for r in range(GAP_REPEATS)]],
    "gap_samples": GAP_SAMPLES,
}
MODEL_RECORD = "model-{group}.npz"  # beside a bank's shards: what replays it for one model (``Cell.group_id``)
CACHE_RECORD = "cache.json"  # in a run folder: the cache folders its banks went to
ARRAYS = ("test_x", "test_y", "heldout_x", "heldout_y", "alphas_cumprod", "betas")
#: Identity columns that belong to a cell, not to its model (left out of a model's header entry).
CELL_ONLY = {"cell_id", "estimator", "estimator_label", "trials", "variance_baseline"}
RUN_ONLY = {"cache_hit", "train_s", "train_started_at", "train_finished_at", "setup_s", "device_name"}


class BankFileError(ValueError):
    """A run cannot be exported, or a file is no bank this diffbench replays (one line naming it and the fix)."""


@dataclass
class ModelBank:
    """One model of a bank file: its header entry, its bank's entries and the arrays that replay it."""

    about: dict[str, Any]
    keys: np.ndarray  # int64 [N]
    values: np.ndarray  # float64 [N, K, L]
    arrays: dict[str, np.ndarray]

    def error_bank(self) -> ErrorBank:
        """An in-memory ``ErrorBank`` holding the file's entries (no folder: nothing is written)."""
        bank = ErrorBank(self.about["num_classes"])
        rows = bank.rows(torch.from_numpy(self.keys))
        bank.values[rows] = torch.from_numpy(self.values).to(bank.values.dtype)
        return bank


# -- at run time ---------------------------------------------------------------------------------------------


def record_cache_dir(run_dir: Path, cache_dir: Path | None) -> None:
    """Add ``cache_dir`` to the run folder's ``cache.json`` (where ``bank export`` finds the banks' shards)."""
    if cache_dir is None:
        return
    known = recorded_cache_dirs(run_dir)
    entry = Path(cache_dir).resolve()
    if entry not in known:
        text = json.dumps({"cache_dirs": [str(p) for p in [*known, entry]]}, indent=2)
        replace_atomically(Path(run_dir) / CACHE_RECORD, lambda tmp: Path(tmp).write_text(text))


def recorded_cache_dirs(run_dir: Path) -> list[Path]:
    """The cache folders a run folder recorded (none for a run before the record, or a damaged one)."""
    try:
        return [Path(p) for p in json.loads((Path(run_dir) / CACHE_RECORD).read_text())["cache_dirs"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


_RECORDED: set[Path] = set()  # model records this process wrote or found


def record_model(folder: Path, group: str, make: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]) -> None:
    """Write a bank's model record for model ``group`` (``make()``: its arrays and header) unless it is there."""
    path = Path(folder) / MODEL_RECORD.format(group=group)
    if path in _RECORDED or path.is_file():
        _RECORDED.add(path)
        return
    arrays, about = make()
    header = np.array(json.dumps(about))
    numpy = {name: tensor.detach().cpu().numpy() for name, tensor in arrays.items()}
    replace_atomically(path, lambda tmp: _savez(tmp, header=header, **numpy))
    _RECORDED.add(path)


def _savez(path: str, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


# -- export ---------------------------------------------------------------------------------------------------


def bank_rows(frame: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The finished rows of ``frame`` whose errors came through a bank; BankFileError when there are none."""
    if "errors_bank" not in frame:
        rows = frame.iloc[0:0]
    else:
        rows = frame[(frame["status"] == "ok") & frame["errors_bank"].fillna("").astype(str).ne("")]
    if rows.empty:
        raise BankFileError(
            f"'{run_dir}' has no finished cell scored with --errors bank: nothing to export; "
            "run the grid with --errors bank first"
        )
    return rows


def bank_folder(key: str, group: str, caches: list[Path], run_dir: Path) -> Path:
    """The first cache's ``banks/<key>`` with shards and the model's record; BankFileError when none has them."""
    record = MODEL_RECORD.format(group=group)
    for cache in caches:
        folder = Path(cache) / "banks" / key
        if any(folder.glob("shard-*.npz")) and (folder / record).is_file():
            return folder
    where = ", ".join(f"'{c}'" for c in caches)
    raise BankFileError(
        f"bank {key} of '{run_dir}' has no shards with its {record} in {where}; give the run's cache "
        "with --cache, or run the grid again with --errors bank (a bank made before model records cannot be exported)"
    )


def model_entry(key: str, group: str, rows: pd.DataFrame, folder: Path) -> ModelBank:
    """One model of the file: the bank's entries from its shards, its model record, its rows' identity."""
    with np.load(folder / MODEL_RECORD.format(group=group), allow_pickle=False) as record:
        about = json.loads(str(record["header"]))
        arrays = {name: record[name] for name in ARRAYS}
    bank = ErrorBank(about["num_classes"], folder)
    keys, values = bank.entries()
    first = rows.iloc[0].to_dict()
    identity = {k: _plain(v) for k, v in first.items() if _model_column(k) and not _missing(v)}
    cells = rows.drop_duplicates("cell_id")[["estimator_label", "trials"]]
    about = {
        **about,
        "bank": key,
        "entries": len(keys),
        "identity": identity,
        "cells": [{"estimator": e, "trials": int(t)} for e, t in cells.itertuples(index=False)],
    }
    return ModelBank(about, keys, values, arrays)


def _model_column(name: str) -> bool:
    own = {c.name for c in (*columns.IDENTITY, *columns.MODEL, *columns.PRETRAINED)} - CELL_ONLY - RUN_ONLY
    return name in own or name.startswith(("p_dataset_", "p_denoiser_"))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def export(run_dir: Path, file: Path, cache_dir: Path | None = None) -> list[ModelBank]:
    """Write ``file``: every bank of the run folder's bank-mode rows with its model record. Returns its models."""
    folder = RunFolder(run_dir)
    rows = bank_rows(folder.read_table(), run_dir)
    caches = [cache_dir] if cache_dir is not None else [*recorded_cache_dirs(run_dir), default_cache_dir()]
    groups = rows.assign(_group=[key_id(r, GROUP_KEY) for r in rows.to_dict("records")])
    models = [
        model_entry(key, group, part, bank_folder(key, group, caches, run_dir))
        for (key, group), part in groups.groupby(["errors_bank", "_group"], sort=False)
    ]
    header = {"format": FORMAT, "version": VERSION, "design": DESIGN, "run": str(run_dir)}
    header["suite"] = folder.read_suite() or {}
    header["models"] = [m.about for m in models]
    arrays = {"header": np.array(json.dumps(header))}
    for i, model in enumerate(models):
        arrays.update({f"m{i}_keys": model.keys, f"m{i}_values": model.values})
        arrays.update({f"m{i}_{name}": model.arrays[name] for name in ARRAYS})
    replace_atomically(Path(file), lambda tmp: _savez(tmp, **arrays))
    return models


# -- reading a bank file ---------------------------------------------------------------------------------------


def read(file: Path) -> tuple[dict[str, Any], list[ModelBank]]:
    """The file's header and models; BankFileError (one line) for a damaged or foreign file, or another design."""
    if Path(file).is_file() and not zipfile.is_zipfile(file):
        raise BankFileError(
            f"'{file}' is not a diffbench bank file (not an .npz archive); give one `bank export` wrote"
        )
    try:
        with np.load(file, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            check_header(header, file)
            models = [_read_model(data, i, about, file) for i, about in enumerate(header["models"])]
    except BankFileError:
        raise
    except FileNotFoundError:
        raise BankFileError(f"bank file '{file}' does not exist; give a file `diffbench bank export` wrote") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise BankFileError(
            f"'{file}' is not a readable diffbench bank file ({type(exc).__name__}: {detail}); "
            "give a file `diffbench bank export` wrote"
        ) from None
    return header, models


def check_header(header: Any, file: Path) -> None:
    """BankFileError unless ``header`` is this format's, at this version, for this design of draws."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BankFileError(
            f"'{file}' is not a diffbench bank file (no '{FORMAT}' header); give one `bank export` wrote"
        )
    if header.get("version") != VERSION or header.get("design") != DESIGN:
        raise BankFileError(
            f"'{file}' holds a bank of another design of draws (version {header.get('version')!r}; this diffbench "
            f"replays version {VERSION}): export the run again with this diffbench, or rescore with the one that "
            "wrote it"
        )
    if not isinstance(header.get("models"), list) or not header["models"]:
        raise BankFileError(f"'{file}' holds no model's bank; export a run scored with --errors bank")


def _read_model(data, i: int, about: dict[str, Any], file: Path) -> ModelBank:
    keys, values = data[f"m{i}_keys"], data[f"m{i}_values"]
    arrays = {name: data[f"m{i}_{name}"] for name in ARRAYS}
    k, shape = about["num_classes"], tuple(about["data_shape"])
    good = (
        keys.dtype == np.int64
        and values.shape == (len(keys), k, len(LOSSES))
        and arrays["test_x"].shape[1:] == shape
        and arrays["test_y"].shape == arrays["test_x"].shape[:1]
        and arrays["heldout_y"].shape == arrays["heldout_x"].shape[:1]
        and arrays["alphas_cumprod"].shape == arrays["betas"].shape == (about["num_timesteps"],)
    )
    if not good:
        raise BankFileError(f"'{file}': model {i}'s arrays do not match its header: the file is damaged; export again")
    return ModelBank(about, keys, values, arrays)
