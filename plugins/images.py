"""Image datasets read from files the user has: `image-folder`, `mnist`, `fashion-mnist`, `cifar10`,
`cifar100`, `stl10` and `imagenet` (the validation set). Nothing is ever downloaded.

Each reads torchvision's on-disk layout under ``root`` (``disk_formats``), checks before anything runs
that the files are there (``check``: one line naming what is missing and how to get it; image files
also have their headers opened there, so an unreadable one is named before anything runs), and reads
lazily: the test labels first, then only the images of the fixed subset that ``per_class``/``n_test``
choose (``Dataset.test_subset``), decoded or converted one by one. ``train=false`` reads no training
images at all (for a trained model used zero-shot); it decodes instead a held-out slice of up to 500
labelled test images outside the subset (``subsets.outside``) for estimators' fit and calibration.
``n_train`` caps the training split with a fixed stratified subset. Pixels are in [-1, 1], ``[N, C, size, size]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffbench_plugins import disk_formats
from diffbench_plugins.folder_listing import scan_folder
from diffbench_plugins.image_files import MAX_SIZE, check_memory, check_readable, convert_arrays, decode_images

import diffbench
from diffbench import subsets

EMPTY = torch.zeros(0, dtype=torch.long)


class DiskImages(diffbench.Dataset):
    """Shared by the image datasets: ``root``, ``size``, ``channels``, ``train``, ``n_train`` and the subset."""

    params: dict[str, Any] = {"root": "", "size": 32, "channels": 3, "train": True, "n_train": 0}
    #: How to get the files, for the missing-files line.
    obtain: str = ""

    def validate(self) -> None:
        p = self.params
        if not 1 <= p["size"] <= MAX_SIZE:
            raise diffbench.ParamError(f"dataset '{self.name}' needs 1 <= size <= {MAX_SIZE}, got {p['size']}")
        if p["channels"] not in (1, 3):
            raise diffbench.ParamError(f"dataset '{self.name}' needs channels 1 or 3, got {p['channels']}")
        if p["n_train"] < 0:
            raise diffbench.ParamError(f"dataset '{self.name}' needs n_train >= 0 (0 = all), got {p['n_train']}")

    @property
    def root(self) -> Path:
        return Path(self.params["root"]).expanduser()

    def splits_needed(self) -> list[str]:
        return ["train", "test"] if self.params["train"] else ["test"]

    def expected_files(self) -> list[Path]:
        """Files that must exist under root (for ``check``)."""
        return []

    def check(self) -> None:
        if not self.params["root"]:
            raise diffbench.DataError(f"dataset '{self.name}' needs root=DIR, the folder that holds {self.layout()}")
        absent = disk_formats.missing(self.expected_files())
        if absent:
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            raise diffbench.DataError(
                f"dataset '{self.name}': '{absent[0]}' does not exist{more}; root '{self.root}' should hold "
                f"{self.layout()}. {self.obtain.format(root=self.root)}; nothing is downloaded at run time"
            )

    def check_memory(self, n: int) -> None:
        """DataError, in one line, when decoding ``n`` images at this size cannot fit in memory."""
        check_memory(self.name, n, self.params["channels"], self.params["size"])

    def layout(self) -> str:
        files = self.expected_files()
        return ", ".join(str(p.relative_to(self.root)) for p in files)

    def train_subset(self, labels: torch.Tensor) -> torch.Tensor:
        return subsets.choose(labels, n_test=self.params["n_train"])

    def heldout_subset(self, labels: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Indices of the labelled test images outside the subset to decode for fit and calibration.

        Only without a training split (``train=false``): otherwise the core holds out training images.
        """
        if self.params.get("train", False):
            return EMPTY
        return subsets.outside(labels, chosen)


class ArrayImages(DiskImages):
    """A dataset whose files hold arrays of images (MNIST, CIFAR, STL-10)."""

    def read(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        raise NotImplementedError

    def load(self, seed: int) -> diffbench.Splits:
        size, channels = self.params["size"], self.params["channels"]
        images, labels, classes = self.read("test")
        chosen = self.test_subset(torch.from_numpy(labels))
        held = self.heldout_subset(torch.from_numpy(labels), chosen).numpy()
        chosen = chosen.numpy()
        train_images, train_labels, train_at = images[:0], labels[:0], chosen[:0]
        if self.params["train"]:
            train_images, train_labels, _ = self.read("train")
            train_at = self.train_subset(torch.from_numpy(train_labels)).numpy()
        self.check_memory(len(chosen) + len(held) + len(train_at))
        test_x, test_y = convert_arrays(images[chosen], size, channels), torch.from_numpy(labels[chosen])
        heldout_x, heldout_y = convert_arrays(images[held], size, channels), torch.from_numpy(labels[held])
        train_x = convert_arrays(train_images[train_at], size, channels)
        train_y = torch.from_numpy(train_labels[train_at])
        return diffbench.Splits(train_x, train_y, test_x, test_y, classes, heldout_x, heldout_y)


class MNIST(ArrayImages):
    """MNIST from torchvision's layout under root (root/MNIST/raw/, the idx files), 28x28 grey."""

    name = "mnist"
    params = {"root": "", "size": 28, "channels": 1, "train": True, "n_train": 0}
    folder, fashion = "MNIST", False
    obtain = (
        "Get them once with torchvision.datasets.MNIST('{root}', download=True), or download the four "
        "*-ubyte.gz files of the MNIST release and gunzip them there"
    )

    def expected_files(self) -> list[Path]:
        raw = self.root / self.folder / "raw"
        return [raw / name for split in self.splits_needed() for name in disk_formats.IDX_FILES[split]]

    def read(self, split):
        return disk_formats.read_mnist(self.root / self.folder, split, self.fashion)


class FashionMNIST(MNIST):
    """Fashion-MNIST from torchvision's layout under root (root/FashionMNIST/raw/, the idx files), 28x28 grey."""

    name = "fashion-mnist"
    folder, fashion = "FashionMNIST", True
    obtain = (
        "Get them once with torchvision.datasets.FashionMNIST('{root}', download=True), or download the four "
        "*-ubyte.gz files of the Fashion-MNIST release and gunzip them there"
    )


class CIFAR10(ArrayImages):
    """CIFAR-10 from torchvision's layout under root (root/cifar-10-batches-py/, the python pickles)."""

    name = "cifar10"
    folder, fine, files = "cifar-10-batches-py", False, disk_formats.CIFAR10_FILES
    obtain = (
        "Get them once with torchvision.datasets.CIFAR10('{root}', download=True), or unpack "
        "cifar-10-python.tar.gz (the CIFAR release, python version) into '{root}'"
    )

    def expected_files(self) -> list[Path]:
        names = [n for split in self.splits_needed() for n in self.files[split]] + [self.files["meta"]]
        return [self.root / self.folder / n for n in names]

    def read(self, split):
        return disk_formats.read_cifar(self.root / self.folder, split, self.fine)


class CIFAR100(CIFAR10):
    """CIFAR-100 (its 100 fine labels) from torchvision's layout under root (root/cifar-100-python/)."""

    name = "cifar100"
    folder, fine, files = "cifar-100-python", True, disk_formats.CIFAR100_FILES
    obtain = (
        "Get them once with torchvision.datasets.CIFAR100('{root}', download=True), or unpack "
        "cifar-100-python.tar.gz (the CIFAR release, python version) into '{root}'"
    )


class STL10(ArrayImages):
    """STL-10's labelled splits from torchvision's layout under root (root/stl10_binary/), 96x96 colour."""

    name = "stl10"
    params = {"root": "", "size": 96, "channels": 3, "train": True, "n_train": 0}
    obtain = (
        "Get them once with torchvision.datasets.STL10('{root}', download=True), or unpack "
        "stl10_binary.tar.gz (the STL-10 release) into '{root}'"
    )

    def expected_files(self) -> list[Path]:
        folder = self.root / "stl10_binary"
        names = [n for split in self.splits_needed() for n in disk_formats.STL10_FILES[split]]
        return [folder / n for n in [*names, "class_names.txt"]]

    def read(self, split):
        return disk_formats.read_stl10(self.root / "stl10_binary", split)


class FileImages(DiskImages):
    """A dataset of image files (an image folder, ImageNet's val folder): listed first, then only the chosen decoded.

    ``check`` lists the files a run will decode and opens each one's header (no pixel is decoded), so an
    unreadable file is named before anything runs; ``load`` decodes the same files.
    """

    def listing(self) -> tuple[list[str], list[str], list[int], list[str], list[int]]:
        """Class names, test image paths and labels, training image paths and labels (empty when not read)."""
        raise NotImplementedError

    def chosen_files(self) -> tuple[list[str], dict[str, tuple[list[str], torch.Tensor]]]:
        """Class names and, for each part (test subset, held-out slice, training images), its files and labels."""
        classes, test_paths, test_labels, train_paths, train_labels = self.listing()
        labels = torch.tensor(test_labels, dtype=torch.long)
        chosen = self.test_subset(labels)
        held = self.heldout_subset(labels, chosen)
        parts = {"test": chosen, "heldout": held}
        files = {part: ([test_paths[i] for i in at.tolist()], labels[at]) for part, at in parts.items()}
        labels = torch.tensor(train_labels, dtype=torch.long)
        at = self.train_subset(labels) if self.params.get("train", False) else EMPTY
        files["train"] = ([train_paths[i] for i in at.tolist()], labels[at])
        return classes, files

    def check(self) -> None:
        super().check()
        self.check_files()

    def check_files(self) -> None:
        """DataError naming the first file to be decoded whose header Pillow cannot read, or when they cannot fit."""
        _, files = self.chosen_files()
        paths = [path for paths, _ in files.values() for path in paths]
        self.check_memory(len(paths))
        check_readable(paths)

    def load(self, seed: int) -> diffbench.Splits:
        classes, files = self.chosen_files()
        size, channels = self.params["size"], self.params["channels"]
        self.check_memory(sum(len(paths) for paths, _ in files.values()))
        x = {part: decode_images(paths, size, channels) for part, (paths, _) in files.items()}
        y = {part: labels for part, (_, labels) in files.items()}
        for part in ("train", "heldout"):  # disjoint from the test images by content: a copy or link is one image
            keep = subsets.unseen(x[part], x["test"])
            x[part], y[part] = x[part][keep], y[part][keep]
        if len(files["train"][0]) and not len(y["train"]):
            raise diffbench.DataError(
                f"dataset '{self.name}': every training image is also a test image; give test_root a folder of "
                "other images, or train=false"
            )
        return diffbench.Splits(x["train"], y["train"], x["test"], y["test"], classes, x["heldout"], y["heldout"])


class ImageFolder(FileImages):
    """Your own images, one subfolder per class (torchvision's ImageFolder convention), any format Pillow reads.

    ``test_root`` holds the test images in the same class folders; without it a fixed stratified
    ``test_fraction`` of root is the test split. ``train=false`` reads only test images: test_root
    if given, else all of root.
    """

    name = "image-folder"
    params = {"root": "", "test_root": "", "test_fraction": 0.2, "size": 32, "channels": 3, "train": True, "n_train": 0}

    def validate(self) -> None:
        super().validate()
        if not 0 < self.params["test_fraction"] < 1:
            raise diffbench.ParamError(f"image-folder needs 0 < test_fraction < 1, got {self.params['test_fraction']}")

    def check(self) -> None:
        if not self.params["root"]:
            raise diffbench.DataError("image-folder needs root=DIR, a folder with one subfolder of images per class")
        for key in ("root", "test_root"):
            folder = Path(self.params[key]).expanduser()
            if self.params[key] and not (folder.is_dir() and any(entry.is_dir() for entry in folder.iterdir())):
                what = "holds no class subfolder" if folder.is_dir() else "is not a folder"
                raise diffbench.DataError(
                    f"image-folder {key} '{folder}' {what}; give a folder with one subfolder of images "
                    f"per class (e.g. {folder}/cat/0001.png), as torchvision's ImageFolder reads"
                )
        self.check_files()

    def listing(self) -> tuple[list[str], list[str], list[int], list[str], list[int]]:
        p = self.params
        test_root = Path(p["test_root"]).expanduser() if p["test_root"] else None
        paths, labels = [], []
        if test_root is not None:
            classes, test_paths, test_labels = scan_folder(test_root)
            if p["train"]:
                train_classes, paths, labels = scan_folder(self.root)
                if train_classes != classes:
                    differ = sorted(set(train_classes) ^ set(classes))
                    raise diffbench.DataError(
                        f"image-folder: root '{self.root}' and test_root '{test_root}' need the same class "
                        f"subfolders; {', '.join(differ[:5]) or 'their order'} differ"
                    )
        elif p["train"]:
            classes, paths, labels = scan_folder(self.root)
            train_at, test_at = self.split(labels)
            test_paths, test_labels = [paths[i] for i in test_at], [labels[i] for i in test_at]
            paths, labels = [paths[i] for i in train_at], [labels[i] for i in train_at]
        else:
            classes, test_paths, test_labels = scan_folder(self.root)
        return classes, test_paths, test_labels, paths, labels

    def split(self, labels: list[int]) -> tuple[list[int], list[int]]:
        """A fixed stratified train/test split of root (random_state 0, as `digits`)."""
        from sklearn.model_selection import train_test_split

        try:
            train_at, test_at = train_test_split(
                np.arange(len(labels)), test_size=self.params["test_fraction"], stratify=labels, random_state=0
            )
        except ValueError as exc:
            raise diffbench.DataError(
                f"image-folder cannot split root '{self.root}' into train and test ({exc}); give each class more "
                "images, or a test_root, or train=false"
            ) from None
        return sorted(train_at.tolist()), sorted(test_at.tolist())


class ImageNet(FileImages):
    """ImageNet's validation set in torchvision's layout (root/meta.bin, root/val/<wnid>/), for zero-shot use.

    Only the validation images are read (there is no training split: use a trained model), and of those
    only the fixed subset; class names are the first WordNet name of each class.
    """

    name = "imagenet"
    params = {"root": "", "size": 256, "channels": 3}
    obtain = (
        "Put ILSVRC2012_devkit_t12.tar.gz and ILSVRC2012_img_val.tar (from image-net.org, after registering) "
        "in '{root}' and run torchvision.datasets.ImageNet('{root}', split='val') once: it writes meta.bin and "
        "sorts the images into val/<wnid>/"
    )

    def validate(self) -> None:
        p = self.params
        if not 1 <= p["size"] <= MAX_SIZE or p["channels"] not in (1, 3):
            raise diffbench.ParamError(
                f"imagenet needs 1 <= size <= {MAX_SIZE} and channels 1 or 3, got {p['size']}, {p['channels']}"
            )

    def expected_files(self) -> list[Path]:
        return [self.root / "meta.bin"]

    def layout(self) -> str:
        return "meta.bin and val/<wnid>/*.JPEG"

    def check(self) -> None:
        DiskImages.check(self)
        val = self.root / "val"
        if not val.is_dir() or not any(entry.is_dir() for entry in val.iterdir()):
            raise diffbench.DataError(
                f"dataset 'imagenet': '{val}' holds no class folders; root '{self.root}' should hold "
                f"{self.layout()}. {self.obtain.format(root=self.root)}; nothing is downloaded at run time"
            )
        self.check_files()

    def listing(self) -> tuple[list[str], list[str], list[int], list[str], list[int]]:
        classes, paths, labels = disk_formats.imagenet_val(self.root)
        return classes, paths, labels, [], []


@diffbench.hookimpl
def register_datasets(register):
    for cls in (ImageFolder, MNIST, FashionMNIST, CIFAR10, CIFAR100, STL10, ImageNet):
        register(cls)
