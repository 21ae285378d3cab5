"""The batch size: the most rows ``ConditionalModel`` hands the module in one call.

One name everywhere: ``--batch-size`` and a suite's ``batch_size`` give it (a positive integer,
or ``auto``: tuned per device by a short sweep of the bare module, cached), the model keeps it as
``max_batch`` and each row records it as ``batch_size``.

A sweep timed while another process used the device picks a wrong size (issue 24: 256 rows, 44x
slow), so a sweep is cached only when its winner is clear: the winner and its measured neighbours
are timed again in interleaved rounds, and the winner's rates must agree and stay the best. The
cache keeps those rates with the size, and an entry whose winner was not clear is measured again.
On CPU a steady load from other processes slows every size alike (and the per-call budget then stops
the sweep early), so there the process must also have had most of a core while it was timed.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffbench import timing
from diffbench.atomic import replace_atomically
from diffbench.model import ConditionalModel
from diffbench.timing import timed, timed_region

TUNE_REGION_S = 0.05  # each candidate batch size is timed over at least this long
RECHECK_ROUNDS = 3  # after the sweep, the winner and its measured neighbours are timed again this often, interleaved
STEADY_SPREAD = 0.25  # a clear winner's rates (sweep and re-checks) span at most this fraction of their median
NEAR_BEST = 0.9  # ... and its median rate is at least this fraction of every re-checked neighbour's
MIN_CPU_SHARE = 0.8  # on CPU, ... and the process ran for at least this share of the wall time it was timed
BATCH_SIZE_CACHE = "batch-sizes.json"
MAX_BATCH_SIZE = 2**31 - 1  # rows per call beyond any memory; larger values are typos

cpu_clock: Callable[[], float] = time.process_time  # the process's CPU seconds; tests swap in a fake one


def parse_batch_size(value: object, where: str) -> int | str:
    """``value`` as a batch size (a positive integer, or "auto"), or ValueError naming ``where``."""
    if isinstance(value, str) and value != "auto":
        value = int(value) if value.isdigit() else value
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_BATCH_SIZE):
        return value
    raise ValueError(f'{where}: the batch size must be an integer from 1 to {MAX_BATCH_SIZE} or "auto", got {value!r}')


@dataclass
class Sweep:
    """The size a sweep picked and the rows/s of the sizes re-checked (the winner and its measured neighbours).

    ``rows_per_s[size]`` lists the sweep's rate, then one per re-check round (fewer when one ran out of memory).
    ``cpu_share``: on CPU, the median over the timings of the process's CPU seconds per wall second (None on CUDA).
    """

    batch_size: int
    rows_per_s: dict[int, list[float]] = field(default_factory=dict)
    cpu_share: float | None = None

    @property
    def clear(self) -> bool:
        """Safe to cache: all re-checks ran, the winner's rates agree, no neighbour beats it, (CPU) it had a core."""
        own = self.rows_per_s.get(self.batch_size, [])
        if self.cpu_share is not None and not self.cpu_share >= MIN_CPU_SHARE:
            return False
        if len(own) < 1 + RECHECK_ROUNDS or any(len(rates) < 1 + RECHECK_ROUNDS for rates in self.rows_per_s.values()):
            return False
        median = statistics.median(own)
        if not median > 0 or (max(own) - min(own)) / median > STEADY_SPREAD:
            return False
        return all(median >= NEAR_BEST * statistics.median(rates) for rates in self.rows_per_s.values())

    def to_json(self) -> dict:
        rates = {str(size): rates for size, rates in sorted(self.rows_per_s.items())}
        return {"batch_size": self.batch_size, "clear": self.clear, "rows_per_s": rates, "cpu_share": self.cpu_share}

    @classmethod
    def from_json(cls, entry: object) -> Sweep | None:
        """The sweep a cache entry records, or None for anything else (an older bare size included)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("rows_per_s"), dict):
            return None
        size = entry.get("batch_size")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BATCH_SIZE:
            return None
        rates: dict[int, list[float]] = {}
        for key, values in entry["rows_per_s"].items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and isinstance(values, list)):
                return None
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in values):
                return None
            rates[int(key)] = [float(v) for v in values]
        share = entry.get("cpu_share", False)
        if share is not None and not (isinstance(share, (int, float)) and not isinstance(share, bool)):
            return None  # missing or not a number: a CPU sweep must say how much of a core it had
        return cls(size, rates, None if share is None else float(share))


def rows_per_s(model: ConditionalModel, size: int, generator: torch.Generator) -> tuple[float, float, float]:
    """The bare module's rows/s on ``size`` rows (one warm call, then at least TUNE_REGION_S), one call's seconds,
    and the process's CPU seconds per wall second over the warm call and the region.

    Raises ``torch.cuda.OutOfMemoryError`` when the rows do not fit.
    """
    device = model.device
    wall_start, cpu_start = timing.clock(), cpu_clock()
    try:
        x = torch.randn((size, *model.data_shape), generator=generator, device=device, dtype=model.dtype)
        t = torch.randint(0, model.num_timesteps, (size,), generator=generator, device=device)
        c = torch.randint(0, model.num_classes, (size,), generator=generator, device=device)

        @torch.inference_mode()
        def forward(x=x, t=t, c=c) -> None:
            model.module(x, t, c)

        warm_s = timed(forward, device)
        calls, region_s = timed_region(forward, device, warm_s, TUNE_REGION_S)
    finally:
        x = t = c = forward = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    cpu_share = (cpu_clock() - cpu_start) / max(timing.clock() - wall_start, 1e-9)
    return size * calls / max(region_s, 1e-9), region_s / calls, cpu_share


def sweep_batch_sizes(
    model: ConditionalModel, candidates: tuple[int, ...] = (256, 1024, 4096, 16384, 65536), budget_s: float = 1.0
) -> Sweep:
    """The candidate batch size at which the bare module runs the most rows/s, re-checked.

    Sizes are tried smallest first, each with one warm call (compiles and allocations, not
    counted) and then timed over at least TUNE_REGION_S. Stops at the first size slower than
    0.9 x the best so far, after a size whose calls take over ``budget_s / 4``, or on CUDA
    out of memory; picks the best size measured (the smallest candidate if none was). Then the
    pick and its measured neighbours are timed again in RECHECK_ROUNDS interleaved rounds, so
    that ``Sweep.clear`` can tell a sweep disturbed by another process from a steady one.
    """
    sizes = sorted(candidates)
    generator = torch.Generator(device=model.device).manual_seed(0)
    measured: dict[int, float] = {}
    shares: list[float] = []
    best_size, best_rate = sizes[0], 0.0
    for size in sizes:
        try:
            rate, call_s, share = rows_per_s(model, size, generator)
        except torch.cuda.OutOfMemoryError:
            break
        measured[size] = rate
        shares.append(share)
        if rate > best_rate:
            best_size, best_rate = size, rate
        if rate < 0.9 * best_rate or call_s > budget_s / 4:
            break
    if not measured:
        return Sweep(best_size)
    order = list(measured)
    at = order.index(best_size)
    rates = {size: [measured[size]] for size in order[max(at - 1, 0) : at + 2]}
    try:
        for _ in range(RECHECK_ROUNDS):
            for size, seen in rates.items():
                rate, _, share = rows_per_s(model, size, generator)
                seen.append(rate)
                shares.append(share)
    except torch.cuda.OutOfMemoryError:
        pass  # memory another process took: the sweep stays unclear (a re-check is missing)
    cpu_share = statistics.median(shares) if model.device.type == "cpu" else None
    return Sweep(best_size, rates, cpu_share)


def tune_batch_size(
    model: ConditionalModel, candidates: tuple[int, ...] = (256, 1024, 4096, 16384, 65536), budget_s: float = 1.0
) -> int:
    """The batch size ``sweep_batch_sizes`` picks."""
    return sweep_batch_sizes(model, candidates, budget_s).batch_size


def cached_batch_size(model: ConditionalModel, cache_dir: Path | None, key: str) -> tuple[int, bool]:
    """``sweep_batch_sizes`` remembered under ``key`` in ``<cache_dir>/batch-sizes.json``: (size, was_cached).

    ``cache_dir`` None sweeps every time. An unreadable cache file counts as empty. Only a clear sweep
    is reused: an unclear one (measured while something else ran) is used for this run and written
    down with its rates, for the record, but swept again next time; so is an older entry without rates.
    """
    if cache_dir is None:
        return sweep_batch_sizes(model).batch_size, False
    path = Path(cache_dir) / BATCH_SIZE_CACHE

    def read() -> dict:
        try:
            sizes = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return sizes if isinstance(sizes, dict) else {}

    def clear_sweep(entry: object) -> Sweep | None:
        sweep = Sweep.from_json(entry)
        return sweep if sweep is not None and sweep.clear else None

    cached = clear_sweep(read().get(key))
    if cached is not None:
        return cached.batch_size, True
    sweep = sweep_batch_sizes(model)
    sizes = read()  # read again: another run may have added its sizes meanwhile
    if sweep.clear or clear_sweep(sizes.get(key)) is None:
        sizes[key] = sweep.to_json()
        text = json.dumps(sizes, indent=2, sort_keys=True) + "\n"
        replace_atomically(path, lambda tmp: Path(tmp).write_text(text))
    return sweep.batch_size, False
