"""Tiny random Llama-Nemotron-VL checkpoints (``LlamaNemotronVLModel``, as
nvidia/llama-nemotron-embed-vl-1b-v2 ships) for the parity tests: no network, built from
transformers' own ``LlamaModel`` and ``SiglipVisionModel`` and laid out as the published checkpoint
(its ``config.json`` keys, weight names, tokenizer image tokens and ``processor_config.json``). Names
from the publisher's remote ``LlamaNemotronVLModel``: ``vision_model`` a ``SiglipVisionModel``,
``language_model`` a ``LlamaBidirectionalModel``, ``mlp1`` LayerNorm / Linear / GELU / Linear."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import load_file, save_file
from tokenizers import processors
from torch import nn

from tiny_models import bytelevel_bpe_tokenizer

#: Llama-3's begin-of-text token and the image tokens of the published tokenizer.
NEMOTRON_TOKENS = ["<|begin_of_text|>", "<img>", "</img>", "<IMG_CONTEXT>"]
#: 16x16 tiles of 4x4 patches: a 4x4 patch grid, pixel-shuffled to 2x2 = 4 features per tile.
TILE, PATCH, FEATURES_PER_TILE = 16, 4, 4
VISION_WIDTH, TEXT_WIDTH = 32, 64


def nemotron_tokenizer() -> T.PreTrainedTokenizerFast:
    """The tiny byte-level BPE tokenizer with :data:`NEMOTRON_TOKENS`, putting ``<|begin_of_text|>``
    before every text as Llama 3's does."""
    tok = bytelevel_bpe_tokenizer(eos="<|eot_id|>")
    tok.add_special_tokens({"additional_special_tokens": NEMOTRON_TOKENS})
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B:1", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>"})
    tok.model_max_length = 4096  # room for a few images' features
    return tok


def text_config(tok: T.PreTrainedTokenizerFast) -> T.LlamaConfig:
    """The decoder: 2 Llama layers, 4 query heads sharing 2 key/value heads, ``llama3`` rotary scaling."""
    return T.LlamaConfig(
        vocab_size=len(tok), hidden_size=TEXT_WIDTH, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
        },
    )


def vision_config() -> T.SiglipVisionConfig:
    """SigLIP's vision tower on 16x16 tiles: 3 layers, 2 heads, its pooling head too (never read)."""
    return T.SiglipVisionConfig(
        hidden_size=VISION_WIDTH, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        image_size=TILE, patch_size=PATCH,
    )


def projector(downsample_ratio: float = 0.5) -> nn.Sequential:
    """``mlp1`` as published: LayerNorm, Linear, GELU, Linear, to the decoder's width."""
    width = VISION_WIDTH * round(1 / downsample_ratio) ** 2
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, TEXT_WIDTH), nn.GELU(), nn.Linear(TEXT_WIDTH, TEXT_WIDTH))


def _llm_config_json(config: T.LlamaConfig) -> dict:
    """The decoder config as the published ``llm_config`` writes it: ``llama_bidirec``, old-style
    ``rope_theta`` / ``rope_scaling``, MEAN (``avg``) pooling."""
    raw = config.to_dict()
    rope = dict(raw.pop("rope_parameters"))
    raw.update(
        model_type="llama_bidirec", architectures=["LlamaBidirectionalModel"], pooling="avg", temperature=1.0,
        rope_theta=rope.pop("rope_theta"), rope_scaling=rope,
    )
    return raw


def build_nemotron_vl(out: Path, seed: int = 0, **config: object) -> Path:
    """A tiny ``LlamaNemotronVLModel`` saved to ``out`` with its tokenizer and processor config, its
    weights under the published names (``language_model.*``, ``vision_model.vision_model.*``,
    ``mlp1.*``); ``config`` overrides top-level ``config.json`` keys.

    Every parameter is drawn again (matrices with std ``1.5 / sqrt(fan_in)``, norms around 1, other
    vectors around 0), so a dropped one or a misplaced image feature shows in the embeddings.
    """
    tok = nemotron_tokenizer()
    llm, vision = text_config(tok), vision_config()
    torch.manual_seed(seed)
    parts = {"language_model.": T.LlamaModel(llm), "vision_model.": T.SiglipVisionModel(vision), "mlp1.": projector()}
    tensors = {}
    with torch.no_grad():
        for prefix, module in parts.items():
            for name, p in module.named_parameters():
                if p.ndim == 1:
                    p.normal_(1.0 if ("norm" in name or name.startswith("0.")) and name.endswith("weight") else 0.0, 0.2)
                else:
                    p.normal_(0.0, 1.5 * p[0].numel() ** -0.5)
                tensors[prefix + name] = p.detach().clone().contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    raw = {
        "architectures": ["LlamaNemotronVLModel"],
        "model_type": "llama_nemotron_vl",
        "auto_map": {
            "AutoConfig": "configuration_llama_nemotron_vl.LlamaNemotronVLConfig",
            "AutoModel": "modeling_llama_nemotron_vl.LlamaNemotronVLModel",
        },
        "llm_config": _llm_config_json(llm),
        "vision_config": vision.to_dict(),
        "select_layer": -1,
        "force_image_size": TILE,
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "template": "bidirectional-llama-retriever",
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 6,
        "max_input_tiles": 6,
        "img_context_token_id": tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        "pooling": "avg",
        "bidirectional_attention": False,
        "query_prefix": "query:",
        "passage_prefix": "passage:",
        "q_max_length": 512,
        "p_max_length": 10240,
        "vocab_size": len(tok),
        "torch_dtype": "float32",
        **config,
    }
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    tok.save_pretrained(out)
    (out / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlamaNemotronVLProcessor",
        "auto_map": {"AutoProcessor": "processing_llama_nemotron_vl.LlamaNemotronVLProcessor"},
        "image_size": TILE, "max_input_tiles": 6, "num_image_token": FEATURES_PER_TILE, "use_thumbnail": True,
        "dynamic_image_size": True, "norm_type": "siglip", "query_prefix": "query:", "passage_prefix": "passage:",
        "template": "bidirectional-llama-retriever",
    }, indent=2))
    return out


def load_parts(model_dir: Path) -> tuple[T.LlamaModel, T.SiglipVisionModel, nn.Sequential]:
    """transformers' own modules with a checkpoint's weights: the decoder (bidirectional), the
    vision tower and ``mlp1``, in fp32 and eval mode."""
    raw = json.loads((model_dir / "config.json").read_text())
    llm_raw = {k: v for k, v in raw["llm_config"].items() if k != "model_type"}
    llm = T.LlamaConfig(**llm_raw)
    llm.is_causal = False
    vision = T.SiglipVisionConfig(**{k: v for k, v in raw["vision_config"].items() if k != "model_type"})
    tensors = load_file(model_dir / "model.safetensors")
    modules = (T.LlamaModel(llm), T.SiglipVisionModel(vision), projector(raw["downsample_ratio"]))
    for prefix, module in zip(("language_model.", "vision_model.", "mlp1."), modules):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
        module.float().eval()
    return modules


#: How :func:`relayout` renames the published names for the other layout vLLM reads: the vision
#: tower without transformers' inner ``vision_model.`` and the decoder under ``model.``.
_FLAT = (("vision_model.vision_model.", "vision_model."), ("language_model.", "language_model.model."))


def relayout(model_dir: Path, out: Path) -> Path:
    """A copy of ``model_dir`` with the weights under :data:`_FLAT`'s names."""
    out.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():
        if file.suffix == ".safetensors":
            renamed = {}
            for name, tensor in load_file(file).items():
                for saved, wanted in _FLAT:
                    if name.startswith(saved):
                        name = wanted + name[len(saved):]
                        break
                renamed[name] = tensor
            save_file(renamed, out / file.name, metadata={"format": "pt"})
        elif file.is_file():
            (out / file.name).write_bytes(file.read_bytes())
    return out
