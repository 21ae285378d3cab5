"""Pretrained diffusers models: tiny random ones built from configs in temp folders (nothing is downloaded)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffbench
from diffbench import pretrained
from diffbench.model import ConditionalModel
from diffbench.parameterisation import ToEpsilon
from diffbench.schedule import NoiseSchedule
from tests.helpers import error_lines

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffbench_plugins.diffusers import Diffusers, DiffusersUNet  # noqa: E402

T = 100
RUN = [
    "-d",
    "digits",
    "-e",
    "shared-noise",
    "--trials",
    "1",
    "--scenario",
    "offline",
    "--repeats",
    "1",
    "--device",
    "cpu",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty hub cache: nothing is found, or fetched
    diffusers.utils.logging.set_verbosity_error()


def scheduler(prediction_type: str = "v_prediction", name: str = "squaredcos_cap_v2") -> diffusers.DDPMScheduler:
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=name, prediction_type=prediction_type)


def tiny_unet(num_classes: int | None = 10, channels: int = 1, out: int | None = None) -> diffusers.UNet2DModel:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=out or channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_classes,
    )


def save_class_unet(folder: Path, prediction_type: str = "v_prediction", num_classes: int | None = 10) -> Path:
    diffusers.DDPMPipeline(unet=tiny_unet(num_classes), scheduler=scheduler(prediction_type)).save_pretrained(folder)
    return folder


def save_dit(folder: Path) -> Path:
    """A DiT with learned sigma on the 4x4x4 latents of a tiny VAE that reads [1, 8, 8] digits."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    )
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=12,
    )
    id2label = {i: f"label{i}" for i in range(12)} | {i + 2: str(i) for i in range(10)}  # digit d is label d + 2
    pipe = diffusers.DiTPipeline(transformer=dit, vae=vae, scheduler=scheduler("epsilon", "linear"), id2label=id2label)
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    if "id2label" not in index:  # older diffusers did not save it
        index["id2label"] = {str(k): v for k, v in id2label.items()}
        (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def save_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer whose vocabulary is single characters, no merges (CLIP's two files, written by hand)."""
    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    tokenizer.save_pretrained(folder)


def save_text_unet(folder: Path, with_text: bool = True) -> Path:
    """A tiny UNet2DConditionModel on [1, 8, 8] pixels with a tiny CLIP text encoder (no VAE)."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    unet.save_pretrained(folder / "unet")
    scheduler("epsilon", "scaled_linear").save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    if with_text:
        save_tokenizer(folder / "tokenizer")
        config = transformers.CLIPTextConfig(
            vocab_size=200, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )  # fmt: skip
        transformers.CLIPTextModel(config).save_pretrained(folder / "text_encoder")
        index |= {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def load(folder: Path, shape=(1, 8, 8), names=None, **params) -> diffbench.Pretrained:
    names = names or [str(d) for d in range(10)]
    return Diffusers(path=str(folder), **params).pretrained(shape, len(names), names)


# --- conversion to epsilon, against diffusers' own noising ---------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_converts_to_the_noise_diffusers_added(prediction_type):
    sched = scheduler(prediction_type)
    x0, eps = torch.rand(6, 1, 8, 8) * 2 - 1, torch.randn(6, 1, 8, 8)
    t = torch.tensor([0, 5, 30, 50, 80, 99])
    x_t = sched.add_noise(x0, eps, t)
    raw = {"epsilon": eps, "v_prediction": sched.get_velocity(x0, eps, t), "sample": x0}[prediction_type]
    convert = ToEpsilon(prediction_type, False, sched.alphas_cumprod, torch.device("cpu"), torch.float32)
    assert torch.allclose(convert(raw, x_t, t), eps, atol=2e-4)


class Replay(torch.nn.Module):
    """Returns row c of a fixed output (c is the row's index here): the raw prediction under test."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("output", output)

    def forward(self, x_t, t, c):
        return self.output[c]


@pytest.mark.parametrize("learned_variance", [False, True])
def test_conditional_model_hands_estimators_epsilon_in_eps_and_eps_error(learned_variance):
    sched = scheduler("v_prediction")
    x0, eps = torch.rand(8, 1, 8, 8) * 2 - 1, torch.randn(8, 1, 8, 8)
    t = torch.randint(0, T, (8,), generator=torch.Generator().manual_seed(1))
    x_t, v = sched.add_noise(x0, eps, t), sched.get_velocity(x0, eps, t)
    raw = torch.cat([v, torch.full_like(v, 7.0)], 1) if learned_variance else v
    schedule = NoiseSchedule.from_alphas_cumprod(sched.alphas_cumprod, "squaredcos_cap_v2")
    model = ConditionalModel(
        Replay(raw), schedule, 10, (1, 8, 8), prediction_type="v_prediction", learned_variance=learned_variance
    )
    c = torch.arange(8)
    assert torch.allclose(model.eps(x_t, t, c), eps, atol=2e-4)
    assert model.eps_error(x_t, t, c, eps).max() < 1e-7
    model.max_batch = 3  # the chunked paths convert too
    assert torch.allclose(model.eps(x_t, t, c), eps, atol=2e-4)
    assert model.eps_error(x_t, t, c, eps).max() < 1e-7
    assert model.nfe == 32


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_plugin_reads_schedule_and_type_from_the_folder(tmp_path, prediction_type):
    made = load(save_class_unet(tmp_path / "m", prediction_type))
    assert made.prediction_type == prediction_type and made.schedule == "squaredcos_cap_v2"
    assert torch.allclose(made.alphas_cumprod.float(), scheduler(prediction_type).alphas_cumprod)
    assert not made.learned_variance and made.encode is None and len(made.revision) == 16
    schedule = NoiseSchedule.from_alphas_cumprod(made.alphas_cumprod, made.schedule)
    model = ConditionalModel(made.module, schedule, 10, (1, 8, 8), prediction_type=prediction_type)
    x_t, t, c = torch.randn(4, 1, 8, 8), torch.tensor([3, 20, 60, 90]), torch.tensor([0, 3, 5, 9])
    with torch.inference_mode():
        raw = made.module.unet(x_t, t, class_labels=c).sample
    a = made.alphas_cumprod[t].float().sqrt().reshape(-1, 1, 1, 1)
    s = (1 - made.alphas_cumprod[t].float()).sqrt().reshape(-1, 1, 1, 1)
    want = {"epsilon": raw, "v_prediction": a * raw + s * x_t, "sample": (x_t - a * raw) / s}[prediction_type]
    assert torch.allclose(model.eps(x_t, t, c), want, atol=1e-5)


def test_a_dit_with_learned_sigma_and_a_vae_maps_classes_by_id2label(tmp_path):
    made = load(save_dit(tmp_path / "dit"))
    assert made.learned_variance and made.prediction_type == "epsilon" and made.schedule == "linear"
    assert made.module.ids.tolist() == [d + 2 for d in range(10)]
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.inference_mode():
        z = made.encode(x)
        vae = diffusers.AutoencoderKL.from_pretrained(tmp_path / "dit", subfolder="vae")
        want = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        out = made.module(z, torch.tensor([1, 50, 99]), torch.tensor([0, 1, 2]))
    assert z.shape == (3, 4, 4, 4) and torch.allclose(z, want, atol=1e-5)
    assert out.shape == (3, 8, 4, 4)


def test_the_classes_param_maps_a_subset_of_the_model_labels(tmp_path):
    made = load(save_dit(tmp_path / "dit"), names=["a", "b", "c"], classes="11|0|5")
    assert made.module.ids.tolist() == [11, 0, 5]
    made = load(tmp_path / "dit", names=["x", "y"], classes="label1,3")
    assert made.module.ids.tolist() == [1, 3]  # a name, then a label id


def test_text_to_image_encodes_one_prompt_per_class(tmp_path):
    made = load(save_text_unet(tmp_path / "sd"), names=["cat", "dog", "0"], prompt="a photo of a {}.")
    emb = made.module.embeddings
    assert emb.shape == (3, 16, 16)
    assert not torch.allclose(emb[0], emb[1]) and not torch.allclose(emb[1], emb[2])
    with torch.inference_mode():
        out = made.module(torch.randn(2, 1, 8, 8), torch.tensor([10, 10]), torch.tensor([0, 1]))
    assert out.shape == (2, 1, 8, 8)


# --- the self-check -----------------------------------------------------------------------------------


def test_model_check_flags_a_unet_whose_labels_do_not_reach_it(tmp_path):
    made = load(save_class_unet(tmp_path / "m"))
    torch.nn.init.zeros_(made.module.unet.class_embedding.weight)
    schedule = NoiseSchedule.from_alphas_cumprod(made.alphas_cumprod)
    reason = pretrained.model_check(
        made.module, schedule, "sample", False, torch.zeros(8, 1, 8, 8), torch.arange(8) % 10, 10
    )
    assert reason != "ok"  # a random model fits no type; a deaf one also fails the class check
    x = torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(made.module(x, torch.tensor([5, 5]), torch.tensor([0, 0])),
                           made.module(x, torch.tensor([5, 5]), torch.tensor([3, 3])))  # fmt: skip


def train_class_unet(folder: Path, steps: int = 80) -> Path:
    """The tiny v-prediction UNet trained for a few steps on digits the diffusers way (add_noise, get_velocity).

    A random model fits no prediction type (model_check rightly says so); a few dozen steps are enough
    for v to fit clearly better than epsilon or x0 at mid-range t.
    """
    from diffbench_plugins.digits import Digits

    splits, sched, unet = Digits().load(0), scheduler("v_prediction"), tiny_unet(10)
    optimizer = torch.optim.Adam(unet.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, splits.train_x.shape[0], (64,), generator=generator)
        x0, noise = splits.train_x[idx], torch.randn(64, 1, 8, 8, generator=generator)
        t = torch.randint(0, T, (64,), generator=generator)
        out = unet(sched.add_noise(x0, noise, t), t, class_labels=splits.train_y[idx]).sample
        loss = torch.nn.functional.mse_loss(out, sched.get_velocity(x0, noise, t))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    diffusers.DDPMPipeline(unet=unet.eval(), scheduler=sched).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_model_check_flags_a_trained_v_model_whose_folder_says_epsilon(tmp_path, cli):
    """The issue's check: the folder with prediction_type edited to epsilon is flagged; the run goes on."""
    from diffbench_plugins.digits import Digits

    digits = Digits().load(0)
    held_x, held_y = digits.train_x[-32:], digits.train_y[-32:]

    def check(made: diffbench.Pretrained, declared: str) -> str:
        schedule = NoiseSchedule.from_alphas_cumprod(made.alphas_cumprod)
        return pretrained.model_check(made.module, schedule, declared, False, held_x, held_y, 10)

    random = load(save_class_unet(tmp_path / "random"))
    assert check(random, "v_prediction").startswith("prediction_type 'v_prediction' does not fit")
    folder = train_class_unet(tmp_path / "trained")
    assert check(load(folder), "v_prediction") == "ok"
    edit_json(folder / "scheduler" / "scheduler_config.json", prediction_type="epsilon")
    result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"), "--no-plots")
    assert result.exit_code == 0, result.output
    row = offline_rows(tmp_path / "run").iloc[0]
    assert row["status"] == "ok" and row["prediction_type"] == "epsilon"
    flagged = row["model_check"]
    assert flagged.startswith("prediction_type 'epsilon' does not fit") and "under 'v_prediction'" in flagged
    assert result.stderr.count(f"model_check: {flagged}") == 1


# --- bad input: one line, exit 2, before anything runs ------------------------------------------------


def run_args(tmp_path, denoiser: str) -> list:
    return ["run", *RUN, "-m", denoiser, "--out", tmp_path / "run", "--cache", tmp_path / "cache"]


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def bad_folders(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Each bad input: (its selector, a phrase its error line must hold)."""
    (tmp_path / "empty").mkdir()
    no_classes = save_class_unet(tmp_path / "no-classes", num_classes=None)
    five = save_class_unet(tmp_path / "five", num_classes=5)
    edm = save_class_unet(tmp_path / "edm")
    edit_json(edm / "scheduler" / "scheduler_config.json", _class_name="ScoreSdeVeScheduler")
    odd = save_class_unet(tmp_path / "odd")
    edit_json(odd / "scheduler" / "scheduler_config.json", _class_name="MadeUpScheduler")
    text_less = save_text_unet(tmp_path / "text-less", with_text=False)
    weightless = save_class_unet(tmp_path / "weightless")
    for weights in (weightless / "unet").glob("*.safetensors"):
        weights.unlink()
    return broken_configs(tmp_path, save_class_unet(tmp_path / "good")) | {
        "no model": (f"diffusers[path={tmp_path / 'empty'}]", "holds no model"),
        "no folder": (f"diffusers[path={tmp_path / 'nowhere'}]", "no such folder"),
        "no conditioning": (f"diffusers[path={no_classes}]", "no class conditioning"),
        "class count": (f"diffusers[path={five}]", "the model has 5 classes but the dataset has 10"),
        "variance exploding": (f"diffusers[path={edm}]", "ScoreSdeVeScheduler, a variance-exploding SDE scheduler"),
        "unknown scheduler": (f"diffusers[path={odd}]", "'MadeUpScheduler', which diffusers does not take"),
        "no text encoder": (f"diffusers[path={text_less}]", "without text_encoder/"),
        "no path": ("diffusers", "needs path=FOLDER"),
        "hub id offline": ("diffusers[path=nobody/no-such-model]", "hub model 'nobody/no-such-model' is not in"),
        "no weights": (f"diffusers[path={weightless}]", "holds no weights (*.safetensors or *.bin) in unet/"),
    }


def broken_copy(tmp_path: Path, good: Path, name: str, file: str, text: str | None = None, **changes) -> Path:
    """A copy of ``good`` with ``file`` holding ``text``, or its JSON with ``changes``."""
    folder = tmp_path / name
    shutil.copytree(good, folder)
    if text is not None:
        (folder / file).write_text(text)
    else:
        edit_json(folder / file, **changes)
    return folder


def broken_configs(tmp_path: Path, good: Path) -> dict[str, tuple[str, str]]:
    """Config files that parse but say nothing diffbench can use: each a line naming the file (and the key)."""
    sched, unet, index = "scheduler/scheduler_config.json", "unet/config.json", "model_index.json"
    cases = {  # name: (file, its text or None, else changes to its JSON, the key the line names, the phrase after)
        "betas above 1": (sched, None, {"beta_schedule": "linear", "beta_end": 1.5}, "beta_end", "must be a number"),
        "nan trained betas": (sched, None, {"trained_betas": [math.nan] * T}, "trained_betas[0]", "must be a finite"),
        "trained betas a number": (sched, None, {"trained_betas": 0.5}, "trained_betas", "must be a list of betas"),
        "zero steps": (sched, None, {"num_train_timesteps": 0}, "num_train_timesteps", "must be an integer from 2"),
        "steps a string": (
            sched,
            None,
            {"num_train_timesteps": "1000"},
            "num_train_timesteps",
            "must be an integer, got '1000'",
        ),
        "beta schedule": (sched, None, {"beta_schedule": "cubic"}, "beta_schedule", "must be one of linear,"),
        "prediction type": (sched, None, {"prediction_type": "noise"}, "prediction_type", "must be one of epsilon,"),
        "scheduler class a list": (sched, None, {"_class_name": ["DDPMScheduler"]}, "_class_name", "must be a string"),
        "scheduler null": (sched, "null", {}, "", "must hold a JSON object ({...}), not null"),
        "unet config a list": (unet, "[]", {}, "", "must hold a JSON object ({...}), not a list"),
        "model index a list": (index, "[]", {}, "", "must hold a JSON object ({...}), not a list"),
        "id2label a list": (index, None, {"id2label": ["0", "1"]}, "id2label", "must be a mapping of label ids"),
        "class count a string": (
            unet,
            None,
            {"num_class_embeds": "10"},
            "num_class_embeds",
            "must be an integer, got '10'",
        ),
        "channels a float": (unet, None, {"in_channels": 1.5}, "in_channels", "must be an integer, got 1.5"),
    }
    out = {}
    for name, (file, text, changes, key, phrase) in cases.items():
        folder = broken_copy(tmp_path, good, name.replace(" ", "-"), file, text, **changes)
        where = f"`{key}` in {folder / file}" if key else str(folder / file)
        out[name] = (f"diffusers[path={folder}]", f"{where} {phrase}")
    latin = broken_copy(tmp_path, good, "latin-1", unet, "{}")
    (latin / unet).write_bytes('{"_class_name": "UNet2DModel", "note": "caf\xe9"}'.encode("latin-1"))
    out["not utf-8"] = (f"diffusers[path={latin}]", f"cannot read {latin / unet}: 'utf-8' codec can't decode")
    return out


def test_every_bad_input_is_one_line_and_exit_2_before_anything_runs(tmp_path, cli):
    for what, (selector, phrase) in bad_folders(tmp_path).items():
        result = cli(*run_args(tmp_path, selector))
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (what, result.output)
        assert len(lines) == 1 and lines[0].startswith("diffbench: error:") and phrase in lines[0], (what, lines)
        assert not (tmp_path / "run").exists(), what


def test_missing_diffusers_names_the_extra(tmp_path, cli, monkeypatch):
    folder = save_class_unet(tmp_path / "m")
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else find_spec(name))
    result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"))
    assert result.exit_code == 2
    assert "pip install 'diffbench[diffusers]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- hub ids: read from the local Hugging Face cache when offline ----------------------------------------


def cache_hub_model(cache: Path, hub_id: str, folder: Path) -> str:
    """Lay ``folder`` out as huggingface_hub caches a download: blobs, a snapshot of links to them, refs/main.

    Returns the snapshot's commit hash.
    """
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    commit = hashlib.sha1(hub_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for file in sorted(f for f in folder.rglob("*") if f.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_the_hub_cache_is_read_from_the_environment_as_set_now(monkeypatch, tmp_path):
    from diffbench_plugins.diffusers import hub

    assert hub.hub_cache() == str(tmp_path / "hf-home" / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub.hub_cache() == str(tmp_path / "elsewhere")  # HF_HUB_CACHE before HF_HOME
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.offline_mode()


def test_a_cached_hub_id_loads_offline_with_its_snapshot_as_revision(tmp_path):
    commit = cache_hub_model(tmp_path / "hf-home" / "hub", "tiny-org/digits-unet", save_class_unet(tmp_path / "m"))
    made = load("tiny-org/digits-unet")
    assert made.source == "tiny-org/digits-unet" and made.revision == commit
    assert made.prediction_type == "v_prediction" and made.schedule == "squaredcos_cap_v2"
    assert made.module.unet.config.num_class_embeds == 10
    assert load("tiny-org/digits-unet", revision=commit).revision == commit  # a revision given as a commit
    other = "0" * 40
    with pytest.raises(diffbench.ParamError, match=f"hub model 'tiny-org/digits-unet' at revision '{other}' is not in"):
        Diffusers(path="tiny-org/digits-unet", revision=other)  # that commit is not cached


@pytest.mark.slow
def test_a_cached_hub_id_runs_end_to_end_offline(tmp_path, cli, monkeypatch):
    folder = save_class_unet(tmp_path / "m")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    commit = cache_hub_model(tmp_path / "hub-cache", "tiny-org/digits-unet", folder)
    result = cli(*run_args(tmp_path, "diffusers[path=tiny-org/digits-unet]"), "--no-plots")
    assert result.exit_code == 0, result.output
    row = offline_rows(tmp_path / "run").iloc[0]
    assert row["status"] == "ok" and row["model_source"] == "tiny-org/digits-unet" and row["model_revision"] == commit
    assert row["train_s"] == 0 and row["prediction_type"] == "v_prediction"
    assert "pretrained model from tiny-org/digits-unet, nothing trained" in result.stderr


def test_a_hub_id_not_cached_while_offline_says_how_to_mend_it(tmp_path, cli):
    result = cli(*run_args(tmp_path, "diffusers[path=tiny-org/not-downloaded]"))
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.startswith("diffbench: error: hub model 'tiny-org/not-downloaded' is not in the local Hugging Face ")
    assert str(tmp_path / "hf-home" / "hub") in line and "HF_HUB_OFFLINE is set" in line
    assert line.endswith(
        "download it first (hf download tiny-org/not-downloaded), unset HF_HUB_OFFLINE, or give a local folder as path="
    )
    assert not (tmp_path / "run").exists()


def test_a_cached_hub_snapshot_without_weights_is_one_line_while_offline(tmp_path, cli):
    folder = save_class_unet(tmp_path / "m")
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()  # a download of the configs alone
    cache_hub_model(tmp_path / "hf-home" / "hub", "tiny-org/half", folder)
    result = cli(*run_args(tmp_path, "diffusers[path=tiny-org/half]"))
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "the cached snapshot of hub model 'tiny-org/half'" in line and "holds no weights in unet/" in line
    assert "download it first" in line


# --- --checkpoint: for models diffbench builds, not for ones that arrive trained ------------------------


def test_a_checkpoint_with_a_pretrained_model_is_refused_before_anything_runs(tmp_path, cli):
    folder = save_class_unet(tmp_path / "m")
    torch.save(Diffusers(path=str(folder)).pretrained((1, 8, 8), 10, list("0123456789")).module.state_dict(),
               tmp_path / "w.pt")  # fmt: skip
    result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"), "--checkpoint", tmp_path / "w.pt")
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"diffbench: error: --checkpoint loads weights into a model diffbench builds, but diffusers[path={folder}] "
        "arrives trained with its own weights: drop --checkpoint (or select a denoiser diffbench builds)"
    ]
    assert not (tmp_path / "run").exists()


# --- end to end ---------------------------------------------------------------------------------------


def offline_rows(run: Path) -> pd.DataFrame:
    table = pd.read_parquet(run / "results.parquet")
    return table[table["scenario"] == "offline"].reset_index(drop=True)


@pytest.mark.slow
def test_a_class_unet_runs_end_to_end_trains_nothing_and_gives_the_same_table_twice(tmp_path, cli):
    folder = save_class_unet(tmp_path / "m", "v_prediction")
    tables, predictions = [], []
    for out in ("a", "b"):
        args = ["run", *RUN, "-m", f"diffusers[path={folder}]", "--out", tmp_path / out, "--cache", tmp_path / "c"]
        result = cli(*args, "--no-plots")
        assert result.exit_code == 0, result.output
        tables.append(offline_rows(tmp_path / out))
        predictions.append(pd.read_parquet(tmp_path / out / "predictions.parquet"))
    row = tables[0].iloc[0]
    assert row["status"] == "ok" and row["schedule"] == "squaredcos_cap_v2" and row["num_timesteps"] == T
    assert row["prediction_type"] == "v_prediction" and row["model_source"] == str(folder)
    assert len(row["model_revision"]) == 16 and row["model_check"] != "" and row["train_s"] == 0
    assert row["nfe_per_sample"] == 10 and not row["latent"]
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.pt"))  # nothing trained or cached
    columns = ["cell_id", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "nfe_per_sample", "model_check"]
    pd.testing.assert_frame_equal(tables[0][columns], tables[1][columns])
    assert len(predictions[0]) == row["n_test"] > 0 and set(predictions[0].columns) >= {"sample", "label", "pred"}
    pd.testing.assert_frame_equal(predictions[0], predictions[1])  # sample by sample, not just the accuracy


@pytest.mark.slow
def test_a_latent_dit_runs_end_to_end_with_encode_time_apart(tmp_path, cli):
    folder = save_dit(tmp_path / "dit")
    result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"))
    assert result.exit_code == 0, result.output
    row = offline_rows(tmp_path / "run").iloc[0]
    assert row["status"] == "ok" and row["latent"] and row["learned_variance"] and row["schedule"] == "linear"
    assert row["encode_s"] > 0 and row["encode_s_per_image"] > 0
    assert row["end_to_end_samples_per_s"] < row["samples_per_s"]
    assert row["nfe_per_sample"] == 10  # NFE counts the denoiser only
    assert "encoded" in result.stderr


@pytest.mark.slow
def test_a_text_to_image_unet_runs_zero_shot_end_to_end(tmp_path, cli):
    folder = save_text_unet(tmp_path / "sd")
    result = cli(*run_args(tmp_path, f"diffusers[path={folder},prompt='a photo of {{}}.']"))
    assert result.exit_code == 0, result.output
    row = offline_rows(tmp_path / "run").iloc[0]
    assert row["status"] == "ok" and row["schedule"] == "scaled_linear" and row["p_denoiser_prompt"] == "a photo of {}."
    assert 0 <= row["accuracy"] <= 1 and row["model_check"] != ""


@pytest.mark.slow
def test_diffusers_unet_is_trained_by_diffbench(tmp_path, cli):
    args = ["run", *RUN, "-m", "diffusers-unet[channels=8,groups=4]", "--out", tmp_path / "run"]
    result = cli(*args, "--cache", tmp_path / "cache", "--no-plots", "--suite", write_small_train_suite(tmp_path))
    assert result.exit_code == 0, result.output
    row = offline_rows(tmp_path / "run").iloc[0]
    assert row["status"] == "ok" and row["train_s"] > 0 and math.isnan(row.get("encode_s", math.nan))
    assert any((tmp_path / "cache").rglob("*"))


def write_small_train_suite(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text('datasets = ["digits"]\ndevices = ["cpu"]\nrepeats = 1\n[train]\nsteps = 20\nbatch_size = 32\n')
    return path


def test_diffusers_unet_builds_a_class_conditional_unet2dmodel():
    module = DiffusersUNet(channels=8, groups=4).build((1, 8, 8), 10)
    assert module.unet.config.num_class_embeds == 10
    x = torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        a = module(x, torch.tensor([5, 5]), torch.tensor([0, 0]))
        b = module(x, torch.tensor([5, 5]), torch.tensor([1, 1]))
    assert a.shape == x.shape and not torch.equal(a, b)


@pytest.mark.slow
def test_the_dask_executor_gives_the_local_table_for_a_pretrained_model(tmp_path, cli):
    """The loaded model travels from the worker that loaded it to the cells' workers (pickled) and classifies alike."""
    pytest.importorskip("distributed")
    folder = save_class_unet(tmp_path / "m")
    args = ["run", *RUN[:4], *RUN[6:], "--trials", "1,2", "-m", f"diffusers[path={folder}]", "--no-plots"]
    local = cli(*args, "--out", tmp_path / "local", "--cache", tmp_path / "c")
    assert local.exit_code == 0, local.output
    dask = cli(*args, "--out", tmp_path / "dask", "--cache", tmp_path / "c", "--executor", "dask", "--workers", "2")
    assert dask.exit_code == 0, dask.output
    assert "dask: 2 workers" in dask.stderr
    a, b = (pd.read_parquet(tmp_path / run / "results.parquet") for run in ("local", "dask"))
    assert len(a) == 2 and (b["status"] == "ok").all() and (b["model_source"] == str(folder)).all()
    columns = ["cell_id", "trials", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "nfe_per_sample"]
    columns += ["model_revision", "model_check", "prediction_type", "schedule"]
    pd.testing.assert_frame_equal(a[columns], b[columns])
    predictions = [pd.read_parquet(tmp_path / run / "predictions.parquet") for run in ("local", "dask")]
    assert set(predictions[0]["cell_id"]) == set(a["cell_id"])
    pd.testing.assert_frame_equal(*predictions)


# --- fuzz: mutated config values are one line naming the file, or a valid process ---------------------------

JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-3, 200_001)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(-0.1, 1.2)
    | st.sampled_from(["", "10", "linear", "scaled_linear", "sigmoid", "laplace", "epsilon", "v_prediction", "²", "0"])
)
JSON_VALUE = st.recursive(
    JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
)
SCHEDULER_KEYS = [
    "_class_name", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "prediction_type", "rescale_betas_zero_snr",
]  # fmt: skip
UNET_KEYS = ["_class_name", "in_channels", "out_channels", "num_class_embeds", "class_embed_type", "id2label"]
FILES = {
    "scheduler/scheduler_config.json": SCHEDULER_KEYS,
    "unet/config.json": UNET_KEYS,
    "model_index.json": ["id2label"],
}
MUTATION = st.tuples(
    st.sampled_from(sorted(FILES)),
    st.one_of(st.just(None), st.integers(0, 7)),  # None: the whole file is the value
    JSON_VALUE | st.lists(st.floats(-0.1, 1.1) | st.just(math.nan), min_size=1, max_size=6),
)


@functools.cache
def good_configs() -> dict[str, dict]:
    """The config files of a folder ``save_class_unet`` writes (built once: a UNet takes a while)."""
    return {
        "scheduler/scheduler_config.json": {"_class_name": "DDPMScheduler", **dict(scheduler("epsilon").config)},
        "unet/config.json": dict(tiny_unet().config) | {"_class_name": "UNet2DModel"},
        "model_index.json": {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]},
    }


def config_folder(root: Path, mutations: list) -> Path:
    """A class UNet folder of config files (weights a stub: the readers never open them), then ``mutations``."""
    configs = json.loads(json.dumps(good_configs()))
    for file, position, value in mutations:
        if position is None:
            configs[file] = value
        elif isinstance(configs[file], dict):
            keys = FILES[file]
            configs[file][keys[position % len(keys)]] = value
    for file, config in configs.items():
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).write_text(json.dumps(config, default=list))
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return root


@settings(max_examples=100, deadline=None, database=None)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_config_values_are_one_line_naming_the_file_or_a_valid_process(mutations):
    import tempfile

    from diffbench_plugins.diffusers.adapters import alphas_cumprod

    with tempfile.TemporaryDirectory() as tmp:
        folder = config_folder(Path(tmp), mutations)
        try:
            denoiser = Diffusers(path=str(folder))  # validate() reads the folder's configs
        except diffbench.ParamError as exc:
            assert "\n" not in str(exc) and str(folder) in str(exc), str(exc)  # names the file (or the folder)
            return
        NoiseSchedule.from_alphas_cumprod(alphas_cumprod(denoiser.layout))  # accepted: a valid process
        layout = denoiser.layout
        assert isinstance(layout.in_channels, int) and isinstance(layout.learned_variance, bool)
        assert isinstance(layout.model_classes, int) and all(isinstance(n, str) for n in layout.id2label.values())
        try:  # the folder is readable; whether it fits the dataset is a line the CLI prefixes with the selector
            denoiser.check_dataset((1, 8, 8), [str(d) for d in range(10)])
        except diffbench.ParamError as exc:
            assert "\n" not in str(exc) and ("the model" in str(exc) or "classes" in str(exc)), str(exc)
