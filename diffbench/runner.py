"""The runner: cells -> (cached) training -> estimates and timings -> rows of the tidy table."""

from __future__ import annotations

import itertools
import resource
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diffbench import results
from diffbench.contract import Splits
from diffbench.model import ConditionalModel
from diffbench.results import param_columns, wilson_interval
from diffbench.schedule import NoiseSchedule, sample
from diffbench.suite import Cell, Suite
from diffbench.timing import measure, timed, tune_cpu_allocator
from diffbench.training import load_or_train

REGION_GRID = 64  # decision regions are drawn on a REGION_GRID x REGION_GRID lattice
SAMPLES_PER_CLASS = 300


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


def measure_cell(cell: Cell, model: ConditionalModel, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict:
    """Accuracy from one seeded pass, then interleaved timed repeats."""
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n, k = x.shape[0], model.num_classes
    generator = torch.Generator(device=device).manual_seed(cell.seed)
    errors: list[torch.Tensor] = []
    model.reset_nfe()
    first_s = timed(lambda: errors.append(cell.estimator.errors(model, x, cell.trials, generator)), device)
    nfe = model.reset_nfe()
    err = check_errors(errors[0], n, k, cell.estimator.name).float()
    correct = int((err.argmin(1) == y).sum())
    low, high = wilson_interval(correct, n)
    speed = measure(
        lambda: cell.estimator.errors(model, x, cell.trials, generator), model, n, first_s, repeats, generator
    )
    return {
        "n_test": n,
        "accuracy": correct / n,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "nfe_per_sample": nfe / n,
        **vars(speed),
        "peak_memory_mb": peak_memory_mb(device),
    }


def identity(cell: Cell, suite: Suite) -> dict[str, Any]:
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
        "train_steps": suite.train.steps,
        "train_batch_size": suite.train.batch_size,
        "train_lr": suite.train.lr,
        **param_columns("dataset", cell.dataset.params),
        **param_columns("denoiser", cell.denoiser.params),
        **param_columns("estimator", cell.estimator.params),
    }


def failure(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, PluginOutputError) else f"{type(exc).__name__}: {exc}"


def figure_data(
    cells: list[Cell], model: ConditionalModel, splits: Splits, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decision regions of each estimator (at its largest trials) and the model's own samples, 2-D only."""
    first = cells[0]
    ids = {
        "dataset": first.dataset.name,
        "denoiser": first.denoiser.name,
        "dataset_label": repr(first.dataset),
        "denoiser_label": repr(first.denoiser),
    }
    lo = splits.test_x.min(0).values - 0.3
    hi = splits.test_x.max(0).values + 0.3
    axes = [torch.linspace(lo[i].item(), hi[i].item(), REGION_GRID) for i in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="xy"), dim=-1).reshape(-1, 2)
    regions = []
    best: dict[str, Cell] = {}
    for cell in cells:
        label = repr(cell.estimator)
        if label not in best or cell.trials > best[label].trials:
            best[label] = cell
    for label, cell in best.items():
        generator = torch.Generator(device=model.device).manual_seed(seed)
        err = cell.estimator.errors(model, grid.to(model.device, model.dtype), cell.trials, generator)
        prob = torch.softmax(-err.float(), dim=1).cpu()
        regions.append(
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
    generator = torch.Generator(device=model.device).manual_seed(seed)
    labels = torch.arange(model.num_classes).repeat_interleave(SAMPLES_PER_CLASS)
    drawn = sample(model, labels, generator).float().cpu()
    points = pd.concat(
        [
            pd.DataFrame(
                {
                    **ids,
                    "source": "model",
                    "label": labels.numpy(),
                    "x0": drawn[:, 0].numpy(),
                    "x1": drawn[:, 1].numpy(),
                }
            ),
            pd.DataFrame(
                {
                    **ids,
                    "source": "test",
                    "label": splits.test_y.numpy(),
                    "x0": splits.test_x[:, 0].numpy(),
                    "x1": splits.test_x[:, 1].numpy(),
                }
            ),
        ]
    )
    return pd.concat(regions, ignore_index=True), points


def run(
    suite: Suite,
    cells: list[Cell],
    out: Path,
    cache_dir: Path | None,
    progress: bool = True,
    log=print,
) -> pd.DataFrame:
    """Measure every cell, writing the table after each one; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    schedule = NoiseSchedule(suite.schedule, suite.timesteps)
    base = {**results.provenance(), "cpu_allocator_tuned": tune_cpu_allocator()}
    rows: list[dict[str, Any]] = []
    regions, samples = [], []
    train_device = torch.device("cuda" if any(c.device == "cuda" for c in cells) else "cpu")

    def group_key(c: Cell) -> tuple[str, str]:
        return repr(c.dataset), repr(c.denoiser)

    for _, group_iter in itertools.groupby(cells, key=group_key):
        group = list(group_iter)
        first = group[0]
        start = time.perf_counter()
        try:
            splits = check_splits(first.dataset.load(first.seed), first.dataset.name)
            module, train_info = load_or_train(
                first.dataset,
                first.denoiser,
                splits,
                schedule,
                suite.train,
                first.seed,
                train_device,
                cache_dir,
                progress=progress,
                log=log,
            )
        except Exception as exc:
            log(f"{repr(first.dataset)} x {repr(first.denoiser)} failed: {failure(exc)}")
            for cell in group:
                rows.append({**identity(cell, suite), "status": "failed", "error": failure(exc), **base})
            results.write_table(rows, out)
            continue
        if train_info["cache_hit"]:
            log(f"{repr(first.denoiser)} on {repr(first.dataset)}: loaded cached weights")
        else:
            log(f"{repr(first.denoiser)} on {repr(first.dataset)}: trained in {train_info['train_s']:.1f}s")
        setup_s = time.perf_counter() - start
        for device, dev_iter in itertools.groupby(group, key=lambda c: c.device):
            dev_cells = list(dev_iter)
            model = ConditionalModel(
                module, schedule, splits.num_classes, splits.data_shape, device, max_batch=suite.batch_size
            )
            x = splits.test_x.to(model.device, model.dtype)
            y = splits.test_y.to(model.device)
            for cell in dev_cells:
                cell_start = time.perf_counter()
                row = {
                    **identity(cell, suite),
                    "device_name": results.device_name(device),
                    "cache_hit": train_info["cache_hit"],
                    "train_s": train_info.get("train_s", 0.0),
                    "setup_s": setup_s,
                }
                try:
                    row.update(measure_cell(cell, model, x, y, suite.repeats), status="ok", error="")
                except Exception as exc:
                    row.update(status="failed", error=failure(exc))
                    log(f"{row['estimator_label']} at {cell.trials} trials on {device} failed: {row['error']}")
                row["wall_s"] = time.perf_counter() - cell_start
                rows.append({**row, **base})
                results.write_table(rows, out)
            done = [c for c, r in zip(dev_cells, rows[-len(dev_cells) :], strict=True) if r["status"] == "ok"]
            if splits.data_shape == (2,) and device == group[0].device and done:
                try:
                    r, s = figure_data(done, model, splits, first.seed)
                    regions.append(r)
                    samples.append(s)
                except Exception as exc:
                    log(f"figure data for {repr(first.dataset)} x {repr(first.denoiser)} failed: {failure(exc)}")
    if regions:
        results.write_atomic(pd.concat(regions, ignore_index=True), out / results.REGIONS)
        results.write_atomic(pd.concat(samples, ignore_index=True), out / results.SAMPLES)
    return results.write_table(rows, out)
