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
KNOWN_CLASSES = (CLASS_UNET, DIT, "Transformer2DModel", TEXT_UNET)


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
    text: bool
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
        """The folders whose weights diffbench loads: the model's, and the VAE's and text encoder's where present."""
        return [self.model_folder or "."] + ["vae"] * self.vae + ["text_encoder"] * self.text

    @property
    def from_hub(self) -> bool:
        return from_hub(self.source)


def read_layout(path: str, revision: str = "") -> Layout:
    """The folder's model, scheduler and extras; ParamError naming what is missing, unsupported or of the wrong type."""
    root = resolve(path, revision)
    folder, config = read_model_config(root, path)
    scheduler = read_scheduler_config(root, path)
    index_file = root / "model_index.json"
    index = read_json(index_file) if index_file.is_file() else {}
    vae_file = root / "vae" / "config.json"
    vae_config = read_json(vae_file) if vae_file.is_file() else {}
    integer(vae_config, "in_channels", vae_file)
    layout = Layout(
        root=root,
        source=path,
        model_folder=folder,
        model_class=config.get("_class_name", ""),
        model_config=config,
        scheduler_config=scheduler,
        vae=vae_file.is_file(),
        text=(root / "text_encoder" / "config.json").is_file() and (root / "tokenizer").is_dir(),
        id2label=labels(index.get("id2label"), "id2label", index_file)
        or labels(config.get("id2label"), "id2label", root / folder / "config.json"),
        index=index,
        vae_config=vae_config,
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
    elif config["_class_name"] != TEXT_UNET:
        integer(config, "num_embeds_ada_norm", file)


def check_conditioning(layout: Layout, path: str) -> None:
    """ParamError unless the model is conditioned on a class (or, a text-to-image UNet, on a prompt it can encode)."""
    if layout.kind == TEXT_UNET and not layout.text:
        raise diffbench.ParamError(
            f"path '{path}' holds a UNet2DConditionModel without text_encoder/ and tokenizer/: "
            "it has no class or text conditioning diffbench can use"
        )
    if layout.kind != TEXT_UNET and not layout.model_classes:
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
