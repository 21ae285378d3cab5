"""The "did you mean" hint every unknown name gets (a param, a choice, a suite key, a plugin, a hook)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """The hint "; did you mean 'x'?" for the closest known word, or an empty string."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
