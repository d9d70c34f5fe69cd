"""The Qwen3.5 text decoder on packed batches: gated delta-net layers beside gated full attention.

As transformers' ``Qwen3_5TextModel`` (``models/qwen3_5/modeling_qwen3_5.py``), each layer is
pre-norm, its token mixer chosen by the config's ``layer_types``, then a SwiGLU feed-forward layer:

- ``linear_attention`` (:class:`GatedDeltaNet`): ``in_proj_qkv`` -> causal depthwise ``conv1d``
  (kernel ``linear_conv_kernel_dim``) -> SiLU -> queries and keys (``linear_num_key_heads`` of
  ``linear_key_head_dim``, L2-normalised, queries scaled by ``dk ** -0.5``, repeated to the value
  heads) and values (``linear_num_value_heads`` of ``linear_value_head_dim``); the gated delta rule
  with ``beta = sigmoid(in_proj_b)`` and log decay ``g = -exp(A_log) * softplus(in_proj_a + dt_bias)``;
  a gated RMSNorm per value head (``norm(o) * silu(in_proj_z)``), then ``out_proj``;
- ``full_attention`` (:class:`GatedAttention`): grouped-query attention whose ``q_proj`` gives each
  head its query and an output gate side by side, per-head ``q_norm`` / ``k_norm``, rotary positions
  on the first ``partial_rotary_factor`` of each head, causal; the output times ``sigmoid(gate)``.

Norms scale by ``1 + weight`` in float32 (Gemma's), except the delta-net's gated norm (``weight``).
Text positions make the multimodal rotary sections (``mrope_section``) coincide, so plain rotary
positions counted from 0 in each sequence are what transformers computes for text.

Every sequence of a packed batch runs as it would alone: the convolution and the recurrence start
from zeros at each sequence start (:mod:`.delta_rule`). Prefix sharing stays off: a prefix's
recurrent state is not something the shared-prefix cache keeps.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import base_model_name
from poolkit.plugins.lookup import kernel_for

from ..blocks.linear import FusedLinear
from ..blocks.linear import linear as linear_layer
from ..blocks.norms import OffsetRMSNorm, RMSNorm, residual_stream
from ..blocks.rotary import Rotary, rope_parameters, rotary_cos_sin, rotary_inv_freq
from ..decoders.heads import DecoderLMHead, ScoreClassifier
from ..decoders.model import DecoderMLP, DecoderModel
from .delta_rule import gated_delta_rule_chunked, packed_causal_conv, sequence_offsets

if TYPE_CHECKING:
    from transformers import PretrainedConfig

LINEAR, FULL = "linear_attention", "full_attention"
#: What the decoder family's ``decode`` may run after each layer: ``(i, stream, output) -> (stream, output)``.
AfterLayer = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: Checkpoint tensors the text model does not use: LM heads and classifiers of the task models,
#: the multi-token-prediction block published checkpoints carry (``mtp.*``), rotary buffers.
_UNUSED = re.compile(r"^(lm_head|score|classifier|mtp)\.|\.rotary_emb\.")


def layer_types(config: PretrainedConfig) -> list[str]:
    """Each layer's token mixer, ``linear_attention`` or ``full_attention`` (the config's ``layer_types``).

    Raises:
        ModelLoadError: a type other than these two, or not one per layer.
    """
    n = int(config.num_hidden_layers)
    types = list(getattr(config, "layer_types", None) or [])
    if len(types) != n or set(types) - {LINEAR, FULL}:
        raise ModelLoadError(f"layer_types {types} must name '{LINEAR}' or '{FULL}' once per layer ({n})")
    return types


def attention_head_dim(config: PretrainedConfig) -> int:
    """The width of each full-attention head (``head_dim``, else ``hidden_size / num_attention_heads``)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def rotary_dims(config: PretrainedConfig, head_dim: int) -> tuple[int, float]:
    """How many leading dimensions of each attention head rotate, and the rotary base.

    Raises:
        ModelLoadError: a rotary type other than the default, or a fraction that rotates no even
            number of dimensions.
    """
    params = rope_parameters(config)
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind != "default":
        raise ModelLoadError(f"rope_type '{kind}' is not supported for Qwen3.5; it runs the default rotary embeddings")
    partial = float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)) or 1.0)
    dim = int(head_dim * partial)
    if dim < 2 or dim % 2 or dim > head_dim:
        raise ModelLoadError(f"partial_rotary_factor {partial} rotates {dim} of the {head_dim} head dimensions; it must be an even number")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None)) or 10_000.0
    return dim, float(theta)


class GatedAttention(nn.Module):
    """Causal grouped-query attention with an output gate; ``qkv_proj`` holds the checkpoint's
    ``q_proj`` (each head's query then its gate), ``k_proj`` and ``v_proj`` one after the other."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        hidden, eps = int(config.hidden_size), float(config.rms_norm_eps)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}")
        self.head_dim = attention_head_dim(config)
        bias = bool(getattr(config, "attention_bias", False))
        parts = {
            "q_proj": 2 * self.num_heads * self.head_dim,
            "k_proj": self.num_kv_heads * self.head_dim,
            "v_proj": self.num_kv_heads * self.head_dim,
        }
        self.qkv_proj = FusedLinear(hidden, parts, bias=bias)
        self.qkv_sizes = list(parts.values())
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        self.q_norm = OffsetRMSNorm(self.head_dim, eps)
        self.k_norm = OffsetRMSNorm(self.head_dim, eps)

    def forward(self, x: torch.Tensor, rotary: Rotary, batch: PackedBatch, attention: Callable, linear: Callable) -> torch.Tensor:
        q_gate, k, v = linear_layer(x, self.qkv_proj, linear).split(self.qkv_sizes, dim=-1)
        q, gate = q_gate.view(-1, self.num_heads, 2 * self.head_dim).chunk(2, dim=-1)
        q = self.q_norm(q)
        k = self.k_norm(k.view(-1, self.num_kv_heads, self.head_dim))
        rotate = kernel_for(self, "rotary", x.device)
        q, k = rotate(q, *rotary), rotate(k, *rotary)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        context = attention(q, k, v, batch, causal=True, scale=self.head_dim**-0.5, window=None)
        gated = context.reshape(x.shape[0], -1) * torch.sigmoid(gate.reshape(x.shape[0], -1))
        return linear_layer(gated, self.o_proj, linear)


class GatedDeltaNet(nn.Module):
    """The gated delta-net token mixer; ``in_proj`` holds the checkpoint's ``in_proj_qkv``,
    ``in_proj_z``, ``in_proj_b`` and ``in_proj_a`` one after the other."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        hidden = int(config.hidden_size)
        self.k_heads, self.v_heads = int(config.linear_num_key_heads), int(config.linear_num_value_heads)
        if self.v_heads % self.k_heads:
            raise ModelLoadError(f"linear_num_value_heads {self.v_heads} is not a multiple of linear_num_key_heads {self.k_heads}")
        self.k_dim, self.v_dim = int(config.linear_key_head_dim), int(config.linear_value_head_dim)
        key_width, value_width = self.k_heads * self.k_dim, self.v_heads * self.v_dim
        self.qkv_sizes = [key_width, key_width, value_width]
        parts = {"in_proj_qkv": sum(self.qkv_sizes), "in_proj_z": value_width, "in_proj_b": self.v_heads, "in_proj_a": self.v_heads}
        self.in_proj = FusedLinear(hidden, parts, bias=False)
        self.in_sizes = list(parts.values())
        channels, width = sum(self.qkv_sizes), int(config.linear_conv_kernel_dim)
        # transformers' module, so that its weight loads by name; packed_causal_conv runs it per sequence.
        self.conv1d = nn.Conv1d(channels, channels, width, bias=False, groups=channels, padding=width - 1)
        self.dt_bias = nn.Parameter(torch.ones(self.v_heads))
        self.A_log = nn.Parameter(torch.zeros(self.v_heads))
        self.norm = RMSNorm(self.v_dim, float(config.rms_norm_eps))
        self.out_proj = nn.Linear(value_width, hidden, bias=False)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, batch: PackedBatch, linear: Callable) -> torch.Tensor:
        mixed, z, b, a = linear_layer(x, self.in_proj, linear).split(self.in_sizes, dim=-1)
        # In float32 (transformers convolves in the weight's dtype), handed on in the model's dtype.
        mixed = F.silu(packed_causal_conv(mixed, self.conv1d.weight.squeeze(1), offsets)).to(x.dtype)
        q, k, v = mixed.split(self.qkv_sizes, dim=-1)
        repeat = self.v_heads // self.k_heads
        q = q.reshape(-1, self.k_heads, self.k_dim).float().repeat_interleave(repeat, dim=1)
        k = k.reshape(-1, self.k_heads, self.k_dim).float().repeat_interleave(repeat, dim=1)
        # L2-normalised in float32 (transformers' l2norm, eps 1e-6), queries then scaled by dk ** -0.5.
        q = q * torch.rsqrt(q.pow(2).sum(-1, keepdim=True) + 1e-6) * self.k_dim**-0.5
        k = k * torch.rsqrt(k.pow(2).sum(-1, keepdim=True) + 1e-6)
        beta = b.float().sigmoid()
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
        out = gated_delta_rule_chunked(q, k, v.reshape(-1, self.v_heads, self.v_dim), g, beta, batch).to(x.dtype)
        # The gated norm: RMSNorm (scaled in the model's dtype), then times silu(z) in float32.
        normed = self.norm(out).float() * F.silu(z.reshape(out.shape).float())
        return linear_layer(normed.to(x.dtype).reshape(x.shape[0], -1), self.out_proj, linear)


class LayerContext(NamedTuple):
    """What every layer of one forward pass reads beside the hidden states."""

    #: The attention layers' rotary cos/sin, ``[T, rotated width]`` each.
    rotary: Rotary
    #: ``[T]`` each token's index inside its sequence (where the delta-net's state restarts).
    offsets: torch.Tensor
    batch: PackedBatch


class Qwen3_5Layer(nn.Module):
    """One pre-norm layer: a gated delta-net or gated attention, then the SwiGLU feed-forward layer."""

    def __init__(self, model: type[Qwen3_5TextModel], config: PretrainedConfig, layer_type: str) -> None:
        super().__init__()
        size, eps = int(config.hidden_size), float(config.rms_norm_eps)
        self.layer_type = layer_type
        self.input_layernorm = OffsetRMSNorm(size, eps)
        if layer_type == LINEAR:
            self.linear_attn = GatedDeltaNet(config)
        else:
            self.self_attn = GatedAttention(config)
        self.post_attention_layernorm = OffsetRMSNorm(size, eps)
        self.mlp = DecoderMLP(model, config)

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None, context: LayerContext, attention: Callable, linear: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream and the previous layer's output in (``delta`` ``None`` for the first
        layer), ``(residual stream, this layer's output)`` out, as the decoder family's layers."""
        x, h = (residual_stream(x), self.input_layernorm(x)) if delta is None else self.input_layernorm.add(delta, x)
        if self.layer_type == LINEAR:
            mixed = self.linear_attn(h, context.offsets, context.batch, linear)
        else:
            mixed = self.self_attn(h, context.rotary, context.batch, attention, linear)
        x, h = self.post_attention_layernorm.add(mixed, x)
        return x, self.mlp(h, linear)


class Qwen3_5TextModel(Architecture):
    """The Qwen3.5 text decoder: packed token ids in, final-norm hidden states ``[T, H]`` out.

    Loads checkpoints of ``Qwen3_5TextModel`` and of the text task models (``Qwen3_5ForCausalLM``,
    ``Qwen3_5TextForSequenceClassification``), whose backbone tensors carry a ``model.`` prefix;
    ``lm_head`` and the multi-token-prediction block (``mtp.*``) are dropped. Attention is causal,
    and embeddings pool the last token by default.

    Example:
        >>> model = Qwen3_5TextModel(transformers.Qwen3_5TextConfig.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[9707, 1879], [14990]]))
    """

    default_pooling_type: ClassVar[str | None] = "LAST"
    #: LoRA adapters may target every projection (``q_proj`` ... ``down_proj``, ``in_proj_qkv``,
    #: ``in_proj_z``, ``in_proj_b``, ``in_proj_a``, ``out_proj``): all run through the layer helpers.
    takes_adapters: ClassVar[bool] = True
    #: No one-token filler sequences: the delta rule's work is per chunk of each sequence, so each
    #: filler would cost a whole chunk (the linear layers pad their own rows to their buckets).
    accepts_filler: ClassVar[bool] = False
    #: No :class:`~poolkit.contracts.capabilities.SharesPrefixes`: the delta rule carries state past a prefix.
    shares_prefixes: ClassVar[bool] = False
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=(
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "max_position_embeddings", "linear_num_key_heads",
            "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim",
        ),
        multiples=(("num_attention_heads", "num_key_value_heads"), ("linear_num_value_heads", "linear_num_key_heads")),
        layers={"num_hidden_layers": r"(?:^|\.)layers\.(\d+)\."},
        shapes={
            "embed_tokens.weight": ("vocab_size", "hidden_size"),
            "layers.0.mlp.gate_proj.weight": ("intermediate_size", "hidden_size"),
        },
    )
    #: Prefix of the backbone's tensors in task-model checkpoints (HF's ``base_model_prefix``).
    checkpoint_prefix: ClassVar[str] = "model."
    #: Checkpoint name prefixes of the classifiers this class loads itself (none for the bare backbone).
    classifier_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def activation(cls, config: PretrainedConfig) -> str:
        """The feed-forward activation's name (``hidden_act``)."""
        return getattr(config, "hidden_act", None) or "silu"

    @classmethod
    def mlp_bias(cls, config: PretrainedConfig) -> bool:
        return False

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        types = layer_types(config)
        self.embed_tokens = nn.Embedding(int(config.vocab_size), int(config.hidden_size))
        self.layers = nn.ModuleList(Qwen3_5Layer(type(self), config, t) for t in types)
        self.norm = OffsetRMSNorm(int(config.hidden_size), float(config.rms_norm_eps))
        dim, theta = rotary_dims(config, attention_head_dim(config))
        # The inverse frequencies and cos/sin scaling of the one rotary layer type, as the decoder
        # family keeps them: plain float32 tensors rather than buffers, so casting leaves them exact.
        self._rotary_parameters = {FULL: (rotary_inv_freq(theta, dim), 1.0)}

    @classmethod
    def head_dim(cls, config: PretrainedConfig) -> int:
        """The rotated width of each attention head (its first ``partial_rotary_factor``): what a
        vision-language wrapper's M-RoPE sections split, as they split a whole head of the other decoders."""
        return rotary_dims(config, attention_head_dim(config))[0]

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embed(batch.input_ids)
        inv_freq, _ = self._rotary_parameters[FULL]
        return self.decode(x, batch, {FULL: rotary_cos_sin(inv_freq, sequence_offsets(batch), x.dtype)})

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings ``[T, H]`` the layers start from."""
        return F.embedding(input_ids, self.embed_tokens.weight)

    def decode(self, x: torch.Tensor, batch: PackedBatch, rotary: dict[str, Rotary], after_layer: AfterLayer | None = None) -> torch.Tensor:
        """The layers and the final norm over input embeddings ``x`` (``[T, H]``: :meth:`embed`'s, or
        a vision-language model's with image features in place) and the attention layers' rotary
        cos/sin (``rotary["full_attention"]``, ``[T, rotated width]``); ``after_layer(i, x, delta)``
        as the decoder family's :meth:`~poolkit.builtin_models.decoders.model.DecoderModel.decode` takes it."""
        context = LayerContext(rotary[FULL], sequence_offsets(batch), batch)
        attention = kernel_for(self, "varlen_attention", batch.device)
        linear = kernel_for(self, "linear_act", batch.device)
        delta = None
        for i, layer in enumerate(self.layers):
            x, delta = layer(x, delta, context, attention, linear)
            if after_layer is not None:
                x, delta = after_layer(i, x, delta)
        return self.norm(x) if delta is None else self.norm.add(delta, x)[1]

    # The decoder family's loading: checkpoint names through parameter_name, projections fused.
    load_weights = DecoderModel.load_weights
    _load = DecoderModel._load

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """The Hugging Face base-model name of a checkpoint tensor, or ``None`` to skip it."""
        return base_model_name(checkpoint_name, self.checkpoint_prefix, self.classifier_prefixes, _UNUSED)


class Qwen3_5ForCausalLM(DecoderLMHead, ScoreClassifier, Qwen3_5TextModel):
    """A Qwen3.5 language model served as an embedder (last token), or, when its config names
    ``classifier_from_token`` and a ``method``, as a reranker built from the LM head's rows; its
    LM head (``lm_head()``) serves ``STEP`` process rewards."""

    checkpoint_score: ClassVar[bool] = False


class Qwen3_5TextForSequenceClassification(ScoreClassifier, Qwen3_5TextModel):
    """A Qwen3.5 sequence classifier / reranker: last token -> ``score`` (no bias)."""
