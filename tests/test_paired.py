"""Paired statistics: McNemar's exact test, the paired bootstrap, and `diffbench compare` using them."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from diffbench import paired
from diffbench.compare import accuracy_verdict, accuracy_z


def outcomes(n: int, both: int, only_a: int, only_b: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 correctness of A and B over n points: both right on `both`, one right on the discordant ones."""
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:both] = b[:both] = True
    a[both : both + only_a] = True
    b[both + only_a : both + only_a + only_b] = True
    return a, b


def unpaired_verdict(a: np.ndarray, b: np.ndarray) -> str:
    n = pd.Series([float(a.size)])
    z = accuracy_z(pd.Series([a.mean()]), n, pd.Series([b.mean()]), n)
    return accuracy_verdict(z).iloc[0]


@pytest.mark.parametrize("only_a,only_b", [(0, 30), (3, 12), (40, 60), (7, 7), (0, 0), (25, 5)])
def test_mcnemar_exact_is_the_two_sided_binomial_test_on_discordant_points(only_a, only_b):
    expected = 1.0 if only_a + only_b == 0 else binomtest(only_b, only_a + only_b, 0.5).pvalue
    assert paired.mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-9)


def test_the_paired_bootstrap_ci_brackets_the_difference_and_is_repeatable():
    low, high = paired.bootstrap_difference_ci(20, 50, 1000)
    assert low < 0.03 < high and high - low < 0.04
    assert (low, high) == paired.bootstrap_difference_ci(20, 50, 1000)
    assert paired.bootstrap_difference_ci(0, 0, 1000) == (0.0, 0.0)  # the same answers every time: no spread


def test_paired_detects_what_the_unpaired_test_cannot():
    # B gets right every point A gets right, and 30 more: 0.800 -> 0.830 on 1000 points.
    a, b = outcomes(1000, both=800, only_a=0, only_b=30)
    assert unpaired_verdict(a, b) == "same", "two independent-looking proportions 0.80, 0.83 are within noise"
    result = paired.paired_test(a, b)
    assert result.verdict == "better" and result.p_value < 1e-8
    assert result.diff == pytest.approx(0.03) and 0 < result.ci_low <= 0.03 <= result.ci_high


def test_paired_and_unpaired_agree_on_a_large_change_and_on_no_change():
    a, b = outcomes(1000, both=700, only_a=0, only_b=150)  # 0.70 -> 0.85
    assert unpaired_verdict(a, b) == "better" and paired.paired_test(a, b).verdict == "better"
    a, b = outcomes(1000, both=600, only_a=100, only_b=104)  # 0.700 -> 0.704, many points trade places
    assert unpaired_verdict(a, b) == "same" and paired.paired_test(a, b).verdict == "same"
    assert paired.paired_test(b, a).verdict == "same"


def test_outcomes_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="same points"):
        paired.paired_test(np.ones(3, bool), np.ones(4, bool))


def fake_run(folder, correct: np.ndarray | None, digest: str = "d1"):
    """A run folder with one offline cell and, optionally, its per-sample predictions."""
    folder.mkdir()
    n = 1000
    row = {
        "cell_id": "c", "dataset_label": "spirals", "denoiser_label": "mlp", "estimator_label": "shared-noise",
        "trials": 4, "device": "cpu", "seed": 0, "scenario": "offline", "status": "ok", "n_test": n,
        "accuracy": float(correct.mean()) if correct is not None else 0.8, "samples_per_s": 100.0,
        "samples_per_s_iqr": 1.0,
    }  # fmt: skip
    pd.DataFrame([row]).to_parquet(folder / "results.parquet")
    if correct is not None:
        labels = np.arange(n) % 2
        pred = np.where(correct, labels, 1 - labels)
        frame = pd.DataFrame({"cell_id": "c", "sample": np.arange(n), "label": labels, "pred": pred})
        frame.assign(test_digest=digest).to_parquet(folder / "predictions.parquet")
    return folder


def test_compare_uses_the_paired_test_when_both_runs_classified_the_same_points(cli, tmp_path):
    a, b = outcomes(1000, both=800, only_a=0, only_b=30)
    result = cli("compare", fake_run(tmp_path / "a", a), fake_run(tmp_path / "b", b), "--out", tmp_path / "c.csv")
    assert result.exit_code == 0, result.output
    assert "better" in result.stdout
    assert "accuracy verdicts: paired (McNemar exact) test on the same test points for 1 cell(s)" in result.stdout
    table = pd.read_csv(tmp_path / "c.csv")
    assert table["accuracy_test"].tolist() == [paired.PAIRED_TEST] and table["accuracy_p"].iloc[0] < 1e-8
    assert table["accuracy_diff_ci_low"].iloc[0] > 0


def test_compare_falls_back_to_the_unpaired_test_and_says_why(cli, tmp_path):
    a, b = outcomes(1000, both=800, only_a=0, only_b=30)
    result = cli("compare", fake_run(tmp_path / "a", None), fake_run(tmp_path / "b", b))
    assert result.exit_code == 0, result.output
    assert "unpaired (two-proportion z) test for 1 cell(s) (run A stored no per-sample predictions)" in result.stdout
    assert "better" not in result.stdout  # 0.80 -> 0.83 is within the unpaired test's noise
    other = cli("compare", fake_run(tmp_path / "c", a), fake_run(tmp_path / "d", b, digest="d2"))
    assert "(the runs did not classify the same test points)" in other.stdout
