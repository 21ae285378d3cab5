"""Image files to tensors: decoding with Pillow, pixels in [-1, 1], and the memory a decode needs.

Every image dataset decodes through ``decode_images``: resize the shorter side to ``size`` (bicubic,
as Li et al. and guided-diffusion do), centre-crop a square, convert to 1 or 3 channels, scale to
[-1, 1]. Images are decoded one at a time into a preallocated tensor, so reading N images needs the
memory of those N and no more.

Before decoding, ``check_memory`` estimates what a decode holds and refuses, in one line, what
cannot fit (``size=100000`` would ask for terabytes), naming a ``size`` that would. Where torchvision
imports (``torchvision_datasets``) its readers are used; ``folder_listing`` lists image folders.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch

import diffbench
from diffbench.memory import available_memory, gigabytes

#: The extensions torchvision's ImageFolder takes (``torchvision.datasets.folder.IMG_EXTENSIONS``).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
PILLOW_MISSING = "reading images needs Pillow: pip install 'diffbench[images]' (or pip install pillow)"
#: What Pillow raises on a damaged file (a broken PNG chunk is a SyntaxError, a short field a struct.error).
PILLOW_FAILURES = (OSError, ValueError, SyntaxError, struct.error, IndexError, EOFError)
#: Largest ``size`` an image dataset takes (a 2048x2048 colour image is 50 MB as floats).
MAX_SIZE = 2048
#: Bytes held per decoded value beyond the float32 tensor itself: the copy the core makes when it cuts
#: and orders a split (4); and, once per decode, one image's working set in Pillow and numpy (about 16).
COPY_BYTES, WORKING_BYTES = 4, 16


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
        except (*PILLOW_FAILURES, Image.DecompressionBombError) as exc:
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
        except (*PILLOW_FAILURES, Image.DecompressionBombError) as exc:
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


def decode_bytes(n: int, channels: int, size: int) -> int:
    """Memory (bytes) that decoding ``n`` images to ``[n, channels, size, size]`` float32 holds at its peak."""
    values = channels * size * size
    return (4 + COPY_BYTES) * n * values + WORKING_BYTES * values


def check_memory(dataset: str, n: int, channels: int, size: int, available: int | None = None) -> None:
    """DataError, in one line, when decoding ``n`` images at ``size`` cannot fit in the memory available.

    It names the size that would fit (or asks for fewer images where none would).
    """
    need, have = decode_bytes(n, channels, size), available_memory() if available is None else available
    if have is None or need <= have:
        return
    fits = math.isqrt(max(0, have) // (channels * ((4 + COPY_BYTES) * n + WORKING_BYTES)))
    mend = f"give size={fits} or less" if fits >= 1 else "give fewer images"
    raise diffbench.DataError(
        f"dataset '{dataset}': decoding {n} images at size={size} needs about {gigabytes(need)} of memory, more "
        f"than the {gigabytes(have)} available; {mend} (or fewer images: per_class=, n_test=, n_train=)"
    )
