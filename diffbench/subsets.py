"""Fixed test subsets: ``per_class`` and ``n_test`` on every dataset, chosen in one place.

Expensive models classify a few images per class (Li et al. score ImageNet on 4 per class), and
every run and every estimator must classify the same ones. So the subset is a function of the
dataset's own test labels and of ``per_class``/``n_test`` alone: one fixed shuffle drawn from
``SUBSET_SEED`` (never from ``--seed``), the first ``per_class`` of each class in it, then, if
``n_test`` is smaller than what is left, a stratified ``n_test`` of those (each class in proportion,
largest remainders first). The chosen indices keep the split's order.

The runner applies it to every dataset's Splits after ``load``. A dataset that reads its files
lazily calls ``choose`` on its labels first (through ``Dataset.test_subset``) and decodes only the
chosen images; the runner's pass is then a no-op, because choosing from a chosen subset keeps it
whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # what ``apply`` takes and gives: diffbench.contract.Splits, which imports this module
    from typing import Any as Splits

#: The params every dataset has (0 = no limit); a dataset may declare one itself with its own default.
SUBSET_PARAMS: dict[str, int] = {"per_class": 0, "n_test": 0}
#: Seed of the subset's shuffle: fixed, so that every --seed and every estimator sees the same images.
SUBSET_SEED = 0
#: Most labelled samples held out for estimators' fit and calibration.
HELDOUT_MAX = 500
#: Samples hashed at a time by ``content_order``.
ORDER_CHUNK = 256


def check_params(kind_name: str, params: dict[str, Any]) -> str | None:
    """The one-line complaint about a dataset's subset params, or None when they are fine."""
    for key in SUBSET_PARAMS:
        if params.get(key, 0) < 0:
            return f"dataset '{kind_name}' param '{key}' must be >= 0 (0 = no limit), got {params[key]}"
    return None


def choose(labels: torch.Tensor, per_class: int = 0, n_test: int = 0) -> torch.Tensor:
    """Sorted long indices into ``labels`` of the fixed subset (every index when nothing needs dropping)."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    n = labels.numel()
    keep = torch.ones(n, dtype=torch.bool)
    if per_class <= 0 and (n_test <= 0 or n <= n_test):
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))
    shuffled = labels[order]
    # rank[i]: how many samples of the same class come before position i in the shuffle
    by_class, where = torch.sort(shuffled, stable=True)
    rank = torch.empty(n, dtype=torch.long)
    rank[where] = torch.arange(n) - torch.searchsorted(by_class, by_class)
    if per_class > 0:
        keep &= rank < per_class
    if 0 < n_test < int(keep.sum()):
        classes, counts = shuffled[keep].unique(return_counts=True)
        share = counts.double() * n_test / counts.sum()
        quota = share.floor().long()
        left = n_test - int(quota.sum())
        by_remainder = sorted(range(len(classes)), key=lambda i: (-(share[i] - quota[i]).item(), i))
        for i in by_remainder[:left]:
            quota[i] += 1
        limit = torch.zeros(int(shuffled.max()) + 1, dtype=torch.long)
        limit[classes] = quota
        keep &= rank < limit[shuffled]
    return order[keep].sort().values


def outside(labels: torch.Tensor, chosen: torch.Tensor, limit: int = HELDOUT_MAX) -> torch.Tensor:
    """Sorted indices of up to ``limit`` samples of ``labels`` not in ``chosen``: held out for fit and calibration.

    A dataset without a training split that decodes only its test subset decodes these too and gives them as
    ``Splits.heldout_x``/``heldout_y``. Stratified and fixed like the subset (``choose`` with ``n_test=limit``
    on the samples left out), so every run holds out the same samples, and none of them is ever classified.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    rest = torch.ones(labels.numel(), dtype=torch.bool)
    rest[torch.as_tensor(chosen, dtype=torch.long)] = False
    left = rest.nonzero().reshape(-1)
    if left.numel() == 0 or limit <= 0:
        return left[:0]
    return left[choose(labels[left], n_test=limit)]


def describe(per_class: int, n_test: int) -> str:
    """The subset rule in words, for the table's ``test_subset`` column."""
    parts = [f"per_class={per_class}"] * (per_class > 0) + [f"n_test={n_test}"] * (n_test > 0)
    return f"{', '.join(parts)} (subset seed {SUBSET_SEED})" if parts else "all"


def digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """A short hash of exactly which test samples (pixels and labels) a cell classified."""
    h = hashlib.sha256()
    h.update(str(list(x.shape)).encode())
    h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(y.detach().to("cpu", torch.long).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def content_order(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Indices that put samples in an order fixed by what they are, not by where a reader listed them.

    Sorted by a hash of each sample as 8-bit pixels (``[-1, 1]`` to 0..255, rounded) with its label, ties
    by a hash of its exact values, then by position. Any reader of the same pictures (arrays in memory,
    PNG files in class folders) thus gives each picture the same position.
    """
    labels, keys = y.detach().to("cpu", torch.long).numpy(), []
    for i, row, picture in _pictures(x):
        seen = hashlib.blake2b(picture.tobytes() + labels[i].tobytes(), digest_size=8).digest()
        keys.append((seen, hashlib.blake2b(row.tobytes(), digest_size=8).digest(), i))
    return torch.tensor([i for *_, i in sorted(keys)], dtype=torch.long)


def _pictures(x: torch.Tensor) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(position, exact float32 values, 8-bit pixels: ``[-1, 1]`` to 0..255, rounded) of each sample of ``x``."""
    for start in range(0, x.shape[0], ORDER_CHUNK):  # a chunk at a time: no copy of a large test set
        exact = x[start : start + ORDER_CHUNK].detach().to("cpu", torch.float32).flatten(1)
        pixels = exact.clamp(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8).numpy()
        yield from zip(range(start, start + len(pixels)), exact.numpy(), pixels, strict=True)


def unseen(x: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Sorted indices of the samples of ``x`` whose 8-bit picture is not among ``seen``'s, whatever the labels.

    What keeps a training (or held-out) split disjoint by content from the test split it sits beside: one
    image reached twice on disk (a copy, a link) is the same picture after decoding, so it is found here
    whichever way it was reached.
    """
    if x.shape[0] == 0 or seen.shape[0] == 0 or x.shape[1:] != seen.shape[1:]:
        return torch.arange(x.shape[0])
    tested = {_picture_key(picture) for _, _, picture in _pictures(seen)}
    return torch.tensor([i for i, _, picture in _pictures(x) if _picture_key(picture) not in tested], dtype=torch.long)


def _picture_key(picture: np.ndarray) -> bytes:
    return hashlib.blake2b(picture.tobytes(), digest_size=16).digest()


def in_content_order(splits: Splits) -> Splits:
    """``splits`` with its test images in ``content_order``; samples that are not images ``[C, H, W]`` stay as they are.

    Estimators draw noise by a sample's position in the batch, so the order decides which noise each
    image gets. Image data reaches diffbench through several readers that list the same pictures in
    different orders (digits' arrays, the same digits as PNG files in class folders), and in content
    order the same images get the same noise and the same predictions. Generated points (the 2-D toys)
    have one reader and keep their order, and their results with it.
    """
    if splits.test_x.dim() != 4:
        return splits
    order = content_order(splits.test_x, splits.test_y)
    return dataclasses.replace(splits, test_x=splits.test_x[order], test_y=splits.test_y[order])


def apply(per_class: int, n_test: int, splits: Splits) -> tuple[Splits, torch.Tensor, torch.Tensor]:
    """``splits`` with its test part cut to the subset, and the labelled test samples left out of it.

    The samples left out are never classified, so a dataset without a training split can lend them
    to ``fit`` and calibration.
    """
    chosen = choose(splits.test_y, per_class, n_test)
    if chosen.numel() == splits.test_y.numel():
        empty = splits.test_x[:0]
        return splits, empty, splits.test_y[:0]
    rest = torch.ones(splits.test_y.numel(), dtype=torch.bool)
    rest[chosen] = False
    cut = dataclasses.replace(splits, test_x=splits.test_x[chosen], test_y=splits.test_y[chosen])
    return cut, splits.test_x[rest], splits.test_y[rest]
