"""Tiny random NomicBERT (v1.5, and v2-moe with its experts) and GTE ("new") checkpoints, as their
hub repositories lay them out.

transformers has no class for these remote-code checkpoints' own config fields, so the builders
write ``config.json`` with the real checkpoints' keys (nomic-embed-text-v1.5's ``n_embd``,
``rotary_emb_fraction``...; gte-base-en-v1.5's ``rope_theta``, ``rope_scaling``...) and draw
every tensor under the real checkpoints' names, with the shapes the published modeling code
builds from that config (NomicBERT rounds a gated feed-forward width up to 256 and pads the
vocabulary).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_models import give_segment_ids, wordpiece_tokenizer

#: nomic-ai/nomic-embed-text-v1.5's config.json, sized down.
NOMIC_CONFIG = {
    "activation_function": "swiglu",
    "architectures": ["NomicBertModel"],
    "attn_pdrop": 0.0,
    "auto_map": {
        "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
        "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel",
    },
    "bos_token_id": None,
    "causal": False,
    "dense_seq_output": True,
    "embd_pdrop": 0.0,
    "eos_token_id": None,
    "fused_bias_fc": True,
    "fused_dropout_add_ln": True,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-12,
    "max_trained_positions": 256,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "model_type": "nomic_bert",
    "n_embd": 32,
    "n_head": 4,
    "n_inner": 64,
    "n_layer": 2,
    "n_positions": 1024,
    "pad_vocab_size_multiple": 64,
    "parallel_block": False,
    "parallel_block_tied_norm": False,
    "prenorm": False,
    "qkv_proj_bias": False,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.0,
    "rotary_emb_base": 1000,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "rotary_scaling_factor": None,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "summary_activation": None,
    "summary_first_dropout": 0.0,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "torch_dtype": "float32",
    "transformers_version": "4.37.2",
    "type_vocab_size": 2,
    "use_cache": True,
    "use_flash_attn": True,
    "use_rms_norm": False,
    "use_xentropy": True,
}

#: nomic-ai/nomic-embed-text-v2-moe's config.json, sized down: every second layer (1, 3) a mixture of
#: four experts, each token going to two; biases everywhere, one token type, the exact GELU.
NOMIC_MOE_CONFIG = {
    **NOMIC_CONFIG,
    "activation_function": "gelu",
    "embd_pdrop": 0.0,
    "expert_choice_router": False,
    "ffn_div": 1,
    "layer_norm_epsilon": 1e-05,
    "max_trained_positions": 2048,
    "mlp_fc1_bias": True,
    "mlp_fc2_bias": True,
    "moe_every_n_layers": 2,
    "moe_impl": "megablocks",
    "moe_normalize_expert_weights": False,
    "moe_resid_pdrop": 0.0,
    "moe_top_k": 2,
    "n_inner": 48,
    "n_layer": 4,
    "n_positions": 2048,
    "num_experts": 4,
    "num_shared_experts": 0,
    "pad_token_id": 1,
    "qkv_proj_bias": True,
    "rotary_emb_base": 10000,
    "router_aux_loss_coef": 0.1,
    "transformers_version": "4.49.0",
    "type_vocab_size": 1,
    "use_rms_norm": None,
}

#: Alibaba-NLP/gte-base-en-v1.5's config.json, sized down.
GTE_CONFIG = {
    "architectures": ["NewModel"],
    "attention_probs_dropout_prob": 0.0,
    "auto_map": {
        "AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
        "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel",
    },
    "classifier_dropout": None,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 48,
    "layer_norm_eps": 1e-12,
    "layer_norm_type": "layer_norm",
    "logn_attention_clip1": False,
    "logn_attention_scale": False,
    "max_position_embeddings": 256,
    "model_type": "new",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "pack_qkv": True,
    "pad_token_id": 0,
    "position_embedding_type": "rope",
    "rope_scaling": {"factor": 2.0, "type": "ntk"},
    "rope_theta": 500000,
    "torch_dtype": "float32",
    "transformers_version": "4.39.1",
    "type_vocab_size": 0,
    "unpad_inputs": False,
    "use_memory_efficient_attention": False,
}

NOMIC_GATED = ("swiglu", "geglu", "glu")


def nomic_sizes(config: dict) -> tuple[int, int]:
    """(vocabulary, feed-forward width) that nomic's modeling code builds for ``config``."""
    hidden, multiple = config["n_embd"], config.get("pad_vocab_size_multiple", 1)
    vocab = -(-config["vocab_size"] // multiple) * multiple
    inner = config.get("n_inner")
    if config["activation_function"] in NOMIC_GATED:
        inner = inner or int(8 * hidden / 3)
        inner = -(-inner // 256) * 256
    else:
        inner = inner or 4 * hidden
    return vocab, inner


def _draw(
    shapes: dict[str, tuple[int, ...]], seed: int, gain: float, fan_in: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """Matrices with std ``gain / sqrt(fan_in)`` (the columns, unless ``fan_in`` says otherwise),
    embeddings with std 1, norm weights around 1 and biases around 0 (std 0.2), so a dropped or
    misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        if "embeddings" in name:
            out[name] = t
        elif name in (fan_in or {}):
            out[name] = t * gain / fan_in[name] ** 0.5
        elif len(shape) == 2:
            out[name] = t * gain / shape[1] ** 0.5
        elif name.endswith("weight"):
            out[name] = 1 + 0.2 * t
        else:
            out[name] = 0.2 * t
    return out


def _save(out: Path, config: dict, tensors: dict[str, torch.Tensor], tok) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(out)
    give_segment_ids(out)
    return out


def nomic_moe_layers(config: dict) -> list[int]:
    """The layers nomic's code gives experts: index ``i`` with ``i % moe_every_n_layers == 1``."""
    every = config.get("moe_every_n_layers") or 0
    return [i for i in range(config["n_layer"]) if every and i % every == 1]


def build_nomic(
    out: Path, seed: int = 0, gain: float = 1.5, prefix: str = "", moe: bool = False, **overrides: object
) -> Path:
    """A tiny NomicBERT with nomic-embed-text-v1.5's config keys (``overrides`` changed) and tensor
    names; with ``moe``, nomic-embed-text-v2-moe's (:data:`NOMIC_MOE_CONFIG`), its mixture-of-experts
    layers holding ``mlp.router.layer.weight`` ``[experts, hidden]``, ``mlp.experts.mlp.w1`` and
    ``w2`` ``[experts * inner, hidden]`` and ``mlp.experts.bias`` ``[hidden]`` instead of ``fc1`` / ``fc2``."""
    tok = wordpiece_tokenizer(model_max_length=1024)
    config = {**(NOMIC_MOE_CONFIG if moe else NOMIC_CONFIG), "vocab_size": len(tok), **overrides}
    vocab, inner = nomic_sizes(config)
    hidden, gated = config["n_embd"], config["activation_function"] in NOMIC_GATED
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (vocab, hidden),
        "emb_ln.weight": (hidden,),
        "emb_ln.bias": (hidden,),
    }
    if config["type_vocab_size"]:
        shapes["embeddings.token_type_embeddings.weight"] = (config["type_vocab_size"], hidden)
    fan_in = {}
    for i in range(config["n_layer"]):
        layer = f"encoder.layers.{i}."
        linears = {"attn.Wqkv": (3 * hidden, hidden, config["qkv_proj_bias"]),
                   "attn.out_proj": (hidden, hidden, config["qkv_proj_bias"])}
        if i in nomic_moe_layers(config):
            experts = config["num_experts"]
            shapes[f"{layer}mlp.router.layer.weight"] = (experts, hidden)
            shapes[f"{layer}mlp.experts.mlp.w1"] = shapes[f"{layer}mlp.experts.mlp.w2"] = (experts * inner, hidden)
            shapes[f"{layer}mlp.experts.bias"] = (hidden,)
            fan_in[f"{layer}mlp.experts.mlp.w2"] = inner  # applied untransposed: x @ w2[e]
        else:
            linears["mlp.fc2"] = (hidden, inner, config["mlp_fc2_bias"])
            for fc in ("fc11", "fc12") if gated else ("fc1",):
                linears[f"mlp.{fc}"] = (inner, hidden, config["mlp_fc1_bias"])
        for name, (rows, cols, bias) in linears.items():
            shapes[f"{layer}{name}.weight"] = (rows, cols)
            if bias:
                shapes[f"{layer}{name}.bias"] = (rows,)
        for norm in ("norm1", "norm2"):
            shapes[f"{layer}{norm}.weight"] = shapes[f"{layer}{norm}.bias"] = (hidden,)
    tensors = _draw(shapes, seed, gain, fan_in)
    if moe and "embeddings.token_type_embeddings.weight" in tensors:
        # Small, as trained: at std 1 the one token type every token gets dominates, and all route alike.
        tensors["embeddings.token_type_embeddings.weight"] *= 0.1
    tensors = {prefix + k: v for k, v in tensors.items()}
    return _save(out, config, tensors, tok)


def build_gte(
    out: Path, seed: int = 0, gain: float = 1.5, num_labels: int | None = None, **overrides: object
) -> Path:
    """A tiny GTE ("new") with gte-base-en-v1.5's config keys (``overrides`` changed) and tensor names.

    With ``num_labels`` it is a ``NewForSequenceClassification``: the encoder under ``new.``, a
    pooler and a classifier.
    """
    tok = wordpiece_tokenizer(model_max_length=1024)
    config = {**GTE_CONFIG, "vocab_size": len(tok), **overrides}
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    rms = config["layer_norm_type"] == "rms_norm"
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config["vocab_size"], hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    if config["type_vocab_size"]:
        shapes["embeddings.token_type_embeddings.weight"] = (config["type_vocab_size"], hidden)
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}."
        shapes.update({
            f"{layer}attention.qkv_proj.weight": (3 * hidden, hidden),
            f"{layer}attention.qkv_proj.bias": (3 * hidden,),
            f"{layer}attention.o_proj.weight": (hidden, hidden),
            f"{layer}attention.o_proj.bias": (hidden,),
            f"{layer}mlp.up_gate_proj.weight": (2 * inner, hidden),
            f"{layer}mlp.down_proj.weight": (hidden, inner),
            f"{layer}mlp.down_proj.bias": (hidden,),
        })
        for norm in ("attn_ln", "mlp_ln"):
            shapes[f"{layer}{norm}.weight"] = (hidden,)
            if not rms:
                shapes[f"{layer}{norm}.bias"] = (hidden,)
    tensors = _draw(shapes, seed, gain)
    if num_labels is not None:
        tensors = {f"new.{k}": v for k, v in tensors.items()}
        g = torch.Generator().manual_seed(seed + 1)
        tensors.update({
            "new.pooler.dense.weight": torch.randn(hidden, hidden, generator=g) * gain / hidden**0.5,
            "new.pooler.dense.bias": torch.randn(hidden, generator=g) * 0.2,
            "classifier.weight": torch.randn(num_labels, hidden, generator=g) * gain,
            "classifier.bias": torch.randn(num_labels, generator=g) * 0.2,
        })
        config.update(
            architectures=["NewForSequenceClassification"],
            num_labels=num_labels,
            id2label={str(i): f"class_{i}" for i in range(num_labels)},
            label2id={f"class_{i}": i for i in range(num_labels)},
        )
    return _save(out, config, tensors, tok)


#: jina-embeddings-v3-hf's tasks: Jina's names (its original config's ``lora_adaptations``) and the
#: folders its PEFT adapters ship in, as transformers' documentation and its integration test
#: (``tests/models/jina_embeddings_v3/test_modeling_jina_embeddings_v3.py``) load them:
#: ``model.load_adapter("jinaai/jina-embeddings-v3-hf", adapter_name=task, adapter_kwargs={"subfolder": task})``
#: with ``task`` one of ``retrieval_query``, ``retrieval_passage``, ``separation``, ``classification``,
#: ``text_matching``.
JINA_V3_HF_TASKS = {
    "retrieval.query": "retrieval_query",
    "retrieval.passage": "retrieval_passage",
    "separation": "separation",
    "classification": "classification",
    "text-matching": "text_matching",
}
#: The layers jina-embeddings-v3's original checkpoint parametrizes with task LoRA (its remote
#: ``modeling_lora.py``: every linear and embedding layer of the body), under the names
#: transformers' ``JinaEmbeddingsV3Model`` gives them, PEFT's ``target_modules``.
JINA_V3_HF_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "word_embeddings", "token_type_embeddings"]


def build_jina_v3_hf(out: Path, seed: int = 0, tasks: dict[str, str] | None = None) -> Path:
    """A tiny jina-embeddings-v3 as transformers ships it (``jinaai/jina-embeddings-v3-hf``).

    The body is transformers' ``JinaEmbeddingsV3Model`` built from ``JinaEmbeddingsV3Config``
    (``architectures: ["JinaEmbeddingsV3Model"]``, ``model_type: jina_embeddings_v3``,
    ``rope_parameters`` with theta 20000, XLM-R's ``<s>`` 0 / ``<pad>`` 1 / ``</s>`` 2), every
    parameter drawn again, and saved with ``save_pretrained``: transformers writes the tensors
    under Jina's original names (``emb_ln``, ``encoder.layers.N.mixer.Wqkv``...), the reverse of
    the renaming its ``conversion_mapping.py`` registers for ``jina_embeddings_v3``. Each task's
    adapter (``tasks``: Jina's name -> folder, default :data:`JINA_V3_HF_TASKS`) is a PEFT LoRA
    adapter saved with ``PeftModel.save_pretrained`` in its folder, rank 4 and ``lora_alpha`` 1
    as the original config's ``lora_rank`` / ``lora_alpha``, on :data:`JINA_V3_HF_LORA_TARGETS`.
    The tokenizer is a small WordPiece one with XLM-R's special tokens and ids
    (:func:`fairseq_tokenizer`); the repository's own is XLM-R's SentencePiece tokenizer.
    The -hf repository's ``adapter_config.json`` itself was not found in the sources searched:
    the adapters' targets follow the original's parametrizations.
    """
    from peft import LoraConfig, get_peft_model
    from tiny_models import fairseq_tokenizer
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

    tok = fairseq_tokenizer()
    config = JinaEmbeddingsV3Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=130, type_vocab_size=1, pad_token_id=tok.pad_token_id, bos_token_id=0, eos_token_id=2,
    )
    g = torch.Generator().manual_seed(seed)

    def redraw(module: torch.nn.Module, scale: float) -> None:
        with torch.no_grad():
            for name, param in module.named_parameters():
                noise = torch.randn(param.shape, generator=g) * scale
                norm_weight = name.endswith("weight") and ("LayerNorm" in name or "layernorm" in name)
                param.copy_(noise + 1.0 if norm_weight else noise)

    model = JinaEmbeddingsV3Model(config).eval()
    redraw(model, 0.25)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    for folder in (tasks or JINA_V3_HF_TASKS).values():
        peft = get_peft_model(JinaEmbeddingsV3Model(config), LoraConfig(r=4, lora_alpha=1, target_modules=JINA_V3_HF_LORA_TARGETS))
        for name, param in peft.named_parameters():
            if "lora_" in name:
                with torch.no_grad():
                    param.copy_(torch.randn(param.shape, generator=g) * 0.5)
        peft.save_pretrained(out / folder)
    return out
