"""The scheduler's config: of the DDPM (variance-preserving) family and a valid noising process, read without diffusers.

diffbench takes the model's training schedule from the keys diffusers' ``DDPMScheduler`` builds its
``alphas_cumprod`` from: ``trained_betas``, else ``beta_schedule`` over ``num_train_timesteps`` steps from
``beta_start`` to ``beta_end``, and ``rescale_betas_zero_snr``. A value that makes no valid process (a beta
above 1, NaN, a step count of 0 or "1000", a schedule diffusers does not know) is refused here, naming the file
and the key, before anything runs, rather than failing each cell or running on a wrong schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffbench
from diffbench.parameterisation import PREDICTION_TYPES

from .hub import read_json
from .values import integer, number, text, wrong

# Schedulers whose training noise is DDPM's variance-preserving x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
# (Euler, Heun, LMS and KDPM2 *sample* in sigma space, but their models are trained with these betas.)
DDPM_FAMILY = {
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
    "LMSDiscreteScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler",
    "LCMScheduler", "TCDScheduler", "SASolverScheduler", "DDIMInverseScheduler",
}  # fmt: skip
OTHER_FAMILIES = {
    "EDMEulerScheduler": "an EDM (variance-exploding, preconditioned) scheduler",
    "EDMDPMSolverMultistepScheduler": "an EDM (variance-exploding, preconditioned) scheduler",
    "ScoreSdeVeScheduler": "a variance-exploding SDE scheduler",
    "KarrasVeScheduler": "a variance-exploding scheduler",
    "FlowMatchEulerDiscreteScheduler": "a flow-matching scheduler",
    "FlowMatchHeunDiscreteScheduler": "a flow-matching scheduler",
    "CMStochasticIterativeScheduler": "a consistency-model scheduler",
    "ScoreSdeVpScheduler": "a continuous-time VP SDE scheduler",
}
# The beta schedules DDPMScheduler builds (it computes every DDPM-family model's alphas_cumprod here);
# the first three interpolate from beta_start to beta_end, the last two ignore them.
BETA_SCHEDULES = ("linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2", "laplace")
FROM_START_TO_END = BETA_SCHEDULES[:3]
# A beta is a noising step's variance, in (0, 1]. Below 1e-7, 1 - beta rounds to 1 in diffusers' float32,
# and a first step that adds no noise is no process (alphas_cumprod must start below 1).
MIN_BETA, MAX_BETA = 1e-7, 1.0
MAX_TIMESTEPS = 100_000


def find_scheduler(root: Path) -> Path | None:
    for candidate in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    return None


def read_scheduler_config(root: Path, path: str) -> dict[str, Any]:
    """The scheduler's config, of the DDPM (variance-preserving) family and a valid process: the training schedule."""
    file = find_scheduler(root)
    if file is None:
        raise diffbench.ParamError(
            f"path '{path}' has no scheduler/scheduler_config.json: diffbench needs the model's training schedule"
        )
    scheduler = read_json(file)
    name = text(scheduler, "_class_name", file)
    if name in OTHER_FAMILIES:
        raise diffbench.ParamError(
            f"path '{path}' uses {name}, {OTHER_FAMILIES[name]}: diffusers takes DDPM-family (variance-preserving) "
            "schedulers only, such as DDPMScheduler or DDIMScheduler"
        )
    if name not in DDPM_FAMILY:
        raise diffbench.ParamError(
            f"path '{path}' uses scheduler '{name}', which is not of the DDPM family diffusers takes "
            "(variance-preserving betas: DDPMScheduler, DDIMScheduler, PNDMScheduler, EulerDiscreteScheduler, ...)"
        )
    check_process(scheduler, file)
    return scheduler


def check_process(scheduler: dict[str, Any], file: Path) -> None:
    """ParamError naming the key unless the config's betas make a variance-preserving process diffusers can build."""
    text(scheduler, "prediction_type", file, "epsilon", PREDICTION_TYPES)
    steps = integer(scheduler, "num_train_timesteps", file, low=2, high=MAX_TIMESTEPS)
    if "num_train_timesteps" in scheduler and steps is None:
        raise wrong("num_train_timesteps", file, f"an integer from 2 to {MAX_TIMESTEPS}", None)
    rescale = scheduler.get("rescale_betas_zero_snr")
    if rescale is not None and not isinstance(rescale, bool):
        raise wrong("rescale_betas_zero_snr", file, "true or false", rescale)
    betas = scheduler.get("trained_betas")
    if betas is not None:
        check_trained_betas(betas, steps, file)
        return
    schedule = text(scheduler, "beta_schedule", file, "linear", BETA_SCHEDULES)
    if schedule in FROM_START_TO_END:
        for key, default in (("beta_start", 0.0001), ("beta_end", 0.02)):
            number(scheduler.get(key, default), key, file, MIN_BETA, MAX_BETA)


def check_trained_betas(betas: Any, steps: int | None, file: Path) -> None:
    """``trained_betas``: a list of at least two betas, one per training step."""
    must = f"a list of betas, numbers from {MIN_BETA:g} to {MAX_BETA:g}, one per training step"
    if not isinstance(betas, list) or not 2 <= len(betas) <= MAX_TIMESTEPS:
        raise wrong("trained_betas", file, must, betas)
    for i, beta in enumerate(betas):
        number(beta, f"trained_betas[{i}]", file, MIN_BETA, MAX_BETA)
    if steps is not None and steps != len(betas):
        raise diffbench.ParamError(
            f"`trained_betas` in {file} holds {len(betas)} betas but `num_train_timesteps` is {steps}: "
            "give one beta per training step"
        )
