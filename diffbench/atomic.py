"""Atomic file writes: a reader, or a run killed half-way, never sees a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def replace_atomically(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader (or a run killed half-way) never sees a half-written file; the file gets the
    usual permissions of a new file, not mkstemp's owner-only ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write parquet or csv atomically: never a half-written table."""
    if path.suffix == ".csv":
        replace_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
    else:
        replace_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))
