"""Checkpoint files: the training cache's files (atomic saves with a sha256 beside them, a lock per checkpoint)
and the weights-only loading every checkpoint goes through, cached or the user's own.

Checkpoints load with ``torch.load(..., weights_only=True)``: no pickle code runs. A checkpoint must fit its
module exactly and hold no NaN (nor inf in a parameter); weights that do are never cached nor loaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from diffbench.atomic import replace_atomically
from diffbench.contract import PluginOutputError

CACHE_ENV = "DIFFBENCH_CACHE"
HASH_SUFFIX = ".sha256"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the denoiser it was given for."""


class TrainingError(PluginOutputError):
    """Training diverged: a non-finite loss or weights. Such weights are never cached."""


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffbench"


@contextmanager
def cache_lock(path: Path, log) -> Iterator[None]:
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
