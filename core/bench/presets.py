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

from ..settings import DEFAULT_MODEL

#: The exact configurations of popular embedders, for speed-only runs with random weights: their
#: sentence-transformers pooling, and ``config.json`` as published.
_BERT = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522, "type_vocab_size": 2,
         "max_position_embeddings": 512, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}
PRESETS: dict[str, dict[str, Any]] = {
    "bge-small": {"pooling": "cls", "config": {**_BERT, "hidden_size": 384, "intermediate_size": 1536,
                                                 "num_hidden_layers": 12, "num_attention_heads": 12}},
    "bge-base": {"pooling": "cls", "config": {**_BERT, "hidden_size": 768, "intermediate_size": 3072,
                                                "num_hidden_layers": 12, "num_attention_heads": 12}},
    "qwen3-embedding-0.6b": {"pooling": "lasttoken", "config": {
        "model_type": "qwen3", "architectures": ["Qwen3Model"], "vocab_size": 151669, "hidden_size": 1024,
        "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "max_position_embeddings": 32768, "rope_theta": 1000000, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "attention_bias": False, "hidden_act": "silu", "use_sliding_window": False,
    }},
}


def resolve_bench_model(model: str) -> tuple[str, str]:
    """The directory of the model to benchmark and what its weights are.

    A preset name (:data:`PRESETS`) builds, once, a model of that exact configuration with seeded
    random weights under ``$POOLKIT_BENCH_CACHE`` (default ``~/.cache/poolkit/bench``), with
    all-MiniLM-L6-v2's tokenizer and the preset's sentence-transformers pooling; any other value
    is a model name or path, as for ``LLM``.
    """
    from ..plugins import get_manager

    if model not in PRESETS:
        found = get_manager().resolve_model(model)
        return str(found if found is not None else model), "real" if found is not None or Path(model).exists() else "as given"
    root = Path(os.environ.get("POOLKIT_BENCH_CACHE") or Path.home() / ".cache" / "poolkit" / "bench") / model
    if not (root / "model.safetensors").is_file():
        _build_preset(model, root)
    return str(root), f"random, with the exact config of {model} (speed only)"


def _build_preset(name: str, root: Path) -> None:
    import torch
    import transformers

    from ..plugins import get_manager

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
        f"pooling_mode_{'cls_token' if preset['pooling'] == 'cls' else 'lasttoken'}": True,
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

