"""Property-based fuzz (hypothesis) of every on-disk reader: mutated files are refused in one line or read right.

Each test writes a tiny dataset in the real format, mutates it, and reads it through the dataset plugin.
Either the reader refuses it with DataError (one line, naming a file), or what it gives is what a strict
reading of the mutated files says it should be: never a traceback, never a silent wrong result
(mislabelled pairs, wrapped pixels, a wrong class list). The oracles here parse each format by its
specification independently of the readers.
"""

from __future__ import annotations

import os
import pickle
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffbench_plugins import disk_formats
from hypothesis import event, given, settings
from hypothesis import strategies as st

import diffbench
from diffbench import plugins
from tests.image_data import images, write_cifar, write_folder, write_imagenet_val, write_mnist, write_stl10

#: Examples per test: few enough for the fast suite; DIFFBENCH_FUZZ_EXAMPLES=500 for a longer hunt.
FUZZ = settings(max_examples=int(os.environ.get("DIFFBENCH_FUZZ_EXAMPLES", "30")), deadline=None)


def dataset(name: str, **params) -> diffbench.Dataset:
    return plugins.registry()["dataset"][name].cls(**params)


def read_or_refuse(name: str, **params) -> diffbench.Splits | None:
    """The test split as the plugin gives it, or None where it refuses in one line (anything else escapes)."""
    try:
        ours = dataset(name, **params)
        ours.check()
        splits = ours.load(0)
    except diffbench.DataError as exc:
        assert "\n" not in str(exc) and "'" in str(exc), f"one line naming a file: {exc}"
        event("refused")
        return None
    event("read")
    return splits


def pixels(x: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` to the readers' ``[N, C, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255 * 2 - 1


def mutate(data: bytes, draw) -> bytes:
    """``data`` with a few bytes flipped, cut short, or lengthened."""
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.sampled_from([None, 0, 1, 4, 8, 9, len(data) // 2, len(data) - 1]))
    data = data[:cut] if cut is not None else data
    return bytes(data) + bytes(draw(st.lists(st.integers(0, 255), max_size=3)))


# idx (MNIST) -------------------------------------------------------------------------------------------------------
def parse_idx(data: bytes, dims: int) -> np.ndarray | None:
    """An idx file of unsigned bytes with ``dims`` dimensions, by its specification; None when it is not one."""
    if len(data) < 4 + 4 * dims or data[:3] != b"\x00\x00\x08" or data[3] != dims:
        return None
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    body = np.frombuffer(data[4 + 4 * dims :], dtype=np.uint8)
    return body.reshape(shape) if body.size == int(np.prod(shape, dtype=object)) else None


@FUZZ
@given(data=st.data(), which=st.sampled_from(["images", "labels", "both"]))
def test_a_mutated_idx_file_is_refused_or_read_as_its_header_says(data, which):
    with tempfile.TemporaryDirectory() as tmp:
        write_mnist(Path(tmp), per_class=1)
        raw = Path(tmp) / "MNIST" / "raw"
        image_file, label_file = raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte"
        for path in {"images": [image_file], "labels": [label_file], "both": [image_file, label_file]}[which]:
            path.write_bytes(mutate(path.read_bytes(), data.draw))
        x, y = parse_idx(image_file.read_bytes(), 3), parse_idx(label_file.read_bytes(), 1)
        valid = x is not None and y is not None and len(x) == len(y) and (y < 10).all()
        splits = read_or_refuse("mnist", root=tmp, train=False)
    assert (splits is not None) == valid, "refused exactly what the specification refuses"
    if valid and len(y):
        assert torch.equal(splits.test_y.sort().values, torch.from_numpy(y.astype(np.int64)).sort().values)
        assert splits.test_x.shape[1:] == (1, 28, 28)


# CIFAR pickles -----------------------------------------------------------------------------------------------------
values = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=3), st.none(), st.booleans()
)


@st.composite
def cifar_entries(draw, entry: dict) -> Any:
    """A CIFAR batch's dict with its labels or data changed, a key dropped, or something else than a dict."""
    kind = draw(st.sampled_from(["labels-length", "label-value", "data-dtype", "data-size", "key", "not-a-dict"]))
    entry = dict(entry)
    if kind == "labels-length":
        change = draw(st.integers(-3, 3))
        entry["labels"] = entry["labels"][:change] if change < 0 else entry["labels"] + [0] * change
    elif kind == "label-value":
        entry["labels"] = list(entry["labels"])
        entry["labels"][draw(st.integers(0, len(entry["labels"]) - 1))] = draw(values)
    elif kind == "data-dtype":
        dtype = draw(st.sampled_from([np.int64, np.int16, np.float32, np.uint16, np.int8]))
        data = (entry["data"].astype(np.int64) + draw(st.sampled_from([0, 1, 200, -1]))).astype(dtype)
        entry["data"] = data.tolist() if draw(st.booleans()) else data
    elif kind == "data-size":
        entry["data"] = entry["data"].reshape(-1)[: draw(st.integers(0, entry["data"].size + 10))]
    elif kind == "key":
        del entry[draw(st.sampled_from(["data", "labels"]))]
    else:
        return draw(st.one_of(values, st.lists(values, max_size=3)))
    return entry


def cifar_oracle(entry: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """A batch's uint8 images and labels, by the format (a dict of 0..255 integers and class indices), or None."""
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        return None
    data, labels = entry["data"], entry["labels"]
    if not isinstance(data, (np.ndarray, list)) or not isinstance(labels, list):
        return None
    flat = [int(v) for v in np.asarray(data, dtype=object).reshape(-1) if isinstance(v, (int, np.integer))]
    if len(flat) != np.asarray(data, dtype=object).size or len(flat) % 3072:
        return None
    if not all(type(v) is int and 0 <= v < 10 for v in labels) or len(labels) != len(flat) // 3072:
        return None
    if any(v < 0 or v > 255 for v in flat) or np.asarray(data).dtype.kind == "b":
        return None
    return np.array(flat, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.array(labels)


@FUZZ
@given(data=st.data(), raw=st.booleans())
def test_a_mutated_cifar_batch_is_refused_or_read_as_it_holds(data, raw):
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar(Path(tmp), per_class=1)
        batch = Path(tmp) / "cifar-10-batches-py" / "test_batch"
        with open(batch, "rb") as file:
            entry = pickle.load(file, encoding="latin1")
        if raw:  # bytes damaged: whatever still unpickles is judged as a batch
            batch.write_bytes(mutate(batch.read_bytes(), data.draw))
            try:  # through the reader's unpickler, which runs no code: the oracle judges the content
                with open(batch, "rb") as file:
                    entry = disk_formats.ArrayUnpickler(file, encoding="latin1").load()
            except Exception:  # noqa: BLE001 - not a pickle of arrays any more: the reader must refuse it
                entry = None
        else:
            entry = data.draw(cifar_entries(entry))
            with open(batch, "wb") as file:
                pickle.dump(entry, file, protocol=2)
        expected = cifar_oracle(entry)
        splits = read_or_refuse("cifar10", root=tmp, train=False, size=32)
    assert (splits is not None) == (expected is not None and len(expected[1]) > 0), expected
    if splits is not None:
        assert torch.equal(splits.test_x, pixels(expected[0]))
        assert torch.equal(splits.test_y, torch.from_numpy(expected[1].astype(np.int64)))


# STL-10 binaries ---------------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data(), which=st.sampled_from(["test_X.bin", "test_y.bin", "class_names.txt"]))
def test_mutated_stl10_files_are_refused_or_read_as_they_hold(data, which):
    with tempfile.TemporaryDirectory() as tmp:
        write_stl10(Path(tmp), per_class=1)
        folder = Path(tmp) / "stl10_binary"
        (folder / which).write_bytes(mutate((folder / which).read_bytes(), data.draw))
        x, y = (folder / "test_X.bin").read_bytes(), (folder / "test_y.bin").read_bytes()
        try:
            classes = (folder / "class_names.txt").read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError:
            classes = []
        n = len(x) // (3 * 96 * 96)
        valid = x and len(x) % (3 * 96 * 96) == 0 and len(y) == n and classes and all(1 <= v <= len(classes) for v in y)
        splits = read_or_refuse("stl10", root=tmp, train=False, size=96)
    assert (splits is not None) == bool(valid)
    if valid:
        expected = np.frombuffer(x, dtype=np.uint8).reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
        assert torch.equal(splits.test_x, pixels(expected)) and splits.class_names == classes
        assert splits.test_y.tolist() == [v - 1 for v in y]


# image headers -----------------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data(), ext=st.sampled_from([".png", ".jpg", ".bmp", ".tif", ".webp", ".ppm"]))
def test_a_mutated_image_file_is_refused_naming_it_or_decoded(data, ext):
    x, y = images(2, 2, 8, 3)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_folder(Path(tmp), x, y, ["a", "b"], ext=ext)
        victim = paths[data.draw(st.integers(0, len(paths) - 1))]
        victim.write_bytes(mutate(victim.read_bytes(), data.draw))
        try:
            ours = dataset("image-folder", root=tmp, train=False, size=8)
            ours.check()
            splits = ours.load(0)
        except diffbench.DataError as exc:
            assert str(victim) in str(exc) and "\n" not in str(exc)
            event("refused")
            return
    event("decoded")
    assert splits.test_x.shape == (4, 3, 8, 8) and splits.test_x.isfinite().all()
    assert splits.test_x.abs().max() <= 1 and torch.bincount(splits.test_y).tolist() == [2, 2]


# ImageNet meta.bin -------------------------------------------------------------------------------------------------
WNIDS = ["n01440764", "n02012849", "n03126707"]
leaves = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=4), st.booleans(), st.floats(allow_nan=False))
objects = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner), max_leaves=6)
names = st.one_of(st.tuples(), st.tuples(st.text(max_size=5)), st.lists(st.text(max_size=5), max_size=2), objects)


@st.composite
def metas(draw) -> Any:
    """Something torch.save can write for meta.bin: near torchvision's (wnid -> names, val wnids), or not."""
    if draw(st.booleans()):
        return draw(objects)
    wnids = draw(st.lists(st.sampled_from(WNIDS + ["x", 3]), max_size=4)) if draw(st.booleans()) else WNIDS
    table = {wnid: draw(names) for wnid in wnids}
    return draw(st.sampled_from([(table, []), [table, ["n01440764"]], (table,), table]))


def meta_oracle(meta: Any) -> list[str] | None:
    """The class names torchvision's ImageNet gives for WNIDS (first name, or the wnid; shared ones + wnid)."""
    if not isinstance(meta, (tuple, list)) or len(meta) != 2 or not isinstance(meta[0], dict):
        return None
    table = meta[0]
    if not all(isinstance(w, str) and isinstance(n, (tuple, list)) and all(isinstance(v, str) for v in n)
               for w, n in table.items()) or not set(WNIDS) <= set(table):  # fmt: skip
        return None
    first = [table[w][0] if table[w] else w for w in WNIDS]
    return [f"{n} ({w})" if first.count(n) > 1 else n for n, w in zip(first, WNIDS, strict=True)]


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    write_imagenet_val(root, per_class=1, side=8)
    return root


@FUZZ
@given(meta=metas(), damage=st.booleans(), data=st.data())
def test_a_malformed_meta_bin_is_refused_naming_it_or_read_as_torchvision_would(imagenet_root, meta, damage, data):
    torch.save(meta, imagenet_root / "meta.bin")
    if damage:  # bytes damaged: nothing about it is trusted
        path = imagenet_root / "meta.bin"
        path.write_bytes(mutate(path.read_bytes(), data.draw))
    splits = read_or_refuse("imagenet", root=str(imagenet_root), size=8)
    if not damage:
        expected = meta_oracle(meta)
        assert (splits is None) == (expected is None) and (splits is None or splits.class_names == expected)
    if splits is not None:
        assert len(splits.class_names) == 3 and all(isinstance(n, str) for n in splits.class_names)
