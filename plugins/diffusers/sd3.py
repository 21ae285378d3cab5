"""Stable Diffusion 3's class prompts, encoded exactly as diffusers' ``StableDiffusion3Pipeline.encode_prompt`` does.

SD3 reads a prompt through three text encoders: two CLIPs (``CLIPTextModelWithProjection``) and a T5
(``T5EncoderModel``). The transformer's ``encoder_hidden_states`` are both CLIPs' penultimate hidden states,
concatenated on channels and zero-padded to T5's width, then T5's last hidden state appended on the sequence;
its ``pooled_projections`` are both CLIPs' projected text embeddings, concatenated. Both CLIPs take the first
tokenizer's ``model_max_length`` tokens, T5 ``max_sequence_length`` (the pipeline's default, 256). A folder
without ``text_encoder_3/`` gets zeros in T5's place, as diffusers gives them. Each class prompt is encoded
once, without classifier-free guidance (no negative prompt): a diffusion classifier compares conditionals.

transformers is imported inside the functions, when a model is loaded, never at import.
"""

from __future__ import annotations

from typing import Any

import torch

from .layout import Layout

T5_MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length
FALLBACK_CLASSES = {
    "tokenizer": "CLIPTokenizer",
    "tokenizer_2": "CLIPTokenizer",
    "tokenizer_3": "T5TokenizerFast",
    "text_encoder": "CLIPTextModelWithProjection",
    "text_encoder_2": "CLIPTextModelWithProjection",
    "text_encoder_3": "T5EncoderModel",
}


def transformers_class(layout: Layout, folder: str, fallback: str) -> Any:
    """The transformers class ``model_index.json`` names for ``folder`` (``fallback`` where it names none)."""
    import transformers

    entry = layout.index.get(folder)
    named = isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers" and isinstance(entry[1], str)
    name = entry[1] if named and hasattr(transformers, entry[1]) else fallback
    return getattr(transformers, name)


def load(layout: Layout, folder: str) -> Any:
    """The folder's tokenizer or text encoder (an encoder in eval mode)."""
    loaded = transformers_class(layout, folder, FALLBACK_CLASSES[folder]).from_pretrained(layout.root / folder)
    return loaded.eval() if hasattr(loaded, "eval") else loaded


def clip_embeddings(
    layout: Layout, index: str, prompts: list[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """One CLIP's ``[K, L, D]`` penultimate hidden states, ``[K, P]`` projected text embeddings, and its dtype.

    ``index`` is "" for the first (``text_encoder/``), "_2" for the second; each is freed once it has encoded.
    """
    tokenizer, encoder = load(layout, f"tokenizer{index}"), load(layout, f"text_encoder{index}")
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    out = encoder(tokens.input_ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0], encoder.dtype


def t5_embeddings(layout: Layout, prompts: list[str], max_length: int, dtype: torch.dtype) -> torch.Tensor:
    """T5's ``[K, max_length, D]`` last hidden states, or zeros of the transformer's ``joint_attention_dim``."""
    if not (layout.root / "text_encoder_3" / "config.json").is_file():
        width = layout.model_config.get("joint_attention_dim") or 4096  # diffusers' default where it is unset
        return torch.zeros(len(prompts), max_length, width, dtype=dtype)
    tokenizer, encoder = load(layout, "tokenizer_3"), load(layout, "text_encoder_3")
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return encoder(tokens.input_ids)[0].to(encoder.dtype)


@torch.inference_mode()
def encode_prompts(
    layout: Layout, prompts: list[str], max_sequence_length: int = T5_MAX_SEQUENCE_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """``embeds [K, L, D]`` and ``pooled [K, P]`` of each prompt: what SD3's transformer is conditioned on."""
    max_length = load(layout, "tokenizer").model_max_length  # the pipeline's tokenizer_max_length, both CLIPs'
    embeds, pooled, dtype = clip_embeddings(layout, "", prompts, max_length)
    embeds_2, pooled_2, _ = clip_embeddings(layout, "_2", prompts, max_length)
    clip = torch.cat([embeds.to(dtype), embeds_2.to(dtype)], dim=-1)  # both in the first encoder's dtype
    t5 = t5_embeddings(layout, prompts, max_sequence_length, dtype)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat([pooled, pooled_2], dim=-1)
