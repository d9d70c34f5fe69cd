"""Tiny random LFM2 checkpoints laid out as Liquid AI publishes them: ``Lfm2ForCausalLM``
(LiquidAI/LFM2-350M, 700M, 1.2B) and the PyLate ColBERT save of ``Lfm2Model``
(LiquidAI/LFM2-ColBERT-350M).

Layout sources:

- ``config.json`` keys: LFM2-350M's (hidden 1024, ``block_ff_dim`` 6656 with
  ``block_auto_adjust_ff_dim``, ``block_multiple_of`` 256, ``block_ffn_dim_multiplier`` 1.0,
  16 layers with attention at 2, 5, 8, 10, 12, 14 given both as ``full_attn_idxs`` and
  ``layer_types``, 16 query heads sharing 8 key-value heads, ``conv_L_cache`` 3, ``conv_bias``
  false, ``norm_eps`` 1e-5, ``rope_theta`` 1e6, ``max_position_embeddings`` 128000,
  ``tie_embedding`` true, ``bos_token_id`` 1, ``eos_token_id`` 7, ``pad_token_id`` 0), as public
  ports quote the published config.json (the LFM2-1.2B one, huggingface.co/LiquidAI/LFM2-1.2B
  config.json, read by a Swift port's test; the LFM2-350M text config in an LFM2-Audio port's) and
  as transformers 5.24's ``Lfm2Config`` reads them (``block_ff_dim`` -> ``intermediate_size``,
  ``tie_embedding`` -> ``tie_word_embeddings``). Sized down here: hidden 32, six layers (the
  published pattern's first six: conv, conv, attention, conv, conv, attention), 4 query heads
  sharing 2 key-value heads, ``block_ff_dim`` 100 (adjusted to 80: two thirds, rounded up to
  ``block_multiple_of`` 16).
- Weight names: transformers' ``Lfm2ForCausalLM`` ``save_pretrained`` (``model.embed_tokens``,
  ``model.layers.N.operator_norm`` / ``ffn_norm``, ``self_attn.q_proj`` / ``k_proj`` / ``v_proj`` /
  ``out_proj`` / ``q_layernorm`` / ``k_layernorm``, ``conv.in_proj`` / ``conv.conv`` / ``conv.out_proj``,
  ``feed_forward.w1`` / ``w2`` / ``w3``, ``model.embedding_norm``; no ``lm_head``, tied), the names a
  GGUF converter's table maps from the published checkpoint.
- Tokenizer: a byte-level BPE with LFM2's special tokens (``<|pad|>``, ``<|startoftext|>`` put
  before every text, ``<|im_end|>`` the end of a turn), not their ids.
- LFM2-ColBERT-350M: a PyLate ColBERT (sentence-transformers ``Transformer`` of ``Lfm2Model``, then
  a bias-free ``Dense`` to 128 features, 16 here) with ``[Q] `` / ``[D] `` role markers in
  ``config_sentence_transformers.json`` (the markers an on-device export of LFM2.5-ColBERT-350M
  documents from its config); vLLM serves it as ``ColBERTLfm2Model``, causal, as ``Lfm2Model``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from tiny_models import build_pylate_colbert, bytelevel_bpe_tokenizer
from tokenizers import processors

#: LFM2-350M's config.json keys, sized down (values the tests do not vary are the published ones).
LFM2_CONFIG = {
    "architectures": ["Lfm2ForCausalLM"],
    "model_type": "lfm2",
    "block_auto_adjust_ff_dim": True,
    "block_dim": 32,
    "block_ff_dim": 100,
    "block_ffn_dim_multiplier": 1.0,
    "block_multiple_of": 16,
    "block_norm_eps": 1e-05,
    "conv_L_cache": 3,
    "conv_bias": False,
    "conv_dim": 32,
    "full_attn_idxs": [2, 5],
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 100,
    "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention"],
    "max_position_embeddings": 128000,
    "norm_eps": 1e-05,
    "num_attention_heads": 4,
    "num_heads": 4,
    "num_hidden_layers": 6,
    "num_key_value_heads": 2,
    "rope_theta": 1000000.0,
    "tie_embedding": True,
    "torch_dtype": "float32",
    "use_cache": True,
}


def lfm2_tokenizer(markers: tuple[str, ...] = ()) -> T.PreTrainedTokenizerFast:
    """The tiny byte-level BPE with LFM2's special tokens, ``<|startoftext|>`` put before every
    text, and ``markers`` as tokens of their own."""
    tok = bytelevel_bpe_tokenizer(padding_side="right")
    tok.add_special_tokens({"pad_token": "<|pad|>", "bos_token": "<|startoftext|>", "eos_token": "<|im_end|>"})
    if markers:
        tok.add_special_tokens({"additional_special_tokens": list(markers)})
    bos = tok.convert_tokens_to_ids("<|startoftext|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A", pair="<|startoftext|> $A $B", special_tokens=[("<|startoftext|>", bos)]
    )
    return tok


def build_lfm2(out: Path, seed: int = 0, markers: tuple[str, ...] = (), **overrides: object) -> Path:
    """A tiny ``Lfm2ForCausalLM`` in ``out`` (published config keys, ``overrides`` applied), every
    parameter drawn again (matrices ``std 1 / sqrt(fan_in)``, norms around 1), so a dropped or
    misread one shows; ``markers``: tokens of the tokenizer's own (inside the vocabulary)."""
    tok = lfm2_tokenizer(markers)
    config = {**LFM2_CONFIG, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
              "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, **overrides}
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    model = T.Lfm2ForCausalLM(T.Lfm2Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if name.endswith("norm.weight") or "layernorm" in name else 0.0, 0.3)
            else:
                p.normal_(0.0, 1.0 if "embed" in name else (p.numel() / p.shape[0]) ** -0.5)
    model.save_pretrained(out)
    (out / "config.json").write_text(json.dumps(config, indent=2))  # the published keys, not transformers' rewrite
    tok.save_pretrained(out)
    return out


def build_lfm2_colbert(out: Path, seed: int = 0, dim: int = 16, **config: object) -> Path:
    """LFM2-ColBERT-350M's layout: a PyLate save of a tiny ``Lfm2Model`` (its tokenizer holding the
    ``[Q]`` / ``[D]`` markers) with a ``dim``-wide Dense and PyLate's keys ``config``."""
    backbone = build_lfm2(out.parent / (out.name + "-backbone"), seed=seed, markers=("[Q]", "[D]"))
    return build_pylate_colbert(out, backbone, dim=dim, query_prefix="[Q] ", document_prefix="[D] ", **config)
