"""LFM2 (Liquid AI's LFM2-350M / 700M / 1.2B / 2.6B and LFM2-ColBERT-350M): a hybrid decoder whose
layers are either grouped-query attention or a gated short convolution, on packed batches.

Every layer is pre-norm: ``operator_norm``, then its operator (attention or convolution), added to
the residual stream; then ``ffn_norm`` and a SwiGLU ``feed_forward`` (``w2(silu(w1 x) * w3 x)``).
The final norm is called ``embedding_norm``. ``layer_types`` (or, in older configs,
``full_attn_idxs``) says which layers attend (``"full_attention"``) and which convolve
(``"conv"``).

- Attention: causal within each sequence, rotary positions from 0 in each sequence, per-head
  RMSNorms on queries and keys (``q_layernorm`` / ``k_layernorm``), no biases, ``out_proj``. It
  runs as the decoders' attention block (:class:`~poolkit.builtin_models.decoders.model.DecoderAttention`),
  the checkpoint's names mapped to that block's as the weights load.
- Short convolution (``Lfm2ShortConv``): ``in_proj`` to three slices ``B, C, x``; ``B * x`` through
  a causal depthwise convolution of ``conv_L_cache`` taps (``conv.conv.weight``, ``[H, 1, L]``);
  times ``C``; ``out_proj``. Over a packed batch, the window of a sequence's first ``L - 1`` tokens
  would reach into the previous sequence's rows: :func:`packed_short_conv` reads zeros there
  instead, as the convolution of that sequence alone zero-pads its start. Nothing else of one
  sequence reaches another, so a packed batch equals its sequences run one at a time.
- Feed-forward width: ``intermediate_size`` (``block_ff_dim`` in published configs), adjusted as
  transformers does when ``block_auto_adjust_ff_dim`` is set (two thirds, times
  ``block_ffn_dim_multiplier``, rounded up to a multiple of ``block_multiple_of``).

Prompts that begin alike are not computed once (``shares_prefixes`` is ``False``: a short
convolution's state would have to be kept with a prefix's keys and values): each sequence runs from
its first token. Embeddings pool the last token by default, as the decoders' do. LFM2-ColBERT-350M
is a PyLate save of ``Lfm2Model`` (its ``1_Dense`` projects the token vectors, read by the
sentence-transformers machinery); vLLM's ``ColBERTLfm2Model`` (chosen with ``hf_overrides``)
reads a ``linear`` projection from the checkpoint, else the ``1_Dense`` one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Collection, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.weights import base_model_name, load_into
from poolkit.plugins.lookup import kernel_for

from .blocks.attention import GLOBAL
from .blocks.checks import decoder_checks
from .blocks.linear import fuse_projections, linear as linear_layer
from .blocks.norms import RMSNorm, at_least_float32, residual_stream
from .blocks.quantize import Quantizable
from .blocks.rotary import Rotary, rotary_cos_sin, rotary_parameters
from .colbert import _ColBERT
from .decoders.heads import DecoderLMHead
from .decoders.model import DecoderAttention, DecoderMLP, DecoderModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: The two kinds of LFM2 layer, as ``layer_types`` names them.
FULL_ATTENTION, CONV = GLOBAL, "conv"
#: Checkpoint tensors the backbone does not use: a causal LM's head, rotary caches.
_UNUSED = re.compile(r"^lm_head\.|\.rotary_emb\.")
#: LFM2's module names and the decoder blocks' for them (attention and feed-forward).
_RENAMES = (
    (re.compile(r"\.self_attn\.out_proj\."), ".self_attn.o_proj."),
    (re.compile(r"\.self_attn\.q_layernorm\."), ".self_attn.q_norm."),
    (re.compile(r"\.self_attn\.k_layernorm\."), ".self_attn.k_norm."),
    (re.compile(r"\.feed_forward\.w1\."), ".feed_forward.gate_proj."),
    (re.compile(r"\.feed_forward\.w3\."), ".feed_forward.up_proj."),
    (re.compile(r"\.feed_forward\.w2\."), ".feed_forward.down_proj."),
)


def layer_types(config: PretrainedConfig) -> list[str]:
    """Each layer's kind, ``"full_attention"`` or ``"conv"``: the config's ``layer_types``, else
    attention at ``full_attn_idxs`` (every layer when neither is given, as transformers reads it).

    Raises:
        ModelLoadError: not one known kind per layer.
    """
    n = int(config.num_hidden_layers)
    types = getattr(config, "layer_types", None)
    if not types:
        attention = getattr(config, "full_attn_idxs", None)
        attention = set(range(n)) if attention is None else {int(i) for i in attention}
        types = [FULL_ATTENTION if i in attention else CONV for i in range(n)]
    types = list(types)
    if len(types) != n or set(types) - {FULL_ATTENTION, CONV}:
        raise ModelLoadError(f"layer_types {types} must name '{FULL_ATTENTION}' or '{CONV}' once per layer ({n})")
    return types


def feed_forward_size(config: PretrainedConfig) -> int:
    """The feed-forward width: ``intermediate_size``, adjusted when ``block_auto_adjust_ff_dim`` is set."""
    size = int(config.intermediate_size)
    if not getattr(config, "block_auto_adjust_ff_dim", False):
        return size
    size = int(2 * size / 3)
    multiplier = getattr(config, "block_ffn_dim_multiplier", None)
    if multiplier is None:
        return size
    multiple = int(config.block_multiple_of)
    return multiple * ((int(multiplier * size) + multiple - 1) // multiple)


def packed_short_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor
) -> torch.Tensor:
    """A causal depthwise convolution over packed token rows, each sequence on its own.

    The torch reference of the packed short convolution, on any device: row ``t`` gets
    ``sum_j weight[:, j] * x[t - (L - 1) + j]`` (plus ``bias``), where a row before its sequence's
    first token reads as zero, as a convolution of that sequence alone, zero-padded on the left,
    gives. Accumulated in at least float32, returned in ``x``'s dtype.

    Args:
        x: ``[T, H]`` packed rows.
        weight: ``[H, L]``, the last tap on the row itself.
        bias: ``[H]`` or ``None``.
        offsets: ``[T]`` each row's index within its own sequence.
    """
    taps = weight.shape[1]
    wide, w = at_least_float32(x), at_least_float32(weight)
    out = wide * w[:, taps - 1]
    for shift in range(1, min(taps, x.shape[0] + 1)):
        earlier = F.pad(wide[:-shift], (0, 0, shift, 0))
        earlier = earlier.masked_fill((offsets < shift).unsqueeze(-1), 0.0)
        out = out + earlier * w[:, taps - 1 - shift]
    if bias is not None:
        out = out + at_least_float32(bias)
    return out.to(x.dtype)


@dataclass(frozen=True)
class BlockSizes:
    """What the decoders' attention and feed-forward blocks read of a config, in their field names
    (LFM2 calls the norms' epsilon ``norm_eps`` and derives the feed-forward width)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float

    @classmethod
    def of(cls, config: PretrainedConfig) -> BlockSizes:
        """The sizes of an LFM2 config."""
        heads = int(config.num_attention_heads)
        return cls(
            hidden_size=int(config.hidden_size),
            intermediate_size=feed_forward_size(config),
            num_attention_heads=heads,
            num_key_value_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            rms_norm_eps=float(config.norm_eps),
        )


class Lfm2Blocks(DecoderModel):
    """How LFM2 configures the decoders' blocks: per-head q/k RMSNorms; no biases and SiLU, the
    defaults for a :class:`BlockSizes`, which names neither. Only its class methods are read
    (:class:`Lfm2Model` builds the blocks with it); it is never built."""

    qk_norm: ClassVar[bool] = True


@dataclass(frozen=True)
class LayerInputs:
    """What every layer of one forward pass reads besides its input.

    Attributes:
        rotary: each token's cos and sin; batch: the packed batch;
        offsets: ``[T]`` each row's index within its own sequence (where a convolution window restarts);
        attention: the ``varlen_attention`` kernel; linear: the ``linear_act`` kernel.
    """

    rotary: Rotary
    batch: PackedBatch
    offsets: torch.Tensor
    attention: Callable
    linear: Callable


class Lfm2ShortConv(nn.Module):
    """The gated short convolution: ``out_proj(C * conv(B * x))`` with ``B, C, x = in_proj(h)``."""

    def __init__(self, hidden: int, taps: int, bias: bool) -> None:
        super().__init__()
        self.in_proj = nn.Linear(hidden, 3 * hidden, bias=bias)
        # Holds the checkpoint's depthwise kernel ([H, 1, L]); it runs through packed_short_conv.
        self.conv = nn.Conv1d(hidden, hidden, taps, groups=hidden, bias=bias, padding=taps - 1)
        self.out_proj = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, h: torch.Tensor, batch: PackedBatch, offsets: torch.Tensor, linear: Callable) -> torch.Tensor:
        if batch.key_mask is not None:
            # Tokens nobody attends to (a ColBERT query's unattended expansion) feed no window, as
            # transformers zeroes the masked rows before the convolution.
            h = h * batch.key_mask.unsqueeze(-1).to(h.dtype)
        gate_in, gate_out, x = linear_layer(h, self.in_proj, linear).chunk(3, dim=-1)
        mixed = packed_short_conv(gate_in * x, self.conv.weight[:, 0, :], self.conv.bias, offsets)
        return linear_layer(gate_out * mixed, self.out_proj, linear)


class Lfm2Layer(nn.Module):
    """One pre-norm LFM2 layer: attention (``self_attn``) or short convolution (``conv``), then the feed-forward."""

    def __init__(self, config: PretrainedConfig, sizes: BlockSizes, layer_type: str) -> None:
        super().__init__()
        self.operator_norm = RMSNorm(sizes.hidden_size, sizes.rms_norm_eps)
        self.ffn_norm = RMSNorm(sizes.hidden_size, sizes.rms_norm_eps)
        self.is_attention = layer_type == FULL_ATTENTION
        if self.is_attention:
            self.self_attn = DecoderAttention(Lfm2Blocks, sizes, GLOBAL, causal=True)
        else:
            self.conv = Lfm2ShortConv(sizes.hidden_size, int(config.conv_L_cache), bool(getattr(config, "conv_bias", False)))
        self.feed_forward = DecoderMLP(Lfm2Blocks, sizes)

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None, step: LayerInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream ``x`` plus the previous layer's output ``delta`` (``None`` for the
        first layer) in, this layer's ``(residual stream, output)`` out; each residual add is done
        by the norm that reads its sum, the stream float32 in a narrower model."""
        x, h = (residual_stream(x), self.operator_norm(x)) if delta is None else self.operator_norm.add(delta, x)
        if self.is_attention:
            mixed = self.self_attn(h, step.rotary, step.batch, step.attention, step.linear)
        else:
            mixed = self.conv(h, step.batch, step.offsets, step.linear)
        x, h = self.ffn_norm.add(mixed, x)
        return x, self.feed_forward(h, step.linear)


class Lfm2Model(Quantizable, Architecture):
    """The LFM2 hybrid decoder: packed token ids in, ``embedding_norm`` hidden states ``[T, H]`` out.

    Loads checkpoints of ``Lfm2Model`` and of ``Lfm2ForCausalLM`` (backbone under ``model.``, the
    ``lm_head`` dropped). LoRA adapters may target every linear layer: ``q_proj`` / ``k_proj`` /
    ``v_proj`` / ``out_proj``, the convolutions' ``in_proj`` / ``out_proj`` and ``w1`` / ``w2`` / ``w3``.

    Example:
        >>> model = Lfm2Model(transformers.Lfm2Config.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[1, 9707, 1879], [1, 14990]]))
    """

    takes_adapters: ClassVar[bool] = True
    default_pooling_type: ClassVar[str | None] = "LAST"
    #: No :class:`~poolkit.contracts.capabilities.SharesPrefixes`: the convolutions carry state past a prefix.
    shares_prefixes: ClassVar[bool] = False
    config_checks: ClassVar[ConfigChecks] = decoder_checks(
        {
            "embed_tokens.weight": ("vocab_size", "hidden_size"),
            "self_attn.q_proj.weight": ("hidden_size", "hidden_size"),
            "conv.in_proj.weight": ((3, "hidden_size"), "hidden_size"),
            "conv.conv.weight": ("hidden_size", 1, "conv_L_cache"),
        },
        ("conv_L_cache",),
        multiples=(("hidden_size", "num_attention_heads"),),
    )
    #: Prefix of the backbone's tensors in ``Lfm2ForCausalLM`` checkpoints.
    checkpoint_prefix: ClassVar[str] = "model."

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        sizes = BlockSizes.of(config)
        self.embed_tokens = nn.Embedding(int(config.vocab_size), sizes.hidden_size)
        self.layers = nn.ModuleList(Lfm2Layer(config, sizes, t) for t in layer_types(config))
        self.embedding_norm = RMSNorm(sizes.hidden_size, sizes.rms_norm_eps)
        # Plain float32 tensors rather than buffers, so that casting the model leaves them exact.
        self._rotary_parameters = rotary_parameters(config, Lfm2Blocks.head_dim(config))

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        super().check_config(config, shapes, overridden)
        layer_types(config)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = F.embedding(batch.input_ids, self.embed_tokens.weight)
        inv_freq, scaling = self._rotary_parameters
        rotary = rotary_cos_sin(inv_freq, batch.positions, x.dtype, scaling)
        rows = torch.arange(batch.num_tokens, device=batch.device)
        step = LayerInputs(
            rotary=rotary,
            batch=batch,
            offsets=rows - batch.first_indices[batch.seq_ids],
            attention=kernel_for(self, "varlen_attention", batch.device),
            linear=kernel_for(self, "linear_act", batch.device),
        )
        delta = None
        for layer in self.layers:
            x, delta = layer(x, delta, step)
        return self.embedding_norm(x) if delta is None else self.embedding_norm.add(delta, x)[1]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        named = ((self.parameter_name(name), tensor) for name, tensor in weights)
        load_into(self, fuse_projections(self, ((n, t) for n, t in named if n is not None)), rename=lambda name: name)

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """A checkpoint tensor's name in the model (the decoder blocks' names for LFM2's), or ``None`` to skip it."""
        name = base_model_name(checkpoint_name, self.checkpoint_prefix, (), _UNUSED)
        if name is None:
            return None
        for pattern, replacement in _RENAMES:
            name = pattern.sub(replacement, name)
        return name


class Lfm2ForCausalLM(DecoderLMHead, Lfm2Model):
    """An LFM2 language model served as an embedder (last token); its LM head (tied to the
    embeddings in the published checkpoints) is :meth:`lm_head`, which ``STEP`` rewards read."""


class ColBERTLfm2Model(_ColBERT, Lfm2Model):
    """LFM2-ColBERT as vLLM names it: every token's hidden state through the bias-free projection
    (``linear.weight`` in the checkpoint, else the PyLate ``1_Dense``), for ``token_embed`` and MaxSim."""


@hookimpl
def poolkit_register_architectures(register):
    for cls in (Lfm2Model, Lfm2ForCausalLM, ColBERTLfm2Model):
        register(cls.__name__, cls)
