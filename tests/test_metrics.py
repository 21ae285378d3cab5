"""Calibration and error-gap variance."""

import math

import pandas as pd
import pytest
import torch

from diffbench import metrics
from diffbench.metrics import wilson_interval
from diffbench.results import with_variance_reduction


def overconfident_errors(n=2000, k=4, seed=0):
    """Errors whose softmax(-err) is far too sharp: the true class wins only 70% of the time."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    errors = torch.rand(n, k, generator=g) * 20
    right = torch.rand(n, generator=g) < 0.7
    errors[right, labels[right]] = -1.0
    return errors, labels


def test_fitted_temperature_lowers_nll_on_a_held_out_split():
    fit_err, fit_y = overconfident_errors(seed=0)
    test_err, test_y = overconfident_errors(seed=1)
    temperature = metrics.fit_temperature(fit_err, fit_y)
    assert temperature > 1, "overconfident errors need softening"
    raw = metrics.calibration(test_err, test_y, 1.0)
    tuned = metrics.calibration(test_err, test_y, temperature)
    assert tuned["nll"] < raw["nll"] and tuned["ece"] < raw["ece"]
    assert 0 <= tuned["brier"] <= 2, "Brier of K-class probabilities lies in [0, 2]"


def test_temperature_recovers_a_known_scale():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 3, generator=g) * 2
    labels = torch.distributions.Categorical(logits=logits).sample()
    # errors = -logits * 0.1: the right temperature is 0.1
    assert metrics.fit_temperature(-logits * 0.1, labels) == pytest.approx(0.1, rel=0.1)


def test_calibration_metrics_of_a_perfect_classifier():
    labels = torch.tensor([0, 1, 2, 1])
    errors = torch.full((4, 3), 100.0)
    errors[torch.arange(4), labels] = 0.0
    out = metrics.calibration(errors, labels, 1.0)
    assert out["nll"] < 1e-6 and out["ece"] < 1e-6 and out["brier"] < 1e-6


def test_reliability_bins_count_every_sample():
    errors, labels = overconfident_errors()
    bins = metrics.reliability_bins(errors, labels, 3.0)
    assert sum(b["count"] for b in bins) == len(labels)
    assert all(0 <= b["bin_accuracy"] <= 1 for b in bins)


def test_gap_variance_of_known_noise():
    g = torch.Generator().manual_seed(0)
    repeats, n = 4000, 5
    base = torch.tensor([[0.0, 1.0, 2.0]]).repeat(n, 1)
    noise = torch.randn(repeats, n, 3, generator=g) * torch.tensor([0.5, 0.0, 3.0])
    labels = torch.zeros(n, dtype=torch.long)
    # strongest rival of class 0 is class 1 (mean 1 < 2); gap = noise_0 - noise_1, variance 0.25
    assert metrics.gap_variance(base + noise, labels) == pytest.approx(0.25, rel=0.1)


def test_variance_reduction_is_relative_to_the_baseline_estimator_in_the_same_cell():
    common = {"dataset_label": "d", "denoiser_label": "m", "device": "cpu", "seed": 0, "status": "ok"}
    frame = pd.DataFrame(
        [
            {**common, "estimator": "my-mc", "variance_baseline": True, "trials": 4, "gap_variance": 8.0},
            {**common, "estimator": "shared-noise", "variance_baseline": False, "trials": 4, "gap_variance": 2.0},
            {**common, "estimator": "shared-noise", "variance_baseline": False, "trials": 8, "gap_variance": 2.0},
        ]
    )
    out = with_variance_reduction(frame)
    assert list(out["variance_reduction"][:2]) == [1.0, 4.0]
    assert math.isnan(out["variance_reduction"][2]), "no baseline at 8 trials: not measured"


def test_variance_reduction_needs_the_baseline_column():
    """A table that does not say which estimator is the baseline gets no variance_reduction (no name is assumed)."""
    frame = pd.DataFrame([{"estimator": "full-mc", "trials": 4, "gap_variance": 8.0, "status": "ok"}])
    assert "variance_reduction" not in with_variance_reduction(frame)


@pytest.mark.parametrize(("correct", "n"), [(0, 50), (50, 50), (31, 50), (1, 1)])
def test_wilson_interval_holds_the_estimate_inside_0_1(correct, n):
    low, high = wilson_interval(correct, n)
    assert 0 <= low <= correct / n <= high <= 1
    assert low < high


def test_wilson_interval_matches_a_known_value():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
