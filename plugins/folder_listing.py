"""Listing an image folder (one subfolder per class): each file once, inside the folder, and only regular files.

torchvision, where it imports, lists the files (``find_classes``/``make_dataset``, the ``ImageFolder``
convention); where it does not (PyPI's torchvision fails to import beside a CPU build of torch from
elsewhere), ``_scan`` lists them by the same rules. Both follow links, so a link loop (``cat/loop -> ..``)
lists every image dozens of times and a link can lead out of the folder. Whichever lists, ``once_inside``
then keeps each file once (by its identity on disk, so two links or hard links to it count once), with the
label of the class folder it really lives in, refuses a file outside the folder or one that is not a regular
file (a FIFO named ``x.png`` would block the first read forever), and never opens a file to do so.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from diffbench_plugins.image_files import IMG_EXTENSIONS, torchvision_datasets, unreadable_image

import diffbench

#: What a file that is not a regular one is, for the refusal line.
FILE_KINDS = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device"}
FILE_KINDS |= {stat.S_ISBLK: "a block device", stat.S_ISDIR: "a folder"}


def scan_folder(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names (sorted subfolders), image paths and labels, in ImageFolder's order, each file once.

    Raises DataError when ``root`` has no class folder, a class has no image, or a file is outside
    ``root``, not a regular file, or in two classes.
    """
    datasets = torchvision_datasets()
    try:
        if datasets is not None:
            classes, class_to_idx = datasets.folder.find_classes(str(root))
            samples = datasets.folder.make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
        else:
            classes, samples = _scan(root)
    except FileNotFoundError as exc:
        raise diffbench.DataError(
            f"image folder '{root}': {' '.join(str(exc).split())} "
            f"(expected one subfolder per class holding its images, e.g. {root}/cat/0001.png)"
        ) from None
    samples = once_inside(root, list(classes), samples)
    return list(classes), [p for p, _ in samples], [c for _, c in samples]


def _scan(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """torchvision's ``find_classes`` + ``make_dataset``, for where torchvision does not import.

    Unlike torchvision's walk, it enters each real folder once per class (a link loop ends there) and
    refuses a linked folder outside ``root`` instead of walking it.
    """
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {root}.")
    real_root = os.path.realpath(root)
    samples, empty = [], []
    for index, name in enumerate(classes):
        found = 0
        for folder, files in sorted(_walk(os.path.join(root, name), real_root, root)):
            for file in sorted(files):
                if file.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(folder, file), index))
                    found += 1
        if not found:
            empty.append(name)
    if empty:
        raise FileNotFoundError(
            f"Found no valid file for the classes {', '.join(empty)}. Supported extensions are: "
            f"{', '.join(IMG_EXTENSIONS)}"
        )
    return classes, samples


def _walk(top: str, real_root: str, root: Path) -> list[tuple[str, list[str]]]:
    """(folder, file names) of every folder under ``top``, following links, each real folder once."""
    visited, found = set(), []
    for folder, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if not _inside(real, real_root):
            raise diffbench.DataError(outside_line(folder, real, root))
        if real in visited:
            dirs[:] = []  # a loop: this folder's files are listed already
            continue
        visited.add(real)
        dirs.sort()  # a fixed walk: which of two ways into one folder is listed does not depend on the disk
        found.append((folder, files))
    return found


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def outside_line(path: str, real: str, root: Path) -> str:
    return (
        f"image folder '{root}': '{path}' leads to '{real}', outside the folder; diffbench reads only the "
        "files inside it: copy the file in, or give a root that holds it"
    )


def once_inside(root: Path, classes: list[str], samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``samples`` with each file once, refusing what is outside ``root``, not a regular file, or in two classes.

    A file met again under the same label (a link loop, a second link) is dropped. Met under two labels, it
    keeps the label of the class folder it really lives in (a loop ``cat/loop -> ..`` lists dog's images
    under cat too); where both or neither are (a hard link in two class folders), it is refused. A file that
    really lives directly in ``root`` (reached through a loop) is in no class folder and is dropped. Nothing is
    opened.
    """
    real_root = os.path.realpath(root)
    kept: dict[tuple[int, int] | str, tuple[int, str, int, bool]] = {}  # identity -> position, path, label, own
    for position, (path, label) in enumerate(samples):
        real = os.path.realpath(path)
        if not _inside(real, real_root):
            raise diffbench.DataError(outside_line(path, real, root))
        home = os.path.relpath(real, real_root).split(os.sep)
        if len(home) < 2:
            continue  # directly in root: no class folder holds it
        identity, own = _identity(path, real), classes[label] == home[0]
        first = kept.get(identity)
        if first is None or (own and not first[3] and first[2] != label):
            kept[identity] = (position, path, label, own)
        elif first[2] != label and own == first[3]:
            raise diffbench.DataError(
                f"image folder '{root}': '{first[1]}' and '{path}' are one file, in the classes "
                f"'{classes[first[2]]}' and '{classes[label]}'; keep each image in one class folder"
            )
    chosen = sorted(kept.values(), key=lambda entry: (entry[2], entry[0]))  # ImageFolder's order: by class
    return _with_every_class(root, classes, [(path, label) for _, path, label, _ in chosen])


def _identity(path: str, real: str) -> tuple[int, int] | str:
    """The file on disk (device, inode) so that hard links count once; refuses what is not a regular file."""
    try:
        info = os.stat(real)
    except OSError as exc:
        raise unreadable_image(path, exc) from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((kind for test, kind in FILE_KINDS.items() if test(info.st_mode)), "not a regular file")
        raise diffbench.DataError(
            f"image folder: '{path}' is {kind}, not a regular file, and is never opened; remove it or rename "
            "it without an image extension"
        )
    return (info.st_dev, info.st_ino) if info.st_ino else real


def _with_every_class(root: Path, classes: list[str], samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``samples``, refused when a class has no image of its own once duplicates are gone (``dog -> cat``)."""
    have = {label for _, label in samples}
    empty = [name for label, name in enumerate(classes) if label not in have]
    if empty:
        raise diffbench.DataError(
            f"image folder '{root}': the class folder '{empty[0]}' holds no image of its own (its files are "
            "links to another class's or to files directly in the folder); give each class its own images"
        )
    return samples
