"""The baseline estimators `full-mc`, `shared-noise` and `truncated`: what each draws, and unbiasedness."""

import math

import pytest
import torch

import diffbench
from tests.helpers import ClassConstant, Recorder, estimator, gen, make_model, points

ESTIMATORS = ["full-mc", "shared-noise", "truncated"]


def distinct_inputs(module: Recorder) -> tuple[int, torch.Tensor]:
    """How many distinct (x_t, t) pairs the module saw, and how often each was seen."""
    x, t, _ = module.rows()
    _, counts = torch.unique(torch.cat([x, t[:, None].to(x.dtype)], dim=1), dim=0, return_counts=True)
    return len(counts), counts


def test_shared_noise_scores_one_x_t_against_every_class(recorder_model):
    B, R, K = 6, 4, 3
    estimator("shared-noise").errors(recorder_model, points(B), R, gen())
    n, counts = distinct_inputs(recorder_model.module)
    assert n == B * R
    assert (counts == K).all()
    x, t, c = recorder_model.module.rows()
    for row in range(0, B * R * K, 7):  # every class sees the same (x_t, t) rows
        same = (x == x[row]).all(1) & (t == t[row])
        assert sorted(c[same].tolist()) == list(range(K))


def test_full_mc_draws_fresh_noise_for_every_class(recorder_model):
    B, R, K = 6, 4, 3
    estimator("full-mc").errors(recorder_model, points(B), R, gen())
    n, _ = distinct_inputs(recorder_model.module)
    assert n == B * R * K


def test_truncated_draws_t_only_in_its_range_inclusive(recorder_model):
    estimator("truncated", t_min=100, t_max=103).errors(recorder_model, points(50), 20, gen())
    _, t, _ = recorder_model.module.rows()
    assert set(t.tolist()) == {100, 101, 102, 103}


def test_shared_noise_draws_t_over_the_whole_schedule(recorder_model):
    estimator("shared-noise").errors(recorder_model, points(50), 40, gen())
    _, t, _ = recorder_model.module.rows()
    assert t.min() >= 0 and t.max() <= 999
    assert t.min() < 50 and t.max() > 950


def test_truncated_rejects_bad_ranges(recorder_model):
    with pytest.raises(diffbench.ParamError, match="t_min <= t_max"):
        estimator("truncated", t_min=500, t_max=100)
    with pytest.raises(diffbench.ParamError):
        estimator("truncated", t_min=-1)
    too_far = estimator("truncated", t_max=1000)  # valid until it meets a model with T = 1000
    with pytest.raises(diffbench.ParamError, match="t_max=1000"):
        too_far.errors(recorder_model, points(2), 1, gen())
    assert estimator("truncated", t_max=999).errors(recorder_model, points(2), 1, gen()).shape == (2, 3)


@pytest.mark.parametrize("loss", ["l1", "huber"])
def test_other_losses_are_accepted_and_differ_from_l2(loss, recorder_model):
    x = points(4)
    l2 = estimator("shared-noise").errors(recorder_model, x, 2, gen())
    other = estimator("shared-noise", loss=loss).errors(recorder_model, x, 2, gen())
    assert other.shape == (4, 3) and not torch.allclose(l2, other)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimators_are_unbiased_for_the_l2_error(name):
    """With eps_hat = m_c, E||eps - m_c||^2 / D = 1 + mean(m_c^2) for every t."""
    means = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [1.0, -1.0, 0.5, 2.0]])
    model = make_model(ClassConstant(means), num_classes=3, dim=4)
    B = 4000
    err = estimator(name).errors(model, torch.randn(B, 4, generator=gen(1)), 2, gen(2))
    expected = 1 + means.square().mean(1)
    mean, se = err.mean(0), err.std(0) / math.sqrt(B)
    assert (se < 0.03).all(), "enough samples to tell the classes apart"
    assert ((mean - expected).abs() < 4 * se).all(), f"{mean} vs {expected} (se {se})"
