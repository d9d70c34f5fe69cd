"""A tiny random NV-Embed, laid out as nvidia/NV-Embed-v2's repository is.

Sources, each looked up (none runs here):

- ``config.json``: NV-Embed-v2's as its hub page and copies of it show it (``add_eos``,
  ``add_pad_token``, ``architectures: ["NVEmbedModel"]``, ``auto_map`` to ``configuration_nvembed`` /
  ``modeling_nvembed``, ``hidden_size``, ``is_mask_instruction: true``, ``latent_attention_config``
  naming only ``model_type: latent_attention``, ``mask_type: "b"``, ``model_type: nvembed``,
  ``padding_side: right``, and ``text_config``, a full ``MistralConfig`` dump whose keys up to
  ``max_length`` are copied below). Sized down: hidden 4096 -> 32, 32 layers -> 2, 32/8 heads -> 4/2.
  Not confirmed (the pages cut off there): the rest of ``text_config`` — its ``model_type`` is taken to
  be ``bidir_mistral``, ``configuration_nvembed.py``'s ``BIDIR_MISTRAL_TYPE``, which ``NVEmbedConfig``
  builds the text model from — and the top level's ``torch_dtype`` / ``transformers_version`` (left out).
  The published ``latent_attention_config`` leaves every size to ``LatentAttentionConfig``'s defaults
  (512 latents, 8 heads, ``cross_dim_head``, ``hidden_dim`` and ``latent_dim`` 4096); the tiny one writes
  them out, sized down, with a head width (12) that is not ``latent_dim / heads``, as the published 4096 is not.
- Tensor names: ``modeling_nvembed.py``'s modules — ``NVEmbedModel.embedding_model`` (MistralModel's
  own names), ``latent_attention_model.latents`` and ``latent_attention_model.cross_attend_blocks.0``
  (``PreNorm``: ``norm``, ``norm_context``, ``fn`` = ``Attention``: ``to_q``, ``to_kv``, ``to_out``) /
  ``.1`` (``norm``, ``fn.net.0`` and ``fn.net.2`` of ``FeedForward``); the same names in candle's
  ``nvembed_v2/model.rs``, sglang's ``nvembed.py`` and a published NV-Embed-style index
  (ai-sage/Giga-Embeddings-instruct's ``model.safetensors.index.json``). Two shards with an index,
  as the published four are (which tensor sits in which shard is not the published split).
- Tokenizer: a Llama/Mistral-style SentencePiece BPE (``tiny_published.mistral_sentencepiece_tokenizer``:
  ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2 as ``text_config``'s ids, byte fallback) that adds BOS and no EOS
  (``modeling_nvembed.py`` appends ``</s>`` itself); pad ``</s>`` on the right, as
  ``NVEmbedModel.add_pad_token`` sets it. Saved as ``PreTrainedTokenizerFast``: the published
  tokenizer files were not read (Mistral-7B's, ``tokenizer.json`` and ``tokenizer.model``, by their names and sizes).
- sentence-transformers files: ``modules.json`` (Transformer, ``1_Pooling``, ``2_Normalize``: its hub
  page) and ``config_sentence_transformers.json`` with no prompts (its hub page).
  ``1_Pooling/config.json`` was not read (its hub page was not reachable): mean tokens, as the code
  pools; ``include_prompt: false`` inferred from its size, 298 bytes, which the standard eight keys
  make with a four-digit width only with ``include_prompt: false``. ``sentence_bert_config.json``:
  ``max_seq_length`` (32768 published, the context; sized down) and ``do_lower_case: false`` (its hub
  page). ``instructions.json`` is left out (contents not confirmed); so are the remote code files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers as T
from safetensors.torch import save_file
from tiny_published import mistral_sentencepiece_tokenizer

#: NV-Embed-v2's ``text_config`` keys as published, up to ``max_length`` (the rest sized down below).
PUBLISHED_TEXT_CONFIG: dict[str, Any] = {
    "_name_or_path": "nvidia/NV-Embed-v2", "add_cross_attention": False, "architectures": ["MistralModel"],
    "attention_dropout": 0.0, "bad_words_ids": None, "begin_suppress_tokens": None, "bos_token_id": 1,
    "chunk_size_feed_forward": 0, "cross_attention_hidden_size": None, "decoder_start_token_id": None,
    "diversity_penalty": 0.0, "do_sample": False, "early_stopping": False, "encoder_no_repeat_ngram_size": 0,
    "eos_token_id": 2, "exponential_decay_length_penalty": None, "finetuning_task": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "hidden_act": "silu", "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "initializer_range": 0.02, "is_decoder": False, "is_encoder_decoder": False, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0, "max_length": 20,
}
#: The sizes, down from Mistral-7B's; a sliding window far shorter than the test texts, which the
#: publisher's padding-only mask ignores (so must poolkit).
TINY_TEXT_SIZES: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4, "model_type": "bidir_mistral",
}
#: ``LatentAttentionConfig``'s fields, sized down (published: the defaults, 512 / 8 / 4096 / 4096 / 4096).
TINY_LATENT_CONFIG: dict[str, Any] = {
    "model_type": "latent_attention", "num_latents_value": 16, "num_cross_heads": 4, "cross_dim_head": 12,
    "hidden_dim": 32, "latent_dim": 32, "output_normalize": True,
}
POOLING_CONFIG = {
    "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
    "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
    "pooling_mode_lasttoken": False, "include_prompt": False,
}
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def nv_embed_config(vocab_size: int, **latent: Any) -> dict[str, Any]:
    """NV-Embed-v2's ``config.json``, sized down; ``latent`` changes ``latent_attention_config``."""
    width = TINY_TEXT_SIZES["hidden_size"]
    return {
        "_name_or_path": "nvidia/NV-Embed-v2", "add_eos": True, "add_pad_token": True, "architectures": ["NVEmbedModel"],
        "auto_map": {"AutoConfig": "configuration_nvembed.NVEmbedConfig", "AutoModel": "modeling_nvembed.NVEmbedModel"},
        "hidden_size": width, "is_mask_instruction": True, "latent_attention_config": {**TINY_LATENT_CONFIG, **latent},
        "mask_type": "b", "model_type": "nvembed", "padding_side": "right",
        "text_config": {**PUBLISHED_TEXT_CONFIG, **TINY_TEXT_SIZES, "vocab_size": vocab_size},
    }


def _latent_tensors(g: torch.Generator) -> dict[str, torch.Tensor]:
    """``latent_attention_model``'s tensors, drawn at scales that keep every part of the sum visible."""
    width, heads, head_dim = TINY_LATENT_CONFIG["latent_dim"], TINY_LATENT_CONFIG["num_cross_heads"], TINY_LATENT_CONFIG["cross_dim_head"]
    inner = heads * head_dim

    def randn(*shape: int, scale: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + mean

    block = "latent_attention_model.cross_attend_blocks."
    return {
        "latent_attention_model.latents": randn(TINY_LATENT_CONFIG["num_latents_value"], width),
        block + "0.norm.weight": randn(width, scale=0.2, mean=1.0), block + "0.norm.bias": randn(width, scale=0.2),
        block + "0.norm_context.weight": randn(width, scale=0.2, mean=1.0), block + "0.norm_context.bias": randn(width, scale=0.2),
        block + "0.fn.to_q.weight": randn(inner, width, scale=width**-0.5),
        block + "0.fn.to_kv.weight": randn(2 * inner, width, scale=width**-0.5),
        block + "0.fn.to_out.weight": randn(width, inner, scale=inner**-0.5),
        block + "1.norm.weight": randn(width, scale=0.2, mean=1.0), block + "1.norm.bias": randn(width, scale=0.2),
        block + "1.fn.net.0.weight": randn(8 * width, width, scale=width**-0.5), block + "1.fn.net.0.bias": randn(8 * width, scale=0.1),
        block + "1.fn.net.2.weight": randn(width, 4 * width, scale=(4 * width) ** -0.5), block + "1.fn.net.2.bias": randn(width, scale=0.1),
    }


def build_nv_embed(out: Path, seed: int = 0, **latent: Any) -> Path:
    """A tiny NV-Embed-v2 folder in ``out``: a random transformers ``MistralModel`` saved under
    ``embedding_model.``, random latent attention, Mistral-style tokenizer, sentence-transformers files.

    ``latent`` changes ``latent_attention_config`` in ``config.json`` only (the tensors stay as drawn).
    """
    tok = mistral_sentencepiece_tokenizer()
    tok.padding_side = "right"
    config = nv_embed_config(len(tok), **latent)
    text = {k: v for k, v in config["text_config"].items() if k != "model_type"}
    torch.manual_seed(seed)
    mistral = T.MistralModel(T.MistralConfig(**text))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in mistral.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[1] ** 0.5 if "embed" not in name else 1.0))
    body = {"embedding_model." + name: t.contiguous() for name, t in mistral.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    shards = {"model-00001-of-00002.safetensors": body, "model-00002-of-00002.safetensors": _latent_tensors(g)}
    for file, tensors in shards.items():
        save_file(tensors, str(out / file), metadata={"format": "pt"})
    index = {name: file for file, tensors in shards.items() for name in tensors}
    size = sum(t.numel() * t.element_size() for tensors in shards.values() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": index}, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(out)
    (out / "modules.json").write_text(json.dumps(MODULES, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(POOLING_CONFIG, indent=4))
    versions = {"sentence_transformers": "2.7.0", "transformers": "4.37.2", "pytorch": "2.2.0+cu121"}
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": TINY_TEXT_SIZES["max_position_embeddings"], "do_lower_case": False}))
    (out / "config_sentence_transformers.json").write_text(json.dumps({"__version__": versions, "prompts": {}, "default_prompt_name": None}, indent=2))
    return out
