"""Timing against the bare forward, and the accuracy interval."""

import time

import pytest
import torch
from conftest import ClassConstant, make_model

from diffbench.results import wilson_interval
from diffbench.timing import MIN_REGION_S, measure, median_iqr


def sleepy_pass(model, rows: int, seconds: float):
    x, t, c = torch.zeros(rows, 2), torch.zeros(rows, dtype=torch.long), torch.zeros(rows, dtype=torch.long)

    def run_pass():
        time.sleep(seconds)
        model.eps(x, t, c)

    return run_pass


def test_measure_counts_evaluations_through_the_model():
    model = make_model(ClassConstant(torch.zeros(3, 2)))
    speed = measure(sleepy_pass(model, 12, 0.01), model, 4, 0.01, 2, torch.Generator().manual_seed(0))
    assert speed.repeats == 2 and speed.inner_passes >= 10
    assert speed.evals_per_s == pytest.approx(3 * speed.samples_per_s), "12 rows for 4 samples"
    assert speed.samples_per_s < 4 / 0.01, "a pass takes at least its sleep"
    assert 0 < speed.efficiency < 1, "sleeping passes are slower than the bare forward"


def test_each_timed_region_lasts_at_least_min_region_s():
    model = make_model(ClassConstant(torch.zeros(3, 2)))
    warm_s, cold_s = 0.002, 0.05
    speed = measure(sleepy_pass(model, 6, warm_s), model, 2, cold_s, 1, torch.Generator().manual_seed(0))
    region_s = speed.inner_passes * 2 / speed.samples_per_s
    assert region_s >= 0.9 * MIN_REGION_S


def test_median_iqr():
    assert median_iqr([3.0]) == (3.0, 0.0)
    assert median_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0)


@pytest.mark.parametrize(("correct", "n"), [(0, 50), (50, 50), (31, 50), (1, 1)])
def test_wilson_interval_holds_the_estimate_inside_0_1(correct, n):
    low, high = wilson_interval(correct, n)
    assert 0 <= low <= correct / n <= high <= 1
    assert low < high


def test_wilson_interval_matches_a_known_value():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
