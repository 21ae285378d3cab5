"""The summary (best estimator per NFE budget against the runner-up) and the ranking across problems."""

import numpy as np
import pandas as pd
import pytest

from diffbench import paired, standings


def cell(estimator, trials, nfe, accuracy, dataset="spirals", cell_id=None):
    return {
        "cell_id": cell_id or f"{dataset}-{estimator}-{trials}", "dataset_label": dataset, "denoiser_label": "mlp",
        "device": "cpu", "estimator_label": estimator, "trials": trials, "nfe_per_sample": nfe, "accuracy": accuracy,
        "accuracy_ci_low": accuracy - 0.02, "accuracy_ci_high": accuracy + 0.02, "n_test": 1000,
    }  # fmt: skip


def predictions(cell_id: str, correct: np.ndarray) -> pd.DataFrame:
    labels = np.zeros(correct.size, int)
    pred = np.where(correct, 0, 1)
    return pd.DataFrame({"cell_id": cell_id, "sample": np.arange(correct.size), "label": labels, "pred": pred,
                         "test_digest": "same"})  # fmt: skip


def test_at_each_budget_the_best_cell_within_it_is_compared_with_the_runner_up_by_the_paired_test():
    frame = pd.DataFrame(
        [
            cell("full-mc", 1, 2, 0.60),
            cell("shared-noise", 1, 2, 0.80),
            cell("full-mc", 4, 8, 0.83),
            cell("adaptive", 3, 5, 0.70),
        ]  # fmt: skip
    )
    best, runner = np.zeros(1000, bool), np.zeros(1000, bool)
    runner[:800] = True
    best[:800] = True
    best[800:830] = True  # full-mc 4 trials: 0.83, right wherever shared-noise is, and on 30 more
    preds = pd.concat([predictions("spirals-full-mc-4", best), predictions("spirals-shared-noise-1", runner)])
    table = standings.summary_table(frame, preds)
    assert table["budget_nfe"].tolist() == [2, 5, 8]
    assert table["best"].tolist() == ["shared-noise", "shared-noise", "full-mc"]
    assert table["runner_up"].tolist() == ["full-mc", "adaptive", "shared-noise"]
    top = table.iloc[-1]
    assert top["test"] == paired.PAIRED_TEST and top["beyond_noise"] and top["p_value"] < 1e-8
    assert table.iloc[0]["test"] == paired.UNPAIRED_TEST  # no predictions for those cells
    assert table.iloc[0]["beyond_noise"]  # 0.80 against 0.60 on 1000 points


def test_the_unpaired_fallback_does_not_call_a_small_gap_beyond_noise():
    frame = pd.DataFrame([cell("full-mc", 4, 8, 0.80), cell("shared-noise", 4, 8, 0.83)])
    top = standings.summary_table(frame, pd.DataFrame()).iloc[0]
    assert top["test"] == paired.UNPAIRED_TEST and not top["beyond_noise"]
    assert top["p_value"] == pytest.approx(0.0836, abs=2e-3)


def test_ranking_counts_mean_rank_and_wins_over_problems_and_budgets():
    frame = pd.DataFrame(
        [
            cell("a", 1, 2, 0.9, "d1"),
            cell("b", 1, 2, 0.8, "d1"),
            cell("a", 2, 4, 0.95, "d1"),
            cell("b", 2, 4, 0.97, "d1"),
            cell("a", 1, 2, 0.5, "d2"),
            cell("b", 1, 2, 0.5, "d2"),
        ]  # fmt: skip
    )
    table, problems = standings.ranking(frame)
    assert problems == 2
    by = table.set_index("estimator")
    # d1 at 2 NFE: a wins; d1 at 4 NFE: b wins; d2 at 2 NFE: a tie (1.5 each, no win)
    assert by.loc["a", "mean_rank"] == pytest.approx((1 + 2 + 1.5) / 3)
    assert by.loc["b", "mean_rank"] == pytest.approx((2 + 1 + 1.5) / 3)
    assert by.loc["a", "wins"] == 1 and by.loc["b", "wins"] == 1 and by.loc["a", "budgets"] == 3
