"""The models the bench runs: a name or path as for ``LLM``, or a random-weight preset.

A preset is a model of a popular embedder's exact configuration with seeded random weights,
built once on disk, so both libraries load it like any model and speed can be measured without
downloading the real weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...config.settings import DEFAULT_MODEL

#: The exact configurations of popular embedders, for speed-only runs with random weights: their
#: sentence-transformers pooling (``cls``, ``mean`` or ``lasttoken``), ``config.json`` as published
#: (in transformers' own terms where the hub's file is written for remote code), and, where the
#: configuration is not the named model's alone, what it is (``about``).
_BERT = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522, "type_vocab_size": 2,
         "max_position_embeddings": 512, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}
#: Qwen3-Embedding-0.6B's sizes, which the decoder presets of other families take.
_QWEN3_SIZES = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
                "num_key_value_heads": 8, "head_dim": 128}
PRESETS: dict[str, dict[str, Any]] = {
    "host-bert": {"pooling": "mean", "about": "one layer 32 wide: compute negligible, the host's work alone (workload H)",
                  "config": {**_BERT, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                             "num_attention_heads": 2}},
    "bge-small": {"pooling": "cls", "config": {**_BERT, "hidden_size": 384, "intermediate_size": 1536,
                                                 "num_hidden_layers": 12, "num_attention_heads": 12}},
    "bge-base": {"pooling": "cls", "config": {**_BERT, "hidden_size": 768, "intermediate_size": 3072,
                                                "num_hidden_layers": 12, "num_attention_heads": 12}},
    # BAAI/bge-large-en-v1.5's config.json (a 1024-wide BERT, CLS pooling), as copied with its
    # "_name_or_path" in https://huggingface.co/Qdrant/bge-large-en-v1.5-onnx/blob/4edbfe60e09d92aef82630a7c1474b93c4a4fc76/config.json
    # (BAAI's own model page, https://huggingface.co/BAAI/bge-large-en-v1.5, was not in reach to read).
    "bge-large": {"pooling": "cls", "config": {**_BERT, "hidden_size": 1024, "intermediate_size": 4096,
                                                 "num_hidden_layers": 24, "num_attention_heads": 16}},
    "qwen3-embedding-0.6b": {"pooling": "lasttoken", "config": {
        "model_type": "qwen3", "architectures": ["Qwen3Model"], "vocab_size": 151669, **_QWEN3_SIZES,
        "max_position_embeddings": 32768, "rope_theta": 1000000, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "attention_bias": False, "hidden_act": "silu", "use_sliding_window": False,
    }},
    "modernbert-embed-base": {"pooling": "mean", "config": {
        "model_type": "modernbert", "architectures": ["ModernBertModel"], "vocab_size": 50368, "hidden_size": 768,
        "intermediate_size": 1152, "num_hidden_layers": 22, "num_attention_heads": 12, "hidden_activation": "gelu",
        "max_position_embeddings": 8192, "norm_eps": 1e-5, "norm_bias": False, "attention_bias": False,
        "mlp_bias": False, "local_attention": 128, "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0, "pad_token_id": 50283, "bos_token_id": 50281, "eos_token_id": 50282,
        "cls_token_id": 50281, "sep_token_id": 50282,
    }},
    "nomic-embed-text-v1.5": {"pooling": "mean", "config": {
        "model_type": "nomic_bert", "architectures": ["NomicBertModel"], "vocab_size": 30528, "hidden_size": 768,
        "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "hidden_act": "silu",
        "max_position_embeddings": 8192, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "rope_theta": 1000.0,
    }},
    "gte-base-en-v1.5": {"pooling": "cls", "about": "with gte-base-en-v1.5's config, its rotary base not NTK-scaled "
                         "(the same work; poolkit reads that scaling in the hub's own config format only)", "config": {
        "model_type": "gte", "architectures": ["GteModel"], "vocab_size": 30528, "hidden_size": 768,
        "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "hidden_act": "gelu",
        "max_position_embeddings": 8192, "type_vocab_size": 0, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "rope_theta": 500000.0,
    }},
    "all-mpnet-base-v2": {"pooling": "mean", "config": {
        "model_type": "mpnet", "architectures": ["MPNetModel"], "vocab_size": 30527, "hidden_size": 768,
        "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "hidden_act": "gelu",
        "max_position_embeddings": 514, "relative_attention_num_buckets": 32, "layer_norm_eps": 1e-5,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    }},
    "embeddinggemma-300m": {"pooling": "mean", "about": "with the config of embeddinggemma-300m (its Dense layers left out)", "config": {
        "model_type": "gemma3_text", "architectures": ["Gemma3TextModel"], "vocab_size": 262144, "hidden_size": 768,
        "intermediate_size": 1152, "num_hidden_layers": 24, "num_attention_heads": 3, "num_key_value_heads": 1,
        "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 512,
        "query_pre_attn_scalar": 256, "use_bidirectional_attention": True, "pad_token_id": 0, "eos_token_id": 1,
        "bos_token_id": 2, "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 4,
    }},
    "mistral-0.6b": {"pooling": "lasttoken", "about": "with e5-mistral-7b-instruct's config at Qwen3-Embedding-0.6B's sizes", "config": {
        "model_type": "mistral", "architectures": ["MistralModel"], "vocab_size": 32000, **_QWEN3_SIZES,
        "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    }},
    "gemma2-0.6b": {"pooling": "lasttoken", "about": "with bge-multilingual-gemma2's config at Qwen3-Embedding-0.6B's sizes", "config": {
        "model_type": "gemma2", "architectures": ["Gemma2Model"], "vocab_size": 256000, **_QWEN3_SIZES,
        "query_pre_attn_scalar": 128, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }},
}
#: sentence-transformers' Pooling mode of each preset ``pooling``.
_POOLING_MODES = {"cls": "cls_token", "mean": "mean_tokens", "lasttoken": "lasttoken"}


def resolve_bench_model(model: str) -> tuple[str, str]:
    """The directory of the model to benchmark and what its weights are.

    A preset name (:data:`PRESETS`) builds, once, a model of that exact configuration with seeded
    random weights under ``$POOLKIT_BENCH_CACHE`` (default ``~/.cache/poolkit/bench``), with
    all-MiniLM-L6-v2's tokenizer and the preset's sentence-transformers pooling; any other value
    is a model name or path, as for ``LLM``.
    """
    from ...plugins.manager import get_manager

    if model not in PRESETS:
        found = get_manager().resolve_model(model)
        return str(found if found is not None else model), "real" if found is not None or Path(model).exists() else "as given"
    root = Path(os.environ.get("POOLKIT_BENCH_CACHE") or Path.home() / ".cache" / "poolkit" / "bench") / model
    if not (root / "model.safetensors").is_file():
        _build_preset(model, root)
    about = PRESETS[model].get("about", f"with the exact config of {model}")
    return str(root), f"random, {about} (speed only)"


def _build_preset(name: str, root: Path) -> None:
    import torch
    import transformers

    from ...plugins.manager import get_manager

    preset = PRESETS[name]
    fields = dict(preset["config"])
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, torch_dtype=torch.float32)
    tmp = root.with_name(root.name + ".partial")
    model.save_pretrained(tmp)
    transformers.AutoTokenizer.from_pretrained(get_manager().resolve_model(DEFAULT_MODEL)).save_pretrained(tmp)
    width = int(config.hidden_size)
    (tmp / "1_Pooling").mkdir(exist_ok=True)
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": width, **{f"pooling_mode_{m}": False for m in
                                              ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
                                               "weightedmean_tokens", "lasttoken")},
        f"pooling_mode_{_POOLING_MODES[preset['pooling']]}": True,
    }))
    (tmp / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))
    if root.exists():
        import shutil

        shutil.rmtree(root)
    tmp.rename(root)

