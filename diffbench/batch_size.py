"""The batch size: the most rows ``ConditionalModel`` hands the module in one call.

One name everywhere: ``--batch-size`` and a suite's ``batch_size`` give it (a positive integer,
or ``auto``: tuned per device by a short sweep of the bare module, cached), the model keeps it as
``max_batch`` and each row records it as ``batch_size``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffbench.atomic import replace_atomically
from diffbench.model import ConditionalModel
from diffbench.timing import timed, timed_region

TUNE_REGION_S = 0.05  # each candidate batch size is timed over at least this long
BATCH_SIZE_CACHE = "batch-sizes.json"
MAX_BATCH_SIZE = 2**31 - 1  # rows per call beyond any memory; larger values are typos


def parse_batch_size(value: object, where: str) -> int | str:
    """``value`` as a batch size (a positive integer, or "auto"), or ValueError naming ``where``."""
    if isinstance(value, str) and value != "auto":
        value = int(value) if value.isdigit() else value
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_BATCH_SIZE):
        return value
    raise ValueError(f'{where}: the batch size must be an integer from 1 to {MAX_BATCH_SIZE} or "auto", got {value!r}')


def tune_batch_size(
    model: ConditionalModel, candidates: tuple[int, ...] = (256, 1024, 4096, 16384, 65536), budget_s: float = 1.0
) -> int:
    """The candidate batch size at which the bare module runs the most rows/s.

    Sizes are tried smallest first, each with one warm call (compiles and allocations, not
    counted) and then timed over at least TUNE_REGION_S. Stops at the first size slower than
    0.9 x the best so far, after a size whose calls take over ``budget_s / 4``, or on CUDA
    out of memory; returns the best size measured (the smallest candidate if none was).
    """
    sizes = sorted(candidates)
    device = model.device
    generator = torch.Generator(device=device).manual_seed(0)
    best_size, best_rate = sizes[0], 0.0
    for size in sizes:
        try:
            x = torch.randn((size, *model.data_shape), generator=generator, device=device, dtype=model.dtype)
            t = torch.randint(0, model.num_timesteps, (size,), generator=generator, device=device)
            c = torch.randint(0, model.num_classes, (size,), generator=generator, device=device)

            @torch.inference_mode()
            def forward(x=x, t=t, c=c) -> None:
                model.module(x, t, c)

            warm_s = timed(forward, device)
            calls, region_s = timed_region(forward, device, warm_s, TUNE_REGION_S)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            x = t = c = forward = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rate = size * calls / max(region_s, 1e-9)
        if rate > best_rate:
            best_size, best_rate = size, rate
        if rate < 0.9 * best_rate or region_s / calls > budget_s / 4:
            break
    return best_size


def cached_batch_size(model: ConditionalModel, cache_dir: Path | None, key: str) -> tuple[int, bool]:
    """``tune_batch_size`` remembered under ``key`` in ``<cache_dir>/batch-sizes.json``: (size, was_cached).

    ``cache_dir`` None tunes every time. An unreadable cache file counts as empty.
    """
    if cache_dir is None:
        return tune_batch_size(model), False
    path = Path(cache_dir) / BATCH_SIZE_CACHE

    def read() -> dict:
        try:
            sizes = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return sizes if isinstance(sizes, dict) else {}

    cached = read().get(key)
    if isinstance(cached, int) and not isinstance(cached, bool) and cached > 0:
        return cached, True
    size = tune_batch_size(model)
    sizes = {**read(), key: size}  # read again: another run may have added its sizes meanwhile
    replace_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(sizes, indent=2, sort_keys=True) + "\n"))
    return size, False
