"""The baseline Monte Carlo estimators: `full-mc`, `shared-noise` and `truncated`.

Each draws its timesteps and noise for all samples x trials (x classes) at once and scores
them with ``diffbench.montecarlo.class_errors``, the public helpers every estimator shares.
"""

from __future__ import annotations

import torch

import diffbench
from diffbench.montecarlo import LOSSES, class_errors, draw_noise, draw_timesteps


class FullMC(diffbench.Estimator):
    """A fresh timestep and noise for every (sample, trial, class): no shared randomness."""

    name = "full-mc"
    variance_baseline = True
    params = {"loss": diffbench.Choice(*LOSSES)}

    def errors(self, model, x, trials, generator):
        B, K = x.shape[0], model.num_classes
        t = draw_timesteps(model, B, trials * K, generator).view(B, trials, K)
        eps = draw_noise(model, (B, trials * K), generator).view(B, trials, K, *model.data_shape)
        return class_errors(model, x, t, eps, self.params["loss"]).mean(1)


class SharedNoise(diffbench.Estimator):
    """One timestep and noise per (sample, trial), shared by all classes (common random numbers)."""

    name = "shared-noise"
    params = {"loss": diffbench.Choice(*LOSSES)}

    def _timesteps(self, model, dims, generator) -> torch.Tensor:
        return draw_timesteps(model, dims[0], dims[1], generator)

    def errors(self, model, x, trials, generator):
        dims = (x.shape[0], trials)
        t = self._timesteps(model, dims, generator)
        eps = draw_noise(model, dims, generator)
        return class_errors(model, x, t, eps, self.params["loss"]).mean(1)


class Truncated(SharedNoise):
    """Shared noise with timesteps drawn uniformly from ``[t_min, t_max]`` (inclusive)."""

    name = "truncated"
    params = {"loss": diffbench.Choice(*LOSSES), "t_min": 0, "t_max": 300}

    def validate(self) -> None:
        super().validate()
        t_min, t_max = self.params["t_min"], self.params["t_max"]
        if not 0 <= t_min <= t_max:
            raise diffbench.ParamError(f"truncated needs 0 <= t_min <= t_max, got t_min={t_min}, t_max={t_max}")

    def check_schedule(self, num_timesteps: int) -> None:
        if self.params["t_max"] >= num_timesteps:
            raise diffbench.ParamError(
                f"truncated t_max={self.params['t_max']} is outside the schedule's timesteps [0, {num_timesteps}); "
                f"give t_max below {num_timesteps}"
            )

    def _timesteps(self, model, dims, generator):
        t_max = self.params["t_max"]
        if t_max >= model.num_timesteps:
            raise diffbench.ParamError(
                f"truncated t_max={t_max} is outside the model's timesteps [0, {model.num_timesteps}); lower t_max"
            )
        return draw_timesteps(model, dims[0], dims[1], generator, low=self.params["t_min"], high=t_max + 1)


@diffbench.hookimpl
def register_estimators(register):
    register(FullMC)
    register(SharedNoise)
    register(Truncated)
