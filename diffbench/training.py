"""Training a conditional denoiser by epsilon-prediction MSE, cached on disk by a content key."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from diffbench.atomic import replace_atomically
from diffbench.contract import Dataset, Denoiser, PluginOutputError, Splits, check_module_output, short_repr
from diffbench.schedule import NoiseSchedule, q_sample

CACHE_ENV = "DIFFBENCH_CACHE"
CACHE_FORMAT = 2  # bump when training code changes what a key's weights would be
HASH_SUFFIX = ".sha256"
MAX_TRAIN_STEPS = 10**9  # larger values are typos (and overflow the table's int64 column)
MAX_TRAIN_BATCH = 2**31 - 1


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 4000
    batch_size: int = 512
    lr: float = 2e-3

    def __post_init__(self) -> None:
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


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffbench"


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
        "train": asdict(settings),
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
    """Fit ``module`` to predict the noise of x_t = sqrt(abar) x + sqrt(1-abar) eps; returns losses.

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
        t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), generator=generator, device=device)
        eps = torch.randn(x0.shape, generator=generator, device=device)
        x_t = q_sample(abar, x0, t, eps)
        loss = torch.nn.functional.mse_loss(check_module_output(module(x_t, t, c), x_t, name), eps)
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
    """Build the denoiser's module with its initial weights drawn from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = denoiser.build(splits.data_shape, splits.num_classes)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"denoiser '{denoiser.name}' build() returned {type(module).__name__}, not a torch.nn.Module")
    return module


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
    with _cache_lock(path, log) if path is not None else nullcontext():
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


@contextmanager
def _cache_lock(path: Path, log) -> Iterator[None]:
    """Hold ``<path>.lock``; say so once when another process holds it and we wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another process to finish with cached checkpoint '{path}' (lock {lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def hash_path(path: Path) -> Path:
    """Where the sha256 of a cached checkpoint is kept: ``<path>.sha256``."""
    return path.with_name(path.name + HASH_SUFFIX)


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_cached_checkpoint(module: torch.nn.Module, path: Path) -> None:
    """Save the state dict atomically, then its sha256 beside it (``sha256sum -c`` reads it).

    Weights that hold NaN or inf are never cached (TrainingError): a later run would load them.
    """
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    bad = non_finite_weights(state, {name for name, _ in module.named_parameters()})
    if bad:
        raise TrainingError(f"training left NaN or inf in weights {', '.join(bad[:3])}; they are not cached")
    digest = ""

    def write(tmp: str) -> None:
        nonlocal digest
        torch.save(state, tmp)
        digest = file_sha256(tmp)

    replace_atomically(path, write)
    replace_atomically(hash_path(path), lambda tmp: Path(tmp).write_text(f"{digest}  {path.name}\n"))


def load_cached_checkpoint(module: torch.nn.Module, path: Path, what: str) -> torch.nn.Module:
    """Load a cached checkpoint whose bytes match the sha256 saved beside it, else CheckpointError."""
    try:
        expected = hash_path(path).read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        raise CheckpointError(f"checkpoint '{path}' is corrupt (hash file missing or unreadable)") from None
    if file_sha256(path) != expected:
        raise CheckpointError(f"checkpoint '{path}' is corrupt (hash mismatch)")
    return load_checkpoint(module, path, what)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the denoiser it was given for."""


class TrainingError(PluginOutputError):
    """Training diverged: a non-finite loss or weights. Such weights are never cached."""


def non_finite_weights(state: dict[str, torch.Tensor], parameters: set[str] | None = None) -> list[str]:
    """Names of the tensors of ``state`` that hold NaN (anywhere) or inf (in ``parameters``; all when None).

    A buffer may hold inf on purpose (an attention mask); no trained weight may.
    """
    bad = []
    for key, value in state.items():
        if not value.is_floating_point() and not value.is_complex():
            continue
        strict = parameters is None or key in parameters
        if (not torch.isfinite(value).all()) if strict else bool(value.isnan().any()):
            bad.append(key)
    return bad


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file's state dict, loaded with ``weights_only=True`` (no pickle code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist") from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read as a weights-only state dict ({type(exc).__name__}: "
            f"{load_failure(exc)}); save it with torch.save(module.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint '{path}' is not a state dict of tensors (save module.state_dict())")
    return state


def load_failure(exc: Exception) -> str:
    """The informative line of torch.load's error (its weights-only failures are paragraphs of advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            return detail or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0][:200] if lines else "no detail"


def load_checkpoint(module: torch.nn.Module, path: Path, what: str) -> torch.nn.Module:
    """Load a state dict (``weights_only=True``: no pickle code runs) that must fit ``module`` exactly."""
    state = read_state_dict(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if items
        ]
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {what}: {'; '.join(parts)}; "
            "give the denoiser the params it was trained with"
        )
    bad = non_finite_weights(state, {name for name, _ in module.named_parameters()})
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"checkpoint '{path}' holds NaN or inf in {', '.join(bad[:3])}{more}: these weights are broken; "
            "train again or give another checkpoint"
        )
    module.load_state_dict(state)
    return module
