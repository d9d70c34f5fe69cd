"""A tiny jina-embeddings-v2 checkpoint laid out as the published ones.

Sources of the layout:
- ``config.json``: jinaai/jina-embeddings-v2-base-en's (https://huggingface.co/jinaai/jina-embeddings-v2-base-en,
  ``config.json``): ``architectures: ["JinaBertForMaskedLM"]``, ``model_type: "bert"``, the
  ``auto_map`` into ``jinaai/jina-bert-implementation``, ``position_embedding_type: "alibi"``,
  ``feed_forward_type: "geglu"``, ``emb_pooler: "mean"``, ``max_position_embeddings: 8192``,
  ``type_vocab_size: 2``, ``layer_norm_eps: 1e-12``; the same keys are the fields of the
  ``Config`` that candle's and text-embeddings-inference's JinaBERT ports read.
- tensor names: ``JinaBertModel`` of ``jina-bert-implementation/modeling_bert.py`` (see
  ``jina_bert_reference.py``): ``embeddings.{word,token_type}_embeddings``, ``embeddings.LayerNorm``,
  ``encoder.layer.N.attention.self.{query,key,value}``, ``encoder.layer.N.attention.output.{dense,LayerNorm}``,
  ``encoder.layer.N.mlp.{gated_layers,wo,layernorm}``, and its ``pooler.dense``; vLLM's TPU port
  (github.com/vllm-project/tpu-inference, ``tpu_inference/models/jax/jina_bert.py``) loads the
  same names under the ``JinaBertForMaskedLM`` architecture, an optional ``bert.`` prefix stripped
  and the ``cls.`` / ``pooler.`` tensors dropped.
- sentence-transformers files: the checkpoint's ``modules.json`` (Transformer, Pooling),
  ``sentence_bert_config.json`` (``max_seq_length: 8192``) and ``1_Pooling/config.json`` (mean).
- tokenizer: the checkpoint's is BERT's WordPiece (``[CLS]``/``[SEP]``/``[PAD]``/``[MASK]``); the tiny one is
  the suite's WordPiece over its small corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_rotary_encoders import _draw, _save
from tiny_models import wordpiece_tokenizer

#: jina-embeddings-v2-base-en's config.json, sizes shrunk (``hidden_size``, layers, heads, vocabulary).
JINA_V2_CONFIG = {
    "_name_or_path": "jinaai/jina-bert-implementation",
    "architectures": ["JinaBertForMaskedLM"],
    "attention_probs_dropout_prob": 0.0,
    "auto_map": {
        "AutoConfig": "jinaai/jina-bert-implementation--configuration_bert.JinaBertConfig",
        "AutoModel": "jinaai/jina-bert-implementation--modeling_bert.JinaBertModel",
        "AutoModelForMaskedLM": "jinaai/jina-bert-implementation--modeling_bert.JinaBertForMaskedLM",
        "AutoModelForSequenceClassification": "jinaai/jina-bert-implementation--modeling_bert.JinaBertForSequenceClassification",
    },
    "classifier_dropout": None,
    "emb_pooler": "mean",
    "feed_forward_type": "geglu",
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 48,
    "initializer_range": 0.02,
    "intermediate_size": 96,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 8192,
    "model_max_length": 8192,
    "model_type": "bert",
    "num_attention_heads": 6,  # not a power of two: the slopes' interleaved branch
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "position_embedding_type": "alibi",
    "torch_dtype": "float32",
    "type_vocab_size": 2,
    "use_cache": True,
}


def build_jina_v2(out: Path, seed: int = 0, gain: float = 1.5, prefix: str = "", **overrides: object) -> Path:
    """Write a tiny jina-embeddings-v2 to ``out``: config, random weights (under ``prefix``, e.g.
    ``bert.``), tokenizer and sentence-transformers files; ``overrides`` change config keys."""
    tok = wordpiece_tokenizer(model_max_length=8192)
    config = {**JINA_V2_CONFIG, "vocab_size": len(tok), **overrides}
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config["vocab_size"], hidden),
        "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
        "pooler.dense.weight": (hidden, hidden),
        "pooler.dense.bias": (hidden,),
    }
    for i in range(layers):
        layer = f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            shapes[f"{layer}.attention.self.{part}.weight"] = (hidden, hidden)
            shapes[f"{layer}.attention.self.{part}.bias"] = (hidden,)
        shapes[f"{layer}.attention.output.dense.weight"] = (hidden, hidden)
        shapes[f"{layer}.attention.output.dense.bias"] = (hidden,)
        shapes[f"{layer}.attention.output.LayerNorm.weight"] = (hidden,)
        shapes[f"{layer}.attention.output.LayerNorm.bias"] = (hidden,)
        shapes[f"{layer}.mlp.gated_layers.weight"] = (2 * inner, hidden)
        shapes[f"{layer}.mlp.wo.weight"] = (hidden, inner)
        shapes[f"{layer}.mlp.wo.bias"] = (hidden,)
        shapes[f"{layer}.mlp.layernorm.weight"] = (hidden,)
        shapes[f"{layer}.mlp.layernorm.bias"] = (hidden,)
    tensors = {prefix + name: t for name, t in _draw(shapes, seed, gain).items()}
    _save(out, config, tensors, tok)
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ], indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8192, "do_lower_case": False}))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2))
    return out


def reference_state(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the reference's names (a ``bert.`` prefix dropped, the pooler left out)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    return {k.removeprefix("bert."): v for k, v in tensors.items() if not k.removeprefix("bert.").startswith("pooler.")}
