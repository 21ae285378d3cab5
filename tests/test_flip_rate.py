"""flip_rate (answers that change between independent repeats) and its comparison with full-mc at equal NFE."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from diffbench import metrics
from diffbench.flip_rate import RATIO, with_flip_rate_ratio


def test_flip_rate_is_the_mean_disagreement_over_pairs_of_repeats():
    same = torch.tensor([[0, 1, 2, 1], [0, 1, 2, 1], [0, 1, 2, 1]])
    assert metrics.flip_rate(same) == 0.0
    two = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    assert metrics.flip_rate(two) == pytest.approx(0.5)
    # three repeats: pairs (0,1) differ on 1 of 4, (0,2) on 2, (1,2) on 1 -> (1 + 2 + 1) / 3 / 4
    three = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    assert metrics.flip_rate(three) == pytest.approx(4 / 12)
    assert math.isnan(metrics.flip_rate(torch.zeros(1, 5, dtype=torch.long)))


def cells(rows):
    base = {"dataset_label": "d", "denoiser_label": "m", "device": "cpu", "seed": 0, "scenario": "offline",
            "dtype": "float32", "compile": False, "status": "ok"}  # fmt: skip
    return pd.DataFrame(
        [
            {**base, "estimator": e, "variance_baseline": e == "full-mc", "nfe_per_sample": n, "flip_rate": f}
            for e, n, f in rows
        ]
    )


def test_the_ratio_compares_with_full_mc_at_the_same_nfe_interpolated_in_log_nfe():
    frame = cells([("full-mc", 2, 0.4), ("full-mc", 8, 0.1), ("shared-noise", 4, 0.05), ("shared-noise", 8, 0.05),
                   ("adaptive", 1, 0.3), ("adaptive", 16, 0.01)])  # fmt: skip
    ratio = with_flip_rate_ratio(frame)[RATIO].tolist()
    assert ratio[:2] == [1.0, 1.0]
    assert ratio[2] == pytest.approx(0.05 / 0.25)  # full-mc at 4 NFE: halfway in log2 between 0.4 and 0.1
    assert ratio[3] == pytest.approx(0.5)
    assert np.isnan(ratio[4]) and np.isnan(ratio[5])  # outside full-mc's measured NFE range


def test_no_ratio_without_a_baseline_in_the_same_group_or_when_the_baseline_never_flips():
    frame = cells([("full-mc", 2, 0.0), ("shared-noise", 2, 0.1)])
    assert with_flip_rate_ratio(frame)[RATIO].isna().all()
    other = cells([("full-mc", 2, 0.2), ("shared-noise", 2, 0.1)]).assign(device=["cpu", "cuda"])
    assert with_flip_rate_ratio(other)[RATIO].tolist()[0] == 1.0
    assert np.isnan(with_flip_rate_ratio(other)[RATIO].tolist()[1])


@pytest.mark.parametrize(
    ("column", "other"),
    [("dataset_label", "e"), ("denoiser_label", "n"), ("device", "cuda"), ("seed", 1), ("scenario", "single"),
     ("dtype", "float16"), ("compile", True)],
)  # fmt: skip
def test_a_cell_meets_only_the_baseline_of_its_own_setting(column, other):
    frame = cells([("full-mc", 2, 0.2), ("shared-noise", 2, 0.1)])
    frame[column] = [frame[column].iloc[0], other]
    assert np.isnan(with_flip_rate_ratio(frame)[RATIO].iloc[1]), f"a baseline of another {column} is not its own"


def test_the_baseline_at_another_number_of_trials_is_the_same_setting():
    """The same compute is what counts: full-mc at 1 trial (2 NFE) is the baseline of an estimator at 2 trials."""
    frame = cells([("full-mc", 2, 0.2), ("shared-noise", 2, 0.1)]).assign(trials=[1, 2])
    assert with_flip_rate_ratio(frame)[RATIO].tolist() == [1.0, 0.5]
