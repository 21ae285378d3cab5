"""Denoisers that arrive trained: the checks on what they hand over, their encoded data, and the model self-check.

A ``Denoiser`` whose ``pretrained()`` returns a ``diffbench.Pretrained`` is not trained and not cached:
its module runs under the noise process and parameterisation it brought (variance preserving, rectified
flow or EDM; ``ConditionalModel`` converts its output to epsilon), a latent model classifies the latents of
each image (encoded once, timed apart from the estimator), and ``model_check`` says whether the declared
parameterisation fits the process (a flow model declared as epsilon, an EDM network without its
preconditioning) and whether the output depends on the class before anyone trusts the numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from diffbench.contract import Denoiser, ParamError, Pretrained, Splits
from diffbench.noise_process import NoiseProcess, as_process
from diffbench.parameterisation import ALL_PREDICTION_TYPES, ToEpsilon
from diffbench.schedule import NoiseSchedule

ENCODE_BATCH = 64  # images per encode call
CHECK_SAMPLES = 32  # held-out samples behind model_check
CHECK_BATCH = 16
CHECK_T = (0.25, 0.75)  # the mid-range of t (fractions of T) that model_check looks at
CHECK_RATIO = 0.8  # the declared type's relative error must be below this fraction of every other type's
CHECK_CLASS_EFFECT = 1e-6  # the smallest relative change of the output under another class that counts


class PretrainedError(RuntimeError):
    """A denoiser's ``pretrained()`` handed over something that breaks the contract."""


@dataclass
class PretrainedSetup:
    """What the runner keeps of a pretrained model besides its module: its process, output type, row columns.

    ``schedule`` is a ``NoiseSchedule`` for a model that gave only ``alphas_cumprod`` (as before processes
    existed), else the ``NoiseProcess`` it gave; ``ConditionalModel`` takes either.
    """

    schedule: NoiseSchedule | NoiseProcess
    prediction_type: str
    learned_variance: bool
    columns: dict[str, Any]

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of ``ConditionalModel`` that make it convert this model's output to epsilon."""
        return {"prediction_type": self.prediction_type, "learned_variance": self.learned_variance}


@dataclass
class Loaded:
    """A pretrained group's data (latents for a latent model), module and setup."""

    splits: Splits
    heldout_x: torch.Tensor
    module: torch.nn.Module
    setup: PretrainedSetup
    info: dict[str, Any]


def check_pretrained(made: Any, name: str) -> Pretrained:
    where = f"denoiser '{name}' pretrained()"
    if not isinstance(made, Pretrained):
        raise PretrainedError(f"{where} returned {type(made).__name__}, not diffbench.Pretrained or None")
    if not isinstance(made.module, torch.nn.Module):
        raise PretrainedError(f"{where}: module must be a torch.nn.Module, got {type(made.module).__name__}")
    if made.prediction_type not in ALL_PREDICTION_TYPES:
        raise PretrainedError(
            f"{where}: prediction_type '{made.prediction_type}' is none of {', '.join(ALL_PREDICTION_TYPES)}"
        )
    if made.encode is not None and not callable(made.encode):
        raise PretrainedError(f"{where}: encode must be a function of a batch of samples, or None")
    if made.process is not None and not isinstance(made.process, NoiseProcess):
        raise PretrainedError(
            f"{where}: process must be a diffbench NoiseProcess or None, got {type(made.process).__name__}"
        )
    if made.process is None and made.alphas_cumprod is None:
        raise PretrainedError(f"{where}: give the noise process (process=) or the DDPM schedule (alphas_cumprod=)")
    try:
        process_of(made)
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"{where}: {exc}") from None
    if made.prediction_type == "edm_denoiser" and made.process.sigma_data is None:
        raise PretrainedError(
            f"{where}: prediction_type 'edm_denoiser' needs an EDM process (with sigma_data), "
            f"got process '{made.process.name}' ({made.process.kind})"
        )
    return made


def process_of(made: Pretrained) -> NoiseSchedule | NoiseProcess:
    """The process a pretrained model runs on: its ``process``, else the DDPM schedule of its ``alphas_cumprod``.

    Given both, ``alphas_cumprod`` must be the process's (its own or the equivalent abar); ValueError if not.
    """
    if made.process is None:
        if made.prediction_type == "edm_denoiser":
            raise ValueError("prediction_type 'edm_denoiser' needs an EDM process (process=NoiseProcess.edm(...))")
        return NoiseSchedule.from_alphas_cumprod(made.alphas_cumprod, made.schedule)
    if made.alphas_cumprod is not None:
        given = torch.as_tensor(made.alphas_cumprod).detach().to("cpu", torch.float64)
        own = made.process.alphas_cumprod
        if given.shape != own.shape or not torch.allclose(given, own, rtol=1e-5, atol=1e-7):
            raise ValueError(
                f"alphas_cumprod {list(given.shape)} is not the process's ('{made.process.name}', "
                f"{own.numel()} levels): give the process alone"
            )
    return made.process


def schedule_name(made: Pretrained, process: NoiseProcess) -> str:
    """The table's ``schedule``: the plugin's name for it, else (left "custom" with a process) the process's."""
    return process.name if made.process is not None and made.schedule == "custom" else made.schedule


@torch.inference_mode()
def encode_all(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Each sample of ``x`` encoded once, in batches on ``device``; float32 latents on the CPU."""
    parts = [encode(x[i : i + ENCODE_BATCH].to(device)).float().cpu() for i in range(0, x.shape[0], ENCODE_BATCH)]
    return torch.cat(parts)


def targets(x0: torch.Tensor, eps: torch.Tensor, process: NoiseProcess, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a perfect module outputs at x_t = a x0 + s eps under each prediction type, on ``process`` at ``t``.

    ``edm_denoiser`` (the raw F of D = c_skip x + c_out F, with x = x_t / a, sigma = s / a) only where the
    process has a sigma_data.
    """
    shape = (-1,) + (1,) * (x0.dim() - 1)
    a = process.a.float()[t].reshape(shape)
    s = process.s.float()[t].reshape(shape)
    out = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0, "flow": eps - x0}
    if process.sigma_data is not None:
        sd, sigma = process.sigma_data, s / a
        total = sigma.square() + sd**2
        c_skip, c_out = sd**2 / total, sigma * sd * total.rsqrt()
        out["edm_denoiser"] = (x0 - c_skip * (x0 + sigma * eps)) / c_out
    return out


def relative_errors(raw: torch.Tensor, wanted: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each prediction type's ``mean (raw - target)^2 / mean target^2``: 1 for a model that predicts zeros."""
    return {k: float(((raw - v) ** 2).mean() / (v**2).mean().clamp_min(1e-12)) for k, v in wanted.items()}


def raw_output(
    module: torch.nn.Module,
    process: NoiseProcess,
    declared: str,
    x_t: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    channels: int | None = None,
) -> torch.Tensor:
    """The module's raw output on the CPU, called as ``ConditionalModel`` calls it under ``declared`` (its
    process's model timesteps; an EDM network through c_in), ``CHECK_BATCH`` rows at a time; the first
    ``channels`` channels where the model learned a variance too."""
    device = next(iter(module.parameters()), torch.empty(0)).device
    x_in = ToEpsilon(declared, False, process, torch.device("cpu"), torch.float32).inputs(x_t, t)
    t_in = t if process.kind == "vp" else process.model_timesteps.float()[t]
    parts = []
    for i in range(0, x_t.shape[0], CHECK_BATCH):
        rows = slice(i, i + CHECK_BATCH)
        parts.append(module(x_in[rows].to(device), t_in[rows].to(device), labels[rows].to(device)).float().cpu())
    out = torch.cat(parts)
    return out if channels is None else out[:, :channels]


def wrong_process(
    errors: dict[str, float], declared_type: str, process: NoiseProcess, through_preconditioning: Callable[[], float]
) -> tuple[str, dict[str, float]]:
    """Why the module looks run on a process other than its own ("" if it does not), and the relative errors of
    the types the declared one competes with.

    An EDM network called without its preconditioning fits far better through it (``through_preconditioning``,
    called only on an EDM process); a rectified-flow model declared another type off a flow fits eps - x0
    best. Off a flow, eps - x0 lies close to v (equal up to scale where a = s), so 'flow' is a rival only when
    it fits best of all and clearly better than the declared type, and it leaves the competitors.
    """
    declared = errors[declared_type]
    if declared_type != "edm_denoiser" and process.sigma_data is not None:
        fitted = through_preconditioning()
        if fitted < CHECK_RATIO * declared:
            return (
                f"an EDM network run without its preconditioning: relative error {declared:.3f} under "
                f"'{declared_type}', {fitted:.3f} called through c_in, c_skip and c_out: "
                "declare prediction_type 'edm_denoiser'"
            ), errors
    if declared_type == "flow" or process.kind == "flow":
        return "", errors
    rivals = {k: v for k, v in errors.items() if k != "flow"}
    if errors["flow"] < CHECK_RATIO * declared and errors["flow"] < min(rivals.values()):
        return (
            f"a rectified-flow model (it predicts eps - x0) declared '{declared_type}' on a {process.kind} "
            f"process: relative error {declared:.3f} under '{declared_type}', {errors['flow']:.3f} under 'flow' "
            "at mid-range t; give it the FlowMatchEulerDiscreteScheduler it was trained with"
        ), rivals
    return "", rivals


@torch.inference_mode()
def model_check(
    module: torch.nn.Module,
    schedule: NoiseSchedule | NoiseProcess,
    prediction_type: str,
    learned_variance: bool,
    x0: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    seed: int = 0,
) -> str:
    """'ok', or, in one line, why the model's declared parameterisation or its class conditioning looks wrong.

    On held-out samples noised by the model's process (x_t = a x0 + s eps) at mid-range t, the module is
    called as the classifier calls it (its process's model timesteps; an EDM network through c_in). The raw
    output's error against the declared type's target must be clearly lower than against the other types'
    (relative errors, so scale does not matter); a model that fits a flow velocity better is named a flow model
    run on another process's scheduler, and an EDM process's network that fits far better when called through
    its preconditioning is named as run without it. The output must also change when the class does (some
    diffusers versions silently ignored ``class_labels``; such a model classifies at chance).
    """
    if x0.shape[0] == 0:
        return "not checked: no held-out samples"
    process = as_process(schedule)
    generator = torch.Generator().manual_seed(seed)
    x0, y = x0[:CHECK_SAMPLES].float(), y[:CHECK_SAMPLES]
    n, big_t = x0.shape[0], process.num_timesteps
    low, high = int(CHECK_T[0] * big_t), max(int(CHECK_T[0] * big_t) + 1, int(CHECK_T[1] * big_t))
    t = torch.randint(low, high, (n,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = process.q_sample(x0, t, eps)
    wanted = targets(x0, eps, process, t)
    channels = x0.shape[1] if learned_variance else None

    def call(declared: str, labels: torch.Tensor) -> torch.Tensor:
        return raw_output(module, process, declared, x_t, t, labels, channels)

    out, out_other = call(prediction_type, y), call(prediction_type, (y + 1) % num_classes)
    if out.shape != x0.shape:
        return f"the output has shape {list(out.shape[1:])}, the data {list(x0.shape[1:])}"
    if not torch.isfinite(out).all():
        return "the output holds NaN or inf"
    # the output of a call without c_in says nothing about an EDM network's F
    errors = relative_errors(out, {k: v for k, v in wanted.items() if k != "edm_denoiser" or k == prediction_type})
    declared = errors[prediction_type]

    def through_preconditioning() -> float:
        return relative_errors(call("edm_denoiser", y), {"edm_denoiser": wanted["edm_denoiser"]})["edm_denoiser"]

    misread, errors = wrong_process(errors, prediction_type, process, through_preconditioning)
    if misread:
        return misread
    best_other = min((k for k in errors if k != prediction_type), key=errors.__getitem__)
    if not declared < CHECK_RATIO * errors[best_other]:
        return (
            f"prediction_type '{prediction_type}' does not fit: relative error {declared:.3f} under it, "
            f"{errors[best_other]:.3f} under '{best_other}' at mid-range t"
        )
    effect = float(((out - out_other) ** 2).mean() / (out**2).mean().clamp_min(1e-12))
    if num_classes > 1 and effect < CHECK_CLASS_EFFECT:
        return "the output does not depend on the class: the labels do not reach the model, it classifies at chance"
    return "ok"


def load(
    denoiser: Denoiser,
    splits: Splits,
    heldout_x: torch.Tensor,
    heldout_y: torch.Tensor,
    device: torch.device,
    seed: int,
    log: Callable[[str], None],
    pair: str,
) -> Loaded | None:
    """The denoiser's pretrained model ready to run, or None when it is one the core trains."""
    made = denoiser.pretrained(splits.data_shape, splits.num_classes, list(splits.class_names))
    if made is None:
        return None
    if denoiser.objective:  # a training objective means nothing to a model that arrives trained
        raise ParamError(
            f"denoiser '{denoiser!r}' arrives trained, so objective={denoiser.objective} (what diffbench trains a "
            "model to) means nothing here; drop it (the model's scheduler says what it predicts)"
        )
    made = check_pretrained(made, denoiser.name)
    module = made.module.to(device).eval()
    encode_s, per_image = 0.0, math.nan
    if made.encode is not None:
        start = time.perf_counter()
        test_z = encode_all(made.encode, splits.test_x, device)
        heldout_z = encode_all(made.encode, heldout_x, device)
        encode_s = time.perf_counter() - start
        per_image = encode_s / (splits.test_x.shape[0] + heldout_x.shape[0])
        log(f"{pair}: encoded {test_z.shape[0] + heldout_z.shape[0]} images to latents {list(test_z.shape[1:])}")
        splits = Splits(heldout_z, heldout_y, test_z, splits.test_y, splits.class_names)
        heldout_x = heldout_z
    schedule = process_of(made)
    process = as_process(schedule)
    check = model_check(
        module, schedule, made.prediction_type, made.learned_variance, heldout_x, heldout_y, splits.num_classes, seed
    )
    if check != "ok":
        log(f"{pair}: model_check: {check}")
    columns = {
        "schedule": schedule_name(made, process),
        "noise_process": process.kind,
        "objective": made.prediction_type,  # what it was trained to predict (not the suite's, which trains nothing)
        "num_timesteps": process.num_timesteps,
        "train_steps": 0,
        "prediction_type": made.prediction_type,
        "learned_variance": made.learned_variance,
        "model_source": made.source,
        "model_revision": made.revision,
        "model_check": check,
        "model_note": made.note,
        "latent": made.encode is not None,
        "encode_s": encode_s,
        "encode_s_per_image": per_image,
    }
    setup = PretrainedSetup(schedule, made.prediction_type, made.learned_variance, columns)
    info = {"cache_hit": False, "train_s": 0.0, "pretrained": made.source}
    log(f"{pair}: pretrained model from {made.source or 'the plugin'}, nothing trained")
    return Loaded(splits, heldout_x, module, setup, info)


def end_to_end(measured: dict[str, Any], columns: dict[str, Any]) -> dict[str, float]:
    """``end_to_end_samples_per_s`` of a measured row: its samples/s with each image's encode time added
    (nothing where the row has no positive samples/s)."""
    per_image = columns.get("encode_s_per_image", math.nan)
    rate = measured.get("samples_per_s")
    if rate is None or not rate > 0:
        return {}
    extra = per_image if per_image == per_image else 0.0
    return {"end_to_end_samples_per_s": 1.0 / (1.0 / rate + extra)}


def arrives_trained(denoiser: Denoiser) -> bool:
    """Whether the denoiser's plugin defines ``pretrained()``: it brings its own weights, so ``--checkpoint`` cannot."""
    return type(denoiser).pretrained is not Denoiser.pretrained


def overrides_check(denoiser: Denoiser) -> bool:
    return type(denoiser).check_dataset is not Denoiser.check_dataset


def check_pairs(cells: Iterable[Any]) -> None:
    """Each pretrained denoiser's ``check_dataset`` on its datasets, before anything runs (raises ParamError).

    Only denoisers that override ``check_dataset`` cost a dataset load; a dataset that fails to
    load is left for the run to report.
    """
    seen: set[tuple[str, str, int]] = set()
    loaded: dict[tuple[str, int], Splits | None] = {}
    for cell in cells:
        key = (repr(cell.dataset), repr(cell.denoiser), cell.seed)
        if key in seen or not overrides_check(cell.denoiser):
            continue
        seen.add(key)
        data_key = (repr(cell.dataset), cell.seed)
        if data_key not in loaded:
            try:
                loaded[data_key] = cell.dataset.load(cell.seed)
            except Exception:
                loaded[data_key] = None
        splits = loaded[data_key]
        if splits is None:
            continue
        try:
            cell.denoiser.check_dataset(tuple(splits.train_x.shape[1:]), list(splits.class_names))
        except ParamError as exc:
            raise ParamError(f"{cell.denoiser!r} on {cell.dataset!r}: {exc}") from None
