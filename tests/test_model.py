"""ConditionalModel: chunking and NFE counting of eps and eps_error, and q_sample on its schedule."""

import math

import pytest
import torch

import diffbench.model as model_module
from diffbench.model import sample
from diffbench.montecarlo import pointwise_loss
from diffbench.schedule import NoiseSchedule, q_sample
from tests.helpers import Recorder, gen, make_model


def rows(n: int, dim: int = 2, num_classes: int = 3):
    return (
        torch.randn(n, dim, generator=gen()),
        torch.randint(0, 1000, (n,), generator=gen(1)),
        torch.randint(0, num_classes, (n,), generator=gen(2)),
    )


def test_eps_chunks_to_max_batch_without_changing_the_output():
    module = Recorder(dim=2, num_classes=3)
    whole = make_model(module, max_batch=100)
    chunked = make_model(module, max_batch=4)
    n = 10
    x, t, c = rows(n)
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


@pytest.mark.parametrize("loss", ["l2", "l1", "huber"])
@pytest.mark.parametrize("max_batch", [100, 3])
@pytest.mark.parametrize("gathered", [True, False], ids=["one-loss", "loss-per-chunk"])
def test_eps_error_is_the_row_mean_of_the_loss_of_eps(loss, max_batch, gathered, monkeypatch):
    if not gathered:  # rows too many to keep the predictions: each chunk is reduced as it comes
        monkeypatch.setattr(model_module, "GATHERED_PREDICTIONS", 0)
    module = Recorder(dim=2, num_classes=3)
    model = make_model(module, max_batch=max_batch)
    x, t, c = rows(10)
    target = torch.randn(10, 2, generator=gen(4))
    expected = pointwise_loss(loss)(model.eps(x, t, c), target).mean(1)
    model.reset_nfe()
    module.calls.clear()
    err = model.eps_error(x, t, c, target, pointwise_loss(loss))
    assert err.shape == (10,) and torch.allclose(err, expected, rtol=1e-6, atol=0)
    assert model.nfe == 10, "each row is one NFE, as through eps"
    assert [len(call[0]) for call in module.calls] == [min(max_batch, 10 - i) for i in range(0, 10, max_batch)]


@pytest.mark.parametrize("size", [(2,), (3, 5, 4)])
def test_eps_error_gives_the_same_bits_whether_chunks_are_reduced_at_once_or_one_by_one(size, monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Linear(math.prod(size), math.prod(size))

    class Flat(torch.nn.Module):
        def forward(self, x_t, t, c):
            return net(x_t.flatten(1)).view_as(x_t)

    model = model_module.ConditionalModel(Flat(), NoiseSchedule("linear", 1000), 3, size, max_batch=7)
    n = 40
    x, target = torch.randn(n, *size, generator=gen()), torch.randn(n, *size, generator=gen(4))
    t, c = torch.randint(0, 1000, (n,), generator=gen(1)), torch.randint(0, 3, (n,), generator=gen(2))
    at_once = model.eps_error(x, t, c, target)
    monkeypatch.setattr(model_module, "GATHERED_PREDICTIONS", 0)
    assert torch.equal(model.eps_error(x, t, c, target), at_once)
    assert model.nfe == 2 * n


def test_eps_error_defaults_to_squared_error_and_checks_the_target(recorder_model):
    x, t, c = rows(6)
    target = torch.randn(6, 2, generator=gen(4))
    expected = (recorder_model.eps(x, t, c) - target).square().mean(1)
    assert torch.allclose(recorder_model.eps_error(x, t, c, target), expected)
    with pytest.raises(ValueError, match="target shaped like x_t"):
        recorder_model.eps_error(x, t, c, target[:, :1])


def test_q_sample_is_schedule_q_sample_bit_for_bit_and_costs_no_nfe():
    model = make_model(Recorder(dim=2, num_classes=3))
    g = gen(0)
    x0, t = torch.randn(4, 1, 2, generator=g), torch.randint(0, 1000, (4, 6), generator=g)
    eps = torch.randn(4, 6, 2, generator=g)
    x_t = model.q_sample(x0, t, eps)
    assert x_t.shape == (4, 6, 2) and torch.equal(x_t, q_sample(model.alphas_cumprod, x0, t, eps))
    abar = model.alphas_cumprod[t].double().unsqueeze(-1)
    assert torch.allclose(x_t.double(), abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps.double(), atol=1e-6)
    half = eps.half()
    assert torch.equal(model.q_sample(x0.half(), t, half), q_sample(model.alphas_cumprod, x0.half(), t, half))
    assert model.nfe == 0


def test_q_sample_tables_are_kept_and_follow_a_replaced_schedule():
    model = make_model(Recorder(dim=2, num_classes=3))
    signal, noise = model.sqrt_tables()
    assert signal.shape == noise.shape == (1000,) and signal.dtype == model.dtype
    assert model.sqrt_tables()[0] is signal, "made once per dtype"
    assert torch.allclose(signal.square() + noise.square(), torch.ones(1000))
    model.alphas_cumprod = NoiseSchedule("cosine", 1000).alphas_cumprod
    assert not torch.equal(model.sqrt_tables()[0], signal), "remade for the new schedule"
    x0, t, eps = torch.randn(5, 2, generator=gen()), torch.arange(0, 1000, 200), torch.randn(5, 2, generator=gen(1))
    assert torch.equal(model.q_sample(x0, t, eps), q_sample(model.alphas_cumprod, x0, t, eps))


class GaussianScore(torch.nn.Module):
    """The exact epsilon of data N(mu_c, sigma^2 I) per class c on a schedule's abar."""

    def __init__(self, abar: torch.Tensor, mu: torch.Tensor, sigma: float) -> None:
        super().__init__()
        self.abar, self.mu, self.sigma = abar, mu, sigma

    def forward(self, x_t, t, c):
        a = self.abar[t].unsqueeze(1)
        return (1 - a).sqrt() * (x_t - a.sqrt() * self.mu[c]) / (a * self.sigma**2 + 1 - a)


@pytest.mark.parametrize("steps", [None, 100])
def test_sample_draws_the_data_distribution_on_all_or_respaced_steps(steps):
    mu, sigma = torch.tensor([[2.0, -1.0], [-3.0, 0.5]]), 0.5
    abar = NoiseSchedule("linear", 1000).alphas_cumprod.float()
    model = make_model(GaussianScore(abar, mu, sigma), num_classes=2)
    labels = torch.arange(2).repeat_interleave(2000)
    x = sample(model, labels, gen(), steps=steps)
    assert model.reset_nfe() == 4000 * (steps or 1000), "one call per sample per step"
    for c in range(2):
        drawn = x[labels == c]
        assert torch.allclose(drawn.mean(0), mu[c], atol=0.05)
        assert torch.allclose(drawn.std(0), torch.full((2,), sigma), atol=0.05), "respacing keeps the variance"
