"""Repeated measurements summarised (``diffbench.summary``): median, IQR, the interval of the median, settled or not."""

import math

import pandas as pd
import pytest

from diffbench.summary import (
    EFFICIENCY_CEILING,
    Summary,
    _median_ranks,
    median_ci,
    median_iqr,
    ninetieth_percentile,
    noise_band,
    settle,
    within_noise,
)


def test_summary_of_an_odd_count():
    summary = Summary.of([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (summary.count, summary.median, summary.q25, summary.q75, summary.iqr) == (5, 3.0, 2.0, 4.0, 2.0)
    assert (summary.ci_low, summary.ci_high) == (1.0, 5.0), "5 values: the 93.75% interval is the range"
    assert summary.rel_iqr == pytest.approx(2 / 3)
    assert summary.settled and summary.unsettled == "", "no rule asked: nothing says it has not settled"


def test_summary_of_an_even_count_interpolates_the_median_and_quartiles():
    summary = Summary.of([float(v) for v in range(10, 0, -1)])
    assert (summary.median, summary.q25, summary.q75) == (5.5, 3.25, 7.75), "inclusive quartiles of 1..10"
    assert (summary.ci_low, summary.ci_high) == (2.0, 9.0), "10 values: ranks 2 and 9 (97.9%)"
    assert summary.half_width() == pytest.approx(3.5 / 5.5), "relative to the median"
    assert summary.half_width(scale=1.0) == 3.5


def test_one_value_is_its_own_median_quartiles_and_interval():
    summary = Summary.of([7.0])
    assert (summary.median, summary.q25, summary.q75, summary.ci_low, summary.ci_high) == (7.0,) * 5
    assert summary.iqr == 0.0 and summary.half_width() == 0.0


def test_a_summary_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one value"):
        Summary.of([])


def test_spreads_relative_to_a_median_of_zero_are_infinite():
    summary = Summary.of([0.0, 0.0, 1.0])
    assert math.isinf(summary.rel_iqr) and math.isinf(summary.half_width())


def test_the_interval_narrows_with_the_confidence():
    values = [float(v) for v in range(1, 21)]
    assert median_ci(values, 0.9) == (6.0, 15.0), "95.9% for ranks 6 and 15; 88.5% for 7 and 14"
    assert median_ci(values, 0.5) == (8.0, 13.0), "73.7% for ranks 8 and 13; 49.7% for 9 and 12"
    assert Summary.of(values, 0.5).ci_low == 8.0


@pytest.mark.parametrize("n", range(1, 80))
def test_median_interval_covers_with_the_confidence_and_is_the_narrowest_that_does(n):
    def coverage(k):  # P(x_(k) <= median <= x_(n+1-k)) = 1 - 2 P(Binomial(n, 1/2) <= k - 1)
        return 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n

    k = _median_ranks(n, 0.9)
    assert k == 1 or coverage(k) >= 0.9
    assert k + 1 > (n + 1) // 2 or coverage(k + 1) < 0.9


def test_median_iqr():
    assert median_iqr([3.0]) == (3.0, 0.0)
    assert median_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0)
    assert median_iqr([4.0, 4.0, 6.0, 6.0]) == (5.0, 2.0)


def test_ninetieth_percentile():
    assert ninetieth_percentile([float(v) for v in range(1, 11)]) == pytest.approx(9.1)
    assert ninetieth_percentile([3.0]) == 3.0


def settle_repeats(values, efficiencies, minimum=10, ceiling=None):
    return settle(values, efficiencies, minimum=minimum, unit="repeat", metric="samples/s", ceiling=ceiling)


def test_agreeing_repeats_settle():
    rates, efficiency = settle_repeats([100.0] * 10, [0.9] * 10)
    assert rates.settled and efficiency.settled and rates.unsettled == ""
    assert (rates.median, efficiency.median, rates.count) == (100.0, 0.9, 10)


def test_too_few_repeats_have_not_settled_however_well_they_agree():
    rates, efficiency = settle_repeats([100.0] * 9, [0.9] * 9)
    assert not rates.settled and rates.unsettled == "only 9 repeat(s)"
    assert efficiency.unsettled == rates.unsettled, "the two settle together"


def test_a_wide_interval_of_the_median_has_not_settled():
    rates, _ = settle_repeats([1.0] * 5 + [2.0] * 5, [0.9] * 10)
    assert rates.unsettled == "samples/s median known to +-33% (90% interval)", "(2 - 1) / 2 / 1.5"
    rates, _ = settle_repeats([1.0] * 5 + [1.1] * 5, [0.9] * 10)
    assert rates.settled, "+-5% is within SETTLED_RATE"


def test_a_wide_interval_of_the_median_efficiency_has_not_settled():
    rates, efficiency = settle_repeats([100.0] * 10, [0.9] * 5 + [1.0] * 5)
    assert efficiency.unsettled == "efficiency median known to +-0.050 (90% interval)", "absolute, not relative"
    assert settle_repeats([100.0] * 10, [0.9] * 5 + [0.94] * 5)[0].settled, "+-0.02 is within SETTLED_EFFICIENCY"


def test_efficiency_above_the_ceiling_has_not_settled_once_all_else_has():
    rates, _ = settle_repeats([100.0] * 10, [1.05] * 10, ceiling=EFFICIENCY_CEILING)
    assert rates.unsettled.startswith("efficiency 1.050 above 1.02: the bare network ran slower")
    assert settle_repeats([100.0] * 10, [1.05] * 10)[0].settled, "no ceiling, no such rule (single-sample calls)"
    few, _ = settle_repeats([100.0] * 3, [1.05] * 3, ceiling=EFFICIENCY_CEILING)
    assert few.unsettled == "only 3 repeat(s)", "the first reason is given"


def test_latency_reasons_name_calls_and_latency():
    calls, _ = settle([1.0, 3.0] * 10, [0.5] * 20, minimum=20, unit="call", metric="latency")
    assert calls.unsettled == "latency median known to +-50% (90% interval)"
    assert settle([1.0] * 4, [0.5] * 4, minimum=20, unit="call", metric="latency")[0].unsettled == "only 4 call(s)"


def test_the_noise_band_adds_both_iqrs_with_b_at_a_scale():
    assert noise_band(2.0, 3.0) == 5.0
    assert noise_band(2.0, 3.0, 0.5) == 3.5
    band = noise_band(pd.Series([1.0, 0.0]), pd.Series([1.0, 0.0]), pd.Series([2.0, 1.0]))
    assert band.tolist() == [3.0, 0.0]


def test_within_noise_is_a_difference_no_wider_than_the_band():
    assert within_noise(10.0, 13.0, 3.0) and within_noise(10.0, 7.0, 3.0)
    assert not within_noise(10.0, 13.5, 3.0)
    assert not within_noise(10.0, 10.5, 0.0), "one repeat a side: every difference is beyond noise"
    inside = within_noise(pd.Series([1.0, 1.0]), pd.Series([1.5, 3.0]), pd.Series([1.0, 1.0]))
    assert inside.tolist() == [True, False]
