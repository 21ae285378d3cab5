"""The two denoisers: ``diffusers`` (a model a diffusers pipeline saved) and ``diffusers-unet`` (diffbench trains)."""

from __future__ import annotations

import importlib.util
import sys

import torch

import diffbench

from .adapters import ClassUNet, alphas_cumprod, load_module, quiet_diffusers, vae_encoder
from .hub import content_hash, fetch_weights
from .labels import label_ids
from .layout import TEXT_KINDS, check_sample_size, read_layout
from .scheduler import edm_output_sign, family, find_scheduler, noise_process, prediction_type

PREDICTION_TYPES = diffbench.parameterisation.ALL_PREDICTION_TYPES

EXTRA_HINT = "install the extra: pip install 'diffbench[diffusers]'"


class Diffusers(diffbench.Denoiser):
    """A trained diffusers model: class-conditional UNet, DiT (+ VAE) or text-to-image UNet (+ CLIP), zero-shot,
    on its scheduler's process (DDPM, rectified flow or EDM; ``scheduler``)."""

    name = "diffusers"
    params = {"path": "", "prompt": "a photo of a {}.", "classes": "", "prediction_type": "", "revision": ""}
    accepts = "what the model was trained on (images in [-1, 1]; a latent model's VAE input)"

    def validate(self) -> None:
        p = self.params
        if importlib.util.find_spec("diffusers") is None:
            raise diffbench.ParamError(f"denoiser 'diffusers' needs the diffusers package: {EXTRA_HINT}")
        if not p["path"]:
            raise diffbench.ParamError(
                "denoiser 'diffusers' needs path=FOLDER (or a hub id), e.g. diffusers[path=./ddpm-digits]"
            )
        if p["prediction_type"] and p["prediction_type"] not in PREDICTION_TYPES:
            raise diffbench.ParamError(
                f"diffusers prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got '{p['prediction_type']}'"
            )
        if "{}" not in p["prompt"]:
            raise diffbench.ParamError(f"diffusers prompt needs a {{}} where the class name goes, got '{p['prompt']}'")
        self.layout = read_layout(p["path"], p["revision"])
        if self.layout.text and importlib.util.find_spec("transformers") is None:
            raise diffbench.ParamError(f"a text-to-image model needs the transformers package: {EXTRA_HINT}")
        if p["prediction_type"] == "edm_denoiser" and family(self.layout.scheduler_config) != "edm":
            raise diffbench.ParamError(
                f"diffusers prediction_type 'edm_denoiser' needs an EDM scheduler (EDMEulerScheduler, "
                f"EDMDPMSolverMultistepScheduler); path '{p['path']}' has {self.layout.scheduler_config['_class_name']}"
            )

    def check_dataset(self, data_shape: tuple[int, ...], class_names: list[str]) -> None:
        layout = self.layout
        if layout.kind not in TEXT_KINDS:
            label_ids(layout, class_names, self.params["classes"])
        if layout.vae:
            want = layout.vae_config.get("in_channels") or 3
            where = "its VAE takes"
        else:
            want, where = layout.in_channels, "it takes"
        if len(data_shape) != 3 or data_shape[0] != want:
            raise diffbench.ParamError(
                f"the model cannot read the dataset's samples, shape {list(data_shape)}: {where} images [{want}, H, W]"
            )
        self.note = check_sample_size(layout, data_shape)  # refused, or said once here and recorded in the rows
        if self.note and self.note not in vars(self).setdefault("said", set()):
            self.said.add(self.note)
            print(f"diffbench: note: {self!r}: {self.note}", file=sys.stderr)

    def build(self, data_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        raise diffbench.ParamError("denoiser 'diffusers' arrives trained: it is loaded, not built (no --checkpoint)")

    def pretrained(self, data_shape: tuple[int, ...], num_classes: int, class_names: list[str]) -> diffbench.Pretrained:
        quiet_diffusers()
        self.check_dataset(data_shape, class_names)
        layout = self.layout
        fetch_weights(layout.source, layout.root, layout.weight_folders)
        module = load_module(layout, class_names, self.params["classes"], self.params["prompt"])
        encode = vae_encoder(layout) if layout.vae else None
        scheduler = layout.scheduler_config
        declared = self.params["prediction_type"] or prediction_type(scheduler)
        if family(scheduler) == "vp":  # as before processes existed: the DDPM schedule of its alphas_cumprod
            schedule = (
                scheduler.get("beta_schedule", "linear") if scheduler.get("trained_betas") is None else "trained_betas"
            )
            process_args = {"alphas_cumprod": alphas_cumprod(layout), "schedule": schedule}
        else:  # a flow or EDM process: the scheduler's own sigmas and the timesteps it feeds the network
            process_args = {"process": noise_process(scheduler, find_scheduler(layout.root))}
        if declared == "edm_denoiser" and edm_output_sign(scheduler) < 0:
            module = Negated(module)  # precondition_outputs' c_out is negated under v_prediction: F read as -F
        return diffbench.Pretrained(
            module=module.eval(),
            prediction_type=declared,
            learned_variance=layout.learned_variance,
            source=str(layout.source),
            revision=content_hash(layout.root),
            encode=encode,
            note=self.note,
            **process_args,
        )


class Negated(torch.nn.Module):
    """The module's output negated: an EDM network trained with ``prediction_type`` v_prediction, whose
    D = c_skip x - c_out F, read as the ``edm_denoiser`` D = c_skip x + c_out (-F)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return -self.module(x_t, t, c)


class DiffusersUNet(diffbench.Denoiser):
    """A small class-conditional ``UNet2DModel`` built from params and trained by diffbench (epsilon prediction)."""

    name = "diffusers-unet"
    params = {"channels": 32, "levels": 2, "layers_per_block": 1, "groups": 8, "attention": False}
    accepts = "images [C, H, W] with H and W divisible by 2**(levels-1)"
    train = {"steps": 2000, "batch_size": 128, "lr": 1e-3}

    def validate(self) -> None:
        p = self.params
        if importlib.util.find_spec("diffusers") is None:
            raise diffbench.ParamError(f"denoiser 'diffusers-unet' needs the diffusers package: {EXTRA_HINT}")
        if p["channels"] < 1 or p["levels"] < 1 or p["layers_per_block"] < 1 or p["groups"] < 1:
            raise diffbench.ParamError("diffusers-unet needs channels, levels, layers_per_block and groups >= 1")
        if p["channels"] % p["groups"]:
            raise diffbench.ParamError(
                f"diffusers-unet needs channels divisible by groups, got {p['channels']} and {p['groups']}"
            )

    def supports(self, data_shape: tuple[int, ...]) -> bool:
        factor = 2 ** (self.params["levels"] - 1)
        return len(data_shape) == 3 and data_shape[1] % factor == 0 and data_shape[2] % factor == 0

    def build(self, data_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        import diffusers

        quiet_diffusers()
        p = self.params
        levels = p["levels"]
        down = ["AttnDownBlock2D" if p["attention"] and i == levels - 1 else "DownBlock2D" for i in range(levels)]
        up = ["AttnUpBlock2D" if p["attention"] and i == 0 else "UpBlock2D" for i in range(levels)]
        unet = diffusers.UNet2DModel(
            sample_size=data_shape[1],
            in_channels=data_shape[0],
            out_channels=data_shape[0],
            layers_per_block=p["layers_per_block"],
            block_out_channels=tuple(p["channels"] * 2**i for i in range(levels)),
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            norm_num_groups=p["groups"],
            num_class_embeds=num_classes,
        )
        return ClassUNet(unet, list(range(num_classes)))
