"""Denoisers `diffusers` (a trained model in diffusers' layout) and `diffusers-unet` (a UNet2DModel diffbench trains).

`diffusers[path=DIR_OR_HUB_ID]` benchmarks a model saved by a diffusers pipeline's ``save_pretrained``:
``unet/`` or ``transformer/``, ``scheduler/``, and where present ``vae/`` (a latent model: each image
is encoded once) and ``text_encoder/`` + ``tokenizer/`` (text-to-image, zero-shot: class names become
prompts). Three kinds of model are conditioned on a class:

- ``UNet2DModel`` with ``num_class_embeds``: ``unet(x_t, t, class_labels=c).sample``;
- ``DiTTransformer2DModel`` (or a ``Transformer2DModel`` with ``ada_norm_zero``), usually with a learned
  variance and a VAE: ``transformer(z_t, timestep=t, class_labels=c).sample``, first half of the channels;
- ``UNet2DConditionModel`` with a CLIP text encoder: ``unet(z_t, t, encoder_hidden_states=prompt[c]).sample``.

The schedule and ``prediction_type`` come from the scheduler's config (DDPM family only: the noising is
variance-preserving with its ``alphas_cumprod``). Only the config files are read until the model is
needed, so bad input is caught before anything runs; diffusers is imported only then too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import diffbench

EXTRA_HINT = "install the extra: pip install 'diffbench[diffusers]'"
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
MODEL_FOLDERS = ("unet", "transformer")
CLASS_UNET, DIT, TEXT_UNET = "UNet2DModel", "DiTTransformer2DModel", "UNet2DConditionModel"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise diffbench.ParamError(f"cannot read {path}: {exc}") from None


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
        return int(self.model_config.get("in_channels", 0))

    @property
    def learned_variance(self) -> bool:
        out = self.model_config.get("out_channels") or self.in_channels
        return int(out) == 2 * self.in_channels


def find_scheduler(root: Path) -> Path | None:
    for candidate in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    return None


def resolve(path: str, revision: str) -> Path:
    """The local folder of ``path``: a folder, or a hub id already cached (or fetched where the hub is reachable).

    Only config and text files are fetched here; the weights come when the model is loaded.
    """
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise diffbench.ParamError(f"path '{path}' is a file; give the folder a diffusers pipeline saved")
    if not HUB_ID.match(path):
        raise diffbench.ParamError(f"path '{path}' holds no model: no such folder (nor a hub id owner/name)")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            path,
            revision=revision or None,
            allow_patterns=["*.json", "*.txt"],
            cache_dir=hub_cache(),
            local_files_only=offline_mode(),
        )
    except Exception as exc:
        raise diffbench.ParamError(not_found(path, revision, exc)) from None
    return Path(folder)


def not_found(hub_id: str, revision: str, exc: Exception) -> str:
    """One line: which hub model could not be had, where diffbench looked, and the three ways to mend it."""
    at = f" at revision '{revision}'" if revision else ""
    fixes = (
        f"download it first (hf download {hub_id}{' --revision ' + revision if revision else ''}), "
        "unset HF_HUB_OFFLINE, or give a local folder as path="
    )
    if offline_mode():
        return (
            f"hub model '{hub_id}'{at} is not in the local Hugging Face cache {hub_cache()} and HF_HUB_OFFLINE is set, "
            f"so nothing is downloaded (nor is there a folder '{hub_id}'): {fixes}"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"hub model '{hub_id}'{at} is neither a folder, nor in the local Hugging Face cache {hub_cache()}, "
        f"nor reachable on the hub ({first}): check the id and the network, or give a local folder as path="
    )


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now (huggingface_hub reads it once, at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def hub_cache() -> str:
    """The hub cache folder as the environment says now: HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default.

    huggingface_hub reads these once, at import; diffbench reads them when a model is looked up, like HF_HUB_OFFLINE.
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expandvars(os.path.expanduser(os.environ[name]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def read_layout(path: str, revision: str = "") -> Layout:
    """The folder's model, scheduler and extras; ParamError naming what is missing or unsupported."""
    root = resolve(path, revision)
    folder = next((f for f in MODEL_FOLDERS if (root / f / "config.json").is_file()), None)
    if folder is None and (root / "config.json").is_file():
        folder = ""
    if folder is None:
        raise diffbench.ParamError(
            f"path '{path}' holds no model: no unet/config.json or transformer/config.json "
            "(give a folder written by a diffusers pipeline's save_pretrained)"
        )
    config = read_json(root / folder / "config.json")
    model_class = config.get("_class_name", "")
    known = (CLASS_UNET, DIT, "Transformer2DModel", TEXT_UNET)
    if model_class not in known:
        raise diffbench.ParamError(
            f"path '{path}' holds a {model_class or 'model of unknown class'}; diffusers takes {', '.join(known)}"
        )
    if model_class == "Transformer2DModel" and config.get("norm_type") != "ada_norm_zero":
        raise diffbench.ParamError(
            f"path '{path}' holds a Transformer2DModel that is not a DiT (norm_type ada_norm_zero)"
        )
    scheduler_path = find_scheduler(root)
    if scheduler_path is None:
        raise diffbench.ParamError(
            f"path '{path}' has no scheduler/scheduler_config.json: diffbench needs the model's training schedule"
        )
    scheduler = read_json(scheduler_path)
    name = scheduler.get("_class_name", "")
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
    index = read_json(root / "model_index.json") if (root / "model_index.json").is_file() else {}
    id2label = {int(k): str(v) for k, v in (index.get("id2label") or config.get("id2label") or {}).items()}
    layout = Layout(
        root=root,
        source=path,
        model_folder=folder,
        model_class=model_class,
        model_config=config,
        scheduler_config=scheduler,
        vae=(root / "vae" / "config.json").is_file(),
        text=(root / "text_encoder" / "config.json").is_file() and (root / "tokenizer").is_dir(),
        id2label=id2label,
        index=index,
    )
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
    missing = without_weights(layout) if not from_hub(layout) or offline_mode() else []  # online: fetched later
    if missing:
        where = ", ".join(f"{f}/" for f in missing)
        if from_hub(layout):
            raise diffbench.ParamError(
                f"the cached snapshot of hub model '{path}' ({layout.root}) holds no weights in {where} and "
                f"HF_HUB_OFFLINE is set: download it first (hf download {path}), unset HF_HUB_OFFLINE, "
                "or give a local folder as path="
            )
        raise diffbench.ParamError(
            f"path '{path}' holds no weights (*.safetensors or *.bin) in {where}: "
            "give the folder a diffusers pipeline's save_pretrained wrote, weights included"
        )
    return layout


def label_ids(layout: Layout, class_names: list[str], classes: str) -> list[int]:
    """The model's label id of each dataset class: the ``classes`` param, names in id2label, or by position."""
    total = layout.model_classes or 0
    if classes:
        items = [s.strip() for s in classes.split("|" if "|" in classes else ",") if s.strip()]
        if len(items) != len(class_names):
            raise diffbench.ParamError(
                f"classes lists {len(items)} labels but the dataset has {len(class_names)} classes; give one per class"
            )
        ids = [int(item) if item.isdigit() else by_name(layout, item) for item in items]
    else:
        names = name_index(layout)
        found = [names.get(n.strip().lower()) for n in class_names]
        if layout.id2label and all(i is not None for i in found):
            ids = [int(i) for i in found]  # type: ignore[arg-type]
        elif len(class_names) == total:
            ids = list(range(total))
        else:
            raise diffbench.ParamError(
                f"the model has {total} classes but the dataset has {len(class_names)}, and its names do not all "
                "match the model's id2label; map them with classes='ID|ID|...' (one model label per dataset class)"
            )
    bad = [i for i in ids if not 0 <= i < total]
    if bad:
        raise diffbench.ParamError(f"classes: label {bad[0]} is outside the model's {total} classes [0, {total})")
    return ids


def name_index(layout: Layout) -> dict[str, int]:
    """Every comma-separated synonym of each id2label name (ImageNet style), lower-cased, to its id."""
    out: dict[str, int] = {}
    for i, label in layout.id2label.items():
        for synonym in label.split(","):
            out.setdefault(synonym.strip().lower(), i)
    return out


def by_name(layout: Layout, name: str) -> int:
    found = name_index(layout).get(name.lower())
    if found is None:
        hint = "the model has no id2label" if not layout.id2label else "no such name in the model's id2label"
        raise diffbench.ParamError(f"classes: '{name}' is not a label id and {hint}")
    return found


WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def weight_folders(layout: Layout) -> list[str]:
    """The folders whose weights diffbench loads: the model's, and the VAE's and text encoder's where present."""
    return [layout.model_folder or "."] + ["vae"] * layout.vae + ["text_encoder"] * layout.text


def without_weights(layout: Layout) -> list[str]:
    """The folders of ``weight_folders`` that hold no ``*.safetensors`` or ``*.bin`` file."""
    return [f for f in weight_folders(layout) if not any(any((layout.root / f).glob(p)) for p in WEIGHT_PATTERNS)]


def from_hub(layout: Layout) -> bool:
    return not Path(layout.source).expanduser().is_dir()


def fetch_weights(layout: Layout) -> None:
    """A hub model's weights for the folders diffbench loads (safetensors where there are any); no-op for a folder.

    They come from the snapshot the configs were read from (its commit), so config and weights always match.
    """
    if not from_hub(layout):
        return
    from huggingface_hub import snapshot_download

    for folder in weight_folders(layout):
        for pattern in WEIGHT_PATTERNS:
            where = f"{folder}/{pattern}" if folder != "." else pattern
            snapshot_download(
                layout.source,
                revision=layout.root.name,
                allow_patterns=[where],
                cache_dir=hub_cache(),
                local_files_only=offline_mode(),
            )
            if any((layout.root / folder).glob(pattern)):
                break


def content_hash(root: Path) -> str:
    """A sha256 over every file's relative path and bytes (a hub snapshot: its commit hash instead)."""
    if root.parent.name == "snapshots":
        return root.name
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


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


def quiet_diffusers() -> None:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def alphas_cumprod(layout: Layout) -> torch.Tensor:
    """The scheduler's own ``alphas_cumprod`` (its betas, beta_schedule, T and zero-SNR rescaling), float64."""
    from diffusers import DDPMScheduler

    config = {k: v for k, v in layout.scheduler_config.items() if not k.startswith("_")}
    return DDPMScheduler.from_config(config).alphas_cumprod.double()


def prompt_embeddings(layout: Layout, prompts: list[str]) -> torch.Tensor:
    """``[K, L, D]``: the text encoder's last hidden state of each prompt, padded to the tokenizer's length."""
    import transformers

    def component(folder: str, fallback: str) -> Any:
        entry = layout.index.get(folder)
        name = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers" else fallback
        return getattr(transformers, name)

    tokenizer = component("tokenizer", "AutoTokenizer").from_pretrained(layout.root / "tokenizer")
    encoder = component("text_encoder", "CLIPTextModel").from_pretrained(layout.root / "text_encoder").eval()
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.inference_mode():
        hidden = encoder(tokens.input_ids)[0]
    return hidden.float().clone()


class Diffusers(diffbench.Denoiser):
    """A trained diffusers model: class-conditional UNet, DiT (+ VAE) or text-to-image UNet (+ CLIP), zero-shot."""

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
        if p["prediction_type"] and p["prediction_type"] not in diffbench.parameterisation.PREDICTION_TYPES:
            known = ", ".join(diffbench.parameterisation.PREDICTION_TYPES)
            raise diffbench.ParamError(
                f"diffusers prediction_type must be one of {known}, got '{p['prediction_type']}'"
            )
        if "{}" not in p["prompt"]:
            raise diffbench.ParamError(f"diffusers prompt needs a {{}} where the class name goes, got '{p['prompt']}'")
        self.layout = read_layout(p["path"], p["revision"])
        if self.layout.text and importlib.util.find_spec("transformers") is None:
            raise diffbench.ParamError(f"a text-to-image model needs the transformers package: {EXTRA_HINT}")

    def check_dataset(self, data_shape: tuple[int, ...], class_names: list[str]) -> None:
        layout = self.layout
        if layout.kind != TEXT_UNET:
            label_ids(layout, class_names, self.params["classes"])
        if layout.vae:
            want = int(read_json(layout.root / "vae" / "config.json").get("in_channels", 3))
            where = "its VAE takes"
        else:
            want, where = layout.in_channels, "it takes"
        if len(data_shape) != 3 or data_shape[0] != want:
            raise diffbench.ParamError(
                f"the model cannot read the dataset's samples, shape {list(data_shape)}: {where} images [{want}, H, W]"
            )

    def build(self, data_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        raise diffbench.ParamError("denoiser 'diffusers' arrives trained: it is loaded, not built (no --checkpoint)")

    def pretrained(self, data_shape: tuple[int, ...], num_classes: int, class_names: list[str]) -> diffbench.Pretrained:
        import diffusers

        quiet_diffusers()
        self.check_dataset(data_shape, class_names)
        layout = self.layout
        fetch_weights(layout)
        load = {"subfolder": layout.model_folder} if layout.model_folder else {}
        if layout.kind == CLASS_UNET:
            module: nn.Module = ClassUNet(
                diffusers.UNet2DModel.from_pretrained(layout.root, **load), self.ids(class_names)
            )
        elif layout.kind == DIT:
            dit = diffusers.DiTTransformer2DModel.from_pretrained(layout.root, **load)
            module = ClassDiT(dit, self.ids(class_names))
        else:
            unet = diffusers.UNet2DConditionModel.from_pretrained(layout.root, **load)
            prompts = [self.params["prompt"].format(name) for name in class_names]
            module = PromptUNet(unet, prompt_embeddings(layout, prompts))
        encode = None
        if layout.vae:
            vae = diffusers.AutoencoderKL.from_pretrained(layout.root, subfolder="vae").eval()
            scale = vae.config.scaling_factor
            shift = getattr(vae.config, "shift_factor", None) or 0.0

            def encode(x: torch.Tensor) -> torch.Tensor:
                vae.to(x.device)
                return (vae.encode(x).latent_dist.mean - shift) * scale

        scheduler = layout.scheduler_config
        schedule = (
            scheduler.get("beta_schedule", "linear") if scheduler.get("trained_betas") is None else "trained_betas"
        )
        return diffbench.Pretrained(
            module=module.eval(),
            alphas_cumprod=alphas_cumprod(layout),
            prediction_type=self.params["prediction_type"] or scheduler.get("prediction_type", "epsilon"),
            learned_variance=layout.learned_variance,
            schedule=schedule,
            source=str(layout.source),
            revision=content_hash(layout.root),
            encode=encode,
        )

    def ids(self, class_names: list[str]) -> list[int]:
        return label_ids(self.layout, class_names, self.params["classes"])


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


@diffbench.hookimpl
def register_denoisers(register):
    register(Diffusers)
    register(DiffusersUNet)
