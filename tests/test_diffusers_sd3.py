"""SD3 (rectified flow, three text encoders) zero-shot, Flux refused, the sample-size rule: tiny models from configs.

Every tokenizer is built here, offline: CLIP's from a hand-written character vocabulary, T5's from a
``tokenizers`` Unigram model. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffbench
from tests.helpers import error_lines

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from diffbench_plugins.diffusers import Diffusers  # noqa: E402
from diffbench_plugins.diffusers.layout import check_sample_size, read_layout  # noqa: E402
from diffbench_plugins.diffusers.sd3 import encode_prompts  # noqa: E402

from tests.test_diffusers import offline_rows, run_args, save_class_unet, save_text_unet, save_tokenizer  # noqa: E402

PROMPTS = ["a photo of a 0.", "a photo of a 7.", "a photo of a cat, of the cat family."]  # the last one cut by CLIP
DIGITS = [str(d) for d in range(10)]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


def save_t5_tokenizer(folder: Path) -> None:
    """A T5TokenizerFast on a Unigram vocabulary of single characters and '▁'-prefixed ones (T5's special ids)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    model = Tokenizer(models.Unigram(vocab, unk_id=2))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.T5TokenizerFast(
        tokenizer_object=model, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0
    )
    tokenizer.save_pretrained(folder)


def tiny_clip(seed: int) -> transformers.CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(
        vocab_size=200, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=16,
    )  # fmt: skip
    return transformers.CLIPTextModelWithProjection(config)


def tiny_t5() -> transformers.T5EncoderModel:
    torch.manual_seed(3)
    config = transformers.T5Config(
        vocab_size=100, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return transformers.T5EncoderModel(config)


def save_sd3(folder: Path, t5: bool = True, sample_size: int = 4, pos_embed_max_size: int = 8) -> Path:
    """A tiny SD3 pipeline on [1, 8, 8] digits: a VAE to 4x4x4 latents (with SD3's shift), a transformer on 2x2
    patches, two CLIPs and (``t5``) a T5, and SD3's FlowMatchEulerDiscreteScheduler (shift 3)."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
        sample_size=8, scaling_factor=1.5305, shift_factor=0.0609,
    )  # fmt: skip
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=pos_embed_max_size,
    )  # fmt: skip
    for name in ("tokenizer", "tokenizer_2"):
        save_tokenizer(folder / name)
    if t5:
        save_t5_tokenizer(folder / "tokenizer_3")
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=tiny_clip(1),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder_2=tiny_clip(2),
        tokenizer_2=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        text_encoder_3=tiny_t5() if t5 else None,
        tokenizer_3=transformers.T5TokenizerFast.from_pretrained(folder / "tokenizer_3") if t5 else None,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd3_folders(tmp_path_factory) -> dict[str, Path]:
    """The tiny SD3 folders, built once for the module: with T5, and without (text_encoder_3 absent)."""
    root = tmp_path_factory.mktemp("sd3")
    return {"t5": save_sd3(root / "t5"), "no-t5": save_sd3(root / "no-t5", t5=False)}


def sd3_copy(sd3_folders, tmp_path: Path, name: str = "t5") -> Path:
    return Path(shutil.copytree(sd3_folders[name], tmp_path / name))


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


# --- prompts: exactly diffusers' encode_prompt ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["t5", "no-t5"])
def test_class_prompts_are_encoded_as_stable_diffusion_3_pipeline_encodes_them(sd3_folders, which):
    folder = sd3_folders[which]
    embeds, pooled = encode_prompts(read_layout(str(folder)), PROMPTS)
    without = {"text_encoder_3": None, "tokenizer_3": None} if which == "no-t5" else {}
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(folder, **without)
    with torch.inference_mode():  # as diffbench encodes (with autograd on, T5's last bits differ)
        want, _, want_pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False)
    assert embeds.shape == (3, 16 + 256, 32) and pooled.shape == (3, 32)  # 2 x CLIP 16 tokens + T5's 256; 16 + 16
    assert torch.equal(embeds, want) and torch.equal(pooled, want_pooled)
    assert not torch.equal(embeds[0], embeds[1]) and not torch.equal(pooled[0], pooled[1])
    t5_part = embeds[:, 16:]
    assert (t5_part.abs().sum() == 0) == (which == "no-t5")  # no T5: zeros in its place, as diffusers gives


def test_the_adapter_calls_the_transformer_on_each_class_prompt(sd3_folders):
    made = Diffusers(path=str(sd3_folders["t5"])).pretrained((1, 8, 8), 10, DIGITS)
    module = made.module
    assert module.embeds.shape == (10, 272, 32) and module.pooled.shape == (10, 32)
    x_t, t, c = torch.randn(3, 4, 4, 4), torch.tensor([10.0, 500.0, 999.0]), torch.tensor([0, 3, 9])
    with torch.inference_mode():
        out = module(x_t, t, c)
        want = module.transformer(
            hidden_states=x_t, timestep=t, encoder_hidden_states=module.embeds[c], pooled_projections=module.pooled[c]
        ).sample
        other = module(x_t, t, torch.tensor([1, 4, 8]))
    assert out.shape == x_t.shape and torch.equal(out, want) and not torch.equal(out, other)


def test_the_core_feeds_the_transformer_sigma_times_1000_and_reads_its_velocity_as_a_flow(sd3_folders):
    """Through ConditionalModel, as estimators call it: x_t = (1 - sigma) z + sigma eps at index t, the
    transformer fed the scheduler's timestep sigma * 1000, and eps_hat = x_t + (1 - sigma) v_hat."""
    from diffbench.model import ConditionalModel

    made = Diffusers(path=str(sd3_folders["t5"])).pretrained((1, 8, 8), 10, DIGITS)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(sd3_folders["t5"], subfolder="scheduler")
    process = made.process
    assert made.prediction_type == "flow" and process.kind == "flow"
    sigmas = scheduler.sigmas.flip(0).double()  # diffusers lists its training sigmas from 1.0 down
    assert torch.allclose(process.s, sigmas) and torch.allclose(process.model_timesteps, sigmas * 1000)
    fed = []
    made.module.transformer.register_forward_pre_hook(
        lambda _, args, kwargs: fed.append(kwargs["timestep"]), with_kwargs=True
    )
    model = ConditionalModel(made.module, process, 10, (4, 4, 4), prediction_type="flow")
    t, c = torch.tensor([0, 250, 999]), torch.tensor([0, 5, 9])
    z, eps = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    x_t = model.q_sample(z, t, eps)
    sigma = process.s.float()[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(x_t, (1 - sigma) * z + sigma * eps)
    with torch.inference_mode():
        eps_hat = model.eps(x_t, t, c)
        v_hat = made.module(x_t, process.model_timesteps.float()[t], c)
    assert torch.allclose(fed[0], sigmas.float()[t] * 1000)
    assert torch.allclose(eps_hat, x_t + (1 - sigma) * v_hat, atol=1e-5)


def test_the_sd3_vae_latents_are_shifted_then_scaled(sd3_folders):
    made = Diffusers(path=str(sd3_folders["t5"])).pretrained((1, 8, 8), 10, DIGITS)
    vae = diffusers.AutoencoderKL.from_pretrained(sd3_folders["t5"], subfolder="vae")
    assert vae.config.shift_factor == 0.0609 and vae.config.scaling_factor == 1.5305
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.inference_mode():
        want = (vae.encode(x).latent_dist.mean - 0.0609) * 1.5305
        z = made.encode(x)
    assert z.shape == (2, 4, 4, 4) and torch.allclose(z, want, atol=1e-6)


# --- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("which", ["t5", "no-t5"])
def test_a_tiny_sd3_pipeline_runs_zero_shot_end_to_end(sd3_folders, tmp_path, cli, which):
    folder = sd3_folders[which]
    result = cli(*run_args(tmp_path, f"diffusers[path={folder},prompt='a photo of the digit {{}}.']"), "--no-plots")
    assert result.exit_code == 0, result.output
    rows = offline_rows(tmp_path / "run")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["status"] == "ok" and row["latent"] and row["prediction_type"] == "flow"
    assert row["noise_process"] == "flow" and row["num_timesteps"] == 1000 and row["train_s"] == 0
    assert row["model_source"] == str(folder) and row["p_denoiser_prompt"] == "a photo of the digit {}."
    assert 0 <= row["accuracy"] <= 1 and row["n_test"] > 0 and row["nfe_per_sample"] == 10
    assert row["model_check"] != "" and row["encode_s"] > 0 and row["model_note"] == ""  # 4x4 latents fit
    assert "encoded" in result.stderr and "nothing trained" in result.stderr


# --- refused, or said and run: one line before anything runs ---------------------------------------------------


def save_flux(folder: Path) -> Path:
    """A FluxPipeline's layout: a FluxTransformer2DModel config and flow scheduler (weights a stub: never read)."""
    (folder / "transformer").mkdir(parents=True)
    config = {"_class_name": "FluxTransformer2DModel", "in_channels": 64, "patch_size": 1, "guidance_embeds": True}
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    return folder


def test_a_flux_folder_is_refused_in_one_line_saying_why(tmp_path, cli):
    folder = save_flux(tmp_path / "flux")
    result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"))
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.startswith(f"diffbench: error: path '{folder}' holds a FluxTransformer2DModel (Flux), which")
    assert "distilled" in line and "guidance 1" in line and "SD3Transformer2DModel" in line
    assert not (tmp_path / "run").exists()


def test_sd3_without_its_clips_or_with_t5_but_no_tokenizer_is_one_line(sd3_folders, tmp_path, cli):
    no_clip = sd3_copy(sd3_folders, tmp_path / "a")
    shutil.rmtree(no_clip / "text_encoder_2")
    no_tokenizer = sd3_copy(sd3_folders, tmp_path / "b")
    shutil.rmtree(no_tokenizer / "tokenizer_3")
    for folder, phrase in (
        (no_clip, "holds a SD3Transformer2DModel without text_encoder/ and tokenizer/ and text_encoder_2/ and"),
        (no_tokenizer, "has text_encoder_3/ but no tokenizer_3/"),
    ):
        result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"))
        assert result.exit_code == 2, result.output
        (line,) = error_lines(result)
        assert phrase in line, line


def test_sd3_beyond_its_positional_embeddings_is_refused_in_one_line(sd3_folders, tmp_path, cli):
    folder = sd3_copy(sd3_folders, tmp_path)
    edit_json(folder / "transformer" / "config.json", pos_embed_max_size=1)  # one 2x2 patch: 2x2 latents at most
    result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"))
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line == (
        f"diffbench: error: diffusers[path={folder}] on digits: the model cannot take the dataset's image size: "
        "the dataset's images are 8x8 px, 4x4 latents, but its positional embeddings (pos_embed_max_size 1) cover "
        "at most 2x2 latents (4x4 px) (resize the images, e.g. with the dataset's size= param where it has one)"
    )
    assert not (tmp_path / "run").exists()


def test_a_dit_whose_positional_embeddings_are_fixed_at_another_size_is_refused(tmp_path, cli):
    from tests.test_diffusers import save_dit

    folder = save_dit(tmp_path / "dit")
    edit_json(folder / "transformer" / "config.json", sample_size=8)
    result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"))
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert "the dataset's images are 8x8 px, 4x4 latents, but its DiTTransformer2DModel's positional embeddings" in line
    assert "are fixed at 8x8 latents (16x16 px)" in line


UNET_NOTE = (
    "the model was trained on 32x32 px, the dataset's images are 8x8 px: a convolutional UNet takes any size, "
    "so it runs at the dataset's size, outside the size it was trained on (expect lower accuracy)"
)


def save_unet_of_size_32(folder: Path) -> Path:
    save_class_unet(folder)
    edit_json(folder / "unet" / "config.json", sample_size=32)
    return folder


def test_a_unet_trained_at_another_size_gets_a_one_line_note(tmp_path):
    assert check_sample_size(read_layout(str(save_unet_of_size_32(tmp_path / "m"))), (1, 8, 8)) == UNET_NOTE
    assert check_sample_size(read_layout(str(save_class_unet(tmp_path / "fits"))), (1, 8, 8)) == ""


@pytest.mark.slow
def test_a_unet_trained_at_another_size_is_said_once_before_it_runs_and_recorded(tmp_path, cli):
    folder = save_unet_of_size_32(tmp_path / "m")
    note = UNET_NOTE
    result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"), "--no-plots")
    assert result.exit_code == 0, result.output
    assert result.stderr.count(note) == 1  # said once, before anything runs
    said = next(i for i, line in enumerate(result.stderr.splitlines()) if note in line)
    assert said < min(i for i, line in enumerate(result.stderr.splitlines()) if "nothing trained" in line)
    assert f"diffbench: note: diffusers[path={folder}]: {note}" in result.stderr
    row = offline_rows(tmp_path / "run").iloc[0]
    assert row["status"] == "ok" and row["model_note"] == note


def test_the_sample_size_rule_by_model(sd3_folders, tmp_path):
    sd3 = read_layout(str(sd3_folders["t5"]))
    assert check_sample_size(sd3, (1, 8, 8)) == ""  # 4x4 latents: its sample_size
    small = sd3_copy(sd3_folders, tmp_path)
    edit_json(small / "transformer" / "config.json", sample_size=8)
    note = check_sample_size(read_layout(str(small)), (1, 8, 8))
    assert note.startswith("the model was trained on 8x8 latents (16x16 px), the dataset's images are 8x8 px, 4x4")
    assert "SD3 crops its positional embeddings to the size" in note
    assert "trained on 4x4 latents (8x8 px)" in check_sample_size(sd3, (1, 4, 4))  # 2x2 latents: one patch
    with pytest.raises(diffbench.ParamError, match="3x3 latents, but its SD3Transformer2DModel cuts them into 2x2"):
        check_sample_size(sd3, (1, 6, 6))
    with pytest.raises(diffbench.ParamError, match="cover at most 16x16 latents"):
        check_sample_size(sd3, (1, 40, 40))  # 20x20 latents: 10x10 patches, pos_embed_max_size 8
    unet = read_layout(str(save_class_unet(tmp_path / "m")))
    with pytest.raises(diffbench.ParamError, match="halves them 1 times: it takes sizes divisible by 2"):
        check_sample_size(unet, (1, 7, 7))
    text_unet = read_layout(str(save_text_unet(tmp_path / "sd")))
    assert "a convolutional UNet takes any size" in check_sample_size(text_unet, (1, 16, 16))


def test_a_vae_whose_latents_the_model_does_not_take_is_one_line(sd3_folders, tmp_path, cli):
    folder = sd3_copy(sd3_folders, tmp_path)
    edit_json(folder / "vae" / "config.json", latent_channels=16)
    result = cli(*run_args(tmp_path, f"diffusers[path={folder}]"))
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert "its VAE makes latents of 16 channels but its SD3Transformer2DModel takes 4" in line


# --- fuzz: mutated SD3 config values are one line naming the file, or a folder that fits or is said ------------

SD3_KEYS = {
    "transformer/config.json": ["sample_size", "patch_size", "pos_embed_max_size", "in_channels", "_class_name"],
    "vae/config.json": ["block_out_channels", "latent_channels", "in_channels"],
}
SD3_VALUE = (
    st.none()
    | st.booleans()
    | st.integers(-2, 300)
    | st.floats(allow_nan=True)
    | st.sampled_from(["", "4", "SD3Transformer2DModel", "FluxTransformer2DModel"])
    | st.lists(st.integers(0, 64), max_size=4)
)


@settings(max_examples=60, deadline=None, database=None)
@given(mutations=st.lists(st.tuples(st.sampled_from(sorted(SD3_KEYS)), st.integers(0, 4), SD3_VALUE), max_size=3))
def test_mutated_sd3_configs_are_one_line_naming_the_file_or_a_size_rule(sd3_folders, mutations):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(sd3_folders["t5"], Path(tmp) / "sd3"))
        for file, position, value in mutations:
            keys = SD3_KEYS[file]
            edit_json(folder / file, **{keys[position % len(keys)]: value})
        try:
            denoiser = Diffusers(path=str(folder))
        except diffbench.ParamError as exc:
            assert "\n" not in str(exc) and str(folder) in str(exc), str(exc)
            return
        for shape in ((1, 8, 8), (1, 32, 32), (1, 6, 6)):
            try:
                note = check_sample_size(denoiser.layout, shape)
            except diffbench.ParamError as exc:
                assert "\n" not in str(exc) and str(exc).startswith("the model cannot take"), str(exc)
            else:
                assert "\n" not in note and (note == "" or note.startswith("the model was trained on")), note


def published_layout(kind: str, model_config: dict) -> object:
    """A Layout with the published configs' sizes (no files): a VAE of 4 levels, 8 px to one latent."""
    from diffbench_plugins.diffusers.layout import Layout

    vae = {"block_out_channels": [128, 256, 512, 512], "latent_channels": model_config["in_channels"]}
    return Layout(Path("/nowhere"), "hub/id", "transformer", kind, model_config, {}, True, True, vae_config=vae)


@pytest.mark.parametrize(
    ("model", "size", "said"),
    [
        ("sd3-medium", 512, "trained on 128x128 latents (1024x1024 px), the dataset's images are 512x512 px, 64x64"),
        ("sd3-medium", 32, "trained on 128x128 latents (1024x1024 px), the dataset's images are 32x32 px, 4x4"),
        ("sd3-medium", 1024, ""),
        ("sd3-medium", 3200, "pos_embed_max_size 192) cover at most 384x384 latents (3072x3072 px)"),
        ("sd-2-base", 32, "trained on 64x64 latents (512x512 px), the dataset's images are 32x32 px, 4x4 latents"),
        ("sd-2-base", 512, ""),
        ("dit-xl-2-256", 256, ""),
        ("dit-xl-2-256", 512, "DiTTransformer2DModel's positional embeddings are fixed at 32x32 latents (256x256 px)"),
    ],
)
def test_the_sample_size_rule_on_the_published_models_sizes(model, size, said):
    configs = {  # the keys the rule reads, as the hub's configs give them
        "sd3-medium": ("SD3Transformer2DModel", {"sample_size": 128, "patch_size": 2, "pos_embed_max_size": 192}),
        "sd-2-base": ("UNet2DConditionModel", {"sample_size": 64, "down_block_types": ["CrossAttnDownBlock2D"] * 4}),
        "dit-xl-2-256": ("DiTTransformer2DModel", {"sample_size": 32, "patch_size": 2}),
    }
    kind, config = configs[model]
    layout = published_layout(kind, config | {"in_channels": 4})
    if "cover at most" in said or "fixed at" in said:
        with pytest.raises(diffbench.ParamError, match=re.escape(said)):
            check_sample_size(layout, (3, size, size))
    else:
        note = check_sample_size(layout, (3, size, size))
        assert note == "" if not said else said in note, note
