"""Issue 24's causes in the on-disk readers, one test (or a few) each; every one failed before its fix.

- a link loop in an image folder listed each image ~40 times and put the same images in train and test;
- a FIFO named like an image blocked the header check forever;
- a CIFAR batch with fewer labels than images was paired by position, int64 pixels were wrapped to uint8;
- a malformed ImageNet meta.bin or a latin-1 class_names.txt gave a line naming neither the file nor the fix;
- ``size=`` had no bound: 100,000 tried to allocate terabytes.
"""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import diffbench
from diffbench import plugins
from tests.helpers import error_lines, write_suite
from tests.image_data import images, write_cifar, write_folder, write_imagenet_val, write_mnist, write_stl10


def dataset(name: str, **params) -> diffbench.Dataset:
    return plugins.registry()["dataset"][name].cls(**params)


def folder_with_a_loop(root: Path, per_class: int = 10) -> list[Path]:
    """root/{cat,dog}/ with ``per_class`` 8x8 PNGs each, and root/cat/loop -> .. (the loop of the issue)."""
    x, y = images(per_class, 2, 8, 3)
    paths = write_folder(root, x, y, ["cat", "dog"])
    os.symlink("..", root / "cat" / "loop")
    return paths


# 1. links: each file once, inside the folder, train and test disjoint ---------------------------------------
def test_a_link_loop_lists_each_image_once_with_the_label_of_its_own_folder(tmp_path):
    written = folder_with_a_loop(tmp_path / "pics")
    ours = dataset("image-folder", root=str(tmp_path / "pics"), size=8, train=False)
    classes, paths, labels, _, _ = ours.listing()
    assert classes == ["cat", "dog"] and len(paths) == len(written) == 20
    assert sorted(os.path.realpath(p) for p in paths) == sorted(os.path.realpath(p) for p in written)
    assert all(Path(os.path.realpath(p)).parent.name == classes[c] for p, c in zip(paths, labels, strict=True))


def test_a_link_loop_keeps_train_and_test_apart(tmp_path):
    folder_with_a_loop(tmp_path / "pics")
    splits = dataset("image-folder", root=str(tmp_path / "pics"), size=8).load(0)
    assert len(splits.test_y) == 4 and len(splits.train_y) == 16, "the issue's run had n_test 164"
    train = {bytes(row.numpy().tobytes()) for row in splits.train_x}
    assert not any(row.numpy().tobytes() in train for row in splits.test_x)


def test_a_copy_of_a_test_image_in_the_training_folder_is_not_trained_on(tmp_path):
    x, y = images(4, 2, 8, 3)
    write_folder(tmp_path / "train", x, y, ["cat", "dog"])
    write_folder(tmp_path / "test", x[:2], y[:2], ["cat", "dog"])  # two of the training images again
    splits = dataset("image-folder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), size=8).load(0)
    assert len(splits.test_y) == 2 and len(splits.train_y) == 6
    assert not any((splits.train_x == row).flatten(1).all(1).any() for row in splits.test_x)
    with pytest.raises(diffbench.DataError, match="every training image is also a test image"):
        dataset("image-folder", root=str(tmp_path / "test"), test_root=str(tmp_path / "test"), size=8).load(0)


def test_a_link_out_of_the_folder_is_refused_naming_it(tmp_path):
    x, y = images(3, 2, 8, 3)
    write_folder(tmp_path / "pics", x, y, ["cat", "dog"])
    elsewhere = write_folder(tmp_path / "elsewhere", x[:1], y[:1], ["cat", "dog"])[0]
    os.symlink(elsewhere, tmp_path / "pics" / "cat" / "linked.png")
    with pytest.raises(diffbench.DataError, match="outside the folder") as info:
        dataset("image-folder", root=str(tmp_path / "pics"), size=8).check()
    assert "linked.png" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "pics" / "cat" / "linked.png").unlink()
    os.symlink(tmp_path / "elsewhere" / "cat", tmp_path / "pics" / "cat" / "more")  # a linked folder
    with pytest.raises(diffbench.DataError, match="outside the folder"):
        dataset("image-folder", root=str(tmp_path / "pics"), size=8).check()


def test_one_file_in_two_classes_is_refused(tmp_path):
    x, y = images(3, 2, 8, 3)
    paths = write_folder(tmp_path / "pics", x, y, ["cat", "dog"])
    os.link(paths[0], tmp_path / "pics" / "dog" / "same.png")  # a hard link: one file, two folders
    with pytest.raises(diffbench.DataError, match="are one file, in the classes 'cat' and 'dog'"):
        dataset("image-folder", root=str(tmp_path / "pics"), size=8).check()


def test_a_hard_link_in_one_class_counts_once(tmp_path):
    x, y = images(3, 2, 8, 3)
    paths = write_folder(tmp_path / "pics", x, y, ["cat", "dog"])
    os.link(paths[0], tmp_path / "pics" / "cat" / "again.png")
    _, listed, _, _, _ = dataset("image-folder", root=str(tmp_path / "pics"), train=False).listing()
    assert len(listed) == 6


# 2. a FIFO is never opened ------------------------------------------------------------------------------------
def test_a_fifo_named_like_an_image_is_refused_without_opening_it(tmp_path):
    x, y = images(2, 2, 8, 3)
    write_folder(tmp_path / "pics", x, y, ["cat", "dog"])
    fifo = tmp_path / "pics" / "cat" / "fifo.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            dataset("image-folder", root=str(tmp_path / "pics"), size=8, train=False).check()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the main thread reports it
            outcome.append(exc)

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # blocked in open(): let it go (a writer that closes at once) and fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("the check opened the FIFO and blocked")
    (exc,) = outcome
    assert isinstance(exc, diffbench.DataError) and "\n" not in str(exc)
    assert str(fifo) in str(exc) and "a FIFO, not a regular file" in str(exc)


def test_an_image_with_a_broken_chunk_is_named_not_a_syntax_error(tmp_path):
    """Found by the reader fuzz: Pillow raises SyntaxError on a PNG chunk whose length is damaged."""
    x, y = images(2, 2, 8, 3)
    paths = write_folder(tmp_path / "pics", x, y, ["cat", "dog"])
    damaged = bytearray(paths[0].read_bytes())
    damaged[36] = 36  # in the length of the chunk after IHDR: the header still opens
    paths[0].write_bytes(bytes(damaged))
    with pytest.raises(diffbench.DataError, match=f"cannot read image '{paths[0]}' \\(broken PNG file"):
        dataset("image-folder", root=str(tmp_path / "pics"), size=8, train=False).load(0)


# 3. a label per image, pixels in 0..255, per file -------------------------------------------------------------
def rewrite_pickle(path: Path, **changes) -> None:
    with open(path, "rb") as file:
        entry = pickle.load(file, encoding="latin1")
    with open(path, "wb") as file:
        pickle.dump({**entry, **changes}, file, protocol=2)


def test_a_cifar_batch_with_fewer_labels_than_images_is_refused_naming_it(tmp_path):
    write_cifar(tmp_path, per_class=10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as file:
        labels = pickle.load(file, encoding="latin1")["labels"]
    rewrite_pickle(batch, labels=labels[:-5])  # data_batch_2's first labels would have been paired with these images
    with pytest.raises(diffbench.DataError, match=f"'{batch}' holds {len(labels) - 5} labels for {len(labels)} images"):
        dataset("cifar10", root=str(tmp_path)).load(0)


def test_cifar_pixels_outside_0_255_are_refused_not_wrapped(tmp_path):
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(batch, "rb") as file:
        data = pickle.load(file, encoding="latin1")["data"]
    as_written = dataset("cifar10", root=str(tmp_path), train=False).load(0).test_x
    rewrite_pickle(batch, data=data.astype(np.int64) * 3)
    with pytest.raises(diffbench.DataError, match="test_batch' holds pixel values from .* outside 0-255"):
        dataset("cifar10", root=str(tmp_path), train=False).load(0)
    rewrite_pickle(batch, data=data.astype(np.int64))  # wider integers, the right values: read as they are
    assert torch.equal(dataset("cifar10", root=str(tmp_path), train=False).load(0).test_x, as_written)


def test_a_cifar_pickle_damaged_into_an_unknown_codec_is_refused_in_one_line(tmp_path):
    """Found by the reader fuzz: the arrays' bytes are rebuilt with a codec the pickle names."""
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes().replace(b"latin1", b"latinX", 1))
    with pytest.raises(diffbench.DataError, match="cannot read .*test_batch' \\(LookupError: unknown encoding"):
        dataset("cifar10", root=str(tmp_path), train=False).load(0)


def test_labels_beyond_the_class_list_are_refused_naming_the_file(tmp_path):
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(batch, "rb") as file:
        labels = pickle.load(file, encoding="latin1")["labels"]
    rewrite_pickle(batch, labels=[10] + labels[1:])
    with pytest.raises(diffbench.DataError, match="test_batch' holds labels from 0 to 10, where its 10 classes"):
        dataset("cifar10", root=str(tmp_path), train=False).load(0)


def test_idx_and_stl10_label_files_with_the_wrong_count_are_named(tmp_path):
    write_mnist(tmp_path / "m")
    labels = tmp_path / "m" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:4] + (29).to_bytes(4, "big") + labels.read_bytes()[8:37])
    with pytest.raises(diffbench.DataError, match=f"'{labels}' holds 29 labels for 30 images"):
        dataset("mnist", root=str(tmp_path / "m"), train=False).load(0)
    write_stl10(tmp_path / "s")
    labels = tmp_path / "s" / "stl10_binary" / "test_y.bin"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(diffbench.DataError, match=f"'{labels}' holds 5 labels for 6 images"):
        dataset("stl10", root=str(tmp_path / "s"), train=False).load(0)
    labels.write_bytes(bytes([0, 1, 2, 3, 1, 2]))  # STL-10's labels are 1..10: 0 is no class
    with pytest.raises(diffbench.DataError, match="test_y.bin' holds labels from -1 to 2"):
        dataset("stl10", root=str(tmp_path / "s"), train=False).load(0)


# 4. lines that name the file and the fix ----------------------------------------------------------------------
def test_a_latin1_class_names_file_is_named_and_asked_to_be_utf8(tmp_path):
    write_stl10(tmp_path)
    names = tmp_path / "stl10_binary" / "class_names.txt"
    names.write_bytes("café\nthé\nlait\n".encode("latin-1"))
    with pytest.raises(diffbench.DataError) as info:
        dataset("stl10", root=str(tmp_path), train=False).load(0)
    line = str(info.value)
    assert f"'{names}' is not UTF-8" in line and "test_X.bin" not in line and "\n" not in line


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"a": 1}, "it holds dict"),
        (({"n01440764": 5, "n02012849": ("crane",), "n03126707": ("crane",)}, []), "entry 'n01440764' is int"),
        (({"n01440764": (1, 2), "n02012849": ("crane",), "n03126707": ("crane",)}, []), "are not all text"),
        (([1, 2], []), "it holds tuple"),
        (7, "it holds int"),
    ],
)
def test_a_malformed_imagenet_meta_bin_is_named_in_one_line(cli, tmp_path, meta, expected):
    write_imagenet_val(tmp_path / "in")
    torch.save(meta, tmp_path / "in" / "meta.bin")
    suite = write_suite(tmp_path / "s.toml", scenarios=["offline"], trials=[1])
    result = cli("run", "--suite", suite, "-d", f"imagenet[root={tmp_path / 'in'},size=8]", "--out", tmp_path / "o")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert f"'{tmp_path / 'in' / 'meta.bin'}' should hold" in line and expected in line, line
    assert "obtain it again" in line


# 5. size has a bound, and a decode that cannot fit is refused before it starts ---------------------------------
def test_size_has_an_upper_bound(tmp_path):
    for name in ("image-folder", "cifar10", "imagenet"):
        with pytest.raises(diffbench.ParamError, match="size <= 2048.* got 100000"):
            dataset(name, root=str(tmp_path), size=100_000)


def test_a_decode_that_cannot_fit_in_memory_is_refused_naming_a_size_that_fits(tmp_path, monkeypatch):
    from diffbench_plugins import image_files

    x, y = images(5, 2, 8, 3)
    write_folder(tmp_path / "pics", x, y, ["cat", "dog"])
    monkeypatch.setattr(image_files, "available_memory", lambda: 10**9)
    ours = dataset("image-folder", root=str(tmp_path / "pics"), size=2048)
    with pytest.raises(diffbench.DataError) as info:
        ours.check()
    line = str(info.value)
    need = image_files.decode_bytes(10, 3, 2048)
    assert (
        f"decoding 10 images at size=2048 needs about {need / 1e9:.3g} GB of memory, more than the 1 GB available"
        in line
    )
    fits = int(line.split("give size=")[1].split()[0])
    assert image_files.decode_bytes(10, 3, fits) <= 10**9 < image_files.decode_bytes(10, 3, fits + 1)
    write_cifar(tmp_path / "c")  # the array readers check too, before converting
    with pytest.raises(diffbench.DataError, match="decoding 40 images at size=2048"):
        dataset("cifar10", root=str(tmp_path / "c"), size=2048).load(0)
