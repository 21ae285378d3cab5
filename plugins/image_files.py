"""Image files to tensors: decoding with Pillow, torchvision's ImageFolder listing, pixels in [-1, 1].

Every image dataset decodes through ``decode_images``: resize the shorter side to ``size`` (bicubic,
as Li et al. and guided-diffusion do), centre-crop a square, convert to 1 or 3 channels, scale to
[-1, 1]. Images are decoded one at a time into a preallocated tensor, so reading N images needs the
memory of those N and no more.

torchvision, where it imports, lists the files (``find_classes``/``make_dataset``, the
``ImageFolder`` convention); where it does not (PyPI's torchvision fails to import beside a CPU
build of torch from elsewhere), ``scan_folder`` lists them by the same rules.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

import diffbench

#: The extensions torchvision's ImageFolder takes (``torchvision.datasets.folder.IMG_EXTENSIONS``).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
PILLOW_MISSING = "reading images needs Pillow: pip install 'diffbench[images]' (or pip install pillow)"


@functools.cache
def torchvision_datasets() -> ModuleType | None:
    """``torchvision.datasets``, or None where torchvision is absent or does not import beside this torch."""
    if os.environ.get("DIFFBENCH_NO_TORCHVISION"):
        return None
    try:
        import torchvision.datasets
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        return None
    return torchvision.datasets


def reader_name() -> str:
    """Which code reads the files: 'torchvision X' or 'diffbench' (its own readers of the same formats)."""
    datasets = torchvision_datasets()
    if datasets is None:
        return "diffbench"
    import torchvision

    return f"torchvision {torchvision.__version__}"


def scan_folder(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names (sorted subfolders), image paths and labels, in ImageFolder's order.

    Raises DataError when ``root`` has no class folder or a class has no image.
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
    return list(classes), [p for p, _ in samples], [c for _, c in samples]


def _scan(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """torchvision's ``find_classes`` + ``make_dataset``, for where torchvision does not import."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {root}.")
    samples, empty = [], []
    for index, name in enumerate(classes):
        found = 0
        for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
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


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise diffbench.DataError(PILLOW_MISSING) from None
    return Image


def fit_square(image, size: int):
    """Resize the shorter side to ``size`` (bicubic) and crop the centre square; as is when already square."""
    Image = _pillow()
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    w, h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((w, h), Image.Resampling.BICUBIC)
    left, top = round((w - size) / 2), round((h - size) / 2)
    return image.crop((left, top, left + size, top + size))


def to_pixels(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` to float ``[N, C, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255 * 2 - 1


def unreadable_image(path: str, exc: BaseException) -> diffbench.DataError:
    return diffbench.DataError(f"cannot read image '{path}' ({' '.join(str(exc).split())}); remove or replace the file")


def check_readable(paths: Sequence[str]) -> None:
    """DataError naming the first file whose header Pillow cannot read: cheap, no pixel is decoded.

    A file damaged past its header is found only when decoded (``decode_images``), named the same way.
    """
    Image = _pillow()
    for path in paths:
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise unreadable_image(path, exc) from None


def decode_images(paths: Sequence[str], size: int, channels: int) -> torch.Tensor:
    """Decode image files into ``[N, channels, size, size]`` in [-1, 1], one at a time.

    An unreadable file raises DataError naming it.
    """
    Image = _pillow()
    out = torch.empty(len(paths), channels, size, size)
    mode = "L" if channels == 1 else "RGB"
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(fit_square(image.convert(mode), size), dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise unreadable_image(path, exc) from None
        out[i] = to_pixels(pixels.reshape(size, size, channels)[None])[0]
    return out


def convert_arrays(images: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` images to ``[N, channels, size, size]`` in [-1, 1] (through Pillow if resized)."""
    n, h, w, c = images.shape
    if (h, w, c) == (size, size, channels):
        return to_pixels(images)
    Image = _pillow()
    out = torch.empty(n, channels, size, size)
    mode = "L" if channels == 1 else "RGB"
    for i in range(n):
        image = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
        pixels = np.asarray(fit_square(image.convert(mode), size), dtype=np.uint8)
        out[i] = to_pixels(pixels.reshape(size, size, channels)[None])[0]
    return out
