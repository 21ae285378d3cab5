"""Measuring one cell: accuracy, calibration, noise and speed of one estimator on a prepared model."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffbench import batching, metrics, pretrained, subsets
from diffbench.acceleration import accelerate, unsupported
from diffbench.batch_size import cached_batch_size
from diffbench.cell import Cell
from diffbench.contract import DataError, Estimator, PluginOutputError, check_errors
from diffbench.cuda_graphs import bare_runner, single_sample_runner
from diffbench.memory import peak_memory_mb, reset_peak_memory, tune_cpu_allocator
from diffbench.model import ConditionalModel
from diffbench.preparation import Prepared, model_of
from diffbench.provenance import device_name, provenance
from diffbench.results import param_columns
from diffbench.suite import Suite
from diffbench.summary import median_iqr
from diffbench.timing import evenly_spaced, measure, measure_latency, timed, timed_samples

GAP_SAMPLES = 128  # test samples behind gap_variance
GAP_REPEATS = 4  # independent repeats behind gap_variance


class Unsupported(RuntimeError):
    """A cell's dtype or compile setting cannot run on its device."""


@dataclass
class CellData:
    """What a cell classifies (test) and may tune on (held-out training data), on the model's device."""

    x: torch.Tensor
    y: torch.Tensor
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor


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


def measure_cell(
    cell: Cell, model: ConditionalModel, data: CellData, suite: Suite
) -> tuple[list[dict], list[dict], dict]:
    """One cell's rows (one per scenario of the suite), its reliability bins and its per-sample predictions.

    In order: ``fit`` (a copy of the estimator) on held-out data; accuracy from one pass seeded
    by the cell's seed; a temperature fitted on the held-out data; the error-gap variance and the
    flip rate over independent repeats on a subset of the test set; then the timed scenarios. Only the last are
    timed; NFE are read from the model's counter around each step.
    """
    reset_peak_memory(model.device)
    generator = torch.Generator(device=model.device).manual_seed(cell.seed)
    model.reset_nfe()
    estimator = fitted(cell.estimator, model, data.heldout_x, data.heldout_y, generator)
    fit_nfe = model.reset_nfe()
    model.check_finite(f"while estimator '{cell.estimator.name}' fitted")
    common, first_s, bins, predictions = quality(cell, estimator, model, data, generator)
    common["fit_nfe_per_sample"] = fit_nfe / max(1, data.heldout_x.shape[0])
    return speed(cell, estimator, model, data.x, generator, suite, common, first_s), bins, predictions


def quality(
    cell: Cell, estimator: Estimator, model: ConditionalModel, data: CellData, generator: torch.Generator
) -> tuple[dict[str, Any], float, list[dict], dict[str, Any]]:
    """Accuracy, calibration and noise of a fitted estimator.

    Returns its columns, the first pass's seconds, the reliability bins and the seeded pass's
    per-sample labels and predictions (what paired comparisons need).
    """
    x, y = data.x, data.y
    n, k = x.shape[0], model.num_classes
    name, trials = cell.estimator.name, cell.trials

    def one_call(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        errors = estimator.errors(model, inputs, trials, generator)
        model.check_finite(f"during a pass of estimator '{name}'")  # blame the module, not the estimator
        return check_errors(errors, inputs.shape[0], k, name)

    per_call = batching.samples_per_call(trials, k, model.data_shape)  # the same batches on every device

    def classify(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return batching.in_batches(lambda part: one_call(part, generator), inputs, per_call)

    errors: list[torch.Tensor] = []
    first_s = timed(lambda: errors.append(classify(x, generator)), model.device)
    pass_nfe = [model.reset_nfe() / n]
    if pass_nfe[0] == 0:
        raise PluginOutputError(
            f"estimator '{name}' errors() never called model.eps: errors must come from the model (NFE = 0)"
        )
    err = errors[0].float().cpu()
    y_cpu = y.cpu()
    predictions = {"sample": torch.arange(n).numpy(), "label": y_cpu.numpy(), "pred": err.argmin(1).numpy()}
    correct = int((err.argmin(1) == y_cpu).sum())
    low, high = metrics.wilson_interval(correct, n)

    temperature = 1.0
    if data.heldout_x.shape[0] >= 2:
        temperature = metrics.fit_temperature(classify(data.heldout_x, generator).cpu(), data.heldout_y.cpu())
    model.check_values = False  # fit and the full passes above checked the outputs' values; the rest repeats them
    model.reset_nfe()
    subset = slice(0, min(n, GAP_SAMPLES))
    repeated = []
    for r in range(GAP_REPEATS):
        independent = torch.Generator(device=model.device).manual_seed(cell.seed + 1 + r)
        repeated.append(classify(x[subset], independent).cpu())
        pass_nfe.append(model.reset_nfe() / x[subset].shape[0])
    gap_var = metrics.gap_variance(torch.stack(repeated), y_cpu[subset])
    nfe_mid, nfe_iqr = median_iqr(pass_nfe)
    columns = {
        "n_test": n,
        "samples_per_call": min(n, per_call),
        "accuracy": correct / n,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "nfe_per_sample": pass_nfe[0],
        "nfe_per_sample_iqr": nfe_iqr,
        "temperature": temperature,
        **metrics.calibration(err, y_cpu, temperature),
        "gap_variance": gap_var * nfe_mid,
        "flip_rate": metrics.flip_rate(torch.stack(repeated).argmin(2)),
    }
    return columns, first_s, metrics.reliability_bins(err, y_cpu, temperature), predictions


def speed(
    cell: Cell,
    estimator: Estimator,
    model: ConditionalModel,
    x: torch.Tensor,
    generator: torch.Generator,
    suite: Suite,
    common: dict[str, Any],
    first_s: float,
) -> list[dict[str, Any]]:
    """One row per scenario of the suite: ``common`` with the timings measured in that scenario."""
    n, trials, device = x.shape[0], cell.trials, model.device
    rows = []
    with torch.inference_mode():  # as a deployed classifier runs: no autograd bookkeeping in any timed call
        if "offline" in suite.scenarios:
            m = timed_samples(n, first_s, common["nfe_per_sample"], model.max_batch)
            part = x if m == n else x[evenly_spaced(n, m).to(x.device)]
            throughput = measure(
                lambda: estimator.errors(model, part, trials, generator),
                model,
                m,
                generator,
                first_pass_s=first_s * m / n,
                min_repeats=suite.repeats,
                max_time_s=suite.max_time_s,
            )
            timings = {**vars(throughput), "timed_samples": m}
            rows.append({"scenario": "offline", **common, **timings, "peak_memory_mb": peak_memory_mb(device)})
        if "single" in suite.scenarios:
            run_one, single_mode = single_sample_runner(
                lambda one: estimator.errors(model, one, trials, generator), x, model, generator
            )  # a CUDA graph where the estimator allows it, else the eager call (the mode says which, and why)
            bare_as = bare_runner(single_mode, device)  # the bare reference runs as the calls do
            latency = measure_latency(run_one, model, generator, max_time_s=suite.max_time_s, bare_as=bare_as)
            single = {"scenario": "single", **common, **vars(latency), "single_mode": single_mode}
            rows.append({**single, "peak_memory_mb": peak_memory_mb(device)})
    return rows


def identity(cell: Cell, suite: Suite) -> dict[str, Any]:
    """The columns that say which cell a row belongs to: its key, names, settings and plugin params."""
    train = suite.train_settings(cell.denoiser)
    ident = {
        "dataset": cell.dataset.name,
        "denoiser": cell.denoiser.name,
        "estimator": cell.estimator.name,
        **cell.labels(),
        "variance_baseline": bool(getattr(cell.estimator, "variance_baseline", False)),
        "schedule": suite.schedule,
        "num_timesteps": suite.timesteps,
        "train_steps": train.steps,
        "train_batch_size": train.batch_size,
        "train_lr": train.lr,
        **param_columns("dataset", cell.dataset.params),
        **param_columns("denoiser", cell.denoiser.params),
        **param_columns("estimator", cell.estimator.params),
    }
    return {"cell_id": cell.id, **ident}


def failure(exc: BaseException) -> str:
    """A failure as the table's ``error`` column and log lines say it."""
    return str(exc) if isinstance(exc, (PluginOutputError, DataError)) else f"{type(exc).__name__}: {exc}"


def cell_model(cell: Cell, suite: Suite, prepared: Prepared, cache_dir: Path | None) -> tuple[ConditionalModel, dict]:
    """The model a cell classifies with: on its device, in its dtype (compiled if asked), batched.

    Raises ``Unsupported`` when the device cannot run that dtype or compile.
    """
    device = torch.device(cell.device)
    splits = prepared.splits
    module = prepared.module.to(device).eval()
    name = f"denoiser '{cell.denoiser!r}'"
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
    running = accelerate(module, device, cell.dtype, cell.compile)
    model = model_of(prepared, running, suite, device, name)
    tuned = suite.batch_size == "auto"
    if tuned:
        key = "|".join(
            [repr(cell.denoiser), str(list(splits.data_shape)), device_name(cell.device), cell.dtype]
            + [f"compile={cell.compile}", torch.__version__]
        )
        model.max_batch, was_cached = cached_batch_size(model, cache_dir, key)
    else:
        model.max_batch, was_cached = int(suite.batch_size), False
    return model, {"batch_size": model.max_batch, "batch_size_tuned": tuned, "batch_size_cached": was_cached}


def run_cell(
    cell: Cell, suite: Suite, trained: tuple[Prepared | None, list[str]], cache_dir: Path | None, run: dict[str, str]
) -> CellResult:
    """Measure one cell of a prepared group; never raises: failures become a failed row.

    ``trained`` is the group's preparation (None when the pair was skipped) with its messages;
    ``run`` is ``provenance.run_info()`` of the process that started the run.
    """
    prepared = trained[0]
    ident = identity(cell, suite)
    started = time.time()
    start = time.perf_counter()
    if prepared is None:
        return CellResult(cell.id, [], [], [], skipped=True)
    info = prepared.info
    row = {
        **ident,
        "device_name": device_name(cell.device),
        "bayes_accuracy": prepared.bayes_accuracy,
        "cache_hit": info["cache_hit"],
        "train_s": info.get("train_s", 0.0),
        "train_started_at": info.get("train_started_at", float("nan")),
        "train_finished_at": info.get("train_finished_at", float("nan")),
        "setup_s": prepared.setup_s,
        **{k: info[k] for k in ("test_subset", "test_digest", "heldout_n", "heldout_from") if k in info},
        **(prepared.pretrained.columns if prepared.pretrained else {}),
    }
    messages: list[str] = []
    predictions = None
    try:
        model, batching = cell_model(cell, suite, prepared, cache_dir)
        data = CellData(
            prepared.splits.test_x.to(model.device, model.dtype),
            prepared.splits.test_y.to(model.device),
            prepared.heldout_x.to(model.device, model.dtype),
            prepared.heldout_y.to(model.device),
        )
        measured, bins, predictions = measure_cell(cell, model, data, suite)
        # the row's fingerprint of the test set (hashed once per model): paired tests match runs on it
        predictions["test_digest"] = info.get("test_digest") or subsets.digest(
            prepared.splits.test_x, prepared.splits.test_y
        )
        rows = [{**row, **batching, **m, "status": "ok", "error": ""} for m in measured]
        if prepared.pretrained:
            pretrained.add_end_to_end(rows, prepared.pretrained.columns)
        bins = [{**ident, **b} for b in bins]
    except Unsupported as exc:
        return CellResult(cell.id, [], [], [str(exc)], skipped=True)
    except Exception as exc:
        rows, bins = [{**row, "status": "failed", "error": failure(exc)}], []
        messages.append(f"{cell.describe()} failed: {rows[0]['error']}")
    finished = time.time()
    for r in rows:
        r.update(provenance(run), wall_s=time.perf_counter() - start, started_at=started, finished_at=finished)
        r["cpu_allocator_tuned"] = tune_cpu_allocator()
    return CellResult(cell.id, rows, bins, messages, predictions=predictions)


def failed_result(cell: Cell, suite: Suite, exc: BaseException, run: dict[str, str]) -> CellResult:
    """A cell whose group's data or model could not be prepared, as one failed row."""
    now = time.time()
    row = {**identity(cell, suite), "status": "failed", "error": failure(exc), **provenance(run)}
    return CellResult(cell.id, [{**row, "started_at": now, "finished_at": now}], [], [])
