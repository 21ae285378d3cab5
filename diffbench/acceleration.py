"""Running a trained module in lower precision (autocast) or compiled, and whether a device supports it."""

from __future__ import annotations

import torch

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


def unsupported(
    module: torch.nn.Module,
    device: torch.device,
    dtype: str,
    compile: bool,
    data_shape: tuple[int, ...],
    num_classes: int,
) -> str:
    """Why this device cannot run ``module`` in ``dtype`` (compiled or not); '' when it can.

    Probes a two-row forward, so a missing compiler, an unsupported autocast type or a
    kernel missing for the dtype all show up here rather than half-way through a cell.
    """
    if dtype != "float32" and not torch.amp.is_autocast_available(device.type):
        return f"autocast is not available on {device.type}"
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16"
    x = torch.randn((2, *data_shape), device=device)
    t = torch.zeros(2, dtype=torch.long, device=device)
    c = torch.arange(2, device=device) % num_classes
    try:
        with torch.inference_mode():
            out = accelerate(module, device, dtype, compile)(x, t, c)
    except Exception as exc:  # any failure of the probe means "not supported here"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}"[:300]
    if not torch.isfinite(out).all():
        return f"the module returns NaN or inf in {dtype}"
    return ""
