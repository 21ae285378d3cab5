"""Provenance: what every result row records about the software and machine that produced it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import diffbench

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def git_commit() -> str:
    """The commit of the diffbench source tree, with ``-dirty`` if it has changes; '' outside git."""
    root = Path(diffbench.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_name()


def run_info() -> dict[str, str]:
    """What is the same for every row of one run: the source's git commit and the command. Once per run."""
    return {"git_commit": git_commit(), "command": " ".join(["diffbench", *sys.argv[1:]])}


def provenance(run: dict[str, str] | None = None) -> dict[str, Any]:
    """What every row records about the software and machine that produced it.

    ``run`` is ``run_info()`` computed once by the process that started the run (so a row measured
    on a dask worker names the command that was typed, and git runs once a run, not once a cell);
    the rest is read where the row is measured.
    """
    return {
        "diffbench_version": diffbench.__version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        **{f"env_{var.lower()}": os.environ.get(var, "") for var in THREAD_VARS},
        "cpu_name": cpu_name(),
        "cuda_devices": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())),
        "hostname": platform.node(),
        "host": platform.node(),
        **(run if run is not None else run_info()),
    }
