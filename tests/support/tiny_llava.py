"""Tiny random LLaVA-NeXT checkpoints for the parity tests (no network: built with transformers'
own config classes and saved with ``save_pretrained``).

Layouts: ``relayout`` writes both weight layouts vLLM's LLaVA ``hf_to_vllm_mapper`` maps from —
royokong/e5-v's and llava-hf's uploads (``language_model.model.*``, ``vision_tower.vision_model.*``)
and transformers 5's (``model.language_model.*``); the config is ``LlavaNextConfig``'s keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from safetensors.torch import load_file, save_file

from tiny_models import bytelevel_bpe_tokenizer

#: Llama-3's chat tokens and LLaVA's image placeholder, added to the tiny tokenizer as special tokens.
LLAVA_TOKENS = ["<image>", "<|start_header_id|>", "<|end_header_id|>", "<|begin_of_text|>"]
#: Tiles of 16x16 pixels: wide, tall, square and long layouts up to 2x2 tiles.
PINPOINTS = [[16, 32], [32, 16], [32, 32], [48, 16], [16, 48]]


def llava_tokenizer() -> T.PreTrainedTokenizerFast:
    """The tiny byte-level BPE tokenizer, ``<|eot_id|>`` its end token, with :data:`LLAVA_TOKENS`."""
    tok = bytelevel_bpe_tokenizer(eos="<|eot_id|>")
    tok.add_special_tokens({"additional_special_tokens": LLAVA_TOKENS})
    tok.model_max_length = 1024  # room for a few images' features
    return tok


def build_llava_next(
    out: Path,
    seed: int = 0,
    text_family: str = "llama",
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str = "default",
    pinpoints: list[list[int]] | None = None,
) -> Path:
    """A tiny ``LlavaNextForConditionalGeneration`` saved to ``out`` with its tokenizer and a Pillow
    ``LlavaNextImageProcessor``: a 3-layer CLIP vision tower on 16x16 tiles of 4x4 patches (a 4x4
    feature grid per tile, plus CLS), the GELU projector, and a 2-layer Llama-3-style decoder
    (``llama3`` rotary scaling; ``text_family`` ``"mistral"`` gives a Mistral one with a sliding window,
    ``"qwen2"`` a Qwen2 one, as the LLaVA-NeXT 72B / 110B checkpoints have).

    Every parameter is drawn again (matrices with std ``1.5 / sqrt(fan_in)``, norms around 1, other
    vectors around 0, ``image_newline`` included), so a dropped one or a misplaced image feature
    shows in the embeddings.
    """
    tok = llava_tokenizer()
    pinpoints = pinpoints or PINPOINTS
    text = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    if text_family == "llama":
        text["rope_parameters"] = {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
        }
        text_config = T.LlamaConfig(**text)
    elif text_family == "mistral":
        text_config = T.MistralConfig(**text, sliding_window=24)
    else:
        text_config = T.Qwen2Config(**text)
    vision_config = T.CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=16,
        patch_size=4, projection_dim=16, hidden_act="quick_gelu",
    )
    config = T.LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        image_seq_length=16,
    )
    torch.manual_seed(seed)
    model = T.LlavaNextForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.2)
            else:
                p.normal_(0.0, 1.5 * p[0].numel() ** -0.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    image_processor(pinpoints).save_pretrained(out)
    return out


def image_processor(pinpoints: list[list[int]] | None = None) -> T.LlavaNextImageProcessorPil:
    """The Pillow image processor of :func:`build_llava_next`'s checkpoints (16x16 tiles)."""
    return T.LlavaNextImageProcessorPil(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_grid_pinpoints=pinpoints or PINPOINTS
    )


#: How :func:`relayout` renames the names ``save_pretrained`` writes (``language_model.model.*``,
#: ``vision_tower.*`` without ``vision_model.``, ...) for each checkpoint layout.
_LAYOUTS = {
    "transformers5": (
        ("language_model.lm_head.", "lm_head."),
        ("language_model.model.", "model.language_model."),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
        ("image_newline", "model.image_newline"),
    ),
    "original": (("vision_tower.", "vision_tower.vision_model."),),
}


def relayout(model_dir: Path, out: Path, layout: str) -> Path:
    """A copy of ``model_dir`` whose weights carry ``layout``'s names: ``"transformers5"`` (the
    modules' own, ``model.language_model.*``, ``model.vision_tower.*``, ``lm_head``) or
    ``"original"`` (llava-hf's and e5-v's uploads, ``vision_tower.vision_model.*``)."""
    out.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():
        if file.suffix == ".safetensors":
            renamed = {}
            for name, tensor in load_file(file).items():
                for saved, wanted in _LAYOUTS[layout]:
                    if name.startswith(saved):
                        name = wanted + name[len(saved):]
                        break
                renamed[name] = tensor
            save_file(renamed, out / file.name, metadata={"format": "pt"})
        elif file.is_file():
            (out / file.name).write_bytes(file.read_bytes())
    return out
