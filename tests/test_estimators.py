"""The built-in Monte Carlo estimators and ConditionalModel's chunking and NFE counting."""

import math

import pytest
import torch
from conftest import ClassConstant, Recorder, estimator, gen, make_model, points

import diffbench

ESTIMATORS = ["full-mc", "shared-noise", "truncated"]


@pytest.mark.parametrize("name", ESTIMATORS)
def test_shape_nfe_and_determinism(name, recorder_model):
    est, x = estimator(name), points(5)
    err = est.errors(recorder_model, x, 4, gen(7))
    assert err.shape == (5, 3) and err.is_floating_point() and torch.isfinite(err).all()
    assert recorder_model.nfe == 5 * 4 * 3
    again = est.errors(recorder_model, x, 4, gen(7))
    other = est.errors(recorder_model, x, 4, gen(8))
    assert torch.equal(err, again)
    assert not torch.equal(err, other)
    assert recorder_model.nfe == 3 * 5 * 4 * 3


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


@pytest.mark.parametrize("loss", ["l1", "huber"])
def test_other_losses_are_accepted_and_differ_from_l2(loss, recorder_model):
    x = points(4)
    l2 = estimator("shared-noise").errors(recorder_model, x, 2, gen())
    other = estimator("shared-noise", loss=loss).errors(recorder_model, x, 2, gen())
    assert other.shape == (4, 3) and not torch.allclose(l2, other)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_unknown_loss_is_rejected(name):
    with pytest.raises(diffbench.ParamError, match="loss"):
        estimator(name, loss="l3")


def test_eps_chunks_to_max_batch_without_changing_the_output():
    module = Recorder(dim=2, num_classes=3)
    whole = make_model(module, max_batch=100)
    chunked = make_model(module, max_batch=4)
    n = 10
    x = torch.randn(n, 2, generator=gen())
    t = torch.randint(0, 1000, (n,), generator=gen(1))
    c = torch.randint(0, 3, (n,), generator=gen(2))
    expected = whole.eps(x, t, c)
    module.calls.clear()
    out = chunked.eps(x, t, c)
    assert torch.allclose(out, expected)
    assert len(module.calls) == math.ceil(n / 4)
    assert max(len(call[0]) for call in module.calls) == 4
    assert chunked.nfe == n
    assert chunked.reset_nfe() == n and chunked.nfe == 0


def test_eps_rejects_mismatched_shapes(recorder_model):
    x, t, c = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="t and c of shape"):
        recorder_model.eps(x, t[:3], c)
    with pytest.raises(ValueError, match="t and c of shape"):
        recorder_model.eps(x, t, c[:, None])
    with pytest.raises(ValueError, match="x_t of shape"):
        recorder_model.eps(torch.zeros(4, 3), t, c)
    assert recorder_model.nfe == 0, "rejected calls cost nothing"


def test_model_rejects_a_non_positive_max_batch():
    with pytest.raises(ValueError, match="max_batch"):
        make_model(Recorder(), max_batch=0)


def test_diffuse_is_q_sample_bit_for_bit_and_follows_a_replaced_schedule():
    from diffbench_plugins.monte_carlo import diffuse

    from diffbench.schedule import NoiseSchedule, q_sample

    model = make_model(Recorder(dim=2, num_classes=3))
    g = gen(0)
    x0, t = torch.randn(4, 1, 2, generator=g), torch.randint(0, 1000, (4, 6), generator=g)
    eps = torch.randn(4, 6, 2, generator=g)
    assert torch.equal(diffuse(model, x0, t, eps), q_sample(model.alphas_cumprod, x0, t, eps))
    model.alphas_cumprod = NoiseSchedule("cosine", 1000).alphas_cumprod  # its square-root tables are remade
    assert torch.equal(diffuse(model, x0, t, eps), q_sample(model.alphas_cumprod, x0, t, eps))
    half = eps.half()
    assert torch.equal(diffuse(model, x0.half(), t, half), q_sample(model.alphas_cumprod, x0.half(), t, half))
