"""The runner: cells -> (cached) training -> estimates and timings -> rows of the tidy table."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diffbench import metrics, pretrained, results, rundir
from diffbench.acceleration import accelerate, unsupported
from diffbench.contract import Plugin, Splits
from diffbench.model import ConditionalModel
from diffbench.results import param_columns, wilson_interval
from diffbench.schedule import NoiseSchedule, sample
from diffbench.suite import Cell, Suite
from diffbench.timing import (
    cached_chunk_size,
    measure,
    measure_latency,
    median_iqr,
    peak_memory_mb,
    reset_peak_memory,
    timed,
    tune_cpu_allocator,
)
from diffbench.training import build_module, load_checkpoint, load_or_train

REGION_GRID = 64  # decision regions are drawn on a REGION_GRID x REGION_GRID lattice
HOLDOUT_FRACTION, HOLDOUT_MAX = 0.1, 500  # training data held out for estimators' fit and calibration
SAMPLES_PER_CLASS = 300  # 2-D points per class drawn from the model
IMAGES_PER_CLASS = 8  # images per class drawn from the model
GAP_SAMPLES = 128  # test samples behind gap_variance
GAP_REPEATS = 4  # independent repeats behind gap_variance


class PluginOutputError(RuntimeError):
    """A plugin returned something that breaks the contract."""


class ExecutorError(RuntimeError):
    """The executor cannot start (an unreachable dask scheduler, say)."""


def check_splits(splits: Any, name: str) -> Splits:
    where = f"dataset '{name}' load()"
    if not isinstance(splits, Splits):
        raise PluginOutputError(f"{where} returned {type(splits).__name__}, not diffbench.Splits")
    for part in ("train", "test"):
        x, y = getattr(splits, f"{part}_x"), getattr(splits, f"{part}_y")
        if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 2):
            raise PluginOutputError(f"{where}: {part}_x must be a float tensor [N, *shape]")
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.long and y.shape == x.shape[:1]):
            raise PluginOutputError(f"{where}: {part}_y must be a long tensor [N] matching {part}_x")
        if not torch.isfinite(x).all():
            raise PluginOutputError(f"{where}: {part}_x holds NaN or inf")
        if y.numel() and (y.min() < 0 or y.max() >= len(splits.class_names)):
            raise PluginOutputError(f"{where}: {part}_y has labels outside [0, {len(splits.class_names)})")
    names = splits.class_names
    if not (isinstance(names, (list, tuple)) and names and all(isinstance(c, str) for c in names)):
        raise PluginOutputError(f"{where}: class_names must be a non-empty list of str, got {names!r}")
    if len(splits.train_x) == 0 or len(splits.test_x) == 0:
        raise PluginOutputError(f"{where}: the train and test splits must not be empty")
    if splits.train_x.shape[1:] != splits.test_x.shape[1:]:
        raise PluginOutputError(f"{where}: train_x and test_x have different sample shapes")
    return splits


def check_errors(errors: Any, batch: int, classes: int, name: str) -> torch.Tensor:
    where = f"estimator '{name}' errors()"
    if not isinstance(errors, torch.Tensor):
        raise PluginOutputError(f"{where} returned {type(errors).__name__}, not a tensor [B, K]")
    if tuple(errors.shape) != (batch, classes):
        raise PluginOutputError(f"{where} returned shape {list(errors.shape)}, expected [{batch}, {classes}]")
    if not errors.is_floating_point():
        raise PluginOutputError(f"{where} returned dtype {errors.dtype}, expected a floating dtype")
    if not torch.isfinite(errors).all():
        raise PluginOutputError(f"{where} returned NaN or inf")
    return errors


@dataclass
class CellData:
    """What a cell classifies (test) and may tune on (held-out training data), on the model's device."""

    x: torch.Tensor
    y: torch.Tensor
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor


def measure_cell(cell: Cell, model: ConditionalModel, data: CellData, suite: Suite) -> tuple[list[dict], list[dict]]:
    """One cell's rows (one per scenario of the suite) and its reliability bins.

    In order: ``fit`` on held-out data; accuracy from one pass seeded by the cell's seed;
    a temperature fitted on the held-out data; the error-gap variance over independent
    repeats on a subset of the test set; then the timed scenarios. Only the last are
    timed; NFE are read from the model's counter around each step.
    """
    device = model.device
    reset_peak_memory(device)
    x, y = data.x, data.y
    n, k = x.shape[0], model.num_classes
    name, trials = cell.estimator.name, cell.trials

    def classify(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return check_errors(cell.estimator.errors(model, inputs, trials, generator), inputs.shape[0], k, name)

    generator = torch.Generator(device=device).manual_seed(cell.seed)
    model.reset_nfe()
    cell.estimator.fit(model, data.heldout_x, data.heldout_y, generator)
    fit_nfe = model.reset_nfe()
    errors: list[torch.Tensor] = []
    first_s = timed(lambda: errors.append(classify(x, generator)), device)
    pass_nfe = [model.reset_nfe() / n]
    if pass_nfe[0] == 0:
        raise PluginOutputError(
            f"estimator '{name}' errors() never called model.eps: errors must come from the model (NFE = 0)"
        )
    err = errors[0].float().cpu()
    y_cpu = y.cpu()
    correct = int((err.argmin(1) == y_cpu).sum())
    low, high = wilson_interval(correct, n)

    temperature = 1.0
    if data.heldout_x.shape[0] >= 2:
        temperature = metrics.fit_temperature(classify(data.heldout_x, generator).cpu(), data.heldout_y.cpu())
    model.reset_nfe()
    subset = slice(0, min(n, GAP_SAMPLES))
    repeated = []
    for r in range(GAP_REPEATS):
        independent = torch.Generator(device=device).manual_seed(cell.seed + 1 + r)
        repeated.append(classify(x[subset], independent).cpu())
        pass_nfe.append(model.reset_nfe() / x[subset].shape[0])
    gap_var = metrics.gap_variance(torch.stack(repeated), y_cpu[subset])
    nfe_mid, nfe_iqr = median_iqr(pass_nfe)

    common = {
        "n_test": n,
        "accuracy": correct / n,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "nfe_per_sample": pass_nfe[0],
        "nfe_per_sample_iqr": nfe_iqr,
        "fit_nfe_per_sample": fit_nfe / max(1, data.heldout_x.shape[0]),
        "temperature": temperature,
        **metrics.calibration(err, y_cpu, temperature),
        "gap_variance": gap_var * nfe_mid,
    }
    rows = []
    if "offline" in suite.scenarios:
        speed = measure(
            lambda: cell.estimator.errors(model, x, trials, generator),
            model,
            n,
            generator,
            first_pass_s=first_s,
            min_repeats=suite.repeats,
            max_time_s=suite.max_time_s,
        )
        rows.append({"scenario": "offline", **common, **vars(speed), "peak_memory_mb": peak_memory_mb(device)})
    if "single" in suite.scenarios:
        lat = measure_latency(
            lambda i: cell.estimator.errors(model, x[i % n : i % n + 1], trials, generator),
            model,
            generator,
            max_time_s=suite.max_time_s,
        )
        rows.append(
            {
                "scenario": "single",
                **common,
                "samples_per_s": 1000.0 / lat.p50_ms,
                "efficiency": lat.efficiency,
                "repeats": lat.count,
                "noisy": lat.noisy,
                "latency_p50_ms": lat.p50_ms,
                "latency_p90_ms": lat.p90_ms,
                "latency_iqr_ms": lat.iqr_ms,
                "bare_latency_p50_ms": lat.bare_p50_ms,
                "peak_memory_mb": peak_memory_mb(device),
            }
        )
    return rows, metrics.reliability_bins(err, y_cpu, temperature)


def identity(cell: Cell, suite: Suite) -> dict[str, Any]:
    train = suite.train_settings(cell.denoiser)
    ident = {
        "dataset": cell.dataset.name,
        "denoiser": cell.denoiser.name,
        "estimator": cell.estimator.name,
        "device": cell.device,
        "trials": cell.trials,
        "seed": cell.seed,
        "dtype": cell.dtype,
        "compile": cell.compile,
        "dataset_label": repr(cell.dataset),
        "denoiser_label": repr(cell.denoiser),
        "estimator_label": repr(cell.estimator),
        "schedule": suite.schedule,
        "num_timesteps": suite.timesteps,
        "train_steps": train.steps,
        "train_batch_size": train.batch_size,
        "train_lr": train.lr,
        **param_columns("dataset", cell.dataset.params),
        **param_columns("denoiser", cell.denoiser.params),
        **param_columns("estimator", cell.estimator.params),
    }
    return {"cell_id": rundir.cell_id(ident), **ident}


def failure(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, PluginOutputError) else f"{type(exc).__name__}: {exc}"


def regions_data(cells: list[Cell], model: ConditionalModel, splits: Splits, seed: int, ids: dict) -> pd.DataFrame:
    """Each estimator's predicted class on a lattice over the 2-D test data, at its largest trials."""
    lo = splits.test_x.min(0).values - 0.3
    hi = splits.test_x.max(0).values + 0.3
    axes = [torch.linspace(lo[i].item(), hi[i].item(), REGION_GRID) for i in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="xy"), dim=-1).reshape(-1, 2)
    best: dict[str, Cell] = {}
    for cell in cells:
        label = repr(cell.estimator)
        if label not in best or cell.trials > best[label].trials:
            best[label] = cell
    frames = []
    for label, cell in best.items():
        generator = torch.Generator(device=model.device).manual_seed(seed)
        err = cell.estimator.errors(model, grid.to(model.device, model.dtype), cell.trials, generator)
        prob = torch.softmax(-err.float(), dim=1).cpu()
        frames.append(
            pd.DataFrame(
                {
                    **ids,
                    "estimator_label": label,
                    "trials": cell.trials,
                    "x0": grid[:, 0].numpy(),
                    "x1": grid[:, 1].numpy(),
                    "pred": prob.argmax(1).numpy(),
                    "confidence": prob.max(1).values.numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def samples_data(model: ConditionalModel, splits: Splits, seed: int, ids: dict) -> pd.DataFrame:
    """The model's own samples per class beside test data, flattened to columns x0, x1, ..."""
    per_class = SAMPLES_PER_CLASS if splits.data_shape == (2,) else IMAGES_PER_CLASS
    generator = torch.Generator(device=model.device).manual_seed(seed)
    labels = torch.arange(model.num_classes).repeat_interleave(per_class)
    drawn = sample(model, labels, generator).float().cpu()
    if splits.data_shape == (2,):
        test_x, test_y = splits.test_x, splits.test_y
    else:  # the first few test images of each class
        keep = torch.cat([torch.nonzero(splits.test_y == c)[:per_class, 0] for c in range(model.num_classes)])
        test_x, test_y = splits.test_x[keep], splits.test_y[keep]
    shape = "x".join(map(str, splits.data_shape))
    frames = []
    for source, x, y in (("model", drawn, labels), ("test", test_x, test_y)):
        flat = x.reshape(len(x), -1).numpy()
        columns = {f"x{i}": flat[:, i] for i in range(flat.shape[1])}
        frames.append(pd.DataFrame({**ids, "shape": shape, "source": source, "label": y.numpy(), **columns}))
    return pd.concat(frames, ignore_index=True)


def hold_out(splits: Splits, seed: int) -> tuple[Splits, torch.Tensor, torch.Tensor]:
    """Set aside a seeded random part of the training data that the model never trains on.

    Estimators may ``fit`` on it (and calibration uses it); the test set stays untouched.
    """
    n = splits.train_x.shape[0]
    size = min(HOLDOUT_MAX, int(n * HOLDOUT_FRACTION))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, kept = order[:size], order[size:]
    train = Splits(splits.train_x[kept], splits.train_y[kept], splits.test_x, splits.test_y, splits.class_names)
    return train, splits.train_x[held], splits.train_y[held]


def group_ids(cell: Cell) -> dict[str, str]:
    return {
        "dataset": cell.dataset.name,
        "denoiser": cell.denoiser.name,
        "dataset_label": repr(cell.dataset),
        "denoiser_label": repr(cell.denoiser),
    }


def groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells that share one trained model: same dataset and denoiser (and seed), in grid order."""
    found: dict[tuple, list[Cell]] = {}
    for cell in cells:
        found.setdefault(group_key_of(cell), []).append(cell)
    return list(found.values())


@dataclass
class Prepared:
    """One group's data (training part without the held-out samples), trained module and what it cost."""

    splits: Splits
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor
    module: torch.nn.Module
    info: dict[str, Any]
    bayes_accuracy: float
    setup_s: float
    pretrained: pretrained.PretrainedSetup | None = None  # set when the denoiser arrived trained


def prepare(
    first: Cell,
    suite: Suite,
    device: torch.device,
    cache_dir: Path | None,
    checkpoint: Path | None,
    progress: bool,
    log,
) -> Prepared | None:
    """Data and trained module of one group; None (with one line said) when the pair does not fit."""
    start = time.perf_counter()
    schedule = NoiseSchedule(suite.schedule, suite.timesteps)
    splits = check_splits(first.dataset.load(first.seed), first.dataset.name)
    splits, heldout_x, heldout_y = hold_out(splits, first.seed)
    pair = f"{first.dataset!r} x {first.denoiser!r}"
    if not first.denoiser.supports(splits.data_shape):
        log(
            f"skipping {pair}: {first.denoiser.name} takes {first.denoiser.accepts}, "
            f"but {first.dataset.name} has samples of shape {list(splits.data_shape)}"
        )
        return None
    bayes = bayes_accuracy(first.dataset, splits)
    loaded = prepare_pretrained(first, splits, heldout_x, heldout_y, bayes, start, device, log)
    if loaded is not None:
        return loaded
    if checkpoint is not None:
        module = load_checkpoint(build_module(first.denoiser, splits, first.seed), checkpoint, pair)
        log(f"{pair}: loaded weights from {checkpoint}")
        info = {"cache_hit": False, "train_s": 0.0, "checkpoint": str(checkpoint)}
        setup_s = time.perf_counter() - start
        return Prepared(splits, heldout_x, heldout_y, module.to(device).eval(), info, bayes, setup_s)
    train_started = time.time()
    module, info = load_or_train(
        first.dataset,
        first.denoiser,
        splits,
        schedule,
        suite.train_settings(first.denoiser),
        first.seed,
        device,
        cache_dir,
        progress=progress,
        log=log,
    )
    if info["cache_hit"]:
        log(f"{pair}: loaded cached weights")
    else:
        log(f"{pair}: trained in {info['train_s']:.1f}s")
        info.update(train_started_at=train_started, train_finished_at=time.time())
    return Prepared(splits, heldout_x, heldout_y, module, info, bayes, time.perf_counter() - start)


def prepare_pretrained(
    first: Cell,
    splits: Splits,
    heldout_x: torch.Tensor,
    heldout_y: torch.Tensor,
    bayes: float,
    start: float,
    device: torch.device,
    log,
) -> Prepared | None:
    """A denoiser that arrived trained (``Denoiser.pretrained``): nothing trained or cached; None for the others."""
    pair = f"{first.dataset!r} x {first.denoiser!r}"
    got = pretrained.load(first.denoiser, splits, heldout_x, heldout_y, device, first.seed, log, pair)
    if got is None:
        return None
    setup_s = time.perf_counter() - start
    return Prepared(got.splits, got.heldout_x, heldout_y, got.module, got.info, bayes, setup_s, got.setup)


def model_of(prepared: Prepared, module: torch.nn.Module, suite: Suite, device: torch.device) -> ConditionalModel:
    """``module`` wrapped with the schedule and output type it runs under: the suite's, or a pretrained model's own."""
    setup = prepared.pretrained
    schedule = setup.schedule if setup else NoiseSchedule(suite.schedule, suite.timesteps)
    options = setup.model_options() if setup else {}
    splits = prepared.splits
    return ConditionalModel(module, schedule, splits.num_classes, splits.data_shape, device, **options)


def train_only(suite: Suite, cells: list[Cell], cache_dir: Path | None, progress: bool = True, log=print) -> int:
    """Train (or confirm cached) every model a grid needs; returns how many failed."""
    device = train_device(cells)
    failed = 0
    for group in groups(cells):
        try:
            prepare(group[0], suite, device, cache_dir, None, progress, log)
        except Exception as exc:
            failed += 1
            log(f"{group[0].dataset!r} x {group[0].denoiser!r} failed: {failure(exc)}")
    return failed


def train_device(cells: list[Cell]) -> torch.device:
    """Models are trained once, on CUDA when any cell uses it, and loaded onto every device."""
    return torch.device("cuda" if any(c.device == "cuda" for c in cells) else "cpu")


@dataclass
class CellResult:
    """What a finished (or failed, or skipped) cell sends back to the process that writes the table."""

    cell_id: str
    rows: list[dict[str, Any]]
    bins: list[dict[str, Any]]
    messages: list[str]
    skipped: bool = False


def cell_model(cell: Cell, suite: Suite, prepared: Prepared, cache_dir: Path | None) -> tuple[ConditionalModel, dict]:
    """The model a cell classifies with: on its device, in its dtype (compiled if asked), chunked.

    Raises ``Unsupported`` when the device cannot run that dtype or compile.
    """
    device = torch.device(cell.device)
    splits = prepared.splits
    module = prepared.module.to(device).eval()
    reason = unsupported(module, device, cell.dtype, cell.compile, splits.data_shape, splits.num_classes)
    if reason:
        what = f"{cell.dtype}{' compiled' if cell.compile else ''} on {cell.device}"
        raise Unsupported(f"skipping {what} for {cell.denoiser!r}: {reason}")
    running = accelerate(module, device, cell.dtype, cell.compile)
    model = model_of(prepared, running, suite, device)
    tuned = suite.batch_size == "auto"
    if tuned:
        key = "|".join(
            [repr(cell.denoiser), str(list(splits.data_shape)), results.device_name(cell.device), cell.dtype]
            + [f"compile={cell.compile}", torch.__version__]
        )
        model.max_batch, was_cached = cached_chunk_size(model, cache_dir, key)
    else:
        model.max_batch, was_cached = int(suite.batch_size), False
    return model, {"batch_size": model.max_batch, "batch_size_tuned": tuned, "batch_size_cached": was_cached}


class Unsupported(RuntimeError):
    """A cell's dtype or compile setting cannot run on its device."""


def run_cell(
    cell: Cell, suite: Suite, prepared: Prepared | None, cache_dir: Path | None, command: str = ""
) -> CellResult:
    """Measure one cell of a prepared group; never raises: failures become a failed row."""
    ident = identity(cell, suite)
    started = time.time()
    start = time.perf_counter()
    if prepared is None:
        return CellResult(ident["cell_id"], [], [], [], skipped=True)
    info = prepared.info
    row = {
        **ident,
        "device_name": results.device_name(cell.device),
        "bayes_accuracy": prepared.bayes_accuracy,
        "cache_hit": info["cache_hit"],
        "train_s": info.get("train_s", 0.0),
        "train_started_at": info.get("train_started_at", math.nan),
        "train_finished_at": info.get("train_finished_at", math.nan),
        "setup_s": prepared.setup_s,
        **(prepared.pretrained.columns if prepared.pretrained else {}),
    }
    messages: list[str] = []
    try:
        model, chunking = cell_model(cell, suite, prepared, cache_dir)
        data = CellData(
            prepared.splits.test_x.to(model.device, model.dtype),
            prepared.splits.test_y.to(model.device),
            prepared.heldout_x.to(model.device, model.dtype),
            prepared.heldout_y.to(model.device),
        )
        measured, bins = measure_cell(cell, model, data, suite)
        rows = [{**row, **chunking, **m, "status": "ok", "error": ""} for m in measured]
        if prepared.pretrained:
            pretrained.add_end_to_end(rows, prepared.pretrained.columns)
        bins = [{**ident, **b} for b in bins]
    except Unsupported as exc:
        return CellResult(ident["cell_id"], [], [], [str(exc)], skipped=True)
    except Exception as exc:
        rows, bins = [{**row, "status": "failed", "error": failure(exc)}], []
        messages.append(f"{row['estimator_label']} at {cell.trials} trials on {cell.device} failed: {rows[0]['error']}")
    base = {**results.provenance(), "cpu_allocator_tuned": tune_cpu_allocator()}
    base["command"] = command or base["command"]
    finished = time.time()
    for r in rows:
        r.update(wall_s=time.perf_counter() - start, started_at=started, finished_at=finished, **base)
        r["host"] = base["hostname"]
    return CellResult(ident["cell_id"], rows, bins, messages)


def failed_group(cells: list[Cell], suite: Suite, exc: BaseException) -> list[CellResult]:
    """Every cell of a group whose data or model could not be prepared, as failed rows."""
    base = results.provenance()
    now = time.time()
    out = []
    for cell in cells:
        ident = identity(cell, suite)
        row = {**ident, "status": "failed", "error": failure(exc), **base, "host": base["hostname"]}
        out.append(CellResult(ident["cell_id"], [{**row, "started_at": now, "finished_at": now}], [], []))
    return out


def figures_data(cells: list[Cell], suite: Suite, prepared: Prepared | None) -> dict[str, pd.DataFrame]:
    """The figure tables of one trained model: its samples and (2-D data) the decision regions."""
    if prepared is None or not cells or prepared.pretrained:  # T steps of sampling a big model cost too much
        return {}
    first = cells[0]
    ids = group_ids(first)
    splits = prepared.splits
    schedule = NoiseSchedule(suite.schedule, suite.timesteps)
    device = torch.device(first.device)
    model = ConditionalModel(prepared.module.to(device).eval(), schedule, splits.num_classes, splits.data_shape, device)
    out = {"samples": samples_data(model, splits, first.seed, ids)}
    plain = [c for c in cells if c.dtype == "float32" and not c.compile and c.device == first.device]
    if splits.data_shape == (2,) and plain:
        out["regions"] = regions_data(plain, model, splits, first.seed, ids)
    return out


def run(
    suite: Suite,
    cells: list[Cell],
    out: Path,
    cache_dir: Path | None,
    progress: bool = True,
    log=print,
    checkpoint: Path | None = None,
    resume: bool = False,
    executor: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
    plugin_specs: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Measure every cell not yet finished in ``out``, saving each as it finishes; returns the table."""
    folder = rundir.RunFolder(out)
    settings = {"suite": suite.to_dict(), "devices": sorted({c.device for c in cells}), "checkpoint": checkpoint}
    folder.start(settings, resume, log)
    log(f"running {len(cells)} cells on {', '.join(settings['devices'])}; results go to {out}")
    tune_cpu_allocator()
    order = [identity(c, suite)["cell_id"] for c in cells]
    by_id = dict(zip(order, cells, strict=True))
    finished = folder.finished() & set(by_id)
    todo = [c for i, c in by_id.items() if i not in finished]
    if resume:
        log(f"resuming {out}: {len(finished)} of {len(cells)} cells already finished")
    command = results.provenance()["command"]

    said: set[str] = set()

    def record(result: CellResult) -> None:
        for message in result.messages:
            if not (result.skipped and message in said):  # a skip is said once, not once per cell
                log(message)
            said.add(message)
        if result.skipped:
            return
        folder.save_cell(result.cell_id, result.rows, result.bins)
        if all(r["status"] == "ok" for r in result.rows):
            finished.add(result.cell_id)
        folder.write_tables(order)

    def record_figures(group: list[Cell], frames: dict[str, pd.DataFrame]) -> None:
        key = rundir.group_key(identity(group[0], suite))
        for kind, frame in frames.items():
            folder.save_part(key, kind, frame)
        folder.write_tables(order)

    def finished_cells(group: list[Cell]) -> list[Cell]:
        """Cells of a group (all of the grid's, not just this run's) that have finished ok."""
        key = group_key_of(group[0])
        return [c for i, c in by_id.items() if i in finished and group_key_of(c) == key]

    try:
        if executor == "dask":
            from diffbench import dask_executor

            dask_executor.run_grid(
                todo, suite, train_device(cells), cache_dir, checkpoint, command, record, record_figures,
                finished_cells, log, workers=workers, scheduler=scheduler, threads=threads, plugin_specs=plugin_specs,
            )  # fmt: skip
        else:
            device = train_device(cells)
            for group in groups(todo):
                try:
                    prepared = prepare(group[0], suite, device, cache_dir, checkpoint, progress, log)
                except Exception as exc:
                    log(f"{group[0].dataset!r} x {group[0].denoiser!r} failed: {failure(exc)}")
                    for result in failed_group(group, suite, exc):
                        record(result)
                    continue
                if prepared is None:
                    continue
                for cell in group:
                    record(run_cell(cell, suite, prepared, cache_dir, command))
                try:  # the figures' data, once per model
                    record_figures(group, figures_data(finished_cells(group), suite, prepared))
                except Exception as exc:
                    log(f"figure data for {group[0].dataset!r} x {group[0].denoiser!r} failed: {failure(exc)}")
    except KeyboardInterrupt:
        folder.write_tables(order)  # the table holds every cell finished before the interrupt
        raise
    return folder.write_tables(order)


def group_key_of(cell: Cell) -> tuple:
    return (repr(cell.dataset), repr(cell.denoiser), cell.seed)


def bayes_accuracy(dataset: Plugin, splits: Splits) -> float:
    """Test accuracy of the Bayes-optimal classifier where the dataset knows its distribution, else NaN."""
    posterior = getattr(dataset, "bayes_log_posterior", None)
    if posterior is None:
        return math.nan
    return (posterior(splits.test_x).argmax(1) == splits.test_y).float().mean().item()
