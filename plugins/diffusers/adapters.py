"""diffusers' modules behind diffbench's ``forward(x_t, t, c)``: class labels, DiT outputs, class prompts, the VAE.

``t`` is what the core feeds the module: the integer t of a variance-preserving process, the timestep its
scheduler feeds the network on another (sigma * 1000 for a rectified flow such as SD3's).

diffusers and transformers are imported inside the functions, when a model is loaded, never at import.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import diffbench

from .hub import one_line
from .labels import label_ids
from .layout import CLASS_UNET, DIT, SD3, Layout
from .scheduler import find_scheduler
from .sd3 import encode_prompts, transformers_class


class ClassUNet(nn.Module):
    """``UNet2DModel`` with class embeddings: dataset class c is the model's label ``ids[c]``."""

    def __init__(self, unet: nn.Module, ids: list[int]) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, class_labels=self.ids[c]).sample


class ClassDiT(nn.Module):
    """``DiTTransformer2DModel``: the raw output (both halves when it learns the variance)."""

    def __init__(self, transformer: nn.Module, ids: list[int]) -> None:
        super().__init__()
        self.transformer = transformer
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.transformer(x_t, timestep=t, class_labels=self.ids[c]).sample


class PromptUNet(nn.Module):
    """``UNet2DConditionModel`` on each class's prompt embedding ``[K, L, D]``, encoded once."""

    def __init__(self, unet: nn.Module, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("embeddings", embeddings)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, encoder_hidden_states=self.embeddings[c]).sample


class PromptSD3(nn.Module):
    """``SD3Transformer2DModel`` on each class's prompt: ``embeds [K, L, D]`` and ``pooled [K, P]``, encoded once."""

    def __init__(self, transformer: nn.Module, embeds: torch.Tensor, pooled: torch.Tensor) -> None:
        super().__init__()
        self.transformer = transformer
        self.register_buffer("embeds", embeds)
        self.register_buffer("pooled", pooled)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.transformer(
            hidden_states=x_t, timestep=t, encoder_hidden_states=self.embeds[c], pooled_projections=self.pooled[c]
        ).sample


def quiet_diffusers() -> None:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def load_module(layout: Layout, class_names: list[str], classes: str, prompt: str) -> nn.Module:
    """The folder's model with its weights, conditioned on dataset classes (model labels by ``classes``, or prompts)."""
    import diffusers

    load = {"subfolder": layout.model_folder} if layout.model_folder else {}
    if layout.kind == CLASS_UNET:
        unet = diffusers.UNet2DModel.from_pretrained(layout.root, **load)
        return ClassUNet(unet, label_ids(layout, class_names, classes))
    if layout.kind == DIT:
        dit = diffusers.DiTTransformer2DModel.from_pretrained(layout.root, **load)
        return ClassDiT(dit, label_ids(layout, class_names, classes))
    prompts = [prompt.format(name) for name in class_names]
    if layout.kind == SD3:
        transformer = diffusers.SD3Transformer2DModel.from_pretrained(layout.root, **load)
        embeds, pooled = encode_prompts(layout, prompts)
        return PromptSD3(transformer, embeds.float().clone(), pooled.float().clone())
    unet = diffusers.UNet2DConditionModel.from_pretrained(layout.root, **load)
    return PromptUNet(unet, prompt_embeddings(layout, prompts))


def vae_encoder(layout: Layout) -> Callable[[torch.Tensor], torch.Tensor]:
    """The folder's VAE as a map from images to the latents the model denoises: (mean - shift_factor) * scaling_factor.

    SD3's VAE has a shift_factor, SD 1/2's and DiT's none (0): the latents the pipeline decodes as
    latents / scaling_factor + shift_factor.
    """
    import diffusers

    vae = diffusers.AutoencoderKL.from_pretrained(layout.root, subfolder="vae").eval()
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0

    def encode(x: torch.Tensor) -> torch.Tensor:
        vae.to(x.device)
        return (vae.encode(x).latent_dist.mean - shift) * scale

    return encode


def alphas_cumprod(layout: Layout) -> torch.Tensor:
    """The scheduler's own ``alphas_cumprod`` (its betas, beta_schedule, T and zero-SNR rescaling), float64."""
    from diffusers import DDPMScheduler

    config = {k: v for k, v in layout.scheduler_config.items() if not k.startswith("_")}
    try:
        return DDPMScheduler.from_config(config).alphas_cumprod.double()
    except Exception as exc:  # read_layout checked every key it reads; an older diffusers may lack a beta_schedule
        raise diffbench.ParamError(
            f"diffusers cannot build the schedule of {find_scheduler(layout.root)}: {one_line(exc)}"
        ) from None


def prompt_embeddings(layout: Layout, prompts: list[str]) -> torch.Tensor:
    """``[K, L, D]``: the text encoder's last hidden state of each prompt, padded to the tokenizer's length."""
    tokenizer = transformers_class(layout, "tokenizer", "AutoTokenizer").from_pretrained(layout.root / "tokenizer")
    encoder = transformers_class(layout, "text_encoder", "CLIPTextModel").from_pretrained(layout.root / "text_encoder")
    encoder.eval()
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.inference_mode():
        hidden = encoder(tokens.input_ids)[0]
    return hidden.float().clone()
