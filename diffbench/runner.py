"""The runner: cells -> (cached) training -> estimates and timings -> rows of the tidy table."""

from __future__ import annotations

import itertools
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diffbench import metrics, results
from diffbench.contract import Plugin, Splits
from diffbench.model import ConditionalModel
from diffbench.results import param_columns, wilson_interval
from diffbench.schedule import NoiseSchedule, sample
from diffbench.suite import Cell, Suite
from diffbench.timing import measure, median_iqr, timed, tune_cpu_allocator
from diffbench.training import build_module, load_checkpoint, load_or_train

REGION_GRID = 64  # decision regions are drawn on a REGION_GRID x REGION_GRID lattice
HOLDOUT_FRACTION, HOLDOUT_MAX = 0.1, 500  # training data held out for estimators' fit and calibration
SAMPLES_PER_CLASS = 300  # 2-D points per class drawn from the model
IMAGES_PER_CLASS = 8  # images per class drawn from the model
GAP_SAMPLES = 128  # test samples behind gap_variance
GAP_REPEATS = 4  # independent repeats behind gap_variance


class PluginOutputError(RuntimeError):
    """A plugin returned something that breaks the contract."""


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


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak, KiB on Linux


@dataclass
class CellData:
    """What a cell classifies (test) and may tune on (held-out training data), on the model's device."""

    x: torch.Tensor
    y: torch.Tensor
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor


def measure_cell(cell: Cell, model: ConditionalModel, data: CellData, repeats: int) -> tuple[dict, list[dict]]:
    """One cell's row and its reliability bins.

    In order: ``fit`` on held-out data; accuracy from one pass seeded by the cell's seed;
    a temperature fitted on the held-out data; the error-gap variance over independent
    repeats on a subset of the test set; then interleaved timed repeats. Only the last
    is timed; NFE are read from the model's counter around each step.
    """
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
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

    speed = measure(lambda: cell.estimator.errors(model, x, trials, generator), model, n, first_s, repeats, generator)
    row = {
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
        **vars(speed),
        "peak_memory_mb": peak_memory_mb(device),
    }
    return row, metrics.reliability_bins(err, y_cpu, temperature)


def identity(cell: Cell, suite: Suite) -> dict[str, Any]:
    train = suite.train_settings(cell.denoiser)
    return {
        "dataset": cell.dataset.name,
        "denoiser": cell.denoiser.name,
        "estimator": cell.estimator.name,
        "device": cell.device,
        "trials": cell.trials,
        "seed": cell.seed,
        "dataset_label": repr(cell.dataset),
        "denoiser_label": repr(cell.denoiser),
        "estimator_label": repr(cell.estimator),
        "schedule": suite.schedule,
        "num_timesteps": suite.timesteps,
        "batch_size": suite.batch_size,
        "train_steps": train.steps,
        "train_batch_size": train.batch_size,
        "train_lr": train.lr,
        **param_columns("dataset", cell.dataset.params),
        **param_columns("denoiser", cell.denoiser.params),
        **param_columns("estimator", cell.estimator.params),
    }


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
    """Cells that share one trained model: same dataset and denoiser (and seed)."""
    key = lambda c: (repr(c.dataset), repr(c.denoiser), c.seed)  # noqa: E731
    return [list(g) for _, g in itertools.groupby(cells, key=key)]


@dataclass
class Prepared:
    """One group's data (training part without the held-out samples) and its trained module."""

    splits: Splits
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor
    module: torch.nn.Module
    info: dict[str, Any]


def prepare(
    first: Cell,
    suite: Suite,
    schedule: NoiseSchedule,
    device: torch.device,
    cache_dir: Path | None,
    checkpoint: Path | None,
    progress: bool,
    log,
) -> Prepared | None:
    """Data and trained module of one group; None (with one line said) when the pair does not fit."""
    splits = check_splits(first.dataset.load(first.seed), first.dataset.name)
    splits, heldout_x, heldout_y = hold_out(splits, first.seed)
    pair = f"{first.dataset!r} x {first.denoiser!r}"
    if not first.denoiser.supports(splits.data_shape):
        log(
            f"skipping {pair}: {first.denoiser.name} takes {first.denoiser.accepts}, "
            f"but {first.dataset.name} has samples of shape {list(splits.data_shape)}"
        )
        return None
    if checkpoint is not None:
        module = load_checkpoint(build_module(first.denoiser, splits, first.seed), checkpoint, pair)
        log(f"{pair}: loaded weights from {checkpoint}")
        info = {"cache_hit": False, "train_s": 0.0, "checkpoint": str(checkpoint)}
        return Prepared(splits, heldout_x, heldout_y, module.to(device).eval(), info)
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
    return Prepared(splits, heldout_x, heldout_y, module, info)


def train_only(suite: Suite, cells: list[Cell], cache_dir: Path | None, progress: bool = True, log=print) -> int:
    """Train (or confirm cached) every model a grid needs; returns how many failed."""
    schedule = NoiseSchedule(suite.schedule, suite.timesteps)
    device = train_device(cells)
    failed = 0
    for group in groups(cells):
        try:
            prepare(group[0], suite, schedule, device, cache_dir, None, progress, log)
        except Exception as exc:
            failed += 1
            log(f"{group[0].dataset!r} x {group[0].denoiser!r} failed: {failure(exc)}")
    return failed


def train_device(cells: list[Cell]) -> torch.device:
    """Models are trained once, on CUDA when any cell uses it, and loaded onto every device."""
    return torch.device("cuda" if any(c.device == "cuda" for c in cells) else "cpu")


def run(
    suite: Suite,
    cells: list[Cell],
    out: Path,
    cache_dir: Path | None,
    progress: bool = True,
    log=print,
    checkpoint: Path | None = None,
) -> pd.DataFrame:
    """Measure every cell, writing the table after each one; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    schedule = NoiseSchedule(suite.schedule, suite.timesteps)
    base = {**results.provenance(), "cpu_allocator_tuned": tune_cpu_allocator()}
    rows: list[dict[str, Any]] = []
    regions, samples, reliability = [], [], []
    device_for_training = train_device(cells)
    for group in groups(cells):
        first = group[0]
        ids = group_ids(first)
        start = time.perf_counter()
        try:
            prepared = prepare(first, suite, schedule, device_for_training, cache_dir, checkpoint, progress, log)
        except Exception as exc:
            log(f"{first.dataset!r} x {first.denoiser!r} failed: {failure(exc)}")
            rows += [{**identity(c, suite), "status": "failed", "error": failure(exc), **base} for c in group]
            results.write_table(rows, out)
            continue
        if prepared is None:
            continue
        splits, module, info = prepared.splits, prepared.module, prepared.info
        bayes = bayes_accuracy(first.dataset, splits)
        setup_s = time.perf_counter() - start
        for device, dev_iter in itertools.groupby(group, key=lambda c: c.device):
            dev_cells = list(dev_iter)
            model = ConditionalModel(
                module, schedule, splits.num_classes, splits.data_shape, device, max_batch=suite.batch_size
            )
            data = CellData(
                splits.test_x.to(model.device, model.dtype),
                splits.test_y.to(model.device),
                prepared.heldout_x.to(model.device, model.dtype),
                prepared.heldout_y.to(model.device),
            )
            done = []
            for cell in dev_cells:
                cell_start = time.perf_counter()
                ident = identity(cell, suite)
                row = {
                    **ident,
                    "device_name": results.device_name(device),
                    "bayes_accuracy": bayes,
                    "cache_hit": info["cache_hit"],
                    "train_s": info.get("train_s", 0.0),
                    "setup_s": setup_s,
                }
                try:
                    measured, bins = measure_cell(cell, model, data, suite.repeats)
                    row.update(measured, status="ok", error="")
                    reliability += [{**ident, **b} for b in bins]
                    done.append(cell)
                except Exception as exc:
                    row.update(status="failed", error=failure(exc))
                    log(f"{row['estimator_label']} at {cell.trials} trials on {device} failed: {row['error']}")
                row["wall_s"] = time.perf_counter() - cell_start
                rows.append({**row, **base})
                results.write_table(rows, out)
            if device != group[0].device:
                continue
            try:  # the figures' data, once per model
                samples.append(samples_data(model, splits, first.seed, ids))
                if splits.data_shape == (2,) and done:
                    regions.append(regions_data(done, model, splits, first.seed, ids))
            except Exception as exc:
                log(f"figure data for {first.dataset!r} x {first.denoiser!r} failed: {failure(exc)}")
    if regions:
        results.write_atomic(pd.concat(regions, ignore_index=True), out / results.REGIONS)
    if samples:
        results.write_atomic(pd.concat(samples, ignore_index=True), out / results.SAMPLES)
    if reliability:
        results.write_atomic(pd.DataFrame(reliability), out / results.RELIABILITY)
    if not rows:
        return pd.DataFrame(columns=["status"])
    return results.write_table(rows, out)


def bayes_accuracy(dataset: Plugin, splits: Splits) -> float:
    """Test accuracy of the Bayes-optimal classifier where the dataset knows its distribution, else NaN."""
    posterior = getattr(dataset, "bayes_log_posterior", None)
    if posterior is None:
        return math.nan
    return (posterior(splits.test_x).argmax(1) == splits.test_y).float().mean().item()
