"""Running a trained module in lower precision (autocast) or compiled, and whether a device supports it."""

from __future__ import annotations

import torch

from diffbench.contract import check_module_output, non_finite_output

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Accelerated(torch.nn.Module):
    """A module run under autocast to ``dtype`` (weights stay float32), returning float32 like the original."""

    def __init__(self, module: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = module
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.inner(x, t, c)
        return out.float()


def accelerate(module: torch.nn.Module, device: torch.device, dtype: str, compile: bool) -> torch.nn.Module:
    """``module`` as it runs in a cell: autocast to ``dtype`` unless float32, then ``torch.compile`` if asked."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; choose from {', '.join(DTYPES)}")
    wrapped = module if dtype == "float32" else Accelerated(module, device.type, DTYPES[dtype])
    return torch.compile(wrapped) if compile else wrapped


def probe(module: torch.nn.Module, device: torch.device, dtype: str, compile: bool, data_shape, num_classes: int):
    """The module's output on two fixed rows, run as a cell would run it."""
    x = torch.randn((2, *data_shape), generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.zeros(2, dtype=torch.long, device=device)
    c = torch.arange(2, device=device) % num_classes
    with torch.inference_mode():
        return x, accelerate(module, device, dtype, compile)(x, t, c)


def unsupported(
    module: torch.nn.Module,
    device: torch.device,
    dtype: str,
    compile: bool,
    data_shape: tuple[int, ...],
    num_classes: int,
    name: str = "the denoiser",
    learned_variance: bool = False,
) -> str:
    """Why this device cannot run ``module`` in ``dtype`` (compiled or not); '' when it can.

    Probes a two-row forward, so a missing compiler, an unsupported autocast type or a
    kernel missing for the dtype all show up here rather than half-way through a cell.
    A module that is broken in plain float32 (it raises, returns the wrong shape, NaN or
    inf) is no question of support: that raises (PluginOutputError or the module's own
    error), and the cell fails. ``learned_variance``: the module returns twice the channels.
    """
    x, out = probe(module, device, "float32", False, data_shape, num_classes)
    if learned_variance and isinstance(out, torch.Tensor) and out.dim() > 1:
        out = out[:, : out.shape[1] // 2]  # a learned-variance half beside the prediction (DiT): the first half counts
    check_module_output(out, x, name)
    if not torch.isfinite(out).all():
        raise non_finite_output(name, "in float32 on two random rows")
    if dtype == "float32" and not compile:
        return ""
    if dtype != "float32" and not torch.amp.is_autocast_available(device.type):
        return f"autocast is not available on {device.type}"
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16"
    try:
        x, out = probe(module, device, dtype, compile, data_shape, num_classes)
    except Exception as exc:  # fine in float32, fails here: this dtype or compile is not supported
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}"[:300]
    if not torch.isfinite(out).all():
        return f"the module returns NaN or inf in {dtype} (finite in float32)"
    return ""
