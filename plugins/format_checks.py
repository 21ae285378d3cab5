"""What every on-disk reader checks of what it read, per file, before a pixel or label is used.

A file in the right format can still hold the wrong things: a CIFAR batch whose label list is shorter
than its images (paired by position, most pairs are then mislabelled, silently), int64 pixels that a
cast to uint8 would wrap, labels beyond the class list, class names that are not UTF-8, an ImageNet
``meta.bin`` of another shape. Each is refused in one line that names the file and what is wrong with it,
never passed on to fail later with a message that names neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import diffbench

OBTAIN_AGAIN = "the file is damaged or not in the expected format: obtain it again"


def unreadable(path: Path | str, exc: BaseException) -> diffbench.DataError:
    return diffbench.DataError(
        f"cannot read '{path}' ({type(exc).__name__}: {' '.join(str(exc).split())}); {OBTAIN_AGAIN}"
    )


def malformed(path: Path | str, problem: str) -> diffbench.DataError:
    return diffbench.DataError(f"'{path}' {problem}; {OBTAIN_AGAIN}")


def pixels(values: Any, path: Path | str) -> np.ndarray:
    """``values`` as uint8, refused when they are not integers in 0..255 (a cast would wrap them silently)."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:  # a ragged list, say
        raise unreadable(path, exc) from None
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iu":
        raise malformed(path, f"holds pixels of type {array.dtype}, where the format has bytes 0-255")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise malformed(path, f"holds pixel values from {array.min()} to {array.max()}, outside 0-255")
    return array.astype(np.uint8)


def labels(values: Any, n_images: int, n_classes: int, path: Path | str) -> np.ndarray:
    """``values`` as int64 labels, one per image and each a class index, or refused naming ``path``."""
    if isinstance(values, (list, tuple)) and not all(type(v) is int or isinstance(v, np.integer) for v in values):
        kinds = sorted({type(v).__name__ for v in values if type(v) is not int and not isinstance(v, np.integer)})
        raise malformed(path, f"holds labels that are not integers ({', '.join(kinds)})")
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise unreadable(path, exc) from None
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise malformed(
            path, f"holds labels of shape {list(array.shape)} and type {array.dtype}, not a list of integers"
        )
    if len(array) != n_images:
        raise malformed(path, f"holds {len(array)} labels for {n_images} images")
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise malformed(
            path,
            f"holds labels from {array.min()} to {array.max()}, where its {n_classes} classes are 0..{n_classes - 1}",
        )
    return array.astype(np.int64)


def class_names(values: Any, path: Path | str) -> list[str]:
    """A non-empty list of str, or refused naming ``path``."""
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) for v in values):
        raise malformed(path, f"holds no list of class names (got {type(values).__name__})")
    return list(values)


def utf8_lines(path: Path) -> list[str]:
    """The lines of a text file, refused in one line naming it when it is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise diffbench.DataError(
            f"'{path}' is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    except OSError as exc:
        raise unreadable(path, exc) from None


def imagenet_meta(meta: Any, path: Path | str) -> dict[str, tuple[str, ...]]:
    """torchvision's ``meta.bin`` content ``(wnid -> class names, val wnids)``: its first part, checked."""
    shape = "(a dict wnid -> tuple of class names, a list of val wnids), as torchvision writes it"
    if not isinstance(meta, (tuple, list)) or len(meta) != 2 or not isinstance(meta[0], dict):
        raise malformed(path, f"should hold {shape}; it holds {type(meta).__name__}")
    for wnid, names in meta[0].items():
        if not isinstance(wnid, str) or not isinstance(names, (tuple, list)):
            raise malformed(path, f"should hold {shape}; its entry {wnid!r} is {type(names).__name__}")
        if not all(isinstance(name, str) for name in names):
            raise malformed(path, f"should hold {shape}; the names of {wnid!r} are not all text")
    return {wnid: tuple(names) for wnid, names in meta[0].items()}
