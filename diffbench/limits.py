"""The ranges every numeric input must fall in, checked where it enters (CLI options, suite files).

Each bound is far beyond any sensible value, so only typos and hostile input hit it; what it
protects is what comes after: seeds go to ``torch.Generator.manual_seed`` and (with small offsets
added) into int64 parquet columns, thread counts to ``torch.set_num_threads`` (a C int), and a
repeat count or time cap of 10^20 would never end.
"""

from __future__ import annotations

from typing import Any

MAX_SEED = 2**62  # the runner adds small offsets to a seed; int64 holds it with room to spare
MAX_TRIALS = 2**20
MAX_REPEATS = 10_000
MAX_TIME_S = 86_400.0  # a day of timing per cell and scenario
MAX_THREADS = 4096
MAX_WORKERS = 4096
MAX_TIMESTEPS = 100_000


def in_range(value: Any, low: int, high: int) -> bool:
    """Whether ``value`` is an int (not a bool) with ``low <= value <= high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def range_error(what: str, low: float, high: float, value: Any) -> str:
    """``seed must be from 0 to 4611686018427387904, got 1e+20`` (the value shortened)."""
    from diffbench.contract import short_repr

    if isinstance(low, int) and isinstance(high, int):
        return f"{what} must be an integer from {low} to {high}, got {short_repr(value)}"
    return f"{what} must be a number from {low:g} to {high:g}, got {short_repr(value)}"
