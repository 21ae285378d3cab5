"""Image datasets read from disk, and fixed test subsets on every dataset.

Tiny datasets are written in each real on-disk format (``image_data``) and read back through the
plugins and through the CLI end to end; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from diffbench_plugins import folder_listing, image_files

import diffbench
from diffbench import plugins, preparation, subsets
from diffbench.schedule import NoiseSchedule
from diffbench.testing import check_dataset
from diffbench.training import build_module
from tests.helpers import error_lines, write_suite
from tests.image_data import (
    images,
    write_cifar,
    write_folder,
    write_imagenet_val,
    write_mnist,
    write_stl10,
)

TINY_UNET = "unet[channels=8]"


def dataset(name: str, **params) -> diffbench.Dataset:
    return plugins.registry()["dataset"][name].cls(**params)


def pixels(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 * 2 - 1


# the subset -------------------------------------------------------------------------------------------------
def test_per_class_takes_that_many_of_each_class_in_the_splits_order():
    labels = torch.tensor([0, 1, 2] * 10 + [2] * 5)
    chosen = subsets.choose(labels, per_class=3)
    assert torch.bincount(labels[chosen]).tolist() == [3, 3, 3]
    assert torch.equal(chosen, chosen.sort().values)
    assert not torch.equal(chosen, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8])), "a shuffle, not the first ones"


def test_n_test_is_stratified_in_proportion():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    assert torch.bincount(labels[subsets.choose(labels, n_test=10)]).tolist() == [6, 3, 1]
    chosen = subsets.choose(labels, per_class=20, n_test=25)  # 20, 20, 10 first, then 25 in proportion
    assert torch.bincount(labels[chosen]).tolist() == [10, 10, 5]


def test_the_subset_ignores_the_global_seed_and_choosing_again_keeps_it_whole():
    labels = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    a = subsets.choose(labels, per_class=4, n_test=20)
    torch.manual_seed(456)
    assert torch.equal(a, subsets.choose(labels, per_class=4, n_test=20))
    assert torch.equal(subsets.choose(labels[a], per_class=4, n_test=20), torch.arange(len(a)))
    assert torch.equal(subsets.choose(labels), torch.arange(500))


def test_every_dataset_has_the_subset_params_and_its_defaults_change_nothing():
    for name, entry in plugins.registry()["dataset"].items():
        assert {"per_class", "n_test"} <= set(entry.cls.params), name
        assert repr(entry.cls()) == name, "default params stay out of the label (and so out of cell ids)"
    digits = dataset("digits")
    assert digits.training_params() == {"test_fraction": 0.2}, "the cache key of trained weights is as before"
    spirals = dataset("spirals", per_class=5)
    assert "n_test" in spirals.training_params() and "per_class" not in spirals.training_params()
    assert repr(dataset("digits", per_class=4)) == "digits[per_class=4]"
    with pytest.raises(diffbench.ParamError, match="per_class"):
        dataset("digits", per_class=-1)


def test_a_third_party_dataset_gets_the_subset_params():
    class Rows(diffbench.Dataset):
        name = "rows"
        params = {"k": 3}

    assert Rows.params == {"k": 3, "per_class": 0, "n_test": 0}
    assert Rows(per_class=2).params["per_class"] == 2


# each on-disk format read back ------------------------------------------------------------------------------
def test_mnist_and_fashion_mnist_idx_files(tmp_path):
    for name, folder in (("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")):
        written = write_mnist(tmp_path / name, folder=folder)
        splits = dataset(name, root=str(tmp_path / name)).load(0)
        assert torch.equal(splits.test_x, pixels(written["test"][0]))
        assert torch.equal(splits.train_y, torch.from_numpy(written["train"][1]))
        assert splits.class_names[0] == ("0 - zero" if name == "mnist" else "T-shirt/top")


def test_cifar_pickles(tmp_path):
    ten, hundred = write_cifar(tmp_path / "c10"), write_cifar(tmp_path / "c100", hundred=True, per_class=1)
    splits = dataset("cifar10", root=str(tmp_path / "c10")).load(0)
    assert torch.equal(splits.train_x, pixels(ten["train"][0])), "the five batches, in order"
    assert splits.class_names == ten["classes"]
    splits = dataset("cifar100", root=str(tmp_path / "c100"), per_class=1).load(0)
    assert splits.num_classes == 100 and torch.equal(splits.test_y, torch.arange(100))
    assert torch.equal(splits.test_x, pixels(hundred["test"][0])), "one of each: the only ones there"


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    if image_files.torchvision_datasets() is not None:
        pytest.skip("torchvision reads the pickles where it imports")
    with pytest.raises(diffbench.DataError, match="test_batch.*refusing to load os.system"):
        dataset("cifar10", root=str(tmp_path), train=False).load(0)


def test_stl10_binaries_column_major(tmp_path):
    written = write_stl10(tmp_path)
    splits = dataset("stl10", root=str(tmp_path)).load(0)
    assert splits.data_shape == (3, 96, 96)
    assert torch.equal(splits.test_x, pixels(written["test"][0])), "transposed back as torchvision does"
    assert splits.class_names == written["classes"]


def test_imagenet_val_folder_with_meta(tmp_path):
    written = write_imagenet_val(tmp_path, per_class=3)
    splits = dataset("imagenet", root=str(tmp_path), size=16, per_class=2).load(0)
    assert splits.class_names == ["tench", "crane (n02012849)", "crane (n03126707)"]
    assert splits.train_x.shape == (0, 3, 16, 16), "validation images only"
    assert torch.bincount(splits.test_y).tolist() == [2, 2, 2]
    assert len(written["labels"]) == 9


def test_image_folder_of_pngs_and_jpegs_with_resize_and_channels(tmp_path):
    x, y = images(4, 2, 24, 3)
    write_folder(tmp_path / "train", x, y, ["cat", "dog"])
    write_folder(tmp_path / "test", x[:4], y[:4], ["cat", "dog"], ext=".jpg")
    splits = dataset("image-folder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), size=12).load(0)
    assert splits.class_names == ["cat", "dog"] and splits.data_shape == (3, 12, 12)
    assert splits.train_y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1], "ImageFolder's order: class, then file name"
    assert splits.train_x.min() >= -1 and splits.train_x.max() <= 1
    grey = dataset("image-folder", root=str(tmp_path / "train"), size=24, channels=1, test_fraction=0.5).load(0)
    assert grey.data_shape == (1, 24, 24) and len(grey.test_y) == 4 and len(grey.train_y) == 4
    assert torch.bincount(grey.test_y).tolist() == [2, 2], "a stratified split"


def test_an_image_folder_without_class_folders_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "0001.png").write_bytes(b"")
    with pytest.raises(diffbench.DataError, match="holds no class subfolder"):
        dataset("image-folder", root=str(tmp_path / "flat")).check()
    (tmp_path / "flat" / "cat").mkdir()
    with pytest.raises(diffbench.DataError, match="test_root .*nowhere' is not a folder"):
        dataset("image-folder", root=str(tmp_path / "flat"), test_root=str(tmp_path / "nowhere")).check()


def test_only_the_chosen_images_are_decoded(tmp_path):
    x, y = images(5, 2, 8, 3)
    write_folder(tmp_path / "train", x[:4], y[:4], ["a", "b"])
    paths = write_folder(tmp_path / "test", x, y, ["a", "b"])
    chosen = subsets.choose(torch.tensor(sorted(y.tolist())), per_class=1)
    in_folder_order = sorted(paths, key=lambda p: (p.parent.name, p.name))
    for i, path in enumerate(in_folder_order):
        if i not in chosen.tolist():
            path.write_bytes(b"not an image")  # never read, so never a problem
    roots = {"root": str(tmp_path / "train"), "test_root": str(tmp_path / "test")}
    folder = dataset("image-folder", **roots, size=8, per_class=1)
    folder.check()
    splits = folder.load(0)
    assert splits.test_y.tolist() == [0, 1] and splits.train_x.shape[0] == 4
    assert splits.heldout_x.shape[0] == 0, "with a training split, no test image is held out"


def test_without_a_training_split_a_held_out_slice_outside_the_subset_is_decoded(tmp_path):
    x, y = images(5, 2, 8, 3)
    write_folder(tmp_path, x, y, ["a", "b"])
    splits = dataset("image-folder", root=str(tmp_path), train=False, size=8, per_class=2).load(0)
    every = dataset("image-folder", root=str(tmp_path), train=False, size=8).load(0)
    assert splits.train_x.shape[0] == 0 and splits.test_y.shape[0] == 4 and splits.heldout_y.shape[0] == 6
    assert sorted(splits.heldout_y.tolist()) == [0, 0, 0, 1, 1, 1], "stratified"
    both = torch.cat([splits.test_x, splits.heldout_x]).flatten(1)
    assert torch.equal(both.unique(dim=0), every.test_x.flatten(1).unique(dim=0)), "disjoint, and all of them"
    assert every.heldout_y.shape[0] == 0, "nothing outside a test split classified whole"
    again = dataset("image-folder", root=str(tmp_path), train=False, size=8, per_class=2).load(1)
    assert torch.equal(again.heldout_x, splits.heldout_x), "the same slice on every seed"
    write_mnist(tmp_path / "mnist")  # arrays, too: 3 test images of each of 10 classes
    arrays = dataset("mnist", root=str(tmp_path / "mnist"), train=False, per_class=1).load(0)
    assert arrays.test_y.shape[0] == 10 and sorted(arrays.heldout_y.tolist()) == sorted(list(range(10)) * 2)
    assert dataset("mnist", root=str(tmp_path / "mnist"), per_class=1).load(0).heldout_y.shape[0] == 0


def test_the_readers_agree_with_torchvision_where_it_imports(tmp_path, monkeypatch):
    if image_files.torchvision_datasets() is None:
        pytest.skip("torchvision does not import beside this torch; the tests use diffbench's own readers")
    write_mnist(tmp_path / "m")
    write_cifar(tmp_path / "c")
    write_stl10(tmp_path / "s")
    write_imagenet_val(tmp_path / "i")
    cases = [("mnist", "m", {}), ("cifar10", "c", {}), ("stl10", "s", {}), ("imagenet", "i", {"size": 16})]
    for name, folder, params in cases:
        ours = dataset(name, root=str(tmp_path / folder), **params)
        with_torchvision = ours.load(0)
        monkeypatch.setenv("DIFFBENCH_NO_TORCHVISION", "1")
        image_files.torchvision_datasets.cache_clear()
        without = ours.load(0)
        monkeypatch.delenv("DIFFBENCH_NO_TORCHVISION")
        image_files.torchvision_datasets.cache_clear()
        assert (
            torch.equal(with_torchvision.test_x, without.test_x) and with_torchvision.class_names == without.class_names
        )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "torchvision.datasets.MNIST"),
        ("fashion-mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "torchvision.datasets.CIFAR100"),
        ("stl10", "stl10_binary/train_X.bin"),
        ("imagenet", "ILSVRC2012_devkit_t12.tar.gz"),
    ],
)
def test_missing_files_are_named_with_how_to_get_them(tmp_path, name, expected):
    with pytest.raises(diffbench.DataError, match="does not exist") as info:
        dataset(name, root=str(tmp_path / "empty")).check()
    assert expected in str(info.value) and "\n" not in str(info.value)


# through the CLI ------------------------------------------------------------------------------------------
def run(cli, tmp_path, data: str, *extra, denoiser: str = TINY_UNET, steps: int = 5):
    suite = write_suite(
        tmp_path / "images.toml",
        scenarios=["offline"],
        trials=[1],
        timesteps=20,
        batch_size=256,
        train={"steps": steps},
    )
    args = ["run", "--suite", suite, "-d", data, "-m", denoiser, "--no-plots", "--max-time", "0.05"]
    return cli(*args, "--cache", tmp_path / "cache", *extra)


def test_a_missing_root_stops_the_run_in_one_line_before_anything_trains(cli, tmp_path):
    result = run(cli, tmp_path, f"cifar10[root={tmp_path / 'nowhere'}]", "--out", tmp_path / "out")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "data_batch_1" in line and "torchvision.datasets.CIFAR10" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_an_unreadable_image_is_named_in_one_line_before_anything_runs(cli, tmp_path):
    x, y = images(2, 2, 8, 3)
    paths = write_folder(tmp_path / "pics", x, y, ["a", "b"])
    paths[0].write_bytes(b"\x89PNG broken")
    result = run(cli, tmp_path, f"image-folder[root={tmp_path / 'pics'},train=false,size=8]", "--out", tmp_path / "o")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert str(paths[0]) in line and "cannot read image" in line and "remove or replace" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists(), "found before anything ran"


def test_an_image_damaged_past_its_header_fails_its_cells_naming_the_file(cli, tmp_path):
    x, y = images(2, 2, 8, 3)
    paths = write_folder(tmp_path / "pics", x, y, ["a", "b"])
    paths[0].write_bytes(paths[0].read_bytes()[:60])  # the PNG header and size survive, the pixels do not
    result = run(cli, tmp_path, f"image-folder[root={tmp_path / 'pics'},train=false,size=8]", "--out", tmp_path / "o")
    assert result.exit_code == 1
    named = [line for line in error_lines(result) if str(paths[0]) in line]
    assert named and "cannot read image" in named[0] and "remove or replace" in named[0]


def tiny_datasets(root):
    """One selector per on-disk format, each a few images per class at 8x8 (unet's tiny size)."""
    write_mnist(root / "mnist")
    write_mnist(root / "fashion", folder="FashionMNIST")
    write_cifar(root / "cifar10")
    write_cifar(root / "cifar100", hundred=True, per_class=1)
    write_stl10(root / "stl10")
    x, y = images(3, 2, 20, 3)
    write_folder(root / "folder", x[:3], y[:3], ["a", "b"])
    write_folder(root / "folder", x[3:], y[3:], ["a", "b"], ext=".jpg")
    return {
        "mnist": (f"mnist[root={root / 'mnist'},size=8,per_class=2]", 20),
        "fashion-mnist": (f"fashion-mnist[root={root / 'fashion'},size=8,n_test=5]", 5),
        "cifar10": (f"cifar10[root={root / 'cifar10'},size=8,per_class=1]", 10),
        "cifar100": (f"cifar100[root={root / 'cifar100'},size=8,n_test=10,train=true]", 10),
        "stl10": (f"stl10[root={root / 'stl10'},size=8]", 6),
        "image-folder": (f"image-folder[root={root / 'folder'},size=8,test_fraction=0.3]", 2),
    }


@pytest.mark.slow
def test_each_format_runs_end_to_end(cli, tmp_path):
    for name, (selector, n_test) in tiny_datasets(tmp_path / "data").items():
        result = run(cli, tmp_path, selector, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        frame = pd.read_parquet(tmp_path / name / "results.parquet")
        assert (frame["status"] == "ok").all() and (frame["n_test"] == n_test).all(), name
        assert frame["heldout_from"].iloc[0] == "train"


@pytest.mark.slow
def test_imagenet_zero_shot_with_trained_weights(cli, tmp_path):
    write_imagenet_val(tmp_path / "in", per_class=4)
    selector = f"imagenet[root={tmp_path / 'in'},size=8,per_class=1]"
    result = run(cli, tmp_path, selector, "--out", tmp_path / "untrained")
    assert result.exit_code == 1 and "no training split" in result.stderr
    ours = dataset("imagenet", root=str(tmp_path / "in"), size=8, per_class=1)
    splits = ours.load(0)
    denoiser = plugins.registry()["denoiser"]["unet"].cls(channels=8)
    torch.save(build_module(denoiser, splits, 0).state_dict(), tmp_path / "weights.pt")
    result = run(cli, tmp_path, selector, "--out", tmp_path / "zero-shot", "--checkpoint", tmp_path / "weights.pt")
    assert result.exit_code == 0, result.output
    row = pd.read_parquet(tmp_path / "zero-shot" / "results.parquet").iloc[0]
    assert row["n_test"] == 3 and row["test_subset"] == "per_class=1 (subset seed 0)"
    # the other 3 images of each class were decoded as a held-out slice: calibration ran on them
    assert row["heldout_n"] == 9 and row["heldout_from"] == "test samples outside the subset (no training split)"
    assert row["temperature"] != 1.0
    # the whole val set classified: no labelled image is left over, and the row says so
    selector = f"imagenet[root={tmp_path / 'in'},size=8]"
    result = run(cli, tmp_path, selector, "--out", tmp_path / "whole", "--checkpoint", tmp_path / "weights.pt")
    assert result.exit_code == 0, result.output
    row = pd.read_parquet(tmp_path / "whole" / "results.parquet").iloc[0]
    assert row["n_test"] == 12 and row["heldout_n"] == 0 and row["temperature"] == 1.0
    assert row["heldout_from"] == (
        "none: no training split and no test sample outside the subset, so fit and calibration were skipped"
    )


def test_without_a_training_split_the_test_samples_outside_the_subset_are_held_out():
    x, y = torch.randn(20, 3), torch.arange(20) % 4
    splits = diffbench.Splits(x[:0], y[:0], x, y, ["a", "b", "c", "d"])
    cut, spare_x, spare_y = subsets.apply(2, 0, splits)
    assert len(cut.test_y) == 8 and len(spare_y) == 12
    kept, held_x, held_y = preparation.hold_out(cut, 0, (spare_x, spare_y))
    assert sorted(held_y.tolist()) == sorted(spare_y.tolist()) and kept.test_x.shape == (8, 3)
    assert not any((held_x == row).all(1).any() for row in cut.test_x), "no classified sample is held out"
    assert preparation.heldout_source(cut, held_y).startswith("test samples outside the subset")


@pytest.mark.slow
def test_every_seed_and_estimator_classifies_the_same_subset(cli, tmp_path):
    args = ["-e", "shared-noise", "-e", "full-mc", "--seed", "0"]
    result = run(cli, tmp_path, "digits[per_class=3]", "--out", tmp_path / "a", *args, denoiser="mlp[width=16,depth=1]")
    assert result.exit_code == 0, result.output
    args[-1] = "1"
    result = run(cli, tmp_path, "digits[per_class=3]", "--out", tmp_path / "b", *args, denoiser="mlp[width=16,depth=1]")
    frame = pd.concat([pd.read_parquet(tmp_path / run / "results.parquet") for run in "ab"])
    assert len(frame) == 4 and (frame["n_test"] == 30).all()
    assert frame["test_digest"].nunique() == 1 and (frame["test_subset"] == "per_class=3 (subset seed 0)").all()
    assert (frame["p_dataset_per_class"] == 3).all()


def test_test_images_are_put_in_one_order_whatever_order_they_came_in():
    x, y = pixels(images(4, 3, 6, 1)[0]), torch.from_numpy(images(4, 3, 6, 1)[1])
    shuffled = torch.randperm(len(y), generator=torch.Generator().manual_seed(5))
    within_8_bits = x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 0.5) / 400
    a = subsets.in_content_order(diffbench.Splits(x[:0], y[:0], x, y, ["a", "b", "c"]))
    b = subsets.in_content_order(diffbench.Splits(x[:0], y[:0], within_8_bits[shuffled], y[shuffled], ["a", "b", "c"]))
    assert torch.equal(a.test_y, b.test_y) and (a.test_x - b.test_x).abs().max() < 1 / 255
    assert not torch.equal(a.test_y, y), "an order of its own, not the one given"
    points, labels = torch.randn(12, 2), torch.arange(12) % 2
    toys = subsets.in_content_order(diffbench.Splits(points[:0], labels[:0], points, labels, ["a", "b"]))
    assert torch.equal(toys.test_x, points), "samples that are not images keep their order"


def test_check_dataset_passes_the_image_datasets(tmp_path):
    write_stl10(tmp_path)
    check_dataset(dataset("stl10", root=str(tmp_path), size=16))
    check_dataset(dataset("stl10", root=str(tmp_path), size=16, train=False, per_class=1))


def write_digits_as_pngs(root) -> diffbench.Splits:
    """digits' own train and test split as root/{train,test}/<digit>/<position>.png (8-bit grey)."""
    from PIL import Image

    digits = dataset("digits").load(0)
    for part in ("train", "test"):
        levels = ((getattr(digits, f"{part}_x") + 1) / 2 * 16).round()  # digits' 0..16 ink levels
        for i, (image, label) in enumerate(zip(levels, getattr(digits, f"{part}_y"), strict=True)):
            path = root / part / str(int(label)) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image[0] * 255 / 16).round().numpy().astype(np.uint8)).save(path)
    return digits


@pytest.mark.slow
def test_digits_written_as_pngs_read_back_as_digits(tmp_path):
    digits = write_digits_as_pngs(tmp_path)
    folder = dataset("image-folder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), size=8, channels=1)
    splits = folder.load(0)
    _, paths, _ = folder_listing.scan_folder(tmp_path / "test")
    order = torch.tensor([int(p[-8:-4]) for p in paths]).argsort()  # back into digits' order
    x, y = splits.test_x[order], splits.test_y[order]
    assert splits.class_names == digits.class_names and torch.equal(y, digits.test_y)
    assert (x - digits.test_x).abs().max() <= 1 / 255 + 1e-6, "only 8-bit rounding of 17 ink levels"
    assert len(splits.train_y) == len(digits.train_y)
    denoiser = plugins.registry()["denoiser"]["unet"].cls(channels=8)
    model = diffbench.ConditionalModel(
        build_module(denoiser, digits, 0).eval(), NoiseSchedule("linear", 1000), 10, (1, 8, 8)
    )
    estimator = plugins.registry()["estimator"]["shared-noise"].cls()
    with torch.no_grad():
        a = estimator.errors(model, digits.test_x, 4, torch.Generator().manual_seed(0)).argmin(1)
        b = estimator.errors(model, x, 4, torch.Generator().manual_seed(0)).argmin(1)
    assert (a == b).float().mean() >= 0.99, "the same model and noise decide (almost) every image alike"


@pytest.mark.slow
def test_digits_as_pngs_through_image_folder_classify_like_digits(cli, tmp_path):
    """The acceptance check: the same model, the same images, the same accuracy through either reader."""
    write_digits_as_pngs(tmp_path / "pngs")
    # live: the cell's seeded generator gives both readers the same noise (a bank's draws follow each image's
    # exact bits, which the PNG round trip may move by a rounding)
    args = ("-e", "shared-noise", "--trials", "2", "--errors", "live")
    result = run(cli, tmp_path, "digits", "--out", tmp_path / "digits", *args, steps=200)
    assert result.exit_code == 0, result.output
    (weights,) = (tmp_path / "cache").glob("unet-digits-*.pt")
    folder = (
        f"image-folder[root={tmp_path / 'pngs' / 'train'},test_root={tmp_path / 'pngs' / 'test'},size=8,channels=1]"
    )
    result = run(cli, tmp_path, folder, "--out", tmp_path / "folder", *args, "--checkpoint", weights)
    assert result.exit_code == 0, result.output
    ours, theirs = (pd.read_parquet(tmp_path / run / "results.parquet").iloc[0] for run in ("digits", "folder"))
    assert ours["n_test"] == theirs["n_test"] == 360
    assert ours["accuracy"] == theirs["accuracy"] > 0.3  # chance is 0.1
    labels = [pd.read_parquet(tmp_path / run / "predictions.parquet") for run in ("digits", "folder")]
    assert (labels[0]["label"].to_numpy() == labels[1]["label"].to_numpy()).all(), "each image in the same place"
    assert (labels[0]["pred"].to_numpy() == labels[1]["pred"].to_numpy()).mean() >= 0.99
