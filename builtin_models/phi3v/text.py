"""The Phi-3 text decoder on packed batches: the Llama-style family of :mod:`..decoders` with
Phi-3's rotary positions.

Phi-3's checkpoints store each layer's attention projections fused as ``qkv_proj`` (queries, then
keys, then values) and its gated feed-forward input as ``gate_up_proj`` (gate, then up): the very
layout the decoder family fuses other checkpoints into, so they load as they are. What the family's
rotary reader does not take, Phi-3 adds here:

- LongRoPE (``rope_scaling`` of type ``longrope``, or ``su`` as the first Phi-3 configs call it):
  each rotary frequency divided by a per-frequency ``short_factor``, or by a ``long_factor`` for a
  sequence longer than ``original_max_position_embeddings``, and cos/sin scaled by
  ``sqrt(1 + ln(s) / ln(original))`` where ``s`` is ``max_position_embeddings / original``. The
  choice is made per sequence, by its own length, as transformers makes it for a sequence run
  alone; so an embedding never depends on what else is in the batch (vLLM chooses for the whole
  batch);
- partial rotary embeddings (``partial_rotary_factor``): only the first part of each head rotates;
- a sliding window on every layer (``sliding_window``) only where it is shorter than
  ``max_position_embeddings``: the published configs set it to the context length, where it masks
  nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError

from ..blocks.attention import GLOBAL, SLIDING
from ..blocks.rotary import Rotary, rope_parameters, rotary_cos_sin
from ..decoders.model import DecoderModel, check_layer_types

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class Phi3Rotary:
    """Phi-3's rotary frequencies, read off a config: ``[dim // 2]`` float32 inverse frequencies
    for short sequences, and for long ones with LongRoPE (``long`` is ``None`` otherwise).

    Attributes:
        dim: how many leading dimensions of each head rotate.
        short, long: the inverse frequencies.
        original: the length up to which a sequence takes ``short`` (``original_max_position_embeddings``).
        scaling: the factor on every cos and sin (LongRoPE's attention factor; 1.0 without it).

    Raises:
        ModelLoadError: a rotary type other than the default and LongRoPE, or factors that do
            not fit the rotated dimensions.
    """

    def __init__(self, config: PretrainedConfig, head_dim: int) -> None:
        params = rope_parameters(config)
        kind = params.get("rope_type", params.get("type")) or "default"
        partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)) or 1.0
        self.dim = int(head_dim * float(partial))
        if self.dim < 2 or self.dim % 2 or self.dim > head_dim:
            raise ModelLoadError(
                f"partial_rotary_factor {partial} rotates {self.dim} of the {head_dim} head dimensions; it must be an even number"
            )
        theta = params.get("rope_theta", getattr(config, "rope_theta", None)) or 10_000.0
        powers = float(theta) ** (torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim)
        self.long: torch.Tensor | None = None
        self.original = 0
        self.scaling = 1.0
        if kind == "default":
            self.short = 1.0 / powers
            return
        if kind not in ("longrope", "su"):
            raise ModelLoadError(
                f"rope_type '{kind}' is not supported for Phi-3; it runs the default rotary embeddings and longrope ('su')"
            )
        factors = []
        for name in ("short_factor", "long_factor"):
            values = params.get(name)
            if not isinstance(values, (list, tuple)) or len(values) != self.dim // 2:
                got = len(values) if isinstance(values, (list, tuple)) else values
                raise ModelLoadError(f"rope_scaling {name} must hold {self.dim // 2} numbers (half the rotated dimensions), got {got}")
            factors.append(torch.tensor([float(v) for v in values], dtype=torch.float32))
        positions = int(config.max_position_embeddings)
        self.original = int(
            getattr(config, "original_max_position_embeddings", None) or params.get("original_max_position_embeddings") or positions
        )
        factor = params.get("factor") or positions / self.original
        attention = params.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(self.original))
        self.scaling = float(attention)
        self.short, self.long = (1.0 / (f * powers) for f in factors)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype, long: torch.Tensor | None = None) -> Rotary:
        """Each token's cos and sin ``[T, dim]`` as ``dtype`` (angles in float32); ``long``, a ``[T]``
        mask, marks the tokens of sequences that take the long factors."""
        inv_freq = self.short
        if long is not None and self.long is not None and bool(long.any()):
            rows = long.to(positions.device).unsqueeze(-1)
            inv_freq = torch.where(rows, self.long.to(positions.device), self.short.to(positions.device))
        return rotary_cos_sin(inv_freq, positions, dtype, self.scaling)

    def batch_cos_sin(self, batch: PackedBatch, dtype: torch.dtype) -> Rotary:
        """:meth:`cos_sin` of a packed batch, each sequence taking the factors its length calls for."""
        long = None
        if self.long is not None and batch.max_len > self.original:
            long = (batch.lens > self.original)[batch.seq_ids]
        return self.cos_sin(batch.positions, dtype, long)


class _PlainRotary:
    """A config as :class:`DecoderModel` builds its layers from, with plain rotary positions over
    the whole head: Phi-3's own are :class:`Phi3Rotary`, which the family's reader refuses."""

    partial_rotary_factor = 1.0
    rope_scaling = None

    def __init__(self, config: PretrainedConfig) -> None:
        self._config = config
        self.rope_parameters = {"rope_type": "default", "rope_theta": 10_000.0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


class Phi3TextModel(DecoderModel):
    """The Phi-3 decoder (``Phi3Model``): RMSNorm, SwiGLU, fused ``qkv_proj`` and ``gate_up_proj``,
    rotary positions with LongRoPE and partial rotation (:class:`Phi3Rotary`).

    Not registered as an architecture of its own: text-only Phi-3 checkpoints stay with the
    transformers fallback; vision-language models built on it (``Phi3VForCausalLM``) run it.

    Example:
        >>> model = Phi3TextModel(transformers.Phi3Config.from_pretrained(path))
        >>> hidden = model(PackedBatch.from_sequences([[1, 15043], [1]]))
    """

    @classmethod
    def layer_types(cls, config: PretrainedConfig) -> list[str]:
        """A sliding window on every layer when ``sliding_window`` is shorter than the context."""
        window = getattr(config, "sliding_window", None)
        positions = getattr(config, "max_position_embeddings", None)
        sliding = bool(window) and not (positions and int(window) >= int(positions))
        return check_layer_types(config, [SLIDING if sliding else GLOBAL] * int(config.num_hidden_layers))

    def __init__(self, config: PretrainedConfig) -> None:
        rotary = Phi3Rotary(config, type(self).head_dim(config))
        super().__init__(_PlainRotary(config))
        self.config = config
        self._phi3_rotary = rotary
        self.shares_prefixes = False  # LongRoPE reads each sequence's length

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype, long: torch.Tensor | None = None) -> dict[str, Rotary]:
        """Each token's cos and sin per layer type; ``long`` (``[T]``) marks the tokens whose
        sequence takes LongRoPE's long factors (none, when not given)."""
        rotated = self._phi3_rotary.cos_sin(positions, dtype, long)
        return {GLOBAL: rotated, SLIDING: rotated}

    def batch_rotary(self, batch: PackedBatch, dtype: torch.dtype) -> dict[str, Rotary]:
        """:meth:`rotary` of a packed batch, each sequence's factors chosen by its length."""
        rotated = self._phi3_rotary.batch_cos_sin(batch, dtype)
        return {GLOBAL: rotated, SLIDING: rotated}
