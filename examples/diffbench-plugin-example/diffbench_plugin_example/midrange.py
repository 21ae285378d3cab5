"""Estimator `midrange`: shared noise with the timesteps on an evenly spaced grid over the middle of [0, T)."""

from __future__ import annotations

import diffbench
import torch
from diffbench.montecarlo import class_errors, draw_noise


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
        t = self.timesteps(model.num_timesteps, trials, model.device).expand(x.shape[0], trials)  # [B, R]
        eps = draw_noise(model, t.shape, generator)  # [B, R, *shape]: one draw per (sample, trial)
        # x_t = q_sample(x, t, eps) scored against every class in one call; the model counts each row as one NFE
        return class_errors(model, x, t, eps).mean(1)  # [B, R, K] -> [B, K], lower = likelier
