"""One writer per run folder: an OS-level lock (released when its process dies, however it dies) and its pid.

Only writers lock: ``diffbench run`` and ``--resume`` for the whole run (released when it ends), and a
reader that writes a lagging table back (if no writer holds the folder; else it keeps the rebuilt table in memory).
Readers (``report``, ``plot``, ``compare``) never wait on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

LOCK = ".diffbench.lock"
PID = ".diffbench.pid"  # beside the lock: the lock file itself is the lock library's to write

#: The folders this process writes (a run, then a resume of it in the same process, is one writer).
HELD: dict[Path, FileLock] = {}


def busy_line(folder: Path) -> str:
    """The line that refuses a second writer, naming the process that holds ``folder``."""
    pid_file = Path(folder) / PID
    pid = pid_file.read_text().strip() if pid_file.is_file() else "unknown"
    return f"'{folder}' is being written by another diffbench process (pid {pid}); wait for it or use another --out"


def try_lock_folder(folder: Path) -> bool:
    """Take ``folder``'s lock without waiting; False when another process holds it.

    Held until ``unlock_folder`` (or until this process exits, however it dies)."""
    key = Path(folder).resolve()
    if key in HELD:
        return True
    lock = FileLock(str(key / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    HELD[key] = lock
    (key / PID).write_text(f"{os.getpid()}\n")
    return True


def unlock_folder(folder: Path) -> None:
    """Let ``folder`` go (a run that ended, a reader that wrote a table back); nothing when this process does not
    hold it."""
    lock = HELD.pop(Path(folder).resolve(), None)
    if lock is not None:
        (Path(folder) / PID).unlink(missing_ok=True)
        lock.release()


def held(folder: Path) -> bool:
    return Path(folder).resolve() in HELD
