"""Measuring one cell: a fitted copy of its estimator on the prepared model, its answers and its speed.

``measure_cell(plan, trained)`` is the runner's task for a cell; it never raises (a failure is a
failed row). The answers (accuracy, calibration, answer noise) are ``diffbench.quality``'s; the
timed scenarios are here. Every row is assembled by ``diffbench.columns.row``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch

from diffbench import bank_file, columns, pretrained, subsets
from diffbench.acceleration import unsupported
from diffbench.bank import BankScorer, bank_key, open_bank, weights_digest
from diffbench.batch_size import cached_batch_size
from diffbench.cell import Cell
from diffbench.contract import DataError, Estimator, PluginOutputError
from diffbench.cuda_graphs import bare_runner, single_sample_runner
from diffbench.draws import Design
from diffbench.memory import cpu_allocator_tuned, peak_memory_mb, reset_peak_memory
from diffbench.model import ConditionalModel
from diffbench.plan import CellPlan
from diffbench.preparation import Prepared, Trained, conditional_model, model_name
from diffbench.provenance import device_name, provenance
from diffbench.quality import CellData, quality, replaying
from diffbench.timing import evenly_spaced, measure, measure_latency, timed, timed_samples


class Unsupported(RuntimeError):
    """A cell's dtype or compile setting cannot run on its device."""


@dataclass
class CellResult:
    """What a finished (or failed, or skipped) cell sends back to the process that writes the table."""

    cell_id: str
    rows: list[dict[str, Any]]
    bins: list[dict[str, Any]]
    messages: list[str]
    skipped: bool = False
    predictions: dict[str, Any] | None = None  # the seeded pass's per-sample labels and predicted classes


def fitted(estimator: Estimator, model: ConditionalModel, x: torch.Tensor, y: torch.Tensor, generator) -> Estimator:
    """A copy of ``estimator`` fitted on held-out ``x, y``: what fitting changes stays with the copy.

    Every cell (and every figure) fits its own copy, so no cell sees another's fitted state and
    every executor gives the same numbers.
    """
    own = copy.deepcopy(estimator)
    own.fit(model, x, y, generator)
    return own


@dataclass
class Answers:
    """A cell's answers (``answers``): its fitted estimator, the generator after them and what they measured."""

    estimator: Estimator
    generator: torch.Generator
    common: dict[str, Any]  # the quality columns every scenario's row shares
    first_s: float  # seconds of the seeded pass
    bins: list[dict]
    predictions: dict


def answers(
    cell: Cell, model: ConditionalModel, data: CellData, scorer: BankScorer | None = None, passes: str = "full"
) -> Answers:
    """``fit`` (a copy of the estimator) on held-out data, then ``quality``'s passes, on the cell's seeded generator.

    With a ``scorer`` (bank mode) both draw from the design of draws and read errors from the bank. ``passes``:
    the suite's ``quality`` ("accuracy": the seeded test pass only). What ``measured_rows`` runs before the
    scenarios, and all that ``diffbench.rescore`` runs.
    """
    generator = torch.Generator(device=model.device).manual_seed(cell.seed)
    design = Design(cell.seed, scorer.t_grid) if scorer is not None else None
    model.reset_nfe()
    asked, evaluated, started = model.nfe_total(), model.evaluated, time.perf_counter()
    model.bank = scorer
    try:
        with replaying(model, data.heldout_x, design, "fit"):
            estimator = fitted(cell.estimator, model, data.heldout_x, data.heldout_y, generator)
        fit_nfe = model.reset_nfe()
        model.check_finite(f"while estimator '{cell.estimator.name}' fitted")
        common, first_s, bins, predictions = quality(cell, estimator, model, data, generator, design, passes)
    finally:
        model.bank = None
        if scorer is not None:
            scorer.bank.flush()
    common["fit_nfe_per_sample"] = fit_nfe / max(1, data.heldout_x.shape[0])
    common.update(errors_columns(scorer, model.nfe_total() - asked, model.evaluated - evaluated))
    common["quality_s"] = time.perf_counter() - started
    return Answers(estimator, generator, common, first_s, bins, predictions)


def measured_rows(
    plan: CellPlan, model: ConditionalModel, data: CellData, scorer: BankScorer | None = None
) -> tuple[list[dict], list[dict], dict]:
    """One cell's measured columns (one dict per scenario of its plan), its reliability bins and its predictions.

    In order: the answers (``answers``: ``fit`` on held-out data; ``quality``: one seeded pass over the
    test set, a temperature fitted on the held-out data, independent repeats on a subset); then the
    scenarios of the plan. With a ``scorer`` (bank mode) fit and the answers draw from the design of
    draws and read errors from the bank; the scenarios always run live.
    Timed are: the seeded pass, as a whole (its seconds choose how many samples a timed offline pass
    covers, and count as the first of the warm-up; in bank mode a live pass over an eighth of the
    samples stands in for it); in ``offline`` the warm-up passes, the regions that choose how many
    passes a region holds, and the repeats (estimator regions interleaved with the bare network's on
    the same rows); in ``single`` every call after one untimed warm-up call, each followed by the bare
    network on its rows. Not timed: fit, the calibration pass and the noise repeats (a tuned batch
    size was timed before, by its own sweep of the bare module). NFE are read from the model's
    counter around each step.
    """
    cell = plan.cell
    reset_peak_memory(model.device)
    got = answers(cell, model, data, scorer, plan.quality)
    estimator, generator, common, first_s = got.estimator, got.generator, got.common, got.first_s
    rows = []
    with torch.inference_mode():  # as a deployed classifier runs: no autograd bookkeeping in any timed call
        if scorer is not None and "offline" in plan.scenarios:
            first_s = live_pass_seconds(estimator, model, data.x, cell.trials, generator)
        if "offline" in plan.scenarios:
            rows.append(offline(plan, estimator, model, data.x, generator, common, first_s))
        if "single" in plan.scenarios:
            rows.append(single(plan, estimator, model, data.x, generator, common))
    return rows, got.bins, got.predictions


def errors_columns(scorer: BankScorer | None, asked: int, evaluated: int) -> dict[str, Any]:
    """Where a cell's quality errors came from, and the rows they asked for and really cost."""
    replayed = scorer is not None and scorer.requested == asked and asked > 0
    return {
        "errors_source": "bank" if replayed else "live",
        "errors_bank": scorer.key if scorer is not None else "",
        "live_nfe": asked,
        "computed_nfe": evaluated,
        "t_grid": scorer.t_grid if scorer is not None else 0,
    }


def live_pass_seconds(estimator: Estimator, model: ConditionalModel, x: torch.Tensor, trials: int, generator) -> float:
    """Seconds of one live pass over ``x``, from a timed call on an evenly spaced eighth of it (bank mode)."""
    n = x.shape[0]
    probe = x[evenly_spaced(n, max(1, n // 8)).to(x.device)]
    seconds = timed(lambda: estimator.errors(model, probe, trials, generator), model.device)
    model.reset_nfe()
    return seconds * n / probe.shape[0]


def offline(
    plan: CellPlan,
    estimator: Estimator,
    model: ConditionalModel,
    x: torch.Tensor,
    generator: torch.Generator,
    common: dict[str, Any],
    first_s: float,
) -> dict[str, Any]:
    """The offline scenario's columns: ``common`` with the throughput of passes over (part of) the test set."""
    n = x.shape[0]
    m = timed_samples(n, first_s, common["nfe_per_sample"], model.max_batch)
    part = x if m == n else x[evenly_spaced(n, m).to(x.device)]
    throughput = measure(
        lambda: estimator.errors(model, part, plan.cell.trials, generator),
        model,
        m,
        generator,
        first_pass_s=first_s * m / n,
        min_repeats=plan.repeats,
        max_time_s=plan.max_time_s,
    )
    timings = {**vars(throughput), "timed_samples": m}
    return {"scenario": "offline", **common, **timings, "peak_memory_mb": peak_memory_mb(model.device)}


def single(
    plan: CellPlan,
    estimator: Estimator,
    model: ConditionalModel,
    x: torch.Tensor,
    generator: torch.Generator,
    common: dict[str, Any],
) -> dict[str, Any]:
    """The single scenario's columns: ``common`` with the latency of one sample at a time."""
    trials, device = plan.cell.trials, model.device
    run_one, single_mode = single_sample_runner(
        lambda one: estimator.errors(model, one, trials, generator), x, model, generator
    )  # a CUDA graph where the estimator allows it, else the eager call (the mode says which, and why)
    bare_as = bare_runner(single_mode, device)  # the bare reference runs as the calls do
    latency = measure_latency(run_one, model, generator, max_time_s=plan.max_time_s, bare_as=bare_as)
    single = {"scenario": "single", **common, **vars(latency), "single_mode": single_mode}
    return {**single, "peak_memory_mb": peak_memory_mb(device)}


def identity(plan: CellPlan) -> dict[str, Any]:
    """The columns that say which cell a row belongs to: its key, names, settings and plugin params."""
    cell, model = plan.cell, plan.model
    ident = {
        "dataset": cell.dataset.name,
        "denoiser": cell.denoiser.name,
        "estimator": cell.estimator.name,
        **cell.labels(),
        "variance_baseline": bool(getattr(cell.estimator, "variance_baseline", False)),
        "schedule": "flow" if model.train.objective == "flow" else model.schedule,
        "noise_process": "flow" if model.train.objective == "flow" else "vp",
        "objective": model.train.objective,
        "num_timesteps": model.timesteps,
        "train_steps": model.train.steps,
        "train_batch_size": model.train.batch_size,
        "train_lr": model.train.lr,
        **columns.param_columns("dataset", cell.dataset.params),
        **columns.param_columns("denoiser", cell.denoiser.params),
        **columns.param_columns("estimator", cell.estimator.params),
    }
    return {"cell_id": cell.id, "kind": "estimator", **ident}


def model_columns(plan: CellPlan, prepared: Prepared) -> dict[str, Any]:
    """The columns about the cell's machine and prepared model: cost, data subset, a pretrained model's own."""
    info = prepared.info
    return {
        "device_name": device_name(plan.cell.device),
        "bayes_accuracy": prepared.bayes_accuracy,
        "cache_hit": info["cache_hit"],
        "train_s": info.get("train_s", 0.0),
        "train_started_at": info.get("train_started_at", float("nan")),
        "train_finished_at": info.get("train_finished_at", float("nan")),
        "setup_s": prepared.setup_s,
        **{k: info[k] for k in ("test_subset", "test_digest", "heldout_n", "heldout_from") if k in info},
        **(prepared.pretrained.columns if prepared.pretrained else {}),
    }


def bank_scorer(plan: CellPlan, prepared: Prepared, model: ConditionalModel) -> BankScorer | None:
    """The cell's way into its model's error bank (bank mode), or None (live mode)."""
    if plan.errors != "bank":
        return None
    cell = plan.cell
    weights = prepared.info.get("weights_digest") or weights_digest(prepared.module)
    prepared.info["weights_digest"] = weights  # hashed once per model and process
    numerics = f"{device_name(cell.device)}|{cell.dtype}|compile={cell.compile}"
    key = bank_key(weights, model, numerics)
    scorer = BankScorer(open_bank(key, model.num_classes, plan.cache_dir), key, plan.t_grid)
    if scorer.bank.folder is not None:  # what replays the bank without the model (``diffbench bank export``)
        record = lambda: model_record(prepared, model, weights, numerics)  # noqa: E731 (made once per bank and model)
        bank_file.record_model(scorer.bank.folder, cell.group_id, record)
    return scorer


def model_record(prepared: Prepared, model: ConditionalModel, weights: str, numerics: str) -> tuple[dict, dict]:
    """A bank's model record: the samples exactly as its cells classify them, the schedule and what it is."""
    splits = prepared.splits
    arrays = {
        "test_x": splits.test_x.to(model.dtype),
        "test_y": splits.test_y,
        "heldout_x": prepared.heldout_x.to(model.dtype),
        "heldout_y": prepared.heldout_y,
        "alphas_cumprod": model.process.alphas_cumprod.double(),
        "betas": model.process.betas.double(),
    }
    about = {
        "weights_digest": weights,
        "numerics": numerics,
        "class_names": [str(name) for name in splits.class_names],
        "num_classes": model.num_classes,
        "num_timesteps": model.num_timesteps,
        "data_shape": list(model.data_shape),
        "dtype": str(model.dtype).removeprefix("torch."),
        "schedule": model.process.name,
        "prediction_type": model.prediction_type,
        **({} if model.process.kind == "vp" else {"process": model.process.record()}),
        "learned_variance": bool(prepared.pretrained and prepared.pretrained.learned_variance),
    }
    return arrays, about


def failure(exc: BaseException) -> str:
    """A failure as the table's ``error`` column and log lines say it."""
    return str(exc) if isinstance(exc, (PluginOutputError, DataError)) else f"{type(exc).__name__}: {exc}"


def cell_model(plan: CellPlan, prepared: Prepared) -> tuple[ConditionalModel, dict]:
    """The model a cell classifies with (``conditional_model``: on its device, in its dtype, compiled if asked),
    batched as the plan says, and the batching columns.

    Raises ``Unsupported`` when the device cannot run that dtype or compile.
    """
    cell = plan.cell
    device = torch.device(cell.device)
    splits = prepared.splits
    module = prepared.module.to(device).eval()
    name = model_name(cell.denoiser)
    learned = bool(prepared.pretrained and prepared.pretrained.learned_variance)
    reason = unsupported(
        module,
        device,
        cell.dtype,
        cell.compile,
        splits.data_shape,
        splits.num_classes,
        name=name,
        learned_variance=learned,
    )
    if reason:
        what = f"{cell.dtype}{' compiled' if cell.compile else ''} on {cell.device}"
        raise Unsupported(f"skipping {what} for {cell.denoiser!r}: {reason}")
    model = conditional_model(prepared, device, name, cell.dtype, cell.compile)
    tuned = plan.batch_size is None
    if tuned:
        key = "|".join(
            [repr(cell.denoiser), str(list(splits.data_shape)), device_name(cell.device), cell.dtype]
            + [f"compile={cell.compile}", torch.__version__]
        )
        model.max_batch, was_cached = cached_batch_size(model, plan.cache_dir, key)
    else:
        model.max_batch, was_cached = plan.batch_size, False
    return model, {"batch_size": model.max_batch, "batch_size_tuned": tuned, "batch_size_cached": was_cached}


def measure_cell(plan: CellPlan, trained: Trained) -> CellResult:
    """Measure one cell on its model's preparation; never raises: failures become a failed row.

    ``trained`` is what the model's task handed back (its ``prepared`` is None when the pair was skipped).
    """
    cell, prepared = plan.cell, trained.prepared
    if prepared is None:
        return CellResult(cell.id, [], [], [], skipped=True)
    started, start = time.time(), time.perf_counter()
    ident, about = identity(plan), model_columns(plan, prepared)
    messages: list[str] = []
    predictions = None
    try:
        model, batching = cell_model(plan, prepared)
        splits = prepared.splits
        data = CellData(
            splits.test_x.to(model.device, model.dtype),
            splits.test_y.to(model.device),
            prepared.heldout_x.to(model.device, model.dtype),
            prepared.heldout_y.to(model.device),
        )
        measured, bins, predictions = measured_rows(plan, model, data, bank_scorer(plan, prepared, model))
        # the row's fingerprint of the test set (hashed once per model): paired tests match runs on it
        predictions["test_digest"] = prepared.info.get("test_digest") or subsets.digest(splits.test_x, splits.test_y)
        setup = prepared.pretrained
        ok = {"status": "ok", "error": ""}
        parts = [(batching, m, ok, pretrained.end_to_end(m, setup.columns) if setup else {}) for m in measured]
        bins = [{**ident, **b} for b in bins]
    except Unsupported as exc:
        return CellResult(cell.id, [], [], [str(exc)], skipped=True)
    except Exception as exc:
        parts, bins = [({"status": "failed", "error": failure(exc)},)], []
        messages.append(f"{cell.describe()} failed: {failure(exc)}")
    source = provenance(plan.run)
    when = {"wall_s": time.perf_counter() - start, "started_at": started, "finished_at": time.time()}
    when["cpu_allocator_tuned"] = cpu_allocator_tuned()
    rows = [columns.row(ident, about, *part, source, when) for part in parts]
    return CellResult(cell.id, rows, bins, messages, predictions=predictions)


def failed_result(plan: CellPlan, exc: BaseException) -> CellResult:
    """A cell whose model's data or module could not be prepared, as one failed row."""
    now = time.time()
    outcome = {"status": "failed", "error": failure(exc)}
    row = columns.row(identity(plan), outcome, provenance(plan.run), {"started_at": now, "finished_at": now})
    return CellResult(plan.cell.id, [row], [], [])
