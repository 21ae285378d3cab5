"""The scheduler's config: the model's training noise process (DDPM, rectified flow or EDM), read without diffusers.

Three families, each the process the model was trained on (``docs/noise-processes.md``):

- DDPM (variance preserving): ``alphas_cumprod`` from the keys diffusers' ``DDPMScheduler`` builds it from:
  ``trained_betas``, else ``beta_schedule`` over ``num_train_timesteps`` steps from ``beta_start`` to
  ``beta_end``, and ``rescale_betas_zero_snr``; ``prediction_type`` epsilon, v_prediction or sample.
- Rectified flow (``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler``): the scheduler's
  own training sigmas (``num_train_timesteps``, ``shift``), the network fed its timesteps sigma * T; the
  model predicts the velocity eps - x0 (``flow``). With ``use_dynamic_shifting`` diffusers leaves those
  sigmas unshifted (the resolution-dependent shift mu is applied only when sampling), and so does diffbench.
  ``invert_sigmas`` (sigma the signal level, Mochi) is refused.
- EDM (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``): the scheduler's own sigmas (``sigma_min``,
  ``sigma_max``, ``rho``, ``sigma_schedule`` karras or exponential, over its ``num_train_timesteps`` levels:
  T + 1 of them for EDMEulerScheduler, T for the DPM solver), the network fed c_noise = ln(sigma) / 4 and
  called through the preconditioning of ``sigma_data`` exactly as the scheduler's ``precondition_inputs``
  and ``precondition_outputs`` do (``edm_denoiser``; c_out negated for ``prediction_type`` v_prediction).

A value that makes no valid process (a beta above 1, NaN, a step count of 0 or "1000", a schedule diffusers
does not know, sigma_max below sigma_min) is refused here, naming the file and the key, before anything runs,
rather than failing each cell or running on a wrong process. ``noise_process`` builds the tables with
diffusers itself, when the model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import diffbench
from diffbench.noise_process import NoiseProcess
from diffbench.parameterisation import PREDICTION_TYPES

from .hub import one_line, read_json
from .values import flag, integer, number, text, wrong

# Schedulers whose training noise is DDPM's variance-preserving x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
# (Euler, Heun, LMS and KDPM2 *sample* in sigma space, but their models are trained with these betas.)
DDPM_FAMILY = {
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
    "LMSDiscreteScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler",
    "LCMScheduler", "TCDScheduler", "SASolverScheduler", "DDIMInverseScheduler",
}  # fmt: skip
# Rectified-flow schedulers: both build the same training sigmas (num_train_timesteps, shift).
FLOW_FAMILY = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
# EDM schedulers: Karras et al.'s sigmas and preconditioning (sigma_min, sigma_max, rho, sigma_data).
EDM_FAMILY = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
OTHER_FAMILIES = {
    "ScoreSdeVeScheduler": "a variance-exploding SDE scheduler",
    "KarrasVeScheduler": "a variance-exploding scheduler",
    "CMStochasticIterativeScheduler": "a consistency-model scheduler",
    "ScoreSdeVpScheduler": "a continuous-time VP SDE scheduler",
}
TAKEN = "DDPM-family (variance-preserving), FlowMatchEulerDiscreteScheduler or EDMEulerScheduler-family schedulers"
# The beta schedules DDPMScheduler builds (it computes every DDPM-family model's alphas_cumprod here);
# the first three interpolate from beta_start to beta_end, the last two ignore them.
BETA_SCHEDULES = ("linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2", "laplace")
FROM_START_TO_END = BETA_SCHEDULES[:3]
# A beta is a noising step's variance, in (0, 1]. Below 1e-7, 1 - beta rounds to 1 in diffusers' float32,
# and a first step that adds no noise is no process (alphas_cumprod must start below 1).
MIN_BETA, MAX_BETA = 1e-7, 1.0
MAX_TIMESTEPS = 100_000
MIN_SHIFT, MAX_SHIFT = 1e-3, 1e3  # a flow's shift: SD3 3.0, Flux 1.15 to 3.0
MIN_SIGMA, MAX_SIGMA = 1e-6, 1e5  # EDM's sigma_min, sigma_max and sigma_data
MIN_RHO, MAX_RHO = 1e-2, 1e3
EDM_PREDICTION_TYPES = ("epsilon", "v_prediction")  # what precondition_outputs takes (c_out, or -c_out for v)
SIGMA_SCHEDULES = ("karras", "exponential")


def find_scheduler(root: Path) -> Path | None:
    for candidate in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    return None


def family(scheduler: dict[str, Any]) -> str:
    """The process kind a (checked) scheduler config trains: ``vp``, ``flow`` or ``edm``."""
    name = scheduler.get("_class_name")
    return "flow" if name in FLOW_FAMILY else "edm" if name in EDM_FAMILY else "vp"


def read_scheduler_config(root: Path, path: str) -> dict[str, Any]:
    """The scheduler's config, of a family diffbench takes and a valid process: the model's training process."""
    file = find_scheduler(root)
    if file is None:
        raise diffbench.ParamError(
            f"path '{path}' has no scheduler/scheduler_config.json: diffbench needs the model's training schedule"
        )
    scheduler = read_json(file)
    name = text(scheduler, "_class_name", file)
    if name in OTHER_FAMILIES:
        raise diffbench.ParamError(f"path '{path}' uses {name}, {OTHER_FAMILIES[name]}: diffusers takes {TAKEN}")
    if name in FLOW_FAMILY:
        check_flow(scheduler, file)
    elif name in EDM_FAMILY:
        check_edm(scheduler, file)
    elif name in DDPM_FAMILY:
        check_process(scheduler, file)
    else:
        raise diffbench.ParamError(
            f"path '{path}' uses scheduler '{name}', which diffusers does not take: it takes {TAKEN} "
            "(DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, ...)"
        )
    return scheduler


def prediction_type(scheduler: dict[str, Any]) -> str:
    """What the model trained with this (checked) scheduler predicts, as ``diffbench.parameterisation`` names it."""
    kind = family(scheduler)
    if kind == "flow":
        return "flow"
    if kind == "edm":
        return "edm_denoiser"
    return scheduler.get("prediction_type", "epsilon")


def edm_output_sign(scheduler: dict[str, Any]) -> float:
    """-1 for an EDM scheduler whose ``prediction_type`` is v_prediction (its c_out is negated), else 1."""
    return -1.0 if family(scheduler) == "edm" and scheduler.get("prediction_type") == "v_prediction" else 1.0


def steps(scheduler: dict[str, Any], file: Path) -> int | None:
    """``num_train_timesteps``: an integer from 2 to MAX_TIMESTEPS, None where absent."""
    count = integer(scheduler, "num_train_timesteps", file, low=2, high=MAX_TIMESTEPS)
    if "num_train_timesteps" in scheduler and count is None:
        raise wrong("num_train_timesteps", file, f"an integer from 2 to {MAX_TIMESTEPS}", None)
    return count


def check_flow(scheduler: dict[str, Any], file: Path) -> None:
    """ParamError naming the key unless the config makes the rectified flow diffusers trains with."""
    steps(scheduler, file)
    number(scheduler.get("shift", 1.0), "shift", file, MIN_SHIFT, MAX_SHIFT)
    flag(scheduler, "use_dynamic_shifting", file)
    if flag(scheduler, "invert_sigmas", file):
        raise diffbench.ParamError(
            f"`invert_sigmas` in {file} is true (sigma the signal level, as Mochi's): diffbench takes flow "
            "schedulers whose sigma is the noise level; set it false if the model was trained so"
        )


def check_edm(scheduler: dict[str, Any], file: Path) -> None:
    """ParamError naming the key unless the config makes an EDM process and preconditioning diffusers can build."""
    text(scheduler, "prediction_type", file, "epsilon", EDM_PREDICTION_TYPES)
    text(scheduler, "sigma_schedule", file, "karras", SIGMA_SCHEDULES)
    steps(scheduler, file)
    low = number(scheduler.get("sigma_min", 0.002), "sigma_min", file, MIN_SIGMA, MAX_SIGMA)
    high = number(scheduler.get("sigma_max", 80.0), "sigma_max", file, MIN_SIGMA, MAX_SIGMA)
    if not high > low:
        raise wrong("sigma_max", file, f"above sigma_min ({low:g})", scheduler.get("sigma_max", 80.0))
    number(scheduler.get("sigma_data", 0.5), "sigma_data", file, MIN_SIGMA, MAX_SIGMA)
    number(scheduler.get("rho", 7.0), "rho", file, MIN_RHO, MAX_RHO)


def noise_process(scheduler: dict[str, Any], file: Path | None) -> NoiseProcess:
    """The flow or EDM process of a checked config, its tables the scheduler's own (built by diffusers).

    Increasing t is more noise: the scheduler's sigmas and timesteps (both decreasing in diffusers) reversed.
    A flow is a = 1 - sigma, s = sigma, fed ``scheduler.timesteps`` (sigma * T); an EDM process a = 1,
    s = sigma, fed ``scheduler.timesteps`` (``precondition_noise``: ln(sigma) / 4), with its sigma_data.
    """
    import diffusers

    name = scheduler["_class_name"]
    settings = {k: v for k, v in scheduler.items() if not k.startswith("_")}
    try:
        built = getattr(diffusers, name).from_config(settings)
    except Exception as exc:  # every key read here was checked; an older diffusers may lack a setting
        raise diffbench.ParamError(f"diffusers cannot build the scheduler of {file}: {one_line(exc)}") from None
    timesteps = built.timesteps.double().flip(0)
    if family(scheduler) == "flow":
        sigmas = built.sigmas.double().flip(0)
        shift = scheduler.get("shift", 1.0)
        dynamic = bool(scheduler.get("use_dynamic_shifting"))
        label = "flow-unshifted" if dynamic else "flow" if shift == 1 else f"flow-shift{shift:g}"
        return NoiseProcess("flow", label, 1 - sigmas, sigmas, timesteps)
    sigmas = built.sigmas[:-1].double().flip(0)  # the last is the sampler's final sigma (0 or sigma_min)
    label = f"edm-{scheduler.get('sigma_schedule', 'karras')}"
    config = built.config
    return NoiseProcess("edm", label, torch.ones_like(sigmas), sigmas, timesteps, float(config.sigma_data))


def check_process(scheduler: dict[str, Any], file: Path) -> None:
    """ParamError naming the key unless the config's betas make a variance-preserving process diffusers can build."""
    text(scheduler, "prediction_type", file, "epsilon", PREDICTION_TYPES)
    count = steps(scheduler, file)
    rescale = scheduler.get("rescale_betas_zero_snr")
    if rescale is not None and not isinstance(rescale, bool):
        raise wrong("rescale_betas_zero_snr", file, "true or false", rescale)
    betas = scheduler.get("trained_betas")
    if betas is not None:
        check_trained_betas(betas, count, file)
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
