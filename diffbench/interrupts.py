"""Telling the user's Ctrl-C apart from plugin code that raises KeyboardInterrupt or calls sys.exit.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be, so
inside a plugin's code the two look alike. ``watch_ctrl_c()`` installs a SIGINT handler that
notes the keypress before raising; ``contained(fn, *args)`` then turns a KeyboardInterrupt with
no keypress behind it, or a SystemExit, into ``PluginExit``: that task's failure, like any other
exception, and the rest of the grid runs. The user's Ctrl-C still stops the run.

``ctrl_c_deferred()`` holds a Ctrl-C back for the length of a block that must not be cut half-way
(the final rebuild of a run's tables) and raises it once the block is done.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class PluginExit(RuntimeError):
    """Plugin code raised SystemExit, or a KeyboardInterrupt that was not the user's Ctrl-C."""


class _State:
    watching = False  # a watch_ctrl_c() block is active in this process
    pressed = False  # SIGINT arrived inside it


_state = _State()


def _on_sigint(signum: int, frame: Any) -> None:
    _state.pressed = True
    raise KeyboardInterrupt


@contextmanager
def watch_ctrl_c() -> Iterator[None]:
    """Note every SIGINT inside the block (then raise KeyboardInterrupt as Python does).

    Only in the main thread, and only where SIGINT has Python's default handler (an ignored
    SIGINT, under nohup say, stays ignored).
    """
    if threading.current_thread() is not threading.main_thread() or _state.watching:
        yield
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _state.watching, _state.pressed = True, False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _state.watching, _state.pressed = False, False


@contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Run the block to its end through any Ctrl-C pressed inside it, then raise KeyboardInterrupt.

    A second Ctrl-C during the final rebuild of the tables would leave them lagging the cells;
    held back, it stops the process the moment the tables are whole. Only in the main thread, and
    only where SIGINT is handled in Python (an ignored SIGINT stays ignored).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN, SIG_DFL or a handler set outside Python
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        _state.pressed = True
        raise KeyboardInterrupt


def user_pressed_ctrl_c() -> bool:
    """Whether a KeyboardInterrupt now may be the user's: SIGINT arrived, or nobody is watching."""
    return _state.pressed or not _state.watching


def contained(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, with SystemExit and a KeyboardInterrupt that no Ctrl-C caused raised as PluginExit."""
    try:
        return fn(*args)
    except SystemExit as exc:
        raise PluginExit(
            f"plugin code called sys.exit({exc.code!r}); a plugin must raise an exception, not exit"
        ) from None
    except KeyboardInterrupt:
        if user_pressed_ctrl_c():
            raise
        raise PluginExit("plugin code raised KeyboardInterrupt, but no Ctrl-C was pressed") from None
