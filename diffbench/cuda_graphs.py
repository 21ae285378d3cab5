"""The single-sample call captured in a CUDA graph, where the estimator allows it.

In the ``single`` scenario one test sample is classified per call. On CUDA such a call is mostly
Python and kernel launches: a few dozen tiny kernels, each costing more to launch than to run. A
CUDA graph (``torch.cuda.graphs``) records the call's kernels once and replays them with one
launch, no Python in between. The recipe is the one PyTorch documents for whole-network capture:
static shapes (one sample ``[1, *shape]``, fixed trials), a static input buffer each call copies
its sample into, warm-up calls on a side stream before capture, and the cell's generator
registered with the graph (``register_generator_state``) so that every replay draws fresh random
numbers from it and advances it, as an eager call would.

A replay runs no Python, so the model's NFE counter would not move: the call's NFE is read from
the counter during capture and added to it on every replay. Anything that cannot be captured
falls back to the eager call, with the reason: a device other than CUDA, an estimator that
synchronises (``.item()``, ``nonzero``, data-dependent shapes, copies to or from CPU tensors: caught
before capture by running one warm-up call in ``torch.cuda``'s sync debug mode ``"error"``), one that
draws from a generator other than the cell's, or a captured call whose output or NFE differs from
the eager one. ``DIFFBENCH_NO_CUDA_GRAPHS=1`` turns the capture off.

Limits of a replay, which no check here can see: Python-side state an estimator changes per call
(a counter, a cache filled lazily) stays as it was when the call was captured, and a replay's
output tensor is the graph's own, overwritten by the next call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

from diffbench.model import ConditionalModel

DISABLE_ENV = "DIFFBENCH_NO_CUDA_GRAPHS"
GRAPHED = "cuda-graph"  # the mode of a graphed call; a fallback's mode is "eager: <reason>"
WARMUP_CALLS = 3  # eager calls on a side stream before capture: lazy caches, cuBLAS handles, autotuning

OneSample = Callable[[torch.Tensor], torch.Tensor]  # errors of one sample: [1, *shape] -> [1, K]
RunOne = Callable[[int], torch.Tensor]  # classify the i-th sample (modulo the test set's size)


class CaptureRefused(RuntimeError):
    """A captured call would not be the eager call: its output or cost differs."""


def disabled() -> bool:
    """Whether ``DIFFBENCH_NO_CUDA_GRAPHS`` asks for eager calls (any value but empty and 0)."""
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def single_sample_runner(
    call: OneSample, x: torch.Tensor, model: ConditionalModel, generator: torch.Generator
) -> tuple[RunOne, str]:
    """``run_one(i)`` classifying ``x[i % n]`` alone, and how it runs: ``"cuda-graph"`` or ``"eager: <reason>"``.

    ``call`` is the estimator's call on one sample (it must draw its randomness from
    ``generator``). Capture costs ``WARMUP_CALLS + 1`` calls, whose NFE are not left on the
    model's counter; the generator advances by those calls' draws. A graphed ``run_one`` adds
    the call's NFE to ``model.nfe`` on every replay and returns the graph's output tensor,
    overwritten by the next call (clone it to keep it); its replays do not feed the model's
    ``check_values`` flag (the timed scenarios run with it off).
    """
    n = x.shape[0]

    def eager(i: int) -> torch.Tensor:
        return call(x[i % n : i % n + 1])

    reason = why_eager(model, generator)
    if reason:
        return eager, f"eager: {reason}"
    try:
        return captured(call, x, model, generator), GRAPHED
    except CaptureRefused as exc:
        return eager, f"eager: {exc}"
    except Exception as exc:  # noqa: BLE001 - whatever stops the capture, the eager call still measures the cell
        return eager, f"eager: capture failed ({one_line(exc)})"


def why_eager(model: ConditionalModel, generator: torch.Generator) -> str:
    """Why the call cannot be captured before trying; '' when it may be."""
    if disabled():
        return f"{DISABLE_ENV} is set"
    if model.device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {model.device.type}"
    if generator.device.type != "cuda":
        return f"the generator is on {generator.device.type}, not on the CUDA device"
    return ""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def captured(call: OneSample, x: torch.Tensor, model: ConditionalModel, generator: torch.Generator) -> RunOne:
    """The graphed ``run_one``; raises CaptureRefused, or whatever stopped the capture.

    The model's ``nfe`` is left as it was, and ``check_values`` is off while capturing (its
    finiteness flag would be a tensor of the graph's memory; the accuracy passes checked values).
    """
    n = x.shape[0]
    static_x = x[:1].clone()  # every call copies its sample in here: the graph reads this memory
    nfe_before, check_values = model.nfe, model.check_values
    model.check_values = False
    try:
        with torch.cuda.device(model.device):
            eager_out, eager_nfe = warm_up(call, static_x, model)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(generator)
            model.nfe = 0
            static_out = record(graph, lambda: call(static_x))
            graph_nfe = model.nfe
    finally:
        model.nfe, model.check_values = nfe_before, check_values
    if not isinstance(static_out, torch.Tensor) or static_out.shape != eager_out.shape:
        got = list(static_out.shape) if isinstance(static_out, torch.Tensor) else type(static_out).__name__
        raise CaptureRefused(f"the captured call returns {got}, the eager call {list(eager_out.shape)}")
    if static_out.dtype != eager_out.dtype:
        raise CaptureRefused(f"the captured call returns {static_out.dtype}, the eager call {eager_out.dtype}")
    if graph_nfe != eager_nfe:
        raise CaptureRefused(f"the captured call costs {graph_nfe} NFE, the eager call {eager_nfe} (data-dependent)")

    def replay(i: int) -> torch.Tensor:
        static_x.copy_(x[i % n : i % n + 1])
        graph.replay()
        model.nfe += graph_nfe  # the replay ran no Python: count what the captured call cost
        return static_out

    return replay


def warm_up(call: OneSample, static_x: torch.Tensor, model: ConditionalModel) -> tuple[torch.Tensor, int]:
    """``WARMUP_CALLS`` eager calls on a side stream, as capture requires: the last output and one call's NFE.

    The second call runs with ``torch.cuda.set_sync_debug_mode("error")``: a call that
    synchronises (``.item()``, ``nonzero``, a copy to the host) cannot be captured, and is
    refused here rather than by a failed capture (the first call may compile or fill caches,
    which may synchronise harmlessly).
    """
    with on_side_stream():
        for i in range(WARMUP_CALLS):
            model.nfe = 0
            out = synchronisation_checked(call, static_x) if i == 1 else call(static_x)
    if not isinstance(out, torch.Tensor):
        raise CaptureRefused(f"the eager call returns {type(out).__name__}, not a tensor")
    return out, model.nfe


@contextlib.contextmanager
def on_side_stream() -> Iterator[None]:
    """Run the block on a fresh side stream, joined to the current stream before and after (the warm-up
    calls before a capture must not run on the default stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)


def synchronisation_checked(call: OneSample, static_x: torch.Tensor) -> torch.Tensor:
    """``call(static_x)`` with synchronising CUDA operations made errors; CaptureRefused if it has one."""
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return call(static_x)
    except RuntimeError as exc:
        if "synchronizing CUDA operation" in str(exc):
            raise CaptureRefused(f"the call synchronises the device ({one_line(exc)})") from None
        raise
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def record(graph: torch.cuda.CUDAGraph, fn: Callable[[], object]) -> object:
    """``fn()`` captured into ``graph``, and its output; on failure the call's own error (not capture_end's) is raised.

    A call that synchronises invalidates the capture; ``capture_end`` then raises its own,
    vaguer error, chained to the call's: the call's is the one worth reporting. ``torch.cuda.graph``
    leaves its capture stream current when ``capture_end`` raises, so the caller's is restored.
    """
    failure: BaseException | None = None
    stream = torch.cuda.current_stream()
    try:
        with torch.cuda.graph(graph):
            try:
                out = fn()
            except Exception as exc:
                failure = exc
                raise
    except Exception as exc:
        torch.cuda.set_stream(stream)
        with contextlib.suppress(Exception):
            graph.reset()  # drops the half-made graph and its claim on the generator
        raise (failure or exc) from None
    return out


def bare_runner(mode: str, device: torch.device) -> Callable[[Callable[[], object]], Callable[[], object]]:
    """How the bare network's reference for a single-sample call runs: the way the call ran.

    A graphed call saves the kernel launches that an eager bare forward still pays, so against
    an eager reference its efficiency would read above 1. When the call ran as a CUDA graph, the
    bare forward (static rows, no randomness) is captured too, falling back to eager if it cannot be.
    """
    if mode != GRAPHED:
        return lambda bare: bare

    def graphed_or_eager(bare: Callable[[], object]) -> Callable[[], object]:
        try:
            return graphed_thunk(bare, device)
        except Exception:  # noqa: BLE001 - the eager reference still measures
            return bare

    return graphed_or_eager


def graphed_thunk(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` (no arguments, static shapes, no randomness) captured in a CUDA graph: its replay."""
    with torch.cuda.device(device):
        with on_side_stream():
            for _ in range(WARMUP_CALLS):
                fn()
        graph = torch.cuda.CUDAGraph()
        record(graph, fn)
    return graph.replay
