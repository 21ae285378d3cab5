"""ConditionalModel: what an estimator sees of a trained class-conditional denoiser."""

from __future__ import annotations

import torch

from diffbench.schedule import NoiseSchedule

DEFAULT_MAX_BATCH = 8192


class ConditionalModel:
    """Wraps a trained module; owns the schedule, chunks batches and counts every row as one NFE.

    ``eps(x_t, t, c)`` accepts any number of rows N and calls the module on chunks of
    at most ``max_batch`` rows, so an estimator can hand over all its samples x trials x
    classes at once without exhausting memory. The runner reads cost from ``nfe``.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        schedule: NoiseSchedule,
        num_classes: int,
        data_shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.module = module.to(self.device, dtype).eval()
        self.schedule = schedule
        self.num_classes = num_classes
        self.num_timesteps = schedule.num_timesteps
        self.data_shape = tuple(data_shape)
        self.betas = schedule.betas.to(self.device, dtype)
        self.alphas_cumprod = schedule.alphas_cumprod.to(self.device, dtype)
        self.max_batch = max_batch
        self.nfe = 0

    @torch.inference_mode()
    def eps(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Predicted noise for rows ``x_t [N,*shape]`` at timesteps ``t [N]`` for classes ``c [N]``."""
        n = x_t.shape[0]
        if t.shape != (n,) or c.shape != (n,):
            raise ValueError(f"model.eps needs t and c of shape [{n}], got t {tuple(t.shape)} and c {tuple(c.shape)}")
        if tuple(x_t.shape[1:]) != self.data_shape:
            raise ValueError(
                f"model.eps needs x_t of shape [N, {', '.join(map(str, self.data_shape))}], got {list(x_t.shape)}"
            )
        self.nfe += n
        if n <= self.max_batch:
            return self.module(x_t, t, c)
        out = torch.empty_like(x_t)
        for start in range(0, n, self.max_batch):
            stop = start + self.max_batch
            out[start:stop] = self.module(x_t[start:stop], t[start:stop], c[start:stop])
        return out

    def reset_nfe(self) -> int:
        """Return the NFE count so far and set it back to zero."""
        count, self.nfe = self.nfe, 0
        return count
