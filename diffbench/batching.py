"""Classification passes in batches of samples, so that one estimator call's working set stays bounded.

An estimator vectorises over samples x trials x classes, so one ``errors`` call on the whole test set
builds tensors of ``samples * trials * classes * prod(data_shape)`` elements (a shared-noise estimator
gathers every x_t once per class). On ImageNet-sized subsets (thousands of images, 1,000 classes,
3x256x256 pixels) that cannot fit anywhere. The quality passes therefore hand the estimator at most
``samples_per_call`` samples at a time and concatenate the errors.

The count depends only on the pass's shape (trials, classes, sample shape), never on the device, its
memory or ``--batch-size``, so a cell is split into the same batches on every machine and every run.
Below the bound a pass is one call, exactly as before: the generator is drawn from in the same order and
results are bit-identical. Above it, each batch continues the same generator, in sample order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

#: Most elements (samples x trials x classes x sample size) one estimator call may span: 2^28 (1 GiB of float32).
MAX_CALL_ELEMENTS = 2**28


def samples_per_call(trials: int, classes: int, data_shape: Sequence[int]) -> int:
    """Most samples one estimator call gets: as many as keep it within ``MAX_CALL_ELEMENTS``, at least one."""
    per_sample = max(1, trials) * max(1, classes) * math.prod(data_shape)
    return max(1, MAX_CALL_ELEMENTS // per_sample)


def in_batches(classify: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, per_call: int) -> torch.Tensor:
    """``classify(x)``, called on consecutive slices of ``per_call`` samples and concatenated (once when it fits)."""
    n = x.shape[0]
    if per_call >= n:
        return classify(x)
    return torch.cat([classify(x[start : start + per_call]) for start in range(0, n, per_call)])
