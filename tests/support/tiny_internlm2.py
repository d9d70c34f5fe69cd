"""A tiny random InternLM2 reward model, laid out as internlm/internlm2-1_8b-reward's repository is.

transformers has no InternLM2 class (the hub's is remote code), but InternLM2 is Llama-shaped: the
builder draws a transformers ``LlamaModel`` (the reference the tests run) and writes its weights
under InternLM2's names — ``model.tok_embeddings``, ``attention.wqkv`` with q, k and v grouped per
key-value head, ``attention.wo``, ``feed_forward.w1`` / ``w3`` / ``w2``, ``attention_norm``,
``ffn_norm``, ``model.norm`` — plus a random ``v_head``, with a ``config.json`` of InternLM2's keys
(``model_type: internlm2``, ``auto_map``, ``bias``, ``rope_scaling``...) sized down. Four query
heads share two key-value heads, so the grouping of ``wqkv`` matters.

Sources: the published remote code's ``InternLM2ForRewardModel`` (``self.model``, a bias-free
``v_head``, ``reward_token_id``) as vLLM's, sglang's and lmdeploy's ports read it; the ``wqkv``
grouping is vLLM's ``InternLM2Attention.split_qkv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import save_file
from tiny_models import bytelevel_bpe_tokenizer

#: internlm/internlm2-1_8b-reward's config.json keys, sized down (hidden 2048 -> 32, 24 layers -> 2...).
INTERNLM2_REWARD_CONFIG = {
    "architectures": ["InternLM2ForRewardModel"],
    "attn_implementation": "eager",
    "auto_map": {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForRewardModel",
    },
    "bias": False,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "model_type": "internlm2",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "reward_token_id": 3,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 2.0, "type": "dynamic"},
    "rope_theta": 1000000,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.41.0",
    "use_cache": True,
}


def group_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Llama's separate q/k/v rows (weights or biases) as InternLM2's ``wqkv``: per key-value head,
    its query heads, then its key head, then its value head."""
    tail = q.shape[1:]
    q, k, v = q.reshape(num_kv_heads, -1, *tail), k.reshape(num_kv_heads, -1, *tail), v.reshape(num_kv_heads, -1, *tail)
    head_dim = k.shape[1]
    q = q.reshape(num_kv_heads, -1, head_dim, *tail)
    return torch.cat([q, k.unsqueeze(1), v.unsqueeze(1)], dim=1).reshape(-1, *tail)


def build_internlm2_reward(out: Path, seed: int = 0, **overrides: object) -> tuple[Path, Path]:
    """A tiny InternLM2ForRewardModel in ``out``, and the transformers ``LlamaModel`` it was converted
    from in ``out.parent / (out.name + "-llama")``; returns both directories.

    ``overrides`` change the config (``bias: true`` draws q/k/v/o biases, grouped into ``wqkv``'s).
    """
    tok = bytelevel_bpe_tokenizer()
    config = {**INTERNLM2_REWARD_CONFIG, "vocab_size": len(tok), "bos_token_id": tok.eos_token_id,
              "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, **overrides}
    llama_config = T.LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"], intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config["num_key_value_heads"], max_position_embeddings=config["max_position_embeddings"],
        rms_norm_eps=config["rms_norm_eps"], hidden_act=config["hidden_act"], attention_bias=bool(config["bias"]),
        rope_theta=float(config["rope_theta"]), rope_scaling=config["rope_scaling"], tie_word_embeddings=False,
        pad_token_id=config["pad_token_id"],
    )
    torch.manual_seed(seed)  # transformers 5 initialises weights when the model is built
    llama = T.LlamaModel(llama_config)
    with torch.no_grad():
        for name, p in llama.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.5)
            else:
                p.normal_(0.0, 0.5 / p.shape[1] ** 0.5 if "embed" not in name else 1.0)
    reference = out.parent / (out.name + "-llama")
    llama.save_pretrained(reference)
    tok.save_pretrained(reference)

    sd = llama.state_dict()
    kv = config["num_key_value_heads"]
    tensors = {"model.tok_embeddings.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"]}
    for i in range(config["num_hidden_layers"]):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        kinds = ("weight", "bias") if config["bias"] else ("weight",)
        for kind in kinds:
            q, k, v = (sd[f"{ours}self_attn.{p}_proj.{kind}"] for p in "qkv")
            tensors[f"{theirs}attention.wqkv.{kind}"] = group_qkv(q, k, v, kv)
            tensors[f"{theirs}attention.wo.{kind}"] = sd[f"{ours}self_attn.o_proj.{kind}"]
        for hf, internlm in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            tensors[f"{theirs}feed_forward.{internlm}.weight"] = sd[f"{ours}mlp.{hf}.weight"]
        tensors[f"{theirs}attention_norm.weight"] = sd[f"{ours}input_layernorm.weight"]
        tensors[f"{theirs}ffn_norm.weight"] = sd[f"{ours}post_attention_layernorm.weight"]
    g = torch.Generator().manual_seed(seed + 1)
    tensors["v_head.weight"] = torch.randn(1, config["hidden_size"], generator=g) / config["hidden_size"] ** 0.5
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(out)
    return out, reference
