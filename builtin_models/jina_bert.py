"""Jina's BERT with ALiBi (jina-embeddings-v2): ``JinaBertModel`` on packed batches.

jina-embeddings-v2 (``-small-en``, ``-base-en`` and the other checkpoints on the same code) is
published with remote code only (``jinaai/jina-bert-implementation``, ``JinaBertForMaskedLM`` with
``model_type: bert``); poolkit never runs it and follows its definition. The body is BERT laid out
as BERT (``embeddings.word_embeddings``, ``embeddings.token_type_embeddings``,
``embeddings.LayerNorm``; per layer ``attention.self.query``/``key``/``value`` and
``attention.output.dense``/``LayerNorm``) with two changes:

- no position table (``position_embedding_type: "alibi"``): every head adds
  ``-slope * |i - j|`` to the score of query ``i`` and key ``j`` (ALiBi, made symmetric for a
  bidirectional encoder), the slopes the geometric series of the ALiBi paper. The bias depends on
  positions inside a sequence only, so it rides the packed attention kernel as one
  ``[heads, L, L]`` table (``varlen_attention``'s ``bias``) and never reaches a packed neighbour;
- a gated feed-forward block (``feed_forward_type: "geglu"``, or ``"reglu"``):
  ``mlp.layernorm(x + mlp.wo(act(a) * b))``, ``a`` and ``b`` the first and second halves of
  ``mlp.gated_layers(x)`` (no bias), ``act`` the exact GELU (ReLU for ``reglu``).

Mean pooling (``emb_pooler: "mean"``), 8192 tokens.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import TakesTokenTypes
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.hookspecs import hookimpl

from .bert import BertAttention, BertEmbeddings, BertLayoutModel
from .blocks.checks import encoder_checks, unsupported
from .blocks.mlp import GatedMLP
from .blocks.norms import post_norm

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

#: Checkpoint tensors the encoder does not use: the pooler and MLM head of ``JinaBertForMaskedLM``, id buffers.
_UNUSED = re.compile(r"^(pooler|cls|classifier)\.|^embeddings\.(position_ids|token_type_ids)$")
#: ``feed_forward_type`` -> the activated half's activation (the published ``nn.GELU()`` is the exact one).
_GLU_ACTIVATIONS = {"geglu": "gelu", "reglu": "relu"}


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Each head's ALiBi slope, as the published code computes them: for ``n`` a power of two
    ``2 ** (-8 * (h + 1) / n)``; otherwise the slopes of the power of two below ``n``, then every
    other slope of the next power of two up, as many as are missing."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**h for h in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(power_of_two(num_heads))
    below = 2 ** math.floor(math.log2(num_heads))
    extra = alibi_slopes(2 * below)[0::2][: num_heads - below]
    return torch.cat([torch.tensor(power_of_two(below)), extra])


def alibi_bias(slopes: torch.Tensor, length: int, device: torch.device) -> torch.Tensor:
    """``[heads, length, length]``: ``-slope * |i - j|`` for query ``i`` and key ``j``; its top-left
    corner serves every shorter sequence of a batch."""
    positions = torch.arange(length, device=device)
    distance = (positions[None, :] - positions[:, None]).abs().float()
    return -slopes.to(device)[:, None, None] * distance


class JinaBertGLU(GatedMLP):
    """The gated feed-forward block with its residual add and post-LayerNorm (``mlp.layernorm``)."""

    def __init__(self, config: PretrainedConfig, activation: str) -> None:
        super().__init__(config.hidden_size, config.intermediate_size, activation, ("gated_layers", "wo"),
                         (False, True), gate_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def residual(
        self, x: torch.Tensor, low: torch.Tensor, linear_act: Callable
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The new residual stream, fp32 and in the weights' dtype (:func:`post_norm`)."""
        return post_norm(self, self(low, linear_act), x, self.layernorm)


class JinaBertLayer(nn.Module):
    """BERT's attention block (with the ALiBi bias bound into ``attention``), then the gated block."""

    def __init__(self, config: PretrainedConfig, activation: str) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.mlp = JinaBertGLU(config, activation)

    def forward(
        self, x: torch.Tensor, low: torch.Tensor, batch: PackedBatch, attention: Callable, linear_act: Callable
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, low = self.attention(x, low, batch, attention, linear_act)
        return self.mlp.residual(x, low, linear_act)


class JinaBertEncoder(nn.Module):
    """The stack of layers, named as in the published checkpoints (``encoder.layer.N``)."""

    def __init__(self, config: PretrainedConfig, activation: str) -> None:
        super().__init__()
        self.layer = nn.ModuleList(JinaBertLayer(config, activation) for _ in range(config.num_hidden_layers))


class JinaBertModel(BertLayoutModel, TakesTokenTypes):
    """jina-embeddings-v2's encoder: packed token ids in, last-layer hidden states ``[T, H]`` out.

    Loads the published checkpoints (``JinaBertForMaskedLM``'s tensors, with or without a
    ``bert.`` prefix; the pooler and MLM head are skipped), query, key and value fused into one
    matmul. Attention stays within each sequence, ALiBi counted from each sequence's first token.

    Example:
        >>> llm = LLM("jinaai/jina-embeddings-v2-base-en")
        >>> llm.embed(["how does ALiBi reach 8192 tokens?"])
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"
    config_checks: ClassVar[ConfigChecks] = encoder_checks(
        r"(?:^|\.)encoder\.layer\.(\d+)\.",
        ("type_vocab_size",),
        {
            "embeddings.word_embeddings.weight": ("vocab_size", "hidden_size"),
            "embeddings.token_type_embeddings.weight": ("type_vocab_size", "hidden_size"),
            "encoder.layer.0.attention.self.query.weight": ("hidden_size", "hidden_size"),
            "encoder.layer.0.mlp.wo.weight": ("hidden_size", "intermediate_size"),
        },
    )
    checkpoint_prefix: ClassVar[str] = "bert."
    unused_tensors: ClassVar[re.Pattern] = _UNUSED

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Refuse positions other than ALiBi (BertLayoutModel's check, which wants a learned table, is skipped)."""
        position = getattr(config, "position_embedding_type", "alibi")
        if position != "alibi":
            raise unsupported("position_embedding_type", position, f"{cls.__name__} takes ALiBi positions only")
        super(BertLayoutModel, cls).configure(config, tokenizer)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        forward_type = getattr(config, "feed_forward_type", "geglu")
        if forward_type not in _GLU_ACTIVATIONS:
            raise unsupported("feed_forward_type", forward_type, f"Jina's gated feed-forward block is {' or '.join(_GLU_ACTIVATIONS)}")
        self.embeddings = BertEmbeddings(config, None)  # positions are ALiBi's, in attention
        self.encoder = JinaBertEncoder(config, _GLU_ACTIVATIONS[forward_type])
        # float32 whatever the weights' dtype (a buffer would follow ``.to(bfloat16)``), as the published code's slopes are.
        self._slopes = alibi_slopes(int(config.num_attention_heads))

    def attention_bias(self, batch: PackedBatch) -> torch.Tensor:
        """ALiBi's linear bias by distance."""
        return alibi_bias(self._slopes, batch.max_len, batch.device)


@hookimpl
def poolkit_register_architectures(register):
    register("JinaBertForMaskedLM", JinaBertModel)  # the published checkpoints' name
    register("JinaBertModel", JinaBertModel)
