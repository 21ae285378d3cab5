"""Training a conditional denoiser, cached on disk by a content key.

Three objectives (``TrainSettings.objective``): ``epsilon`` (DDPM's noise-prediction MSE), ``v_prediction``
(Salimans & Ho's v = a eps - s x0 on the same VP schedule) and ``flow`` (a rectified flow: x_t =
(1 - sigma) x0 + sigma eps, predicting the velocity v = eps - x0; sigma logit-normal, SD3's default, or
uniform). Each model classifies under the process and prediction it was trained on (``training_process``).

The key (``cache_key``) is derived here, from everything that determines the trained weights; the cache's
files (saving, hashing, locking, loading) are ``diffbench.checkpoints``'.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from diffbench.checkpoints import (
    CheckpointError,
    TrainingError,
    cache_lock,
    load_cached_checkpoint,
    save_cached_checkpoint,
)
from diffbench.contract import DataError, Dataset, Denoiser, Splits, check_module_output, short_repr
from diffbench.noise_process import FLOW_TIMESTEP_SCALE, NoiseProcess
from diffbench.parameterisation import OBJECTIVES
from diffbench.schedule import NoiseSchedule, q_sample

CACHE_FORMAT = 2  # bump when training code changes what a key's weights would be
MAX_TRAIN_STEPS = 10**9  # larger values are typos (and overflow the table's int64 column)
MAX_TRAIN_BATCH = 2**31 - 1
FLOW_SIGMAS = ("logit-normal", "uniform")  # how a flow draws sigma: SD3's logit-normal(0, 1), or uniform on (0, 1)
NEW_KEYS = {"objective": "epsilon", "flow_sigma": "logit-normal"}  # left out of cache keys at their defaults


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 4000
    batch_size: int = 512
    lr: float = 2e-3
    objective: str = "epsilon"
    flow_sigma: str = "logit-normal"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown training objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.flow_sigma not in FLOW_SIGMAS:
            raise ValueError(f"unknown flow_sigma {self.flow_sigma!r}; choose one of {', '.join(FLOW_SIGMAS)}")
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.steps, self.batch_size))
        number = isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool)
        if not (
            ints
            and number
            and 1 <= self.steps <= MAX_TRAIN_STEPS
            and 1 <= self.batch_size <= MAX_TRAIN_BATCH
            and 0 < self.lr < math.inf
        ):
            raise ValueError(
                f"training needs integer steps from 1 to {MAX_TRAIN_STEPS}, batch_size from 1 to {MAX_TRAIN_BATCH} "
                f"and a finite lr > 0, got steps={short_repr(self.steps)}, batch_size={short_repr(self.batch_size)}, "
                f"lr={short_repr(self.lr)}"
            )


def cache_key(
    dataset: Dataset,
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
) -> str:
    """A hash of everything that determines the trained weights."""
    ident: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "dataset": [dataset.name, dataset.training_params()],
        "denoiser": [denoiser.name, denoiser.params],
        "schedule": schedule.describe(),
        "train": {k: v for k, v in asdict(settings).items() if NEW_KEYS.get(k, ...) != v},
        "seed": seed,
        "device": device.type,
    }
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def train(
    module: torch.nn.Module,
    splits: Splits,
    schedule: NoiseSchedule,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    desc: str = "train",
    progress: bool = True,
    name: str = "the denoiser",
) -> list[float]:
    """Fit ``module`` to ``settings.objective`` (``noisy_batch``) by MSE; returns the losses.

    The module's output must be shaped like x_t (checked every step: a broadcasting ``[N, 1]``
    output would train to nonsense quietly) and the loss must stay finite (else TrainingError).
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    module.to(device).train()
    x_all = splits.train_x.to(device)
    y_all = splits.train_y.to(device)
    abar = schedule.alphas_cumprod.to(device, torch.float32)
    optimizer = adam(module, settings.lr)
    lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    losses = []
    bar = tqdm(range(settings.steps), desc=desc, disable=not progress, file=sys.stderr, leave=False)
    for _ in bar:
        idx = torch.randint(0, x_all.shape[0], (settings.batch_size,), generator=generator, device=device)
        x0, c = x_all[idx], y_all[idx]
        x_t, t, target = noisy_batch(x0, abar, settings, generator)
        loss = torch.nn.functional.mse_loss(check_module_output(module(x_t, t, c), x_t, name), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_decay.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise TrainingError(
                f"{name} trained to a loss of {losses[-1]} at step {len(losses)} of {settings.steps}; "
                f"lower the learning rate (lr={settings.lr}) or mend the module"
            )
        if len(losses) % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / 100:.4f}")
    module.eval()
    return losses


def noisy_batch(
    x0: torch.Tensor, abar: torch.Tensor, settings: TrainSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, timestep fed to the module, regression target)`` of one batch under the objective.

    epsilon and v_prediction: t uniform over the VP schedule's T levels, target eps or a eps - s x0.
    flow: sigma continuous in (0, 1) (logit-normal: sigmoid of a standard normal, Esser et al.'s default;
    or uniform), x_t = (1 - sigma) x0 + sigma eps, the module fed sigma * 1000, target v = eps - x0.
    """
    device, n = x0.device, x0.shape[0]
    if settings.objective == "flow":
        if settings.flow_sigma == "uniform":
            sigma = torch.rand(n, generator=generator, device=device)
        else:
            sigma = torch.sigmoid(torch.randn(n, generator=generator, device=device))
        eps = torch.randn(x0.shape, generator=generator, device=device)
        view = sigma.reshape(-1, *([1] * (x0.dim() - 1)))
        return (1 - view) * x0 + view * eps, sigma * FLOW_TIMESTEP_SCALE, eps - x0
    t = torch.randint(0, abar.shape[0], (n,), generator=generator, device=device)
    eps = torch.randn(x0.shape, generator=generator, device=device)
    x_t = q_sample(abar, x0, t, eps)
    if settings.objective == "epsilon":
        return x_t, t, eps
    a = abar[t].sqrt().reshape(-1, *([1] * (x0.dim() - 1)))
    return x_t, t, a * eps - (1 - a.square()).sqrt() * x0


def training_process(schedule: NoiseSchedule, settings: TrainSettings) -> tuple[NoiseProcess, str]:
    """The noise process and prediction type a model trained under ``settings`` classifies with.

    epsilon and v_prediction: the suite's VP schedule; flow: a rectified flow on as many levels
    (diffusers' FlowMatchEulerDiscreteScheduler sigmas, no shift), its velocity converted to epsilon.
    """
    if settings.objective == "flow":
        return NoiseProcess.rectified_flow(schedule.num_timesteps), "flow"
    return NoiseProcess.variance_preserving(schedule), settings.objective


def adam(module: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam over ``module``'s parameters: the fused kernel where this torch and device have one.

    One fused update instead of a dozen small ops per parameter tensor: on the quick suite's mlp
    the CPU optimiser step takes 0.2 ms instead of 0.8 ms (of a 7-9 ms training step). The update
    is Adam's either way; torch before 2.4 has no fused CPU kernel and gets the default.
    """
    params = list(module.parameters())
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for these parameters' device or dtype
        return torch.optim.Adam(params, lr=lr)


def build_module(denoiser: Denoiser, splits: Splits, seed: int) -> torch.nn.Module:
    """Build the denoiser's module with its initial weights drawn from ``seed``.

    Params whose weights cannot be allocated (``mlp[width=1000000]``) are one line naming the denoiser.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = denoiser.build(splits.data_shape, splits.num_classes)
        except (MemoryError, RuntimeError) as exc:
            if not out_of_memory(exc):
                raise
            raise DataError(
                f"denoiser '{denoiser!r}' cannot be built: its weights need more memory than is available "
                f"({allocation_asked(exc)}); give it smaller params"
            ) from None
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"denoiser '{denoiser.name}' build() returned {type(module).__name__}, not a torch.nn.Module")
    return module


def out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an allocation that failed (CPU allocator, CUDA, or Python's own)."""
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()


def allocation_asked(exc: BaseException) -> str:
    """'tried to allocate 4000 GB' out of an allocator's message, else its type."""
    found = re.search(r"tried to allocate (\d+) bytes", str(exc))
    return f"tried to allocate {int(found.group(1)) / 1e9:.3g} GB" if found else type(exc).__name__


def load_or_train(
    dataset: Dataset,
    denoiser: Denoiser,
    splits: Splits,
    schedule: NoiseSchedule,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    cache_dir: Path | None,
    progress: bool = True,
    log=print,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Return the trained module, from the cache when it holds these settings, else trained now.

    The cache check, training and save happen under ``<checkpoint>.lock``, so processes that
    share a cache never train one model twice at once: the second waits, then loads.
    """
    module = build_module(denoiser, splits, seed)
    key = cache_key(dataset, denoiser, schedule, settings, seed, device)
    path = None if cache_dir is None else Path(cache_dir) / f"{denoiser.name}-{dataset.name}-{key}.pt"
    info: dict[str, Any] = {"cache_key": key, "checkpoint": str(path) if path else "", "cache_hit": False}
    with cache_lock(path, log) if path is not None else nullcontext():
        if path is not None and path.exists():
            try:
                load_cached_checkpoint(module, path, f"{denoiser!r}")
                info.update(cache_hit=True, train_s=0.0)
                return module.to(device).eval(), info
            except CheckpointError as exc:
                log(f"cached {exc}; retraining it")
                module = build_module(denoiser, splits, seed)
        start = time.perf_counter()
        losses = train(
            module,
            splits,
            schedule,
            settings,
            seed,
            device,
            desc=f"train {denoiser.name} on {dataset.name}",
            progress=progress,
            name=f"denoiser '{denoiser!r}'",
        )
        info.update(train_s=time.perf_counter() - start, final_loss=sum(losses[-100:]) / len(losses[-100:]))
        if path is not None:
            save_cached_checkpoint(module, path)
    return module, info
