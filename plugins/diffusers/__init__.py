"""Denoisers `diffusers` (a trained model in diffusers' layout) and `diffusers-unet` (a UNet2DModel diffbench trains).

`diffusers[path=DIR_OR_HUB_ID]` benchmarks a model saved by a diffusers pipeline's ``save_pretrained``:
``unet/`` or ``transformer/``, ``scheduler/``, and where present ``vae/`` (a latent model: each image
is encoded once) and ``text_encoder/`` + ``tokenizer/`` (text-to-image, zero-shot: class names become
prompts). Four kinds of model are conditioned on a class:

- ``UNet2DModel`` with ``num_class_embeds``: ``unet(x_t, t, class_labels=c).sample``;
- ``DiTTransformer2DModel`` (or a ``Transformer2DModel`` with ``ada_norm_zero``), usually with a learned
  variance and a VAE: ``transformer(z_t, timestep=t, class_labels=c).sample``, first half of the channels;
- ``UNet2DConditionModel`` with a CLIP text encoder: ``unet(z_t, t, encoder_hidden_states=prompt[c]).sample``;
- ``SD3Transformer2DModel`` (Stable Diffusion 3, a rectified flow) with two CLIPs and a T5 (``sd3``):
  ``transformer(hidden_states=z_t, timestep=t, encoder_hidden_states=embeds[c], pooled_projections=pooled[c])``.

A ``FluxTransformer2DModel`` is refused in one line (not run at guidance 1): Flux is distilled (from
guidance, or to few steps), so its error is no class likelihood. A model whose ``sample_size`` is not the
data's (in latents for a latent model) is refused where it cannot take it (a DiT's fixed positional
embeddings, SD3 beyond ``pos_embed_max_size``) and said and run where it can (a convolutional UNet), the
note recorded in ``model_note``.

The noise process and ``prediction_type`` come from the scheduler's config: a DDPM-family scheduler's
``alphas_cumprod`` (variance preserving; epsilon, v_prediction or sample), a ``FlowMatchEulerDiscreteScheduler``'s
own sigmas (rectified flow, the network fed sigma * T, predicting eps - x0: ``flow``), or an
``EDMEulerScheduler``'s or ``EDMDPMSolverMultistepScheduler``'s own Karras sigmas (the network called through
diffusers' EDM preconditioning: ``edm_denoiser``). The param ``prediction_type`` overrides what the folder says
(``model_check`` then says whether it fits). Only the config files are read until the model is needed, so bad
input is caught before anything runs; diffusers is imported only then too.

The package, one idea a module: ``hub`` (a folder or a hub id, and its files), ``layout`` (what the folder
holds and whether diffbench can use it), ``scheduler`` (the training process: DDPM, flow or EDM, a
valid one), ``values`` (typed reads of config values, a wrong one naming the file and key), ``labels``
(dataset classes to model labels), ``sd3`` (SD3's class prompts, as its pipeline encodes them),
``adapters`` (diffusers' modules behind ``forward(x_t, t, c)``) and ``denoisers`` (the two plugins).
"""

from __future__ import annotations

import diffbench

from .adapters import ClassDiT, ClassUNet, PromptSD3, PromptUNet
from .denoisers import Diffusers, DiffusersUNet
from .hub import content_hash, hub_cache, offline_mode
from .layout import Layout, read_layout

__all__ = [
    "ClassDiT",
    "ClassUNet",
    "Diffusers",
    "DiffusersUNet",
    "Layout",
    "PromptSD3",
    "PromptUNet",
    "content_hash",
    "hub_cache",
    "offline_mode",
    "read_layout",
    "register_denoisers",
]


@diffbench.hookimpl
def register_denoisers(register):
    register(Diffusers)
    register(DiffusersUNet)
