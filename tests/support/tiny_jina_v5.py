"""Tiny jina-embeddings-v5-text-small and -nano, laid out as the publisher ships them.

Sources of the layout (each key below says which):
- [vllm] vLLM's ``vllm/model_executor/models/jina.py`` (``JinaEmbeddingsV5Model``): the architecture
  name, the task names (``_SUPPORTED_TASKS``), the base weights without a prefix (its weights
  mapper adds ``model.``, for the Qwen3 body and for the nano's EuroBERT body, its
  ``JinaEmbeddingsV5EncoderModel``, alike), and the adapters at ``adapters/<task>/adapter_config.json``
  and ``adapters/<task>/adapter_model.safetensors`` with tensors ``base_model.model.<layer>.lora_A.weight``
  / ``lora_B.weight`` (its ``_build_lora_pairs``, shared by both bodies), scaled by ``lora_alpha / r``;
  its ``tests/models/test_jina_embeddings_v5.py``: ``is_decoder`` false is what marks the nano.
- [nano] the publisher's files of jina-embeddings-v5-text-nano, byte-identical in the
  GitHub mirror ``oaustegard/jina-v5-nano-mirror`` (pinned upstream commit 8a7f00aa; ``model/config.json``,
  ``model/modules.json``, ``model/config_sentence_transformers.json``, ``model/custom_st.py``,
  ``model/modeling_jina_embeddings_v5.py``, ``model/configuration_jina_embeddings_v5.py``,
  ``model/modeling_eurobert.py``, ``model/tokenizer_config.json``, ``model/special_tokens_map.json``,
  ``model/adapters/<task>/adapter_config.json``): the Jina keys of ``config.json`` (``architectures``,
  ``task_names`` in this order, ``auto_map``, ``model_type``), the nano's EuroBERT keys and values, the
  sentence-transformers files, the special tokens and the adapter config's keys; its ``README.md``: the
  weights are ``model.safetensors`` and one ``adapter_model.safetensors`` per task.
- [small] the small model's own files as read by public code: its ``configuration_jina_embeddings_v5.py``
  (``class JinaEmbeddingsV5Config(Qwen3Config): model_type = "jina_embeddings_v5"``); a loader that
  checks its ``config.json`` (``model_type``, ``architectures``, ``task_names``,
  ``max_position_embeddings`` 32768) and its retrieval adapter (``peft_type`` LORA, ``task_type``
  FEATURE_EXTRACTION, ``r`` 32, ``lora_alpha`` 32, ``lora_dropout`` 0.1, the seven target modules,
  ``base_model_name_or_path``) and loads the body with transformers' ``Qwen3Model``; a config parser's
  test of the published values (``head_dim`` 128, ``num_key_value_heads`` 8, ``rms_norm_eps`` 1e-6,
  ``rope_theta`` 3500000, ``tie_word_embeddings`` true).
- [qwen3] transformers' ``Qwen3Config``: the remaining Qwen3 keys of the base model
  (Qwen/Qwen3-0.6B-Base), and its tokenizer's special tokens (``<|endoftext|>`` as end and padding,
  ``<|im_start|>``, ``<|im_end|>``), which ``tiny_models.bytelevel_bpe_tokenizer`` carries.
- [eurobert] ``tiny_eurobert.eurobert_tokenizer``'s sources for the nano's Llama-3 tokenizer
  (EuroBERT's: ``<|begin_of_text|>`` before each text, no end token after).

Not confirmed (no public copy of the file was found): the nano's ``tokenizer.json`` (its
post-processor: the tiny one is EuroBERT's, the beginning token first and no end token, so the
last token pooled is the text's own last) and the tensor names inside the nano's
``model.safetensors`` and adapters (taken from vLLM's loader, which reads both bodies the same way:
bare body names, PEFT's ``base_model.model.`` names). The mirror's release sizes (423,543,680 bytes
for ~212M parameters, 13,586,992 per adapter) suggest bfloat16 storage under ``torch_dtype``
float32; the tiny weights are float32.

The sizes are tiny (hidden 32, 2 layers; the small's 4 query heads share 2 key/value heads, the
nano has as many as it has query heads, as published; LoRA rank 4 with ``lora_alpha`` 8, so the
scaling is not 1); everything else is as published.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import save_file
from tiny_eurobert import BOS, EOS, MASK, eurobert_tokenizer, randomise_vectors
from tiny_models import bytelevel_bpe_tokenizer
from tokenizers import AddedToken

#: [nano] ``task_names``, in the published order; [vllm] the same four tasks.
TASKS = ["retrieval", "text-matching", "clustering", "classification"]
#: [nano] ``target_modules`` of every adapter, in the published order.
TARGET_MODULES = ["gate_proj", "v_proj", "q_proj", "down_proj", "o_proj", "k_proj", "up_proj"]
RANK, ALPHA = 4, 8
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INNER = 32, 2, 4, 2, 8, 64
#: [nano] the special tokens after ``<|mask|>`` (ids 128003 and 128004 published); ``<|pad|>`` pads
#: (``special_tokens_map.json``, ``tokenizer_config.json``) where ``config.json`` says ``<|end_of_text|>``.
PARALLEL_SEP, PAD = "<|parallel_sep|>", "<|pad|>"


def projection_shapes(heads: int, kv_heads: int, head_dim: int) -> dict[str, tuple[str, int, int]]:
    """The Llama-style projections each target module is, and its ``[out, in]`` shape in a tiny body."""
    return {
        "q_proj": ("self_attn", heads * head_dim, HIDDEN),
        "k_proj": ("self_attn", kv_heads * head_dim, HIDDEN),
        "v_proj": ("self_attn", kv_heads * head_dim, HIDDEN),
        "o_proj": ("self_attn", HIDDEN, heads * head_dim),
        "gate_proj": ("mlp", INNER, HIDDEN),
        "up_proj": ("mlp", INNER, HIDDEN),
        "down_proj": ("mlp", HIDDEN, INNER),
    }


def qwen3_keys(vocab_size: int, pad_token_id: int) -> dict:
    """The Qwen3 keys of the published ``config.json``, at tiny sizes."""
    return {
        "attention_bias": False,  # [qwen3]
        "attention_dropout": 0.0,  # [qwen3]
        "bos_token_id": pad_token_id,  # [qwen3] Qwen3-Base: <|endoftext|> begins and ends
        "eos_token_id": pad_token_id,  # [qwen3]
        "head_dim": HEAD_DIM,  # [small] 128 published
        "hidden_act": "silu",  # [qwen3]
        "hidden_size": HIDDEN,  # [small] 1024 published
        "initializer_range": 0.02,  # [qwen3]
        "intermediate_size": INNER,  # [small] 3072 published
        "max_position_embeddings": 128,  # [small] 32768 published
        "max_window_layers": LAYERS,  # [qwen3]
        "num_attention_heads": HEADS,  # [small] 16 published
        "num_hidden_layers": LAYERS,  # [small] 28 published
        "num_key_value_heads": KV_HEADS,  # [small] 8 published
        "rms_norm_eps": 1e-06,  # [small]
        "rope_scaling": None,  # [qwen3]
        "rope_theta": 3500000,  # [small]
        "sliding_window": None,  # [qwen3]
        "tie_word_embeddings": True,  # [small]
        "torch_dtype": "float32",  # [nano] (the small model publishes bfloat16)
        "use_cache": True,  # [qwen3]
        "use_sliding_window": False,  # [qwen3]
        "vocab_size": vocab_size,  # [small] 151936 published
    }


def eurobert_keys(tok: T.PreTrainedTokenizerFast) -> dict:
    """[nano] The EuroBERT keys of the published ``config.json``, at tiny sizes. No
    ``head_dim``: EuroBERT's config derives it, ``hidden_size / num_attention_heads`` (64 published)."""
    return {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token": BOS,
        "bos_token_id": tok.bos_token_id,  # 128000 published
        "eos_token": EOS,
        "eos_token_id": tok.eos_token_id,  # 128001 published
        "pad_token": EOS,  # as published: the tokenizer pads with <|pad|>
        "pad_token_id": tok.eos_token_id,  # 128001 published
        "mask_token": MASK,
        "mask_token_id": tok.mask_token_id,  # 128002 published
        "hidden_act": "silu",
        "hidden_dropout": 0.0,
        "hidden_size": HIDDEN,  # 768 published
        "initializer_range": 0.02,
        "intermediate_size": INNER,  # 3072 published
        "max_position_embeddings": 8192,
        "num_attention_heads": HEADS,  # 12 published
        "num_hidden_layers": LAYERS,  # 12 published
        "num_key_value_heads": HEADS,  # 12 published: no grouped-query attention
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.40.0.dev0",
        "vocab_size": len(tok),  # 128256 published
        "is_decoder": False,
    }


def jina_keys() -> dict:
    """[nano] [small] The keys Jina's ``config.json`` puts before the body's."""
    return {
        "architectures": ["JinaEmbeddingsV5Model"],  # [vllm] too
        "task_names": TASKS,
        "auto_map": {  # [nano]; [small] the same class names
            "AutoConfig": "configuration_jina_embeddings_v5.JinaEmbeddingsV5Config",
            "AutoModel": "modeling_jina_embeddings_v5.JinaEmbeddingsV5Model",
        },
    }


def adapter_config(base_model: str = "jinaai/jina-embeddings-v5-text-small") -> dict:
    """[nano] ``adapters/<task>/adapter_config.json``, key for key; its values ([small] the same)
    but for ``r`` and ``lora_alpha`` (32 and 32 published) and ``base_model_name_or_path`` (the
    model's own)."""
    return {
        "alpha_pattern": {}, "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "bias": "none", "corda_config": None, "eva_config": None, "exclude_modules": None,
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": "gaussian",
        "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
        "loftq_config": {}, "lora_alpha": ALPHA, "lora_bias": False, "lora_dropout": 0.1,
        "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
        "peft_type": "LORA", "r": RANK, "rank_pattern": {}, "revision": None,
        "target_modules": TARGET_MODULES, "task_type": "FEATURE_EXTRACTION",
        "trainable_token_indices": None, "use_dora": False, "use_rslora": False,
    }


def write_jina_files(out: Path, body_keys: dict, base_model: str, shapes: dict[str, tuple[str, int, int]], seed: int, scale: float) -> None:
    """Beside a saved body: Jina's ``config.json``, the sentence-transformers files and one PEFT
    LoRA adapter per task under ``adapters/<task>/`` (random factors of ``scale``: PEFT's own init
    leaves ``lora_B`` zero, which would hide an adapter that is never applied)."""
    config = {**jina_keys(), "model_type": "jina_embeddings_v5", **body_keys}  # [nano] [small]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    # [nano] the one sentence-transformers module, Jina's remote-code Transformer, which pools the
    # last token and normalises in code (custom_st.py); no Pooling or Normalize module
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "transformer", "path": "", "type": "custom_st.Transformer", "kwargs": ["task", "truncate_dim"]},
    ], indent=4))
    (out / "config_sentence_transformers.json").write_text(json.dumps({  # [nano]
        "__version__": {"sentence_transformers": "5.1.2", "transformers": "4.57.0", "pytorch": "2.8.0"},
        "prompts": {"query": "Query: ", "document": "Document: "},
        "default_prompt_name": "document",
        "similarity_fn_name": "cosine",
    }, indent=2))
    g = torch.Generator().manual_seed(seed + 1)
    for task in TASKS:
        folder = out / "adapters" / task
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps(adapter_config(base_model), indent=2))
        factors = {}
        for i in range(LAYERS):
            for module in TARGET_MODULES:
                block, rows, cols = shapes[module]
                name = f"base_model.model.layers.{i}.{block}.{module}"  # [vllm] PEFT's names
                factors[f"{name}.lora_A.weight"] = torch.randn(RANK, cols, generator=g) * scale
                factors[f"{name}.lora_B.weight"] = torch.randn(rows, RANK, generator=g) * scale
        save_file(factors, folder / "adapter_model.safetensors")


def build_jina_v5(out: Path, seed: int = 0, scale: float = 0.3) -> Path:
    """A tiny jina-embeddings-v5-text-small in ``out``: ``config.json``, the bare Qwen3 body in
    ``model.safetensors``, the tokenizer, and :func:`write_jina_files`' files."""
    tok = bytelevel_bpe_tokenizer(padding_side="right")
    keys = qwen3_keys(len(tok), tok.pad_token_id)
    torch.manual_seed(seed)  # transformers 5 initialises in the constructor
    body = T.Qwen3Model(T.Qwen3Config(**keys))
    with torch.no_grad():
        for name, p in body.named_parameters():
            if p.ndim == 1:  # RMSNorm weights off 1, so that a dropped one shows
                p.normal_(1.0, 0.5)
    out.mkdir(parents=True, exist_ok=True)
    body.save_pretrained(out)  # [vllm] [small] the bare body: embed_tokens, layers.*, norm, no prefix
    tok.save_pretrained(out)
    write_jina_files(out, keys, "jinaai/jina-embeddings-v5-text-small", projection_shapes(HEADS, KV_HEADS, HEAD_DIM), seed, scale)
    return out


def nano_tokenizer() -> T.PreTrainedTokenizerFast:
    """[eurobert] EuroBERT's tokenizer with [nano] ``<|parallel_sep|>`` and ``<|pad|>`` after
    ``<|mask|>``, padding with ``<|pad|>`` on the right (no ``padding_side`` is published: the default).
    Left out, as no text here reads them: ``<|mask|>``'s ``lstrip`` and the reserved tokens from 128005 on."""
    tok = eurobert_tokenizer()
    tok.add_tokens([AddedToken(PARALLEL_SEP, special=True, normalized=False), AddedToken(PAD, special=True, normalized=False)], special_tokens=True)
    tok.pad_token = PAD
    return tok


def build_jina_v5_nano(out: Path, seed: int = 0, scale: float = 0.3) -> Path:
    """A tiny jina-embeddings-v5-text-nano in ``out``: ``config.json`` (EuroBERT's keys,
    ``is_decoder: false``), the bare EuroBERT body in ``model.safetensors``, the tokenizer, and
    :func:`write_jina_files`' files."""
    tok = nano_tokenizer()
    keys = eurobert_keys(tok)
    torch.manual_seed(seed)  # transformers 5 initialises in the constructor
    body = T.EuroBertModel(T.EuroBertConfig(**keys))  # the publisher's JinaEmbeddingsV5Config is an EuroBertConfig [nano]
    randomise_vectors(body)  # RMSNorm weights off 1, so that a dropped one shows
    out.mkdir(parents=True, exist_ok=True)
    body.save_pretrained(out)  # [vllm] the bare body: embed_tokens, layers.*, norm, no prefix
    tok.save_pretrained(out)
    write_jina_files(out, keys, "jinaai/jina-embeddings-v5-text-nano", projection_shapes(HEADS, HEADS, HIDDEN // HEADS), seed, scale)
    return out
