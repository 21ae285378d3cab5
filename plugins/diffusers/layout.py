"""What a diffusers folder holds, and whether diffbench can use it, read from its config files alone.

No weights are read and diffusers is not imported here, so bad input is caught before anything runs:
every check is a ParamError naming what is missing or unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffbench

from .hub import from_hub, offline_mode, read_json, resolve, without_weights
from .scheduler import read_scheduler_config
from .values import integer, labels, optional_text, text, wrong

MODEL_FOLDERS = ("unet", "transformer")
CLASS_UNET, DIT, TEXT_UNET = "UNet2DModel", "DiTTransformer2DModel", "UNet2DConditionModel"
SD3, FLUX = "SD3Transformer2DModel", "FluxTransformer2DModel"
KNOWN_CLASSES = (CLASS_UNET, DIT, "Transformer2DModel", TEXT_UNET, SD3)
TEXT_KINDS = (TEXT_UNET, SD3)  # conditioned on class prompts, zero-shot
# A text-to-image model's (text encoder, tokenizer) folder pairs: those it needs, and those it may lack.
TEXT_FOLDERS = {
    TEXT_UNET: [("text_encoder", "tokenizer")],
    SD3: [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")],  # SD3's two CLIPs
}
OPTIONAL_TEXT_FOLDERS = {SD3: [("text_encoder_3", "tokenizer_3")]}  # no T5: diffusers feeds zeros in its place
FLUX_REFUSED = (
    "holds a FluxTransformer2DModel (Flux), which the diffusers denoiser refuses: Flux is distilled (flux-dev "
    "from classifier-free guidance, fed the guidance scale; flux-schnell to a few sampling steps), so its velocity, "
    "at guidance 1 or any other, imitates a sampler rather than the conditional flow of p(x | c), and its "
    "denoising error is no class likelihood; give an SD3 folder (SD3Transformer2DModel) for a rectified-flow "
    "text-to-image model"
)


@dataclass
class Layout:
    """What a diffusers folder holds, read from its config files alone (no weights, no diffusers import)."""

    root: Path
    source: str  # the path or hub id as given
    model_folder: str  # "unet", "transformer" or "" (a bare model folder)
    model_class: str
    model_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    vae: bool
    text: bool  # the text encoders and tokenizers a text-to-image model needs are all there
    id2label: dict[int, str] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    vae_config: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.model_class == "Transformer2DModel":
            return DIT
        return self.model_class

    @property
    def model_classes(self) -> int | None:
        """How many class labels the model has (None: conditioned on text)."""
        if self.kind in TEXT_KINDS:
            return None
        if self.kind == CLASS_UNET:
            return self.model_config.get("num_class_embeds")
        if self.kind == DIT:
            return self.model_config.get("num_embeds_ada_norm")
        return None

    @property
    def in_channels(self) -> int:
        return self.model_config.get("in_channels") or 0

    @property
    def learned_variance(self) -> bool:
        out = self.model_config.get("out_channels") or self.in_channels
        return out == 2 * self.in_channels

    @property
    def weight_folders(self) -> list[str]:
        """The folders whose weights diffbench loads: the model's, and the VAE's and text encoders' where present."""
        return [self.model_folder or "."] + ["vae"] * self.vae + [encoder for encoder, _ in self.text_folders]

    @property
    def text_folders(self) -> list[tuple[str, str]]:
        """The (text encoder, tokenizer) folders the model's prompts are encoded with, in order (none: not text)."""
        if not self.text:
            return []
        optional = [pair for pair in OPTIONAL_TEXT_FOLDERS.get(self.kind, []) if has_text_pair(self.root, pair)]
        return TEXT_FOLDERS[self.kind] + optional

    @property
    def vae_scale_factor(self) -> int:
        """How many pixels one latent spans (1 without a VAE): 2 ** (VAE levels - 1), as diffusers' pipelines say."""
        levels = self.vae_config.get("block_out_channels")
        return 2 ** (len(levels) - 1) if self.vae and isinstance(levels, list) and levels else 1

    @property
    def from_hub(self) -> bool:
        return from_hub(self.source)


def read_layout(path: str, revision: str = "") -> Layout:
    """The folder's model, scheduler and extras; ParamError naming what is missing, unsupported or of the wrong type."""
    root = resolve(path, revision)
    folder, config = read_model_config(root, path)
    kind = DIT if config["_class_name"] == "Transformer2DModel" else config["_class_name"]
    scheduler = read_scheduler_config(root, path)
    index_file = root / "model_index.json"
    index = read_json(index_file) if index_file.is_file() else {}
    vae_file = root / "vae" / "config.json"
    vae_config = read_json(vae_file) if vae_file.is_file() else {}
    integer(vae_config, "in_channels", vae_file)
    latent_channels = integer(vae_config, "latent_channels", vae_file)
    layout = Layout(
        root=root,
        source=path,
        model_folder=folder,
        model_class=config.get("_class_name", ""),
        model_config=config,
        scheduler_config=scheduler,
        vae=vae_file.is_file(),
        text=kind in TEXT_FOLDERS and all(has_text_pair(root, pair) for pair in TEXT_FOLDERS[kind]),
        id2label=labels(index.get("id2label"), "id2label", index_file)
        or labels(config.get("id2label"), "id2label", root / folder / "config.json"),
        index=index,
        vae_config=vae_config,
    )
    if latent_channels is not None and latent_channels != layout.in_channels:
        raise diffbench.ParamError(
            f"path '{path}': its VAE makes latents of {latent_channels} channels but its {layout.kind} takes "
            f"{layout.in_channels} (`latent_channels` in {vae_file}, `in_channels` in its config): "
            "give the VAE the model was trained with"
        )
    check_conditioning(layout, path)
    check_weights(layout, path)
    return layout


def read_model_config(root: Path, path: str) -> tuple[str, dict[str, Any]]:
    """The model's folder ("unet", "transformer" or "": a bare model folder) and config, of a class diffbench takes."""
    folder = next((f for f in MODEL_FOLDERS if (root / f / "config.json").is_file()), None)
    if folder is None and (root / "config.json").is_file():
        folder = ""
    if folder is None:
        raise diffbench.ParamError(
            f"path '{path}' holds no model: no unet/config.json or transformer/config.json "
            "(give a folder written by a diffusers pipeline's save_pretrained)"
        )
    file = root / folder / "config.json"
    config = read_json(file)
    model_class = text(config, "_class_name", file)
    if model_class == FLUX:
        raise diffbench.ParamError(f"path '{path}' {FLUX_REFUSED}")
    if model_class not in KNOWN_CLASSES:
        raise diffbench.ParamError(
            f"path '{path}' holds a {model_class or 'model of unknown class'}; "
            f"diffusers takes {', '.join(KNOWN_CLASSES)}"
        )
    if model_class == "Transformer2DModel" and optional_text(config, "norm_type", file) != "ada_norm_zero":
        raise diffbench.ParamError(
            f"path '{path}' holds a Transformer2DModel that is not a DiT (norm_type ada_norm_zero)"
        )
    check_model_values(config, file)
    return folder, config


def check_model_values(config: dict[str, Any], file: Path) -> None:
    """ParamError naming the key where a value diffbench reads is of the wrong type (a class count of "10")."""
    if integer(config, "in_channels", file) is None:
        raise wrong("in_channels", file, "an integer", config.get("in_channels"))
    integer(config, "out_channels", file)
    if config["_class_name"] == CLASS_UNET:
        integer(config, "num_class_embeds", file)
        optional_text(config, "class_embed_type", file)
    elif config["_class_name"] == SD3:
        for key in ("patch_size", "joint_attention_dim", "pos_embed_max_size"):
            integer(config, key, file)
    elif config["_class_name"] != TEXT_UNET:
        integer(config, "num_embeds_ada_norm", file)
        integer(config, "patch_size", file)
    sample_size(config, file)


def check_conditioning(layout: Layout, path: str) -> None:
    """ParamError unless the model is conditioned on a class (or, a text-to-image UNet, on a prompt it can encode)."""
    if layout.kind in TEXT_KINDS and not layout.text:
        needed = " and ".join(f"{folder}/" for pair in TEXT_FOLDERS[layout.kind] for folder in pair)
        raise diffbench.ParamError(
            f"path '{path}' holds a {layout.kind} without {needed}: "
            "it has no class or text conditioning diffbench can use"
        )
    for encoder, tokenizer in OPTIONAL_TEXT_FOLDERS.get(layout.kind, []):
        if (layout.root / encoder / "config.json").is_file() and not (layout.root / tokenizer).is_dir():
            raise diffbench.ParamError(
                f"path '{path}' has {encoder}/ but no {tokenizer}/: "
                "give the tokenizer its text encoder was trained with"
            )
    if layout.kind not in TEXT_KINDS and not layout.model_classes:
        what = "num_class_embeds" if layout.kind == CLASS_UNET else "num_embeds_ada_norm"
        raise diffbench.ParamError(
            f"path '{path}' holds a {layout.kind} with no class conditioning ({what} is not set): "
            "a diffusion classifier needs p(x | c)"
        )
    if layout.kind == CLASS_UNET and layout.model_config.get("class_embed_type") not in (None, "embedding"):
        raise diffbench.ParamError(
            f"path '{path}': a UNet2DModel with class_embed_type '{layout.model_config['class_embed_type']}' "
            "takes no class labels"
        )


def check_weights(layout: Layout, path: str) -> None:
    """ParamError when a folder diffbench loads has no weights (a hub model online: they are fetched later)."""
    missing = without_weights(layout.root, layout.weight_folders) if not layout.from_hub or offline_mode() else []
    if not missing:
        return
    where = ", ".join(f"{f}/" for f in missing)
    if layout.from_hub:
        raise diffbench.ParamError(
            f"the cached snapshot of hub model '{path}' ({layout.root}) holds no weights in {where} and "
            f"HF_HUB_OFFLINE is set: download it first (hf download {path}), unset HF_HUB_OFFLINE, "
            "or give a local folder as path="
        )
    raise diffbench.ParamError(
        f"path '{path}' holds no weights (*.safetensors or *.bin) in {where}: "
        "give the folder a diffusers pipeline's save_pretrained wrote, weights included"
    )


def has_text_pair(root: Path, pair: tuple[str, str]) -> bool:
    encoder, tokenizer = pair
    return (root / encoder / "config.json").is_file() and (root / tokenizer).is_dir()


def sample_size(config: dict[str, Any], file: Path) -> tuple[int, int] | None:
    """The model config's ``sample_size`` as (height, width) in the model's own space (latents for a latent model);
    None where it is absent."""
    value = config.get("sample_size")
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2:
        sizes = [integer({"sample_size": v}, "sample_size", file) for v in value]
        return (sizes[0], sizes[1]) if None not in sizes else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise wrong("sample_size", file, "an integer from 1 up, or [height, width]", value)
    return (value, value)


def check_sample_size(layout: Layout, data_shape: tuple[int, ...]) -> str:
    """Whether the model takes the dataset's image size, before anything runs.

    "" where the model was made for that size (or says no size); a one-line note where it runs at another
    size (a convolutional UNet; SD3 below its positional embeddings' limit); ParamError where it cannot:
    fixed (DiT) or too few (SD3's ``pos_embed_max_size``) positional embeddings, or a size its patches or
    its down- and up-sampling do not divide.
    """
    if len(data_shape) != 3:
        return ""  # check_dataset refuses it, naming the shape
    factor = layout.vae_scale_factor
    height, width = data_shape[1] // factor, data_shape[2] // factor
    config = layout.model_config
    trained = sample_size(config, layout.root / layout.model_folder / "config.json")

    def size(h: int, w: int) -> str:
        return f"{h}x{w} latents ({h * factor}x{w * factor} px)" if layout.vae else f"{h}x{w} px"

    have = f"the dataset's images are {data_shape[1]}x{data_shape[2]} px" + (
        f", {height}x{width} latents" if layout.vae else ""
    )

    def refuse(why: str, fix: str = "") -> diffbench.ParamError:
        return diffbench.ParamError(f"the model cannot take the dataset's image size: {have}, but {why}{fix}")

    resize = " (resize the images, e.g. with the dataset's size= param where it has one)"
    if layout.kind in (DIT, SD3):
        patch = config.get("patch_size") or 1
        if height % patch or width % patch or height < patch or width < patch:
            raise refuse(f"its {layout.kind} cuts them into {patch}x{patch} patches", resize)
        limit = config.get("pos_embed_max_size") if layout.kind == SD3 else None
        if limit is not None and max(height, width) > limit * patch:
            raise refuse(
                f"its positional embeddings (pos_embed_max_size {limit}) cover at most "
                f"{size(limit * patch, limit * patch)}",
                resize,
            )
        if limit is None and trained and (height, width) != trained:
            raise refuse(f"its {layout.kind}'s positional embeddings are fixed at {size(*trained)}", resize)
    elif layout.kind == CLASS_UNET:
        blocks = config.get("down_block_types")
        halvings = max(len(blocks) - 1, 0) if isinstance(blocks, list) else 0
        if height % 2**halvings or width % 2**halvings:
            raise refuse(f"its UNet2DModel halves them {halvings} times: it takes sizes divisible by {2**halvings}")
    if not trained or (height, width) == trained:
        return ""
    how = (
        "a convolutional UNet takes any size"
        if layout.kind != SD3
        else "SD3 crops its positional embeddings to the size"
    )
    return (
        f"the model was trained on {size(*trained)}, {have}: {how}, so it runs at the dataset's size, "
        "outside the size it was trained on (expect lower accuracy)"
    )
