"""A model's preparation: its data (with a held-out part), then its module loaded, trained or cached.

``train(plan)`` is the runner's task: it runs ``prepare`` and hands back the ``Prepared`` model with
the lines it said. The noise schedule is built here once per model and travels on ``Prepared``;
``conditional_model`` wraps the module the one way cells and figures both run it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from diffbench import pretrained, resume_identity, subsets
from diffbench.acceleration import accelerate
from diffbench.checkpoints import load_checkpoint
from diffbench.contract import DataError, Dataset, Plugin, Splits, check_log_posterior, check_splits
from diffbench.model import ConditionalModel
from diffbench.noise_process import NoiseProcess
from diffbench.plan import ModelPlan
from diffbench.schedule import NoiseSchedule
from diffbench.training import build_module, load_or_train, training_process

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
    schedule: NoiseSchedule | NoiseProcess  # the process the model classifies under (a pretrained model's own)
    pretrained: pretrained.PretrainedSetup | None = None  # set when the denoiser arrived trained
    prediction_type: str = "epsilon"  # what a trained module predicts (its objective), converted to epsilon


@dataclass
class Trained:
    """What a model's task hands back: the prepared model (None when the pair was skipped) and the lines it said."""

    prepared: Prepared | None
    messages: list[str]


@dataclass
class ModelData:
    """A model's data: the fixed test subset, the training split less the held-out part, and that part."""

    splits: Splits
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor
    columns: dict[str, Any]  # test_subset, test_digest, heldout_n, heldout_from


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


def prepare_data(plan: ModelPlan) -> ModelData:
    """Load the data, cut the fixed test subset (in content order), and hold out a seeded part of training."""
    dataset = plan.dataset
    splits = check_splits(dataset.load(plan.seed), dataset.name)
    p = dataset.params
    splits, spare_x, spare_y = subsets.apply(p["per_class"], p["n_test"], splits)
    splits = subsets.in_content_order(splits)  # the same images in the same places, whichever reader listed them
    if splits.heldout_x is not None:  # a lazy reader decoded a held-out slice outside its subset
        spare_x, spare_y = torch.cat([splits.heldout_x, spare_x]), torch.cat([splits.heldout_y, spare_y])
    splits, heldout_x, heldout_y = hold_out(splits, plan.seed, (spare_x, spare_y))
    columns = {
        "test_subset": subsets.describe(p["per_class"], p["n_test"]),
        "test_digest": subsets.digest(splits.test_x, splits.test_y),
        "heldout_n": heldout_y.shape[0],
        "heldout_from": heldout_source(splits, heldout_y),
    }
    return ModelData(splits, heldout_x, heldout_y, columns)


def prepare(plan: ModelPlan, log) -> Prepared | None:
    """Data and module of one model; None (with one line said) when the pair does not fit."""
    start = time.perf_counter()
    data = prepare_data(plan)
    resume_identity.check(plan.recorded, data.columns)  # before training: a resumed run's data is the same
    shape = data.splits.data_shape
    if not plan.denoiser.supports(shape):
        log(
            f"skipping {plan.pair()}: {plan.denoiser.name} takes {plan.denoiser.accepts}, "
            f"but {plan.dataset.name} has samples of shape {list(shape)}"
        )
        return None
    prepared = prepare_module(plan, data, bayes_accuracy(plan.dataset, data.splits), start, log)
    prepared.info.update(data.columns)
    resume_identity.check(plan.recorded, prepared.pretrained.columns if prepared.pretrained else {})
    return prepared


def prepare_module(plan: ModelPlan, data: ModelData, bayes: float, start: float, log) -> Prepared:
    """The module: a pretrained one as it arrived, else weights from ``--checkpoint``, the cache, or trained now."""
    device, pair = torch.device(plan.device), plan.pair()
    loaded = prepare_pretrained(plan, data, bayes, start, device, log)
    if loaded is not None:
        return loaded
    splits, held = data.splits, (data.heldout_x, data.heldout_y)
    schedule = NoiseSchedule(plan.schedule, plan.timesteps)
    process, prediction = training_process(schedule, plan.train)
    if plan.checkpoint is not None:
        module = load_checkpoint(build_module(plan.denoiser, splits, plan.seed), plan.checkpoint, pair)
        log(f"{pair}: loaded weights from {plan.checkpoint}")
        info = {"cache_hit": False, "train_s": 0.0, "checkpoint": str(plan.checkpoint)}
        setup_s = time.perf_counter() - start
        module = module.to(device).eval()
        return Prepared(splits, *held, module, info, bayes, setup_s, process, prediction_type=prediction)
    if splits.train_x.shape[0] == 0:
        raise DataError(
            f"dataset {plan.dataset!r} has no training split to train {plan.denoiser!r} on: "
            "give trained weights with --checkpoint, or a pretrained denoiser"
        )
    train_started = time.time()
    module, info = load_or_train(
        plan.dataset,
        plan.denoiser,
        splits,
        schedule,
        plan.train,
        plan.seed,
        device,
        plan.cache_dir,
        progress=plan.progress,
        log=log,
    )
    if info["cache_hit"]:
        log(f"{pair}: loaded cached weights")
    else:
        log(f"{pair}: trained in {info['train_s']:.1f}s")
        info.update(train_started_at=train_started, train_finished_at=time.time())
    setup_s = time.perf_counter() - start
    return Prepared(splits, *held, module, info, bayes, setup_s, process, prediction_type=prediction)


def prepare_pretrained(
    plan: ModelPlan, data: ModelData, bayes: float, start: float, device: torch.device, log
) -> Prepared | None:
    """A denoiser that arrived trained (``Denoiser.pretrained``): nothing trained or cached; None for the others."""
    got = pretrained.load(
        plan.denoiser, data.splits, data.heldout_x, data.heldout_y, device, plan.seed, log, plan.pair()
    )
    if got is None:
        return None
    setup_s = time.perf_counter() - start
    splits, setup = got.splits, got.setup
    return Prepared(splits, got.heldout_x, data.heldout_y, got.module, got.info, bayes, setup_s, setup.schedule, setup)


def train(plan: ModelPlan) -> Trained:
    """The runner's task for one model: ``prepare``, with the lines it would say handed back for the runner to say."""
    messages: list[str] = []
    return Trained(prepare(plan, messages.append), messages)


def model_name(denoiser: Plugin) -> str:
    """How errors about the running module name it."""
    return f"denoiser '{denoiser!r}'"


def conditional_model(
    prepared: Prepared, device: torch.device, name: str, dtype: str = "float32", compile: bool = False
) -> ConditionalModel:
    """The prepared module as cells and figures run it: on ``device``, autocast to ``dtype`` (compiled if asked),
    under the model's schedule and output type (a pretrained model's own)."""
    module = accelerate(prepared.module.to(device).eval(), device, dtype, compile)
    options = (
        prepared.pretrained.model_options() if prepared.pretrained else {"prediction_type": prepared.prediction_type}
    )
    splits, schedule = prepared.splits, prepared.schedule
    return ConditionalModel(module, schedule, splits.num_classes, splits.data_shape, device, name=name, **options)


def heldout_source(splits: Splits, heldout_y: torch.Tensor) -> str:
    """Where fit and calibration data came from, or why there was none (a column of the table)."""
    if splits.train_x.shape[0] > 0:
        return "train"
    if heldout_y.shape[0] >= 2:
        return "test samples outside the subset (no training split)"
    return "none: no training split and no test sample outside the subset, so fit and calibration were skipped"
