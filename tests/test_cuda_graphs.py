"""The single-sample call in a CUDA graph: the fallbacks on CPU, the graphed call on CUDA (skipped without one)."""

import contextlib
import types

import pytest
import torch

from diffbench import cuda_graphs
from diffbench.cuda_graphs import DISABLE_ENV, GRAPHED, bare_runner, single_sample_runner
from diffbench.montecarlo import class_errors, li_timesteps
from diffbench.timing import BareForward, measure_latency
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


# -- on any machine: the capture's logic, against a stand-in for torch.cuda's graphs -------------------------


class FakeGraph:
    """Stands in for ``torch.cuda.CUDAGraph``: a replay re-runs what the call registered while capturing.

    Like a real graph's, a replay reads the same input tensor, writes the same output tensor and
    draws from the registered generator, and runs no Python the model can count (NFE unchanged).
    """

    capturing = None  # the graph being captured, while its ``torch.cuda.graph`` context is open

    def __init__(self):
        self.generators, self.replays, self.was_reset = [], [], False

    def register_generator_state(self, generator):
        self.generators.append(generator)

    def replay(self):
        for again in self.replays:
            again()

    def reset(self):
        self.was_reset = True


class FakeCapture:
    """Stands in for ``torch.cuda.graph(g)``; ``fail`` makes its exit raise as ``capture_end`` does."""

    fail = False

    def __init__(self, graph):
        self.graph = graph

    def __enter__(self):
        FakeGraph.capturing = self.graph
        torch.cuda.set_stream("capture stream")

    def __exit__(self, *exc):
        FakeGraph.capturing = None
        if FakeCapture.fail:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's graph API replaced by stand-ins that run on CPU; yields the streams made current, in order."""
    streams = ["default stream"]
    monkeypatch.setattr(cuda_graphs, "why_eager", lambda model, generator: "")
    monkeypatch.setattr(FakeCapture, "fail", False)
    fakes = {
        "device": lambda device: contextlib.nullcontext(),
        "Stream": lambda: types.SimpleNamespace(wait_stream=lambda other: None),
        "stream": lambda stream: contextlib.nullcontext(),
        "current_stream": lambda: types.SimpleNamespace(wait_stream=lambda other: None, name=streams[-1]),
        "set_stream": lambda stream: streams.append(getattr(stream, "name", stream)),
        "get_sync_debug_mode": lambda: 0,
        "set_sync_debug_mode": lambda mode: None,
        "CUDAGraph": FakeGraph,
        "graph": FakeCapture,
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(torch.cuda, name, fake, raising=False)
    yield streams


def capturable(model, call):
    """``call`` that, while a FakeGraph captures, registers its rerun (into the same output) as the replay."""

    def run(one):
        out = call(one)
        graph = FakeGraph.capturing
        if graph is not None:

            def again():
                nfe = model.nfe
                out.copy_(call(one))
                model.nfe = nfe  # a replay runs no Python: the counter does not move

            graph.replays.append(again)
        return out

    return run


def test_a_captured_call_replays_each_sample_with_fresh_draws_and_counts_its_nfe(fake_cuda):
    model, x, call_with = setup()
    gen = generator("cpu")
    model.nfe = 7
    run_one, mode = single_sample_runner(capturable(model, call_with(gen)), x, model, gen)
    assert mode == GRAPHED
    assert model.nfe == 7, "warm-up and capture leave the counter as it was"
    assert model.check_values is False
    reference_gen = generator("cpu")
    reference = call_with(reference_gen)
    for _ in range(cuda_graphs.WARMUP_CALLS + 1):  # warm-up and capture drew from the generator: so does the reference
        reference(x[:1])
    for i in (0, 3, 5, 1):
        model.reset_nfe()
        got = run_one(i).clone()
        assert model.reset_nfe() == TRIALS * CLASSES, "the replay adds the captured call's NFE"
        assert torch.equal(got, reference(x[i % 5 : i % 5 + 1])), "sample i copied into the static input"


def test_a_capture_whose_nfe_differs_from_the_eager_call_is_refused(fake_cuda):
    model, x, call_with = setup()
    gen = generator("cpu")
    plain = capturable(model, call_with(gen))

    def data_dependent(one):
        if FakeGraph.capturing is not None:
            model.nfe += 1
        return plain(one)

    run_one, mode = single_sample_runner(data_dependent, x, model, gen)
    nfe = TRIALS * CLASSES
    assert mode == f"eager: the captured call costs {nfe + 1} NFE, the eager call {nfe} (data-dependent)"
    model.reset_nfe()
    run_one(0)
    assert model.reset_nfe() == TRIALS * CLASSES, "the eager call runs, with its own count"


def test_a_capture_whose_output_shape_differs_is_refused(fake_cuda):
    model, x, call_with = setup()
    plain = call_with(generator("cpu"))
    mode = single_sample_runner(
        lambda one: plain(one).expand(2, -1) if FakeGraph.capturing else plain(one), x, model, generator("cpu")
    )[1]
    assert mode == "eager: the captured call returns [2, 3], the eager call [1, 3]"


def test_a_failed_capture_reports_the_calls_error_and_restores_the_stream(fake_cuda, monkeypatch):
    model, x, call_with = setup()
    plain = call_with(generator("cpu"))
    monkeypatch.setattr(FakeCapture, "fail", True)

    def host_read(one):
        if FakeGraph.capturing is not None:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return plain(one)

    model.nfe = 3
    run_one, mode = single_sample_runner(host_read, x, model, generator("cpu"))
    assert mode == "eager: capture failed (RuntimeError: CUDA error: operation not permitted when stream is capturing)"
    assert fake_cuda == ["default stream", "capture stream", "default stream"], "the caller's stream is current again"
    assert model.nfe == 3 and model.check_values is False
    assert run_one(1).shape == (1, CLASSES)


def test_the_bare_reference_runs_as_the_calls_do(fake_cuda, monkeypatch):
    """Eager calls: the bare forward as it is. Graphed calls: captured too, or eager if that fails."""
    model, x, call_with = setup()
    bare = BareForward(model, TRIALS * CLASSES, generator("cpu"))
    assert bare_runner("eager: CUDA graphs need a CUDA device, not cpu", model.device)(bare) is bare
    graphed = bare_runner(GRAPHED, model.device)(bare)
    assert graphed is not bare and isinstance(graphed.__self__, FakeGraph), "a graph's replay"
    monkeypatch.setattr(FakeCapture, "fail", True)
    assert bare_runner(GRAPHED, model.device)(bare) is bare


def test_measure_latency_times_the_wrapped_bare_reference():
    model, x, call_with = setup()
    call = call_with(generator("cpu"))
    wrapped = []

    def bare_as(bare):
        wrapped.append(bare.rows)
        return bare

    latency = measure_latency(
        lambda i: call(x[i : i + 1]), model, generator("cpu"), max_time_s=0, min_count=2, bare_as=bare_as
    )
    assert wrapped == [TRIALS * CLASSES], "one reference for the calls' rows, made through bare_as"
    assert latency.repeats == 2 and latency.bare_latency_p50_ms > 0


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


@needs_cuda
@pytest.mark.gpu
def test_a_graphed_bare_reference_reruns_its_kernels_on_replay():
    source = torch.ones(4, device="cuda")
    out = torch.zeros(4, device="cuda")
    replay = bare_runner(GRAPHED, torch.device("cuda"))(lambda: out.copy_(source * 2))
    source.fill_(3.0)
    replay()
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), torch.full((4,), 6.0))
