"""A tiny jina-embeddings-v5-text-small, laid out as the publisher ships it.

Sources of the layout (each key below says which):
- [vllm] vLLM's ``vllm/model_executor/models/jina.py`` (``JinaEmbeddingsV5Model``): the architecture
  name, the task names (``_SUPPORTED_TASKS``), the base weights without a prefix (its weights
  mapper adds ``model.``), and the adapters at ``adapters/<task>/adapter_config.json`` and
  ``adapters/<task>/adapter_model.safetensors`` with tensors ``base_model.model.<layer>.lora_A.weight``
  / ``lora_B.weight``, scaled by ``lora_alpha / r``.
- [nano] the publisher's files of the sibling jina-embeddings-v5-text-nano, byte-identical in the
  GitHub mirror ``oaustegard/jina-v5-nano-mirror`` (``model/config.json``, ``model/modules.json``,
  ``model/config_sentence_transformers.json``, ``model/custom_st.py``,
  ``model/modeling_jina_embeddings_v5.py``, ``model/adapters/retrieval/adapter_config.json``): the
  Jina keys of ``config.json`` (``architectures``, ``task_names`` in this order, ``auto_map``,
  ``model_type``), the sentence-transformers files and the adapter config's keys.
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

The sizes are tiny (hidden 32, 2 layers, 4 query heads sharing 2 key/value heads, LoRA rank 4 with
``lora_alpha`` 8, so the scaling is not 1); everything else is as published.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import save_file
from tiny_models import bytelevel_bpe_tokenizer

#: [nano] ``task_names``, in the published order; [vllm] the same four tasks.
TASKS = ["retrieval", "text-matching", "clustering", "classification"]
#: [nano] ``target_modules`` of every adapter, in the published order.
TARGET_MODULES = ["gate_proj", "v_proj", "q_proj", "down_proj", "o_proj", "k_proj", "up_proj"]
RANK, ALPHA = 4, 8
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INNER = 32, 2, 4, 2, 8, 64
#: The Qwen3 projections each target module is, and its ``[out, in]`` shape in the tiny body.
_SHAPES = {
    "q_proj": ("self_attn", HEADS * HEAD_DIM, HIDDEN),
    "k_proj": ("self_attn", KV_HEADS * HEAD_DIM, HIDDEN),
    "v_proj": ("self_attn", KV_HEADS * HEAD_DIM, HIDDEN),
    "o_proj": ("self_attn", HIDDEN, HEADS * HEAD_DIM),
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


def adapter_config() -> dict:
    """[nano] ``adapters/<task>/adapter_config.json``, key for key; [small] its values but for
    ``r`` and ``lora_alpha`` (32 and 32 published)."""
    return {
        "alpha_pattern": {}, "auto_mapping": None,
        "base_model_name_or_path": "jinaai/jina-embeddings-v5-text-small",  # [small]
        "bias": "none", "corda_config": None, "eva_config": None, "exclude_modules": None,
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": "gaussian",
        "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
        "loftq_config": {}, "lora_alpha": ALPHA, "lora_bias": False, "lora_dropout": 0.1,
        "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
        "peft_type": "LORA", "r": RANK, "rank_pattern": {}, "revision": None,
        "target_modules": TARGET_MODULES, "task_type": "FEATURE_EXTRACTION",
        "trainable_token_indices": None, "use_dora": False, "use_rslora": False,
    }


def build_jina_v5(out: Path, seed: int = 0, scale: float = 0.3) -> Path:
    """A tiny jina-embeddings-v5-text-small in ``out``: ``config.json``, the bare Qwen3 body in
    ``model.safetensors``, the tokenizer, the sentence-transformers files and one PEFT LoRA
    adapter per task under ``adapters/<task>/`` (random factors of ``scale``: PEFT's own init
    leaves ``lora_B`` zero, which would hide an adapter that is never applied)."""
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
    config = {
        "architectures": ["JinaEmbeddingsV5Model"],  # [nano] [small] [vllm]
        "task_names": TASKS,  # [nano] [small]
        "auto_map": {  # [nano]; [small] the same class names
            "AutoConfig": "configuration_jina_embeddings_v5.JinaEmbeddingsV5Config",
            "AutoModel": "modeling_jina_embeddings_v5.JinaEmbeddingsV5Model",
        },
        "model_type": "jina_embeddings_v5",  # [nano] [small]
        **keys,
    }
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
        (folder / "adapter_config.json").write_text(json.dumps(adapter_config(), indent=2))
        factors = {}
        for i in range(LAYERS):
            for module in TARGET_MODULES:
                block, rows, cols = _SHAPES[module]
                name = f"base_model.model.layers.{i}.{block}.{module}"  # [vllm] PEFT's names
                factors[f"{name}.lora_A.weight"] = torch.randn(RANK, cols, generator=g) * scale
                factors[f"{name}.lora_B.weight"] = torch.randn(rows, RANK, generator=g) * scale
        save_file(factors, folder / "adapter_model.safetensors")
    return out
