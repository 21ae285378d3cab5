"""Process memory: the CPU allocator's settings, the peak memory of a measured cell, and the memory available
(which datasets check before they generate or decode what could not fit)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
from pathlib import Path

import torch

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


_tuned = False  # whether tune_cpu_allocator succeeded in this process


def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory in the process instead of mmap/munmap for every large tensor.

    glibc serves allocations over 128 KiB-ish by fresh mmaps whose pages fault in on
    every call, which made the same CPU pass vary by 1.6x from repeat to repeat (and the
    estimator look faster than the bare forward it wraps). Raising the mmap threshold to
    its 32 MiB maximum and never trimming makes repeats stable and passes faster.
    Returns whether glibc accepted the settings (False elsewhere, which changes nothing);
    ``cpu_allocator_tuned()`` says it later without tuning again.
    """
    global _tuned
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False
    _tuned = _tuned or ok
    return ok


def cpu_allocator_tuned() -> bool:
    """Whether ``tune_cpu_allocator`` has tuned this process's allocator (a row's ``cpu_allocator_tuned``).

    The runner tunes once per run, a dask worker once when it starts; a cell only asks.
    """
    return _tuned


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator peak, or (elsewhere) the process's peak resident set.

    On Linux writing "5" to /proc/self/clear_refs resets VmHWM; where that is refused the
    CPU peak stays the process's lifetime peak.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """MiB at the peak since ``reset_peak_memory``: allocated tensors on CUDA, resident set elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def available_memory() -> int | None:
    """Bytes of memory available now (psutil, else /proc/meminfo, else sysconf), or None where none says."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gigabytes(n: int) -> str:
    """``n`` bytes as a line says them: ``4.8e+02 GB``, ``1.2 GB``."""
    return f"{n / 1e9:.3g} GB"
