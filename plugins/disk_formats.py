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
unpickler that only rebuilds numpy arrays, lists, dicts and strings (no other code runs).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from diffbench_plugins.image_files import torchvision_datasets

import diffbench

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


def unreadable(path: Path | str, exc: BaseException) -> diffbench.DataError:
    return diffbench.DataError(
        f"cannot read '{path}' ({type(exc).__name__}: {' '.join(str(exc).split())}); "
        "the file is damaged or not in the expected format: obtain it again"
    )


# MNIST and Fashion-MNIST: idx files --------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (magic 0x0000080N: N dims, big-endian sizes, then the data)."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an idx file of unsigned bytes (its magic number is wrong)")
    dims = int(data[3])
    shape = tuple(int(v) for v in data[4 : 4 + 4 * dims].view(">u4"))
    body = data[4 + 4 * dims :]
    if body.size != int(np.prod(shape)):
        raise ValueError(f"holds {body.size} bytes of data where its header says {shape}")
    return body.reshape(shape)


def read_mnist(folder: Path, split: str, fashion: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """MNIST-format idx files of one split under ``folder/raw`` (folder = root/MNIST or root/FashionMNIST)."""
    datasets = torchvision_datasets()
    if datasets is not None:
        cls = datasets.FashionMNIST if fashion else datasets.MNIST
        try:
            data = cls(str(folder.parent), train=split == "train", download=False)
        except Exception as exc:
            raise unreadable(folder / "raw", exc) from None
        images, labels, classes = data.data.numpy(), data.targets.numpy(), list(data.classes)
    else:
        image_file, label_file = (folder / "raw" / name for name in IDX_FILES[split])
        images, labels = [], []
        for path, into in ((image_file, images), (label_file, labels)):
            try:
                into.append(read_idx(path))
            except (OSError, ValueError) as exc:
                raise unreadable(path, exc) from None
        images, labels = images[0], labels[0]
        classes = FASHION_CLASSES if fashion else MNIST_CLASSES
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise unreadable(folder / "raw", ValueError(f"{len(labels)} labels for images of shape {images.shape}"))
    return images[..., None], labels.astype(np.int64), classes


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
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
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
        return data.data, np.asarray(data.targets, dtype=np.int64), list(data.classes)
    files = CIFAR100_FILES if fine else CIFAR10_FILES
    images, labels = [], []
    for name in files[split]:
        entry = load_pickle(folder / name)
        try:
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry["fine_labels" if fine else "labels"])
        except (KeyError, ValueError) as exc:
            raise unreadable(folder / name, exc) from None
    meta = load_pickle(folder / files["meta"])
    classes = meta.get("fine_label_names" if fine else "label_names")
    if classes is None:
        raise unreadable(folder / files["meta"], KeyError("no class names"))
    return np.vstack(images).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64), list(classes)


# STL-10: binaries ----------------------------------------------------------------------------------------------
def read_stl10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """STL-10 binaries of one split in ``folder`` (root/stl10_binary); images column-major on disk."""
    datasets = torchvision_datasets()
    if datasets is not None:

        class Present(datasets.STL10):  # the labelled files, without md5 sums: see the module docstring
            def _check_integrity(self) -> bool:  # torchvision's also asks for the 2.6 GB unlabelled_X.bin
                return not missing([folder / name for name in (*STL10_FILES[split], "class_names.txt")])

        try:
            data = Present(str(folder.parent), split=split, download=False)
        except Exception as exc:
            raise unreadable(folder, exc) from None
        return data.data.transpose(0, 2, 3, 1), data.labels.astype(np.int64), list(data.classes)
    image_file, label_file = (folder / name for name in STL10_FILES[split])
    try:
        raw = np.memmap(image_file, dtype=np.uint8, mode="r")
        side = STL10_SIDE
        if raw.size % (3 * side * side):
            raise ValueError(f"{raw.size} bytes is not a whole number of {side}x{side} colour images")
        # stored [N, C, W, H]; as torchvision: transpose to [N, C, H, W], then channels last
        images = raw.reshape(-1, 3, side, side).transpose(0, 3, 2, 1)
        labels = np.fromfile(label_file, dtype=np.uint8).astype(np.int64) - 1
        classes = (folder / "class_names.txt").read_text().splitlines()
    except (OSError, ValueError) as exc:
        raise unreadable(image_file, exc) from None
    if labels.shape != images.shape[:1]:
        raise unreadable(label_file, ValueError(f"{len(labels)} labels for {len(images)} images"))
    return images, labels, classes


# ImageNet: meta.bin and the val folder ------------------------------------------------------------------------
def imagenet_val(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names (by wnid order), image paths and labels of ``root/val``, as torchvision's ImageNet lists them.

    A class's name is its first WordNet name; a name two classes share (ImageNet has two 'crane's)
    gets the wnid after it.
    """
    from diffbench_plugins.image_files import scan_folder

    datasets = torchvision_datasets()
    if datasets is not None:
        try:
            data = datasets.ImageNet(str(root), split="val")
        except Exception as exc:
            raise unreadable(root / "meta.bin", exc) from None
        wnids, names = list(data.wnids), [tuple(c) for c in data.classes]
        paths, labels = [p for p, _ in data.samples], list(data.targets)
    else:
        try:
            wnid_to_classes = torch.load(root / "meta.bin", weights_only=True)[0]
        except Exception as exc:
            raise unreadable(root / "meta.bin", exc) from None
        wnids, paths, labels = scan_folder(root / "val")
        unknown = [w for w in wnids if w not in wnid_to_classes]
        if unknown:
            raise unreadable(root / "meta.bin", KeyError(f"no class names for {', '.join(unknown[:3])}"))
        names = [tuple(wnid_to_classes[w]) for w in wnids]
    first = [n[0] if n else w for n, w in zip(names, wnids, strict=True)]
    shared = {n for n in first if first.count(n) > 1}
    return [f"{n} ({w})" if n in shared else n for n, w in zip(first, wnids, strict=True)], paths, labels
