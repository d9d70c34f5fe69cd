"""A tiny jina-reranker-v2-base-multilingual laid out as published.

Sources of the layout:

- ``config.json``: the published file (https://huggingface.co/jinaai/jina-reranker-v2-base-multilingual,
  ``config.json``; read in a copy of the repository at github.com/shreyansh26/Accelerating-Cross-Encoder-Inference,
  ``jina-reranker-v2-base-multilingual/config.json``, commit 67c9815 "Dump"): every key and value as
  there, sizes shrunk (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
  ``intermediate_size``, ``vocab_size``). Note what it holds and lacks: ``"architectures":
  ["XLMRobertaForSequenceClassification"]``, an ``auto_map`` into the repository's own
  ``configuration_xlm_roberta.XLMRobertaFlashConfig`` / ``modeling_xlm_roberta.*`` (remote code),
  ``"use_flash_attn": true``, ``"position_embedding_type": "absolute"``, ``"max_position_embeddings": 1026``,
  ``"type_vocab_size": 1``, ``"layer_norm_eps": 1e-05``, ``"pad_token_id": 1``, ``"num_labels": 1``
  with ``id2label`` ``{"0": "LABEL_0"}``, and no ``model_type`` key at all. Unconfirmed: the hub's
  file is 1,102 bytes (an artifact manifest pinning revision 9cfeff2d), the copy 1,095; the seven
  bytes are likely ``_name_or_path``'s ``jinaai/`` prefix, which poolkit does not read.
- tensor names: the module names of the repository's ``modeling_xlm_roberta.py``
  (``XLMRobertaForSequenceClassification``: ``roberta`` = ``XLMRobertaModel(config,
  add_pooling_layer=False)``, ``classifier`` = ``XLMRobertaClassificationHead``), ``embedding.py``
  (``embeddings.{word,position,token_type}_embeddings``), ``block.py`` (``norm1``, ``norm2``, post-norm),
  ``mha.py`` (``mixer.Wqkv`` ``[3 * hidden, hidden]`` split as ``(three h d)``, ``mixer.out_proj``)
  and ``mlp.py`` (``mlp.fc1``, ``mlp.fc2``), biases everywhere; so
  ``roberta.embeddings.*``, ``roberta.emb_ln.*``, ``roberta.encoder.layers.N.{mixer.Wqkv, mixer.out_proj,
  norm1, mlp.fc1, mlp.fc2, norm2}.*``, ``classifier.{dense,out_proj}.*``, no pooler. vLLM's
  ``RobertaForSequenceClassification.jina_to_vllm_mapper`` (``vllm/model_executor/models/roberta.py``)
  renames exactly these substrings (``emb_ln``, ``layers``, ``mixer.Wqkv``, ``mixer.out_proj``, ``norm1``,
  ``mlp.fc1``, ``mlp.fc2``, ``norm2``). The published ``model.safetensors`` itself (one file) was not
  read: no listing of its keys was found.
- tokenizer: XLM-R's (``tokenizer_config.json``: ``XLMRobertaTokenizer``, ``<s>`` 0, ``<pad>`` 1,
  ``</s>`` 2, ``<unk>`` 3, ``<mask>``, ``model_max_length`` 1024; ``special_tokens_map.json`` likewise),
  pairs as ``<s> A </s></s> B </s>``. The tiny one is the suite's :func:`tiny_models.fairseq_tokenizer`:
  the same special tokens, ids and templates over WordPiece pieces of a small corpus (the published
  SentencePiece vocabulary of 250,002 pieces is not built here), ``model_max_length`` 1024 as published.
- folder: ``config.json``, ``model.safetensors`` and the tokenizer files at the top, no
  sentence-transformers files (``CrossEncoder`` reads the repository through its remote code).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from tiny_models import fairseq_tokenizer
from tiny_rotary_encoders import _draw

#: The published config.json, sizes shrunk; key order as published.
JINA_RERANKER_V2_CONFIG = {
    "_name_or_path": "jina-reranker-v2-base-multilingual",
    "architectures": ["XLMRobertaForSequenceClassification"],
    "attention_probs_dropout_prob": 0.1,
    "auto_map": {
        "AutoConfig": "configuration_xlm_roberta.XLMRobertaFlashConfig",
        "AutoModel": "modeling_xlm_roberta.XLMRobertaModel",
        "AutoModelForSequenceClassification": "modeling_xlm_roberta.XLMRobertaForSequenceClassification",
    },
    "bos_token_id": 0,
    "classifier_dropout": None,
    "emb_pooler": None,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "num_labels": 1,
    "id2label": {"0": "LABEL_0"},
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "label2id": {"LABEL_0": 0},
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 1026,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "output_past": True,
    "pad_token_id": 1,
    "position_embedding_type": "absolute",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0",
    "type_vocab_size": 1,
    "use_cache": False,
    "use_flash_attn": True,
}


def jina_reranker_v2_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The tensors the published modeling code builds from ``config``, under their published names."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "roberta.embeddings.word_embeddings.weight": (config["vocab_size"], hidden),
        "roberta.embeddings.position_embeddings.weight": (config["max_position_embeddings"], hidden),
        "roberta.embeddings.token_type_embeddings.weight": (config["type_vocab_size"], hidden),
        "roberta.emb_ln.weight": (hidden,),
        "roberta.emb_ln.bias": (hidden,),
    }
    for i in range(config["num_hidden_layers"]):
        layer = f"roberta.encoder.layers.{i}"
        for module, shape in (("mixer.Wqkv", (3 * hidden, hidden)), ("mixer.out_proj", (hidden, hidden)),
                              ("mlp.fc1", (inner, hidden)), ("mlp.fc2", (hidden, inner))):
            shapes[f"{layer}.{module}.weight"] = shape
            shapes[f"{layer}.{module}.bias"] = shape[:1]
        for norm in ("norm1", "norm2"):
            shapes[f"{layer}.{norm}.weight"] = (hidden,)
            shapes[f"{layer}.{norm}.bias"] = (hidden,)
    shapes.update({
        "classifier.dense.weight": (hidden, hidden),
        "classifier.dense.bias": (hidden,),
        "classifier.out_proj.weight": (config["num_labels"], hidden),
        "classifier.out_proj.bias": (config["num_labels"],),
    })
    return shapes


def build_jina_reranker_v2(out: Path, seed: int = 0, gain: float = 1.5, layers_held: int | None = None, **overrides: object) -> Path:
    """Write a tiny jina-reranker-v2 to ``out``: config.json (``overrides`` change its keys), random
    weights under the published names (only the first ``layers_held`` layers when given: a checkpoint
    that contradicts its config) and the tokenizer files."""
    tok = fairseq_tokenizer(model_max_length=1024, lowercase=True)
    config = {**JINA_RERANKER_V2_CONFIG, "vocab_size": len(tok), **overrides}
    held = dict(config, num_hidden_layers=layers_held if layers_held is not None else config["num_hidden_layers"])
    tensors = _draw(jina_reranker_v2_shapes(held), seed, gain)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(out)
    return out
