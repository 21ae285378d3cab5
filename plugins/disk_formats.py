"""torchvision's on-disk dataset formats, read with torchvision where it imports and faithfully without it.

Each reader returns ``(images, labels, class_names)``: uint8 images ``[N, H, W, C]`` (a view or a
memory map where the format allows, so that only the images a run picks get converted), int64
labels ``[N]`` and the class names torchvision gives. The layouts under ``root`` are torchvision's:

- MNIST / Fashion-MNIST: ``root/MNIST/raw/`` (``root/FashionMNIST/raw/``), the four uncompressed idx files;
- CIFAR-10 / CIFAR-100: ``root/cifar-10-batches-py/`` (``root/cifar-100-python/``), the python pickles;
- STL-10: ``root/stl10_binary/``, the binary ``*_X.bin``/``*_y.bin`` files and ``class_names.txt``;
- ImageNet: ``root/meta.bin`` (written by torchvision from the devkit) and ``root/val/<wnid>/*.JPEG``.

torchvision's own readers are used where it imports (``image_files.torchvision_datasets``). Its
CIFAR and STL-10 classes also compare each file's md5 with the official release's (and STL-10's wants
the unlabelled images too); here the labelled files' presence is checked and their form by reading
them, so those sums are not compared (a full read of every file at each run, and tests' small files
could not pass it). Without torchvision the same formats are parsed here; CIFAR's pickles then go through an
unpickler that only rebuilds numpy arrays, lists, dicts and strings (no other code runs). Whichever reads,
what it gives is checked (``format_checks``): a label per image, each a class, pixels in 0..255.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import torch
from diffbench_plugins import format_checks
from diffbench_plugins.folder_listing import once_inside, scan_folder
from diffbench_plugins.format_checks import malformed, unreadable
from diffbench_plugins.image_files import torchvision_datasets

MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four"]
MNIST_CLASSES += ["5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
FASHION_CLASSES += ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}
IDX_FILES["test"] = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta"}
CIFAR100_FILES = {"train": ["train"], "test": ["test"], "meta": "meta"}
STL10_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")}
STL10_SIDE = 96


def missing(paths: list[Path]) -> list[Path]:
    return [p for p in paths if not p.is_file()]


# MNIST and Fashion-MNIST: idx files --------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (magic 0x0000080N: N dims, big-endian sizes, then the data)."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an idx file of unsigned bytes (its magic number is wrong)")
    dims = int(data[3])
    if data.size < 4 + 4 * dims:
        raise ValueError(f"ends inside its header ({data.size} bytes, where it announces {dims} sizes)")
    shape = tuple(int(v) for v in data[4 : 4 + 4 * dims].view(">u4"))
    body = data[4 + 4 * dims :]
    if body.size != math.prod(shape):
        raise ValueError(f"holds {body.size} bytes of data where its header says {shape}")
    return body.reshape(shape)


def read_mnist(folder: Path, split: str, fashion: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """MNIST-format idx files of one split under ``folder/raw`` (folder = root/MNIST or root/FashionMNIST)."""
    datasets = torchvision_datasets()
    image_file, label_file = (folder / "raw" / name for name in IDX_FILES[split])
    if datasets is not None:
        cls = datasets.FashionMNIST if fashion else datasets.MNIST
        try:
            data = cls(str(folder.parent), train=split == "train", download=False)
        except Exception as exc:
            raise unreadable(folder / "raw", exc) from None
        images, labels, classes = data.data.numpy(), data.targets.numpy(), list(data.classes)
    else:
        images, labels = [], []
        for path, into in ((image_file, images), (label_file, labels)):
            try:
                into.append(read_idx(path))
            except (OSError, ValueError) as exc:
                raise unreadable(path, exc) from None
        images, labels = images[0], labels[0]
        classes = FASHION_CLASSES if fashion else MNIST_CLASSES
    if images.ndim != 3:
        raise malformed(
            image_file, f"holds an array of shape {list(images.shape)}, where images are [N, rows, columns]"
        )
    return images[..., None], format_checks.labels(labels, len(images), len(classes), label_file), classes


# CIFAR-10 and CIFAR-100: python pickles ----------------------------------------------------------------------
class ArrayUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays (and pickle's own lists, dicts, strings, numbers): no other code runs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR file holds only arrays")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            return ArrayUnpickler(file, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - damaged bytes fail in many ways (an unknown codec: LookupError)
        raise unreadable(path, exc) from None


def read_cifar(folder: Path, split: str, fine: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CIFAR pickles of one split in ``folder`` (root/cifar-10-batches-py or root/cifar-100-python)."""
    datasets = torchvision_datasets()
    if datasets is not None:
        base = datasets.CIFAR100 if fine else datasets.CIFAR10

        class Present(base):  # the files, without the release's md5 sums: see the module docstring
            train_list = [[name, None] for name, _ in base.train_list]
            test_list = [[name, None] for name, _ in base.test_list]
            meta = {**base.meta, "md5": None}

        try:
            data = Present(str(folder.parent), train=split == "train", download=False)
        except Exception as exc:
            raise unreadable(folder, exc) from None
        images, classes = format_checks.pixels(data.data, folder), format_checks.class_names(data.classes, folder)
        return images, format_checks.labels(data.targets, len(images), len(classes), folder), classes
    files = CIFAR100_FILES if fine else CIFAR10_FILES
    meta = load_pickle(folder / files["meta"])
    names = meta.get("fine_label_names" if fine else "label_names") if isinstance(meta, dict) else None
    classes = format_checks.class_names(names, folder / files["meta"])
    images, labels = [], []
    for name in files[split]:
        batch_images, batch_labels = cifar_batch(folder / name, "fine_labels" if fine else "labels", len(classes))
        images.append(batch_images)
        labels.append(batch_labels)
    return np.vstack(images).transpose(0, 2, 3, 1), np.concatenate(labels), classes


def cifar_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle's images ``[N, 3, 32, 32]`` and labels, each checked against the other."""
    entry = load_pickle(path)
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        raise malformed(path, f"holds no 'data' and '{label_key}' entries, as a CIFAR batch does")
    images = format_checks.pixels(entry["data"], path)
    if images.size % (3 * 32 * 32):
        raise malformed(path, f"holds {images.size} pixel values, not a whole number of 32x32 colour images")
    images = images.reshape(-1, 3, 32, 32)
    return images, format_checks.labels(entry[label_key], len(images), n_classes, path)


# STL-10: binaries ----------------------------------------------------------------------------------------------
def read_stl10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """STL-10 binaries of one split in ``folder`` (root/stl10_binary); images column-major on disk."""
    datasets = torchvision_datasets()
    if datasets is not None:

        class Present(datasets.STL10):  # the labelled files, without md5 sums: see the module docstring
            def _check_integrity(self) -> bool:  # torchvision's also asks for the 2.6 GB unlabelled_X.bin
                return not missing([folder / name for name in (*STL10_FILES[split], "class_names.txt")])

        classes = format_checks.class_names(format_checks.utf8_lines(folder / "class_names.txt"), folder)
        try:
            data = Present(str(folder.parent), split=split, download=False)
        except Exception as exc:
            raise unreadable(folder, exc) from None
        labels = format_checks.labels(data.labels, len(data.data), len(classes), folder / STL10_FILES[split][1])
        return data.data.transpose(0, 2, 3, 1), labels, classes
    image_file, label_file = (folder / name for name in STL10_FILES[split])
    classes = format_checks.class_names(format_checks.utf8_lines(folder / "class_names.txt"), folder)
    try:
        raw = np.memmap(image_file, dtype=np.uint8, mode="r")
        side = STL10_SIDE
        if raw.size % (3 * side * side):
            raise ValueError(f"{raw.size} bytes is not a whole number of {side}x{side} colour images")
        # stored [N, C, W, H]; as torchvision: transpose to [N, C, H, W], then channels last
        images = raw.reshape(-1, 3, side, side).transpose(0, 3, 2, 1)
    except (OSError, ValueError) as exc:
        raise unreadable(image_file, exc) from None
    try:
        labels = np.fromfile(label_file, dtype=np.uint8).astype(np.int64) - 1
    except (OSError, ValueError) as exc:
        raise unreadable(label_file, exc) from None
    return images, format_checks.labels(labels, len(images), len(classes), label_file), classes


# ImageNet: meta.bin and the val folder ------------------------------------------------------------------------
def imagenet_val(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names (by wnid order), image paths and labels of ``root/val``, as torchvision's ImageNet lists them.

    A class's name is its first WordNet name; a name two classes share (ImageNet has two 'crane's)
    gets the wnid after it.
    """
    meta_path = root / "meta.bin"
    try:
        meta = torch.load(meta_path, weights_only=True)
    except Exception as exc:
        raise unreadable(meta_path, exc) from None
    wnid_to_classes = format_checks.imagenet_meta(meta, meta_path)
    datasets = torchvision_datasets()
    if datasets is not None:
        try:
            data = datasets.ImageNet(str(root), split="val")
        except Exception as exc:
            raise unreadable(meta_path, exc) from None
        wnids = list(data.wnids)
        samples = once_inside(root / "val", wnids, [(path, label) for path, label in data.samples])
        paths, labels = [p for p, _ in samples], [c for _, c in samples]
    else:
        wnids, paths, labels = scan_folder(root / "val")
    unknown = [w for w in wnids if w not in wnid_to_classes]
    if unknown:
        raise malformed(meta_path, f"has no class names for {', '.join(unknown[:3])} (folders of {root / 'val'})")
    names = [wnid_to_classes[w] for w in wnids]
    first = [n[0] if n else w for n, w in zip(names, wnids, strict=True)]
    shared = {n for n in first if first.count(n) > 1}
    return [f"{n} ({w})" if n in shared else n for n, w in zip(first, wnids, strict=True)], paths, labels
