"""The single-sample call in a CUDA graph: the fallbacks on CPU, the graphed call on CUDA (skipped without one)."""

import pytest
import torch

from diffbench import cuda_graphs
from diffbench.cuda_graphs import DISABLE_ENV, GRAPHED, single_sample_runner
from diffbench.montecarlo import class_errors, li_timesteps
from tests.helpers import estimator, make_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available())")
TRIALS, CLASSES = 4, 3


class Affine(torch.nn.Module):
    """A small deterministic denoiser whose output depends on x_t, t and c."""

    def __init__(self, dim: int = 2, num_classes: int = CLASSES) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(dim, dim, generator=gen))
        self.register_buffer("label", torch.randn(num_classes, dim, generator=gen))

    def forward(self, x_t, t, c):
        return x_t @ self.weight + self.label[c] + t[:, None].to(x_t.dtype) / 1000


def setup(device: str = "cpu", name: str = "shared-noise"):
    model = make_model(Affine(), device=device)
    model.check_values = False  # as in the timed scenarios
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3)).to(device)
    est = estimator(name)

    def call_with(generator):
        return lambda one: est.errors(model, one, TRIALS, generator)

    return model, x, call_with


def generator(device: str, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# -- on any machine: the fallback ------------------------------------------------------------------------------


def test_on_cpu_the_eager_call_runs_with_its_reason_and_its_results(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    model, x, call_with = setup()
    run_one, mode = single_sample_runner(call_with(generator("cpu")), x, model, generator("cpu"))
    assert mode == "eager: CUDA graphs need a CUDA device, not cpu"
    reference = call_with(generator("cpu"))
    for i in range(7):  # past the end of the test set: i wraps around
        model.reset_nfe()
        got = run_one(i)
        assert model.reset_nfe() == TRIALS * CLASSES
        assert torch.equal(got, reference(x[i % 5 : i % 5 + 1]))


def test_the_environment_variable_turns_capture_off(monkeypatch):
    model, x, call_with = setup()
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert single_sample_runner(call_with(generator("cpu")), x, model, generator("cpu"))[1] == (
        f"eager: {DISABLE_ENV} is set"
    )
    monkeypatch.setenv(DISABLE_ENV, "0")
    assert not cuda_graphs.disabled()


def test_a_capture_that_raises_falls_back_to_the_eager_call(monkeypatch):
    """The path a synchronising estimator takes on CUDA, with the capture replaced by its failure."""
    model, x, call_with = setup()
    monkeypatch.setattr(cuda_graphs, "why_eager", lambda model, generator: "")

    def failing(*args):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(cuda_graphs, "captured", failing)
    run_one, mode = single_sample_runner(call_with(generator("cpu")), x, model, generator("cpu"))
    reason = "RuntimeError: CUDA error: operation not permitted when stream is capturing more"
    assert mode == f"eager: capture failed ({reason})", "one line: the error's lines joined"
    assert torch.equal(run_one(2), call_with(generator("cpu"))(x[2:3]))


def test_a_refused_capture_says_why(monkeypatch):
    model, x, call_with = setup()
    monkeypatch.setattr(cuda_graphs, "why_eager", lambda model, generator: "")

    def refused(*args):
        raise cuda_graphs.CaptureRefused("the captured call returns [2, 3], the eager call [1, 3]")

    monkeypatch.setattr(cuda_graphs, "captured", refused)
    mode = single_sample_runner(call_with(generator("cpu")), x, model, generator("cpu"))[1]
    assert mode == "eager: the captured call returns [2, 3], the eager call [1, 3]"


# -- on CUDA: the graphed call ----------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["full-mc", "shared-noise", "truncated"])
def test_a_graphed_call_has_the_eager_shape_and_nfe_and_draws_afresh(name, monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    model, x, call_with = setup("cuda", name)
    gen = generator("cuda")
    run_one, mode = single_sample_runner(call_with(gen), x, model, gen)
    assert mode == GRAPHED
    model.reset_nfe()
    first = run_one(0).clone()
    assert model.reset_nfe() == TRIALS * CLASSES, "a replay counts the captured call's NFE"
    assert first.shape == (1, CLASSES) and first.device.type == "cuda" and torch.isfinite(first).all()
    second = run_one(0).clone()
    assert not torch.equal(first, second), "the registered generator advances: each replay draws afresh"
    offset = gen.get_offset()
    run_one(1)
    assert gen.get_offset() > offset


@needs_cuda
@pytest.mark.gpu
def test_a_graphed_deterministic_call_equals_the_eager_call(monkeypatch):
    """Fixed timesteps and zero noise: no randomness, so every replay must equal the eager call on its sample."""
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    model, x, _ = setup("cuda")
    t = li_timesteps(model.num_timesteps, TRIALS, "cuda")[None]  # [1, R]
    eps = torch.zeros(1, TRIALS, 2, device="cuda")

    def call(one):
        return class_errors(model, one, t, eps).mean(1)

    run_one, mode = single_sample_runner(call, x, model, generator("cuda"))
    assert mode == GRAPHED
    for i in range(5):
        torch.testing.assert_close(run_one(i), call(x[i : i + 1]), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(run_one(0), run_one(1)), "each call reads its own sample from the static input"


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("sync", ["item", "nonzero"])
def test_an_estimator_that_synchronises_falls_back_and_still_runs(sync, monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    model, x, call_with = setup("cuda")
    gen = generator("cuda")
    plain = call_with(gen)

    def call(one):
        errors = plain(one)
        if sync == "item":
            return errors * (errors.max().item() > -1)  # a host read: not allowed while capturing
        return errors[:, (errors[0] > -1e9).nonzero().squeeze(1)]  # a data-dependent shape

    stream = torch.cuda.current_stream()
    run_one, mode = single_sample_runner(call, x, model, gen)
    assert mode.startswith(("eager: the call synchronises the device (", "eager: capture failed (")), mode
    assert torch.cuda.current_stream() == stream, "the caller's stream is current again"
    model.reset_nfe()
    assert run_one(3).shape == (1, CLASSES)
    assert model.reset_nfe() == TRIALS * CLASSES
    assert not torch.cuda.is_current_stream_capturing()
