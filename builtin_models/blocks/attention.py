"""What the families' self-attention shares: the layer types, the width of a head, and the base of
the encoders' multi-head attention modules."""

from __future__ import annotations

from torch import nn

from poolkit.contracts.errors import ModelLoadError

#: A layer's attention type (``config.layer_types``), as transformers 5 names them: all positions of the
#: sequence, or a sliding window (ModernBERT's local attention).
GLOBAL, SLIDING = "full_attention", "sliding_attention"


def attention_head_dim(hidden_size: int, num_heads: int) -> int:
    """Width of one attention head, ``hidden_size // num_heads``.

    Raises:
        ModelLoadError: the hidden size does not split evenly into the heads.
    """
    if hidden_size % num_heads:
        raise ModelLoadError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}")
    return hidden_size // num_heads


class MultiHeadAttention(nn.Module):
    """Base of an encoder's self-attention module: ``num_heads`` heads of ``head_dim`` features
    each, over ``hidden`` features (:func:`attention_head_dim`)."""

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = attention_head_dim(hidden, num_heads)
