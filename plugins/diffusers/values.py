"""Typed reads of the config values diffbench uses: a wrong one is a ParamError naming the file, the key and the value.

Config files are JSON written by hand as often as by diffusers, so a class count may arrive as the string "10"
or a list may stand where a mapping belongs. Each value is checked where it is read, so the line says what is
wrong ("`num_class_embeds` in FILE must be an integer, got '10'") rather than what broke later.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import diffbench

MISSING = object()


def shown(value: Any) -> str:
    """``value`` as one short line: strings quoted, the rest as JSON (null, true, [1, 2]), long ones cut."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def wrong(key: str, file: Path, must: str, value: Any) -> diffbench.ParamError:
    return diffbench.ParamError(f"`{key}` in {file} must be {must}, got {shown(value)}")


def integer(config: dict[str, Any], key: str, file: Path, low: int = 1, high: int | None = None) -> int | None:
    """``config[key]`` as an integer in [low, high], None where it is absent or null."""
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong(key, file, "an integer", value)
    if value < low or (high is not None and value > high):
        raise wrong(key, file, f"an integer from {low}" + (f" to {high}" if high is not None else " up"), value)
    return value


def number(value: Any, key: str, file: Path, low: float, high: float) -> float:
    """``value`` (of ``key``) as a finite number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise wrong(key, file, f"a finite number from {low:g} to {high:g}", value)
    if not low <= value <= high:
        raise wrong(key, file, f"a number from {low:g} to {high:g}", value)
    return float(value)


def text(config: dict[str, Any], key: str, file: Path, default: Any = "", choices: tuple[str, ...] = ()) -> Any:
    """``config[key]`` as a string (one of ``choices`` where given); ``default`` where it is absent."""
    value = config.get(key, MISSING)
    if value is MISSING:
        return default
    if not isinstance(value, str):
        must = f"one of {', '.join(choices)}" if choices else "a string"
        raise wrong(key, file, must, value)
    if choices and value not in choices:
        raise wrong(key, file, f"one of {', '.join(choices)}", value)
    return value


def optional_text(config: dict[str, Any], key: str, file: Path) -> str | None:
    """``config[key]`` as a string, None where it is absent or null."""
    value = config.get(key)
    if value is not None and not isinstance(value, str):
        raise wrong(key, file, "a string or null", value)
    return value


def flag(config: dict[str, Any], key: str, file: Path) -> bool:
    """``config[key]`` as a boolean (false where absent or null)."""
    value = config.get(key)
    if value is not None and not isinstance(value, bool):
        raise wrong(key, file, "true or false", value)
    return bool(value)


def labels(value: Any, key: str, file: Path) -> dict[int, str]:
    """An ``id2label`` mapping: non-negative integer ids (JSON keys are strings: "0") to names."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise wrong(key, file, 'a mapping of label ids to names ({"0": "name", ...})', value)
    out: dict[int, str] = {}
    for label_id, name in value.items():
        if not (isinstance(label_id, str) and label_id.isdigit() and label_id.isascii() and len(label_id) < 10):
            raise wrong(key, file, "keyed by label ids 0, 1, 2, ...", label_id)
        if not isinstance(name, str):
            raise wrong(f"{key}.{label_id}", file, "a name (a string)", name)
        out[int(label_id)] = name
    return out
