"""Alibaba's GTE "new" architecture (gte-v1.5, gte-multilingual, Snowflake's arctic-embed-v2): the
rotary encoder as Alibaba-NLP's ``new-impl`` ``modeling.py`` builds it, with its task models."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from poolkit.contracts.config_checks import ConfigChecks

from ..blocks.attention import attention_head_dim
from ..blocks.checks import encoder_checks, unsupported
from ..blocks.heads import PooledClassifier, TokenClassifier
from ..blocks.rotary import RotarySpec
from .encoder import Layout, RotaryEncoder, RotaryEncoderSpec

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

NEW_LAYOUT = Layout(
    prefix="new.",
    modules={
        "embeddings.norm": "embeddings.LayerNorm",
        "layers.{i}.attn.qkv": "encoder.layer.{i}.attention.qkv_proj",
        "layers.{i}.attn.out": "encoder.layer.{i}.attention.o_proj",
        "layers.{i}.attn_norm": "encoder.layer.{i}.attn_ln",
        "layers.{i}.mlp.up_gate": "encoder.layer.{i}.mlp.up_gate_proj",
        "layers.{i}.mlp.down": "encoder.layer.{i}.mlp.down_proj",
        "layers.{i}.mlp_norm": "encoder.layer.{i}.mlp_ln",
    },
)


_GTE_NORMS = {"layer_norm": False, "rms_norm": True}


def _gte_switches(config: PretrainedConfig) -> None:
    """Refuse, naming the field, the GTE variants this implementation does not cover (rotary: :func:`gte_rotary`)."""
    position = getattr(config, "position_embedding_type", "rope")
    if position != "rope":
        raise unsupported("position_embedding_type", position, "poolkit's GTE has rotary positions ('rope') only")
    if getattr(config, "pack_qkv", True) is False:
        raise unsupported("pack_qkv", False, "poolkit's GTE loads packed qkv_proj weights only")
    norm = getattr(config, "layer_norm_type", "layer_norm")
    if norm not in _GTE_NORMS:
        raise unsupported("layer_norm_type", norm, f"GTE's norms are {' or '.join(_GTE_NORMS)}")


def gte_rotary(config: PretrainedConfig, head_dim: int) -> RotarySpec:
    """GTE's rotary positions from ``rope_theta`` / ``rope_scaling`` (or transformers' ``rope_parameters``);
    a scaling other than GTE's ``ntk`` is refused."""
    legacy = getattr(config, "rope_scaling", None) or {}
    params = {**legacy, **(getattr(config, "rope_parameters", None) or {})}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ("default", "ntk"):
        raise unsupported("rope_scaling", legacy or params, f"rope type '{kind}'; GTE scales with 'ntk' only")
    factor = params.get("factor") if kind == "ntk" else None
    mixed_b = params.get("mixed_b") if kind == "ntk" else None
    return RotarySpec(
        dim=head_dim,
        theta=float(10_000.0 if theta is None else theta),
        ntk_factor=None if factor is None else float(factor),
        ntk_mixed_b=None if mixed_b is None else float(mixed_b),
    )


class NewModel(RotaryEncoder):
    """Alibaba's GTE "new" encoder (gte-base-en-v1.5, gte-large-en-v1.5, gte-multilingual-base) and
    Snowflake's arctic-embed-v2 (``GteModel``): rotary positions with fixed or mixed NTK scaling,
    a GeGLU feed-forward block, 8k context.

    Reads ``rope_theta`` / ``rope_scaling`` (or transformers' ``rope_parameters``),
    ``layer_norm_type``, ``logn_attention_scale`` / ``logn_attention_clip1`` and the checkpoint's
    tensor names (``embeddings.LayerNorm``, ``encoder.layer.N.attention.qkv_proj``,
    ``mlp.up_gate_proj``, ``attn_ln`` / ``mlp_ln``; a ``new.`` prefix in task checkpoints).
    """

    layout: ClassVar[Layout] = NEW_LAYOUT
    config_checks: ClassVar[ConfigChecks] = encoder_checks(
        r"(?:^|\.)encoder\.layer\.(\d+)\.",
        shapes={
            "embeddings.word_embeddings.weight": ("vocab_size", "hidden_size"),
            "embeddings.token_type_embeddings.weight": ("type_vocab_size", "hidden_size"),
            "encoder.layer.0.attention.qkv_proj.weight": ((3, "hidden_size"), "hidden_size"),
            "encoder.layer.0.mlp.up_gate_proj.weight": ((2, "intermediate_size"), "hidden_size"),
        },
    )

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Refuse what this implementation does not cover, before the sizes are checked."""
        _gte_switches(config)
        gte_rotary(config, head_dim=2)  # its rope type: the head size is checked later

    @classmethod
    def spec(cls, config: PretrainedConfig) -> RotaryEncoderSpec:
        _gte_switches(config)
        norm = getattr(config, "layer_norm_type", "layer_norm")
        hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
        max_positions = int(getattr(config, "max_position_embeddings", 512))
        logn = bool(getattr(config, "logn_attention_scale", False))
        return RotaryEncoderSpec(
            hidden_size=hidden, num_layers=int(config.num_hidden_layers), num_heads=heads,
            intermediate_size=int(config.intermediate_size), vocab_size=int(config.vocab_size),
            type_vocab_size=int(getattr(config, "type_vocab_size", 0) or 0), max_positions=max_positions,
            norm_eps=float(getattr(config, "layer_norm_eps", 1e-12)),
            rotary=gte_rotary(config, attention_head_dim(hidden, heads)),
            activation=str(getattr(config, "hidden_act", "gelu")), rms_norm=_GTE_NORMS[norm],
            qkv_bias=True, out_bias=True, down_bias=True,  # the up/gate projection has none
            logn_positions=max_positions if logn else None,
            logn_clip=bool(getattr(config, "logn_attention_clip1", False)),
        )


class NewPooler(nn.Module):
    """GTE's pooler: dense + tanh over the (already pooled) first-token vector."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x.to(self.dense.weight.dtype)))


class NewForSequenceClassification(PooledClassifier, NewModel):
    """A GTE cross-encoder / sequence classifier (gte-multilingual-reranker-base): CLS -> pooler -> ``classifier``.

    The ``token_classify`` task applies the bare ``classifier`` to every token, as vLLM does.
    """

    pooler_class: ClassVar[type[nn.Module]] = NewPooler


class NewForTokenClassification(TokenClassifier, NewModel):
    """A GTE token classifier: ``classifier`` on every token."""
