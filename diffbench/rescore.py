"""Rescoring from a bank file: estimators and budgets scored from a portable error bank, without the model.

``diffbench rescore FILE`` rebuilds each model of a bank file (``diffbench.bank_file``) as a
``ConditionalModel`` whose module refuses to run (``MissingErrors``), with ``model.bank`` a ``BankScorer``
over the file's entries, and runs the same answers as a cell (``measurement.answers``: fit, the seeded
pass, calibration, the noise repeats) on the design of draws with the cell's seed. Every error an
estimator asks for is read from the bank; one the bank lacks stops the rescore with one line naming the
estimator. No timed scenario runs: the timing columns are empty and ``timing_note`` says why. The rows,
bins and predictions go into an ordinary run folder, so ``report``, ``plot`` and ``compare`` read it.

Estimators that draw only from the design (every built-in one on its batches) replay exactly; draws from
the cell's generator (a call on a subset of the batch, e.g. ``adaptive``'s later stages) replay only on
the device kind the run used, since CPU and CUDA generators differ.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diffbench import columns
from diffbench.bank import BankScorer
from diffbench.bank_file import ModelBank
from diffbench.cell import Cell
from diffbench.measurement import answers
from diffbench.model import ConditionalModel
from diffbench.noise_process import NoiseProcess
from diffbench.provenance import provenance, run_info
from diffbench.quality import CellData
from diffbench.rundir import RunFolder
from diffbench.schedule import NoiseSchedule
from diffbench.suite import instantiate

TIMING_NOTE = "rescored from a bank: no timing"
UNBATCHED = 2**62  # max_batch: a request's missing rows reach the module in one call (counted at once)


class MissingErrors(RuntimeError):
    """The bank lacks errors an estimator asked for (the module that would compute them is not here)."""

    def __init__(self, rows: int, t: int, c: int) -> None:
        super().__init__(f"{rows:,} rows, the first at timestep {t} for class {c}")
        self.rows, self.t, self.c = rows, t, c


class RescoreError(ValueError):
    """A rescore cannot go on: an estimator needs draws the bank lacks, or a selector is bad (one line)."""


class RefusingModule(torch.nn.Module):
    """A denoiser that is not here: any call raises ``MissingErrors`` naming the draws it was asked for."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        raise MissingErrors(int(t.shape[0]), int(t[0]), int(c[0]))


class Named:
    """A dataset or denoiser known by its label alone (a ``Cell`` needs its ``repr`` and ``name``)."""

    def __init__(self, name: str, label: str) -> None:
        self.name, self.label = name, label

    def __repr__(self) -> str:
        return self.label


def bank_model(model: ModelBank) -> ConditionalModel:
    """The model of a bank file's entry on the CPU: its schedule, classes and shape; a module that refuses."""
    about = model.about
    schedule = NoiseSchedule.from_alphas_cumprod(torch.from_numpy(model.arrays["alphas_cumprod"]), about["schedule"])
    schedule.betas = torch.from_numpy(model.arrays["betas"])  # the run's own bits (elbo weights read them)
    if "process" in about:  # a flow or EDM model: its a, s and model timesteps (what q_sample and weights read)
        schedule = NoiseProcess.from_record(about["process"])
        schedule.alphas_cumprod = torch.from_numpy(model.arrays["alphas_cumprod"])
        schedule.betas = torch.from_numpy(model.arrays["betas"])
    name = f"denoiser '{about['identity'].get('denoiser_label', '?')}' (not here: rescoring from a bank)"
    return ConditionalModel(
        RefusingModule(),
        schedule,
        about["num_classes"],
        tuple(about["data_shape"]),
        "cpu",
        getattr(torch, about["dtype"]),
        max_batch=UNBATCHED,
        prediction_type=about["prediction_type"],
        learned_variance=about["learned_variance"],
        name=name,
    )


def cell_data(model: ModelBank) -> CellData:
    """The samples the run's cells classified and tuned on, as they were."""
    a = model.arrays
    return CellData(*(torch.from_numpy(a[k]) for k in ("test_x", "test_y", "heldout_x", "heldout_y")))


def estimators(selectors: tuple[str, ...], model: ModelBank) -> list[Any]:
    """The estimator instances to score: ``selectors`` expanded, or the run's own estimators."""
    chosen = list(selectors) or list(dict.fromkeys(c["estimator"] for c in model.about["cells"]))
    found = {}
    for selector in chosen:
        for estimator in instantiate("estimator", selector):
            estimator.check_schedule(model.about["num_timesteps"])
            found.setdefault(repr(estimator), estimator)
    return list(found.values())


def cells(model: ModelBank, selectors: tuple[str, ...], trials: list[int] | None) -> list[Cell]:
    """The cells to rescore on one model: estimators x trials (default: the run's cells of that model)."""
    ident = model.about["identity"]
    dataset = Named(ident.get("dataset", "?"), ident["dataset_label"])
    denoiser = Named(ident.get("denoiser", "?"), ident["denoiser_label"])
    settings = (ident["device"], int(ident["seed"]), ident.get("dtype", "float32"), bool(ident.get("compile", False)))
    if not selectors and not trials:
        chosen = [(est, c["trials"]) for c in model.about["cells"] for est in estimators((c["estimator"],), model)]
    else:
        budgets = trials or sorted({c["trials"] for c in model.about["cells"]})
        chosen = [(est, t) for est in estimators(selectors, model) for t in budgets]
    return [Cell(dataset, denoiser, est, t, *settings) for est, t in chosen]


def identity(cell: Cell, model: ModelBank) -> dict[str, Any]:
    """The columns that say which cell a row (or reliability bin) belongs to, as ``measurement.identity`` has them."""
    est, recorded = cell.estimator, model.about["identity"]
    return {
        "cell_id": cell.id,
        **{k: v for k, v in recorded.items() if not k.startswith("p_")},
        "estimator": est.name,
        **cell.labels(),
        "variance_baseline": bool(getattr(est, "variance_baseline", False)),
        **{k: v for k, v in recorded.items() if k.startswith("p_")},
        **columns.param_columns("estimator", est.params),
    }


def rescored_row(ident: dict[str, Any], common: dict[str, Any], run: dict[str, str], started: float) -> dict:
    """One results row (``columns.row``): the cell's identity and model, the answers, empty timing, provenance."""
    no_timing = {c.name: math.nan for c in columns.SPEED if c.dtype == "float"}
    measured = {"scenario": "offline", **common, **no_timing, "timing_note": TIMING_NOTE}
    when = {"wall_s": time.time() - started, "started_at": started, "finished_at": time.time()}
    return columns.row(ident, measured, {"status": "ok", "error": ""}, provenance(run), when)


def rescore_cell(
    cell: Cell, model: ModelBank, scorer: BankScorer, run: dict[str, str], passes: str = "full"
) -> tuple[dict, list, dict]:
    """One cell's row, bins and predictions, every error read from the bank; RescoreError when one is missing.

    ``passes``: the run's ``quality`` (a bank of an ``accuracy`` run holds no calibration nor repeat draws).
    """
    started = time.time()
    try:
        got = answers(cell, bank_model(model), cell_data(model), scorer, passes)
    except MissingErrors as exc:
        raise RescoreError(
            f"estimator '{cell.estimator!r}' at {cell.trials} trials needs errors the bank does not hold ({exc}); "
            "rescore with estimators/trials the run used, or run it with --errors bank"
        ) from None
    ident = identity(cell, model)
    row = rescored_row(ident, got.common, run, started)
    bins = [{**ident, **b} for b in got.bins]
    return row, bins, {**got.predictions, "test_digest": model.about["identity"].get("test_digest", "")}


def rescore(
    header: dict[str, Any],
    models: list[ModelBank],
    out: Path,
    selectors: tuple[str, ...],
    trials: list[int] | None,
    source: Path,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Score the cells of every model of a bank file into the run folder ``out``; returns its table.

    Each cell is saved as it finishes; a RescoreError (an estimator the bank cannot serve) leaves the
    cells before it saved, with the tables written.
    """
    plans = [(model, cell) for model in models for cell in cells(model, selectors, trials)]
    folder = RunFolder(out)
    suite = {**header.get("suite", {}), "estimators": sorted({repr(c.estimator) for _, c in plans})}
    suite["trials"] = sorted({c.trials for _, c in plans})
    settings = {"suite": suite, "devices": sorted({c.device for _, c in plans}), "checkpoint": None}
    folder.start({**settings, "rescored_from": str(source)}, resume=False, log=log)
    order = [cell.id for _, cell in plans]
    run = run_info()  # once per rescore, as once per run
    banks = {m.about["bank"]: m.error_bank() for m in models}  # one scorer per cell, as in a run: its own counts
    log(f"rescoring {len(plans)} cell(s) from {source} (no model, no timing); results go to {out}")
    try:
        for model, cell in plans:
            key = model.about["bank"]
            row, bins, predictions = rescore_cell(
                cell, model, BankScorer(banks[key], key, int(suite.get("t_grid", 0))), run, suite.get("quality", "full")
            )
            folder.save_cell(cell.id, [row], bins, predictions)
    finally:
        frame = folder.write_tables(order)
    return frame
