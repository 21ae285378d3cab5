"""Claims 1-6 read off synthetic results tables: every verdict (holds, does not hold, inconclusive, not measured)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffbench import claims
from diffbench.claims import FAILS, HOLDS, INCONCLUSIVE, MISSING

BIG, SMALL = 5000, 30  # test points: every difference below is detectable at BIG and none at SMALL


def row(estimator, trials, accuracy, n=BIG, dataset="mnist5k", denoiser="unet", label=None, kind=None, **params):
    out = {
        "cell_id": f"{dataset}-{denoiser}-{label or estimator}-{trials}-{sorted(params.items())}",
        "dataset": dataset,
        "dataset_label": dataset,
        "denoiser_label": denoiser,
        "estimator": estimator,
        "estimator_label": label or estimator,
        "trials": trials,
        "accuracy": accuracy,
        "n_test": n,
        "nfe_per_sample": trials * 10.0,
        "num_timesteps": 1000,
        "status": "ok",
        "scenario": "offline",
        "p_estimator_loss": params.pop("loss", "l2"),
        "p_estimator_weighting": params.pop("weighting", "simple"),
        **{f"p_estimator_{k}": v for k, v in params.items()},
    }
    if kind is not None:
        out["kind"] = kind
    return out


def claim(number, rows, predictions=None, timesteps=None):
    (found,) = [c for c in claims.check_claims(pd.DataFrame(rows), predictions, timesteps) if c.number == number]
    return found


def verdicts(number, rows, predictions=None):
    return [f.verdict for f in claim(number, rows, predictions).findings]


@pytest.mark.parametrize(
    ("shared", "n", "expected"),
    [((0.9, 0.95), BIG, HOLDS), ((0.5, 0.6), BIG, FAILS), ((0.71, 0.81), SMALL, INCONCLUSIVE)],
)
def test_claim_1_shared_noise_against_full_mc_at_equal_trials(shared, n, expected):
    rows = [row("full-mc", 1, 0.7, n), row("full-mc", 4, 0.8, n), row("shared-noise", 1, shared[0], n)]
    rows.append(row("shared-noise", 4, shared[1], n))
    found = claim(1, rows)
    assert [f.verdict for f in found.findings] == [expected] and found.verdict == expected
    assert len(found.findings[0].comparisons) == 2


def test_claim_1_says_how_many_fewer_nfe_shared_noise_needs():
    rows = [
        row("full-mc", 4, 0.8),
        row("full-mc", 16, 0.85),
        row("shared-noise", 4, 0.9),
        row("shared-noise", 16, 0.95),
    ]
    why = claim(1, rows).findings[0].why
    assert "reaches full-mc's best accuracy (0.850 at 160 NFE) at 40 NFE, 4x fewer" in why


def test_a_claim_without_its_rows_says_what_it_needs():
    rows = [row("shared-noise", 4, 0.9)]
    for number in range(1, 7):
        found = claim(number, rows)
        assert found.verdict == MISSING
        assert all("needs" in f.why for f in found.findings)
    assert "full-mc" in claim(1, rows).findings[0].why
    assert "kind 'reference'" in claim(6, rows).findings[0].why


def test_claim_2_images_want_the_even_grid_and_toys_a_low_noise_window():
    def model(dataset, grid, window_low, window_high):
        return [
            row("stratified", 8, grid, dataset=dataset, label="stratified[mode=even]", mode="even"),
            row("truncated", 8, window_low, dataset=dataset, label="truncated", t_min=0, t_max=300),
            row(
                "truncated",
                8,
                window_high,
                dataset=dataset,
                label="truncated[t_min=500,t_max=800]",
                t_min=500,
                t_max=800,
            ),
        ]

    rows = model("mnist5k", 0.9, 0.7, 0.8) + model("spirals", 0.8, 0.95, 0.5)
    found = claim(2, rows)
    assert [f.verdict for f in found.findings] == [HOLDS, HOLDS]
    image, toy = (f.comparisons[0] for f in found.findings)
    assert "truncated[500..800]" in image.what and image.diff == pytest.approx(0.1), "the best window"
    assert "truncated[0..300]" in toy.what and toy.diff == pytest.approx(0.15), "a low-noise window"
    rows = model("mnist5k", 0.6, 0.7, 0.8) + model("spirals", 0.99, 0.95, 0.5)
    assert verdicts(2, rows) == [FAILS, FAILS]


def test_claims_3_and_4_pair_rows_that_differ_only_in_loss_or_weighting():
    rows = [
        row("shared-noise", 4, 0.8),
        row("shared-noise", 4, 0.9, label="shared-noise[loss=l1]", loss="l1"),
        row("stratified", 4, 0.7, label="stratified", mode="random"),
        row("stratified", 4, 0.6, label="stratified[weighting=elbo]", mode="random", weighting="elbo"),
        row("stratified", 4, 0.5, label="stratified[mode=even,weighting=elbo]", mode="even", weighting="elbo"),
    ]
    loss, weighting = claim(3, rows), claim(4, rows)
    assert loss.verdict == HOLDS and [c.diff for c in loss.findings[0].comparisons] == [pytest.approx(0.1)]
    assert weighting.verdict == HOLDS
    (only,) = weighting.findings[0].comparisons  # mode=even has no simple-weighted partner
    assert only.diff == pytest.approx(0.1)
    rows[1]["accuracy"] = 0.6
    assert claim(3, rows).verdict == FAILS


@pytest.mark.parametrize(
    ("adaptive_acc", "adaptive_nfe", "n", "expected"),
    [
        (0.9, 20.0, BIG, HOLDS),
        (0.8, 20.0, BIG, FAILS),
        (0.9, 48.0, BIG, FAILS),
        (0.9, 40.0, BIG, INCONCLUSIVE),  # the whole budget spent: nothing eliminated, nothing to say
        (0.88, 20.0, SMALL, INCONCLUSIVE),
    ],
)
def test_claim_5_adaptive_reaches_the_fixed_budget_with_fewer_nfe(adaptive_acc, adaptive_nfe, n, expected):
    fixed = row("stratified", 4, 0.9, n, label="stratified[mode=even]", mode="even")
    adaptive = row("adaptive", 4, adaptive_acc, n, mode="li")
    adaptive["nfe_per_sample"] = adaptive_nfe
    found = claim(5, [fixed, adaptive])
    assert found.verdict == expected
    assert f"({adaptive_nfe / 40:.0%})" in found.findings[0].comparisons[0].what


def test_claim_5_leaves_out_a_budget_too_small_to_eliminate_but_shows_it():
    rows = [row("stratified", t, 0.9, BIG, label="stratified[mode=even]", mode="even") for t in (1, 4)]
    for t, spent in ((1, 10.0), (4, 20.0)):  # at 1 trial adaptive spends the fixed 10 NFE: one round, no elimination
        rows.append(row("adaptive", t, 0.9, BIG, mode="li"))
        rows[-1]["nfe_per_sample"] = spent
    found = claim(5, rows)
    assert found.verdict == HOLDS
    assert len(found.findings[0].comparisons) == 2 and "not counted" in found.findings[0].why


def test_claim_6_reads_reference_rows_and_compares_the_best_estimator():
    rows = [
        row("shared-noise", 16, 0.93, kind="estimator"),
        row("full-mc", 16, 0.80, kind="estimator"),
        row("logistic-regression", 0, 0.88, denoiser="", kind="reference"),
        row("cnn", 0, 0.99, denoiser="", kind="reference"),
    ]
    found = claim(6, rows)
    (finding,) = found.findings
    assert finding.model == "mnist5k" and finding.verdict == FAILS, "worse than the CNN"
    assert [c.what.split(" vs ")[-1] for c in finding.comparisons] == ["logistic-regression", "cnn"]
    assert all("shared-noise at 16 trials" in c.what for c in finding.comparisons), "the best estimator"
    assert verdicts(6, rows[:3]) == [HOLDS]
    assert claim(1, rows).findings[0].comparisons[0].acc_b == 0.93, "references are no estimator rows"


def test_paired_predictions_decide_where_both_cells_stored_the_same_points():
    a, b = row("full-mc", 4, 0.5, n=40), row("shared-noise", 4, 0.55, n=40)
    label = np.zeros(40, int)
    right_a = np.arange(40) < 20
    right_b = right_a.copy()
    right_b[20:30] = True  # B right on 10 more points and wrong on none: McNemar p = 2 / 2**10
    predictions = pd.DataFrame(
        [
            {"cell_id": r["cell_id"], "sample": i, "label": 0, "pred": 0 if ok else 1, "test_digest": "d"}
            for r, right in ((a, right_a), (b, right_b))
            for i, ok in enumerate(right)
        ]
    )
    assert (predictions.groupby("cell_id")["label"].count() == len(label)).all()
    paired = claim(1, [a, b], predictions).findings[0]
    unpaired = claim(1, [a, b]).findings[0]
    assert paired.comparisons[0].test == "paired McNemar" and paired.verdict == HOLDS
    assert paired.comparisons[0].p_value == pytest.approx(2 / 2**10)
    assert unpaired.comparisons[0].test == "unpaired z" and unpaired.verdict == INCONCLUSIVE


def test_models_disagreeing_make_a_mixed_claim_and_claims_md_shows_every_number(tmp_path):
    rows = [row("full-mc", 4, 0.7), row("shared-noise", 4, 0.9)]
    rows += [row("full-mc", 4, 0.9, dataset="digits"), row("shared-noise", 4, 0.7, dataset="digits")]
    rows.append({**row("shared-noise", 4, 0.1), "status": "failed"})  # a failed cell is no evidence
    path, found = claims.write_claims(pd.DataFrame(rows), tmp_path)
    assert found[0].verdict.startswith("mixed")
    text = path.read_text()
    assert path.name == "claims.md" and "## 1. Shared noise beats independent noise at equal NFE: mixed" in text
    assert "**digits x unet**: does not hold" in text and "**mnist5k x unet**: holds" in text
    assert "| shared-noise vs full-mc at 4 trials (40 NFE) | +0.200 (0.900 vs 0.700, n=5000) |" in text
    assert "## 6. " in text and MISSING in text


def timestep_line(dataset, accuracies, n=BIG, denoiser="unet"):
    """One model's single-timestep accuracies on Li et al.'s grid of len(accuracies) timesteps (T = 1000)."""
    ts = np.arange(len(accuracies)) * (1000 // len(accuracies)) + 1000 // len(accuracies) // 2
    return pd.DataFrame(
        {"dataset_label": dataset, "denoiser_label": denoiser, "t": ts, "t_fraction": ts / 1000,
         "accuracy": accuracies, "n_test": n, "num_timesteps": 1000}
    )  # fmt: skip


def test_claim_2b_reads_the_single_timestep_accuracies():
    mid = timestep_line("mnist5k", [0.3, 0.5, 0.8, 0.9, 0.85, 0.6, 0.4, 0.2, 0.1, 0.1])  # best t = 350
    ends = timestep_line("mnist5k", [0.9, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.5, 0.1, 0.1])  # best t = 50
    toy = timestep_line("spirals", [0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5], denoiser="mlp")
    found = claim("2b", [row("shared-noise", 4, 0.9)], timesteps=pd.concat([mid, toy]))
    assert [f.model for f in found.findings] == ["mnist5k x unet", "spirals x mlp"]
    assert [f.verdict for f in found.findings] == [HOLDS, HOLDS]
    image = found.findings[0]
    assert "t=350 (35% of T)" in image.why and image.comparisons[0].diff == pytest.approx(0.9 - 0.5)
    assert "(t=350) vs best elsewhere (t=850)" not in image.comparisons[0].what  # elsewhere's best is t=150
    assert "(t=350) vs best elsewhere (t=150)" in image.comparisons[0].what
    assert claim("2b", [row("shared-noise", 4, 0.9)], timesteps=ends).verdict == FAILS
    assert (
        claim("2b", [row("shared-noise", 4, 0.9)], timesteps=timestep_line("mnist5k", [0.5] * 10, n=SMALL)).verdict
        == INCONCLUSIVE
    )
    assert claim("2b", [row("shared-noise", 4, 0.9)]).verdict == MISSING, "no timesteps.parquet"


def test_claims_md_holds_claim_2b_between_2_and_3(tmp_path):
    timesteps = timestep_line("mnist5k", [0.3, 0.5, 0.8, 0.9, 0.85, 0.6, 0.4, 0.2, 0.1, 0.1])
    text = claims.write_claims(pd.DataFrame([row("shared-noise", 4, 0.9)]), tmp_path, timesteps=timesteps)[0]
    text = text.read_text()
    assert text.index("## 2. ") < text.index("## 2b. ") < text.index("## 3. ")
    assert "## 2b. The single most informative timesteps are mid-range on images (low-noise on 2-D toys): holds" in text
