"""Tiny datasets written in each real on-disk format (torchvision's layouts), for the image-dataset tests.

Each writer returns the uint8 images ``[N, H, W, C]``, labels and class names it wrote, so a test can
compare what a reader gives back with what is on disk. Class c's images are brighter with c, so a
model can tell the classes apart a little.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import torch


def images(n_per_class: int, classes: int, side: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[N, side, side, channels]`` (class c: noise around a level rising with c) and labels, interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(classes), n_per_class)
    level = 40 + 160 * labels / max(1, classes - 1)
    noise = rng.integers(-30, 31, size=(len(labels), side, side, channels))
    return np.clip(level[:, None, None, None] + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", per_class: int = 3, seed: int = 0) -> dict:
    """root/<folder>/raw/ with the four uncompressed idx files (10 classes, 28x28)."""
    out = {}
    for split, (image_name, label_name) in {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }.items():
        x, y = images(per_class, 10, 28, 1, seed + (split == "test"))
        write_idx(root / folder / "raw" / image_name, x[..., 0])
        write_idx(root / folder / "raw" / label_name, y.astype(np.uint8))
        out[split] = (x, y)
    return out


def write_cifar(root: Path, hundred: bool = False, per_class: int = 2, seed: int = 0) -> dict:
    """root/cifar-10-batches-py/ (5 train batches, test_batch, batches.meta) or root/cifar-100-python/."""
    classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "fine_labels" if hundred else "labels"
    names = [f"class{c}" for c in range(classes)]
    out = {}
    for split in ("train", "test"):
        x, y = images(per_class, classes, 32, 3, seed + (split == "test"))
        out[split] = (x, y)
        files = (["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]) if split == "train" else None
        files = files or (["test"] if hundred else ["test_batch"])
        for i, name in enumerate(files):
            part = slice(i * len(y) // len(files), (i + 1) * len(y) // len(files))
            entry = {
                "batch_label": name,
                label_key: y[part].tolist(),
                "data": x[part].transpose(0, 3, 1, 2).reshape(-1, 3072),
                "filenames": [f"{name}_{j}.png" for j in range(len(y[part]))],
            }
            with open(folder / name, "wb") as file:
                pickle.dump(entry, file, protocol=2)
    meta = {"fine_label_names": names, "coarse_label_names": names[:20]} if hundred else {"label_names": names}
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as file:
        pickle.dump(meta, file, protocol=2)
    out["classes"] = names
    return out


def write_stl10(root: Path, per_class: int = 2, classes: int = 3, seed: int = 0) -> dict:
    """root/stl10_binary/ with {train,test}_{X,y}.bin (96x96, column-major) and class_names.txt."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"thing{c}" for c in range(classes)]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    out = {"classes": names}
    for split in ("train", "test"):
        x, y = images(per_class, classes, 96, 3, seed + (split == "test"))
        # the release stores each image as [C, W, H]: torchvision transposes it back
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 3, 2, 1).tobytes())
        (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        out[split] = (x, y)
    return out


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, names: list[str], ext: str = ".png") -> list[Path]:
    """root/<name>/<index>.<ext>, one file per image (grey when x has one channel); returns the paths."""
    from PIL import Image

    paths = []
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        path = root / names[label] / f"{i:05d}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = image[..., 0] if image.shape[-1] == 1 else image
        Image.fromarray(pixels).save(path, quality=95) if ext == ".jpg" else Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


IMAGENET_CLASSES = {
    "n01440764": ("tench", "Tinca tinca"),
    "n02012849": ("crane",),
    "n03126707": ("crane",),
}


def write_imagenet_val(root: Path, per_class: int = 3, side: int = 40, seed: int = 0) -> dict:
    """root/meta.bin (torchvision's: wnid -> names, and the val wnids) and root/val/<wnid>/*.JPEG."""
    wnids = sorted(IMAGENET_CLASSES)
    x, y = images(per_class, len(wnids), side, 3, seed)
    val_wnids = [wnids[c] for c in y]
    root.mkdir(parents=True, exist_ok=True)
    torch.save((IMAGENET_CLASSES, val_wnids), root / "meta.bin")
    from PIL import Image

    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        path = root / "val" / wnids[label] / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="JPEG", quality=95)
    return {"wnids": wnids, "labels": y}
