"""A group's preparation: its data (with a held-out part), and its model loaded, trained or cached."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffbench import pretrained, subsets
from diffbench.cell import Cell
from diffbench.checkpoints import load_checkpoint
from diffbench.contract import DataError, Dataset, Splits, check_log_posterior, check_splits
from diffbench.model import ConditionalModel
from diffbench.schedule import NoiseSchedule
from diffbench.suite import Suite
from diffbench.training import build_module, load_or_train

HOLDOUT_FRACTION, HOLDOUT_MAX = 0.1, subsets.HELDOUT_MAX  # training data held out for estimators' fit and calibration


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


def hold_out(
    splits: Splits, seed: int, spare: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[Splits, torch.Tensor, torch.Tensor]:
    """Set aside a seeded random part of the training data that the model never trains on.

    Estimators may ``fit`` on it (and calibration uses it); the test set stays untouched. A dataset
    without a training split lends ``spare``, its labelled test samples outside the fixed subset.
    """
    n = splits.train_x.shape[0]
    if n == 0 and spare is not None:
        order = torch.randperm(spare[1].shape[0], generator=torch.Generator().manual_seed(seed))[:HOLDOUT_MAX]
        return splits, spare[0][order], spare[1][order]
    size = min(HOLDOUT_MAX, int(n * HOLDOUT_FRACTION))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, kept = order[:size], order[size:]
    train = Splits(splits.train_x[kept], splits.train_y[kept], splits.test_x, splits.test_y, splits.class_names)
    return train, splits.train_x[held], splits.train_y[held]


def bayes_accuracy(dataset: Dataset, splits: Splits) -> float:
    """Test accuracy of the Bayes-optimal classifier where the dataset knows its distribution, else NaN."""
    if dataset.bayes_log_posterior is None:
        return math.nan
    log_posterior = dataset.bayes_log_posterior(splits.test_x)
    check_log_posterior(log_posterior, len(splits.test_y), splits.num_classes, dataset.name)
    return (log_posterior.argmax(1) == splits.test_y).float().mean().item()


def train_device(cells: list[Cell]) -> torch.device:
    """Models are trained once, on CUDA when any cell uses it, and loaded onto every device."""
    return torch.device("cuda" if any(c.device == "cuda" for c in cells) else "cpu")


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
    p = first.dataset.params
    splits, spare_x, spare_y = subsets.apply(p["per_class"], p["n_test"], splits)
    splits = subsets.in_content_order(splits)  # the same images in the same places, whichever reader listed them
    if splits.heldout_x is not None:  # a lazy reader decoded a held-out slice outside its subset
        spare_x, spare_y = torch.cat([splits.heldout_x, spare_x]), torch.cat([splits.heldout_y, spare_y])
    splits, heldout_x, heldout_y = hold_out(splits, first.seed, (spare_x, spare_y))
    heldout = {
        "test_subset": subsets.describe(p["per_class"], p["n_test"]),
        "test_digest": subsets.digest(splits.test_x, splits.test_y),
        "heldout_n": heldout_y.shape[0],
        "heldout_from": heldout_source(splits, heldout_y),
    }
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
        loaded.info.update(heldout)
        return loaded
    if checkpoint is not None:
        module = load_checkpoint(build_module(first.denoiser, splits, first.seed), checkpoint, pair)
        log(f"{pair}: loaded weights from {checkpoint}")
        info = {"cache_hit": False, "train_s": 0.0, "checkpoint": str(checkpoint), **heldout}
        setup_s = time.perf_counter() - start
        return Prepared(splits, heldout_x, heldout_y, module.to(device).eval(), info, bayes, setup_s)
    if splits.train_x.shape[0] == 0:
        raise DataError(
            f"dataset {first.dataset!r} has no training split to train {first.denoiser!r} on: "
            "give trained weights with --checkpoint, or a pretrained denoiser"
        )
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
    info.update(heldout)
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


def model_of(
    prepared: Prepared, module: torch.nn.Module, suite: Suite, device: torch.device, name: str = "the denoiser"
) -> ConditionalModel:
    """``module`` wrapped with the schedule and output type it runs under: the suite's, or a pretrained model's own."""
    setup = prepared.pretrained
    schedule = setup.schedule if setup else NoiseSchedule(suite.schedule, suite.timesteps)
    options = setup.model_options() if setup else {}
    splits = prepared.splits
    return ConditionalModel(module, schedule, splits.num_classes, splits.data_shape, device, name=name, **options)


def heldout_source(splits: Splits, heldout_y: torch.Tensor) -> str:
    """Where fit and calibration data came from, or why there was none (a column of the table)."""
    if splits.train_x.shape[0] > 0:
        return "train"
    if heldout_y.shape[0] >= 2:
        return "test samples outside the subset (no training split)"
    return "none: no training split and no test sample outside the subset, so fit and calibration were skipped"


def prepare_quietly(
    first: Cell, suite: Suite, device: str, cache_dir: Path | None, checkpoint: Path | None, progress: bool
) -> tuple[Prepared | None, list[str]]:
    """``prepare`` as a task: the lines it would say come back with its result, for the runner to say."""
    messages: list[str] = []
    prepared = prepare(first, suite, torch.device(device), cache_dir, checkpoint, progress, messages.append)
    return prepared, messages
