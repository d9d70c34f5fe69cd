"""Tiny random Phi-3-Vision (VLM2Vec) checkpoints for the parity tests, laid out as the published one
(no network: the text model is transformers' own ``Phi3ForCausalLM``, the vision tower its
``CLIPVisionModel``, the projector and separators plain tensors, all saved under the published
names with safetensors; ``config.json`` and ``preprocessor_config.json`` carry the published keys).

Source of the names: vLLM's ``Phi3VForCausalLM.hf_to_vllm_mapper`` (``model.vision_embed_tokens.*``
with ``img_processor.vision_model``, ``img_projection``, ``glb_GN`` / ``sub_GN``; ``model.*``;
``lm_head``); VLM2Vec's config names no ``image_token_id`` (vLLM hard-codes 32044).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import save_file
from tokenizers import processors

from tiny_models import bytelevel_bpe_tokenizer

#: Phi-3's chat tokens and the image features' token, added to the tiny tokenizer as special tokens
#: (``<|image_1|>`` stays plain text, as in the published tokenizer).
PHI3V_TOKENS = ["<|user|>", "<|end|>", "<|assistant|>", "<|image|>"]
#: A 3-layer CLIP tower on 16x16 crops of 4x4 patches: a 4x4 grid per crop, 2x2 once merged.
VISION = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=16, patch_size=4,
    num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
HIDDEN, HEAD_DIM, ORIGINAL_POSITIONS = 64, 16, 48
#: The published processor config's keys (its remote code's class names; ``num_crops`` per checkpoint).
PREPROCESSOR = {
    "auto_map": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor", "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor"},
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "Phi3VImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "Phi3VProcessor",
    "num_img_tokens": 4,
}


def phi3v_tokenizer(image_token: bool = True) -> T.PreTrainedTokenizerFast:
    """The tiny byte-level BPE tokenizer with :data:`PHI3V_TOKENS` (without ``<|image|>`` unless
    ``image_token``), ``<s>`` before every text as Phi-3's (Llama) tokenizer adds it."""
    tok = bytelevel_bpe_tokenizer(eos="<|endoftext|>")
    tokens = PHI3V_TOKENS if image_token else [t for t in PHI3V_TOKENS if t != "<|image|>"]
    tok.add_special_tokens({"bos_token": "<s>", "additional_special_tokens": tokens})
    bos = tok.convert_tokens_to_ids("<s>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok.model_max_length = 1024
    return tok


def build_phi3v(
    out: Path,
    seed: int = 0,
    num_crops: int = 4,
    rope: str = "longrope",
    partial_rotary_factor: float | None = None,
    sliding_window: int | None = None,
    order: str = "sub_glb",
    layer_idx: int | None = None,
    vocab_size: int | None = None,
    image_token: bool = True,
) -> Path:
    """A tiny ``Phi3VForCausalLM`` saved to ``out`` as the published checkpoint is laid out: a
    2-layer Phi-3 decoder (64 wide, 4 query heads sharing 2 key/value heads, LongRoPE with
    ``original_max_position_embeddings`` 48 of 1024 unless ``rope="default"``, the sliding window
    as wide as the context unless ``sliding_window``), the CLIP tower of :data:`VISION`, the
    projector ``img_projection`` (128 -> 64 -> 64), ``glb_GN`` / ``sub_GN``, an ``lm_head``, the
    tokenizer and ``preprocessor_config.json`` (``num_crops``). ``vocab_size`` widens the token tables
    (Phi-3's published 32064 rows); without ``image_token`` the tokenizer has no ``<|image|>``.

    Every parameter is drawn again (matrices with std ``1.5 / sqrt(fan_in)``, norms around 1, other
    vectors and the separators around 0), so a dropped one or a misplaced image feature shows.
    """
    tok = phi3v_tokenizer(image_token)
    rotated = int(HEAD_DIM * (partial_rotary_factor or 1.0))
    text = dict(
        vocab_size=vocab_size or len(tok), hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, original_max_position_embeddings=ORIGINAL_POSITIONS,
        rope_theta=10000.0, rms_norm_eps=1e-5, hidden_act="silu", sliding_window=sliding_window or 1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    if partial_rotary_factor is not None:
        text["partial_rotary_factor"] = partial_rotary_factor
    rope_scaling = None
    if rope != "default":
        rope_scaling = {
            "type": rope,
            "short_factor": [1.0 + 0.15 * i for i in range(rotated // 2)],
            "long_factor": [1.5 + 2.0 * i for i in range(rotated // 2)],
        }
    torch.manual_seed(seed)
    lm = T.Phi3ForCausalLM(T.Phi3Config(**text, rope_scaling=rope_scaling and {**rope_scaling, "type": "longrope"}))
    vision = T.CLIPVisionModel(T.CLIPVisionConfig(**VISION))
    width = 4 * VISION["hidden_size"]
    projection = torch.nn.Sequential(torch.nn.Linear(width, HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, HIDDEN))
    separators = {"glb_GN": torch.empty(1, 1, width), "sub_GN": torch.empty(1, 1, 1, width)}
    state = dict(lm.state_dict())
    # transformers 5's CLIPVisionModel has no ``vision_model.`` level; the published names do
    tower = {k.removeprefix("vision_model."): v for k, v in vision.state_dict().items()}
    state.update({f"model.vision_embed_tokens.img_processor.vision_model.{k}": v for k, v in tower.items()})
    state.update({f"model.vision_embed_tokens.img_projection.{k}": v for k, v in projection.state_dict().items()})
    state.update({f"model.vision_embed_tokens.{k}": v for k, v in separators.items()})
    with torch.no_grad():
        for name, p in state.items():
            if name.endswith("position_ids"):
                continue
            if name.endswith("_GN"):
                p.normal_(0.0, 0.5)
            elif p.ndim == 1:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.2)
            else:
                p.normal_(0.0, 1.5 * p[0].numel() ** -0.5)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors", metadata={"format": "pt"})
    img_processor = {
        "image_dim_out": VISION["hidden_size"], "model_name": "openai/clip-vit-large-patch14-336",
        "name": "clip_vision_model", "num_img_tokens": 4, "vision_config": dict(VISION),
    }
    if layer_idx is not None:
        img_processor["layer_idx"] = layer_idx
    config = {
        "architectures": ["Phi3VForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_phi3_v.Phi3VConfig", "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"},
        "model_type": "phi3_v",
        "embd_layer": {
            "embedding_cls": "image", "hd_transform_order": order, "projection_cls": "mlp", "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        "img_processor": img_processor,
        **text,
        "rope_scaling": rope_scaling,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps({**PREPROCESSOR, "num_crops": num_crops}, indent=2))
    tok.save_pretrained(out)
    return out
