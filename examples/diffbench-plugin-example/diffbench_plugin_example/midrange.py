"""Estimator `midrange`: shared noise with the timesteps on an evenly spaced grid over the middle of [0, T)."""

from __future__ import annotations

import diffbench
import torch


class Midrange(diffbench.Estimator):
    """Shared noise, timesteps on an evenly spaced grid over [low T, high T) (default: the middle half).

    Trial r of R uses t_r = floor(T (low + (r + 1/2) (high - low) / R)) for every sample, and one
    noise draw per (sample, trial) that all classes share (common random numbers). Li et al. find
    the middle of the range most informative on images; on 2-D toys the low-noise end carries more.
    """

    name = "midrange"
    params = {"low": 0.25, "high": 0.75}

    def validate(self) -> None:
        low, high = self.params["low"], self.params["high"]
        if not 0 <= low < high <= 1:
            raise diffbench.ParamError(f"midrange needs 0 <= low < high <= 1, got low={low}, high={high}")

    def timesteps(self, num_timesteps: int, trials: int, device: torch.device) -> torch.Tensor:
        """The grid ``[trials]`` of long timesteps in [low T, high T)."""
        low, high = self.params["low"], self.params["high"]
        centres = (torch.arange(trials, device=device, dtype=torch.float64) + 0.5) / trials
        return (num_timesteps * (low + (high - low) * centres)).floor().long().clamp(max=num_timesteps - 1)

    def errors(self, model, x, trials, generator):
        B, K, shape = x.shape[0], model.num_classes, x.shape[1:]
        t = self.timesteps(model.num_timesteps, trials, model.device).expand(B, trials)  # [B, R]
        eps = torch.randn((B, trials, *shape), generator=generator, device=model.device, dtype=model.dtype)
        abar = model.alphas_cumprod[t].view(B, trials, *[1] * len(shape))
        x_t = abar.sqrt() * x[:, None] + (1 - abar).sqrt() * eps  # [B, R, *shape]
        # One call for all samples x trials x classes; the model chunks the rows and counts each as one NFE.
        rows = x_t[:, :, None].expand(B, trials, K, *shape).reshape(-1, *shape)
        c = torch.arange(K, device=model.device).repeat(B * trials)
        eps_hat = model.eps(rows, t[:, :, None].expand(B, trials, K).reshape(-1), c)
        err = (eps_hat.view(B, trials, K, -1) - eps.view(B, trials, 1, -1)).square().mean(-1)  # [B, R, K]
        return err.mean(1)  # [B, K], lower = likelier
