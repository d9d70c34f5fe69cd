"""MPNet encoders (sentence-transformers/all-mpnet-base-v2 and kin) running on packed batches.

MPNet is a post-LayerNorm BERT-style encoder without token types whose attention scores get a
learned relative position bias: T5-style buckets of each query/key distance, one bias per head,
shared by every layer. The bias depends only on positions inside a sequence, so it rides along
the packed attention kernel as one ``[heads, L, L]`` table (``varlen_attention``'s ``bias``):
sequences stay packed and equal lengths are still attended in one dense call. Positions count
from ``padding_idx + 1`` as in RoBERTa.

The modules keep Hugging Face's parameter names, so checkpoints load by name, except that a
layer's ``q``, ``k`` and ``v`` projections are fused into one ``attention.attn.qkv`` matrix at
load time. The feed-forward block and the layer are BERT's.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl

from .bert import BertEmbeddings, BertLayer, BertLayoutModel, RobertaHeadClassifier
from .blocks.attention import MultiHeadAttention
from .blocks.checks import bert_layout_checks
from .blocks.heads import TokenClassifier
from .blocks.norms import post_norm
from .blocks.linear import FusedLinear, linear

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: Checkpoint tensors the encoder does not use: the classifiers and LM heads of transformers' task models, the position id buffer.
_UNUSED = re.compile(r"^(pooler|lm_head|classifier|qa_outputs)\.|^embeddings\.position_ids$")
#: transformers' MPNet counts positions from this token id + 1, whatever ``pad_token_id`` says.
_PADDING_IDX = 1
#: Buckets and farthest distance of the relative position bias, fixed in transformers' MPNet
#: whatever ``relative_attention_num_buckets`` says (that sizes only the bias table).
_NUM_BUCKETS = 32
_MAX_DISTANCE = 128


def relative_position_bucket(
    relative_position: torch.Tensor, num_buckets: int = _NUM_BUCKETS, max_distance: int = _MAX_DISTANCE
) -> torch.Tensor:
    """The bias bucket of each ``key - query`` distance, as transformers' MPNet computes it.

    Half the buckets are for keys before the query, half for keys after it; within each half,
    distances below a quarter of the buckets have one bucket each and longer ones share
    logarithmically wider buckets up to ``max_distance``.
    """
    n = -relative_position
    half = num_buckets // 2
    ret = (n < 0).to(torch.long) * half
    n = n.abs()
    max_exact = half // 2
    large = max_exact + (
        torch.log(n.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).to(torch.long)
    large = large.clamp(max=half - 1)
    return ret + torch.where(n < max_exact, n, large)


class MPNetSelfAttention(nn.Module):
    """The projections of HF's ``attention.attn``: fused ``q``/``k``/``v`` and the output ``o``."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.qkv = FusedLinear(hidden, {part: hidden for part in ("q", "k", "v")})
        self.o = nn.Linear(hidden, hidden)


class MPNetAttention(MultiHeadAttention):
    """Self-attention within each sequence, then the residual add and LayerNorm.

    ``attention`` is the packed attention kernel with the model's position bias already bound
    (:meth:`MPNetModel.forward`), so the layer is BERT's :class:`BertLayer` with this block.
    """

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config.hidden_size, config.num_attention_heads)
        self.attn = MPNetSelfAttention(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, low: torch.Tensor, batch: PackedBatch, attention: Callable, linear_act: Callable
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qkv = linear(low, self.attn.qkv, linear_act).view(-1, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        context = attention(q, k, v, batch).reshape(x.shape)
        return post_norm(self, linear(context, self.attn.o, linear_act), x, self.LayerNorm)


class MPNetEncoder(nn.Module):
    """The layers and the relative position bias they share, named as in HF checkpoints."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, MPNetAttention(config)) for _ in range(config.num_hidden_layers))
        self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_attention_heads)

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """``[heads, length, length]``: the bias of query position ``i`` and key position ``j``.

        It depends on ``j - i`` only, so the buckets of the ``2 * length - 1`` distances are
        looked up once and spread over the table; its top-left corner serves shorter sequences.
        """
        distances = torch.arange(1 - length, length, device=device)
        # [heads, 2L - 1]: column j - i + L - 1 holds the bias of distance j - i.
        by_distance = F.embedding(relative_position_bucket(distances), self.relative_attention_bias.weight).t()
        # Window w of the unfold is distances w - L + 1 .. w, so row i is window L - 1 - i.
        return by_distance.unfold(1, length, 1).flip(1).contiguous()


class MPNetModel(BertLayoutModel):
    """The MPNet encoder: packed token ids in, last-layer hidden states ``[T, H]`` out.

    Loads checkpoints of ``MPNetModel`` and of MPNet task models (``MPNetForMaskedLM``, as
    all-mpnet-base-v2 is labelled, ``MPNetForSequenceClassification``, ...), whose encoder
    tensors carry an ``mpnet.`` prefix; task heads are left to poolkit's poolers and heads.

    Example:
        >>> model = MPNetModel(transformers.MPNetConfig.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[0, 7592, 2], [0, 2]]))
    """

    config_checks: ClassVar[ConfigChecks] = bert_layout_checks(
        ("relative_attention_num_buckets",),
        {
            "encoder.relative_attention_bias.weight": ("relative_attention_num_buckets", "num_attention_heads"),
            "encoder.layer.0.attention.attn.q.weight": ("hidden_size", "hidden_size"),
        },
    )
    checkpoint_prefix: ClassVar[str] = "mpnet."
    unused_tensors: ClassVar[re.Pattern] = _UNUSED
    position_offset: ClassVar[int] = _PADDING_IDX + 1

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        buckets = int(config.relative_attention_num_buckets)
        if buckets < _NUM_BUCKETS:
            raise ModelLoadError(
                f"relative_attention_num_buckets is {buckets}, but MPNet's relative positions take {_NUM_BUCKETS} buckets"
            )
        self.embeddings = BertEmbeddings(config, self.position_offset, token_types=False)
        self.encoder = MPNetEncoder(config)

    def attention_bias(self, batch: PackedBatch) -> torch.Tensor:
        """MPNet's relative position bias."""
        return self.encoder.position_bias(batch.max_len, batch.device)


class MPNetForSequenceClassification(RobertaHeadClassifier, MPNetModel):
    """An MPNet cross-encoder / sequence classifier: CLS -> ``classifier`` (dense, tanh, ``out_proj``).

    The ``token_classify`` task applies the same head to every token (``Architecture.token_classifier``'s
    default), as for RoBERTa.
    """


class MPNetForTokenClassification(TokenClassifier, MPNetModel):
    """An MPNet token classifier (NER): ``classifier`` on every token."""


@hookimpl
def poolkit_register_architectures(register):
    register("MPNetModel", MPNetModel)
    register("MPNetForSequenceClassification", MPNetForSequenceClassification)
    register("MPNetForTokenClassification", MPNetForTokenClassification)
