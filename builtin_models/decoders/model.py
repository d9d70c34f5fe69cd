"""The Llama-style decoder on packed batches, :class:`DecoderModel`: one configurable stack that
Llama, Mistral, Gemma 1/2/3 and GritLM (this package), Qwen2/3 (:mod:`poolkit.builtin_models.qwen`),
InternLM2 and the vision-language models' language models configure.

Every member is a stack of pre-norm layers — grouped-query self-attention with rotary positions,
then a gated feed-forward layer ``down(act(gate) * up)`` — between token embeddings and a final
norm. What varies is a handful of switches, set per family as class attributes and read off the
config by class methods:

- norms: RMSNorm, or Gemma's ``(1 + weight)`` variant computed in float32 (``norm_offset``);
  per-head q/k norms (``qk_norm``: Qwen3, Gemma 3); Gemma 2/3's sandwich norms around attention
  and feed-forward (``sandwich_norms``);
- biases of the attention and feed-forward projections (:meth:`DecoderModel.attention_biases`,
  :meth:`DecoderModel.mlp_bias`: Qwen2's biased q/k/v, Llama's ``attention_bias`` / ``mlp_bias``);
- rotary positions: ``rope_theta`` and ``rope_scaling`` / ``rope_parameters`` (``linear``,
  ``dynamic``, ``yarn``, ``llama3``), per layer type where the config says so (Gemma 3's local
  and global bases), read by :func:`poolkit.builtin_models.blocks.rotary.rotary_parameters`;
- sliding windows on some layers (:meth:`DecoderModel.layer_types`: Mistral's on every layer,
  Gemma 2/3's on their local layers, Qwen2's above ``max_window_layers``);
- attention scale (Gemma 2/3: ``query_pre_attn_scalar``) and score soft-capping (Gemma 2);
- embeddings scaled by ``sqrt(hidden_size)`` (``scale_embeddings``: Gemma);
- causal attention within each sequence, or bidirectional (``is_causal: false`` in the config or
  ``hf_overrides``; Gemma 3's ``use_bidirectional_attention``; ``LlamaBidirectionalModel``).

Modules keep Hugging Face's parameter names, so checkpoints load by name, except that each
layer's q/k/v projections are fused into one ``qkv_proj`` and its gate and up projections into
one ``gate_up_proj`` at load time: one matmul instead of three or two. Heads are in
:mod:`poolkit.builtin_models.decoders.heads`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, ClassVar, Collection, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import SharesPrefixes
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import base_model_name, load_into
from poolkit.plugins.lookup import kernel_for

from ..blocks.attention import GLOBAL, SLIDING
from ..blocks.checks import decoder_checks
from ..blocks.norms import OffsetRMSNorm, RMSNorm, residual_stream
from ..blocks.quantize import Quantizable
from ..blocks.rotary import Rotary, rotary_cos_sin, rotary_parameters
from ..blocks.linear import FusedLinear, activation_function, fuse_projections, fused_activation, gated_linear, linear as linear_layer

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: Checkpoint tensors the backbone does not use: the classifiers and LM heads of transformers' task models, rotary caches.
_UNUSED = re.compile(r"^(lm_head|score|classifier|qa_outputs|v_head)\.|\.rotary_emb\.")


def check_layer_types(config: PretrainedConfig, types: list[str]) -> list[str]:
    """``types``, checked: one known attention type per layer, and a window for sliding ones.

    Raises:
        ModelLoadError: naming what does not fit.
    """
    n = int(config.num_hidden_layers)
    if len(types) != n or set(types) - {GLOBAL, SLIDING}:
        raise ModelLoadError(f"layer_types {types} must name '{GLOBAL}' or '{SLIDING}' once per layer ({n})")
    if SLIDING in types and not getattr(config, "sliding_window", None):
        raise ModelLoadError("the config has sliding-attention layers but no sliding_window")
    return types


class DecoderAttention(nn.Module):
    """Grouped-query self-attention within each sequence; ``qkv_proj`` holds the checkpoint's
    ``q_proj``, ``k_proj`` and ``v_proj`` one after the other."""

    def __init__(self, model: type[DecoderModel], config: PretrainedConfig, layer_type: str, causal: bool) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        self.head_dim = model.head_dim(config)
        self.scale = model.attention_scale(config, self.head_dim)
        self.softcap = model.attention_softcap(config)
        self.layer_type = layer_type
        self.window = model.window(config, causal) if layer_type == SLIDING else None
        self.causal = causal
        qkv_bias, o_bias = model.attention_biases(config)
        parts = {
            "q_proj": self.num_heads * self.head_dim,
            "k_proj": self.num_kv_heads * self.head_dim,
            "v_proj": self.num_kv_heads * self.head_dim,
        }
        self.qkv_proj = FusedLinear(hidden, parts, bias=qkv_bias)
        self.qkv_sizes = list(parts.values())  # the layer may become an int8 one, which has no parts
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=o_bias)
        norm = model.norm_class()
        self.q_norm = norm(self.head_dim, config.rms_norm_eps) if model.qk_norm else None
        self.k_norm = norm(self.head_dim, config.rms_norm_eps) if model.qk_norm else None

    def forward(
        self, x: torch.Tensor, rotary: Rotary, batch: PackedBatch, attention: Callable, linear: Callable
    ) -> torch.Tensor:
        qkv = linear_layer(x, self.qkv_proj, linear)
        q, k, v = qkv.split(self.qkv_sizes, dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rotary
        rotate = kernel_for(self, "rotary", x.device)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # Fewer key/value heads than query heads (grouped-query attention) go to the op as they are.
        if self.softcap is not None:
            context = attention(q, k, v, batch, causal=self.causal, scale=self.scale, window=self.window, softcap=self.softcap)
        else:
            context = attention(q, k, v, batch, causal=self.causal, scale=self.scale, window=self.window)
        return linear_layer(context.reshape(x.shape[0], -1), self.o_proj, linear)


class DecoderMLP(nn.Module):
    """Gated feed-forward: ``down_proj(act(gate) * up)``; ``gate_up_proj`` holds ``gate_proj`` then ``up_proj``."""

    def __init__(self, model: type[DecoderModel], config: PretrainedConfig) -> None:
        super().__init__()
        bias = model.mlp_bias(config)
        parts = {"gate_proj": int(config.intermediate_size), "up_proj": int(config.intermediate_size)}
        self.gate_up_proj = FusedLinear(config.hidden_size, parts, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act = activation_function(model.activation(config))
        self.fused_act = fused_activation(model.activation(config))

    def forward(self, x: torch.Tensor, linear: Callable) -> torch.Tensor:
        gated = kernel_for(self, "gated_linear", x.device)
        h = gated_linear(x, self.gate_up_proj, (gated, linear), self.fused_act, self.act)
        return linear_layer(h, self.down_proj, linear)


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer; with sandwich norms (Gemma 2/3) the attention and feed-forward
    outputs are normed too before they join the residual stream."""

    def __init__(self, model: type[DecoderModel], config: PretrainedConfig, layer_type: str, causal: bool) -> None:
        super().__init__()
        norm, size, eps = model.norm_class(), config.hidden_size, config.rms_norm_eps
        self.input_layernorm = norm(size, eps)
        self.self_attn = DecoderAttention(model, config, layer_type, causal)
        self.post_attention_layernorm = norm(size, eps)
        self.sandwich = model.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = norm(size, eps)
            self.post_feedforward_layernorm = norm(size, eps)
        self.mlp = DecoderMLP(model, config)

    def forward(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | None,
        rotary: Rotary,
        batch: PackedBatch,
        attention: Callable,
        linear: Callable,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream ``x`` plus the previous layer's output ``delta`` (``None`` for the
        first layer: ``x`` is then the embeddings) in, this layer's ``(residual stream, output)``
        out: each residual add is done by the norm that reads its sum (one pass of the ``rms_norm``
        op). The stream is float32 in a bf16 or fp16 model (:func:`residual_stream`)."""
        x, h = (residual_stream(x), self.input_layernorm(x)) if delta is None else self.input_layernorm.add(delta, x)
        attended = self.self_attn(h, rotary, batch, attention, linear)
        if not self.sandwich:
            x, h = self.post_attention_layernorm.add(attended, x)
            return x, self.mlp(h, linear)
        x, h = self.pre_feedforward_layernorm.add(self.post_attention_layernorm(attended), x)
        return x, self.post_feedforward_layernorm(self.mlp(h, linear))


class DecoderModel(Quantizable, Architecture, SharesPrefixes):
    """A Llama-style decoder: packed token ids in, final-norm hidden states ``[T, H]`` out.

    Loads checkpoints of the base model and of its task models (``*ForCausalLM``,
    ``*ForSequenceClassification``, ...), whose backbone tensors carry a ``model.`` prefix;
    ``lm_head`` is dropped (``*ForCausalLM`` keeps it for ``lm_head()``). Positions are rotary,
    counted from 0 in each sequence. Each token attends to the earlier tokens of its sequence, or
    to all of them when the config (or ``hf_overrides``) sets ``is_causal: false``. Embeddings
    pool the last token by default.

    Subclasses configure a family with the class attributes and class methods below.
    """

    takes_adapters: ClassVar[bool] = True

    default_pooling_type: ClassVar[str | None] = "LAST"
    #: No segment ids (not a :class:`~poolkit.contracts.capabilities.TakesTokenTypes`; said for readers of any model).
    uses_token_type_ids: ClassVar[bool] = False
    config_checks: ClassVar[ConfigChecks] = decoder_checks(
        {
            "embed_tokens.weight": ("vocab_size", "hidden_size"),
            "layers.0.self_attn.q_proj.weight": (("num_attention_heads", "head_dim"), "hidden_size"),
            "layers.0.self_attn.k_proj.weight": (("num_key_value_heads", "head_dim"), "hidden_size"),
            "layers.0.mlp.gate_proj.weight": ("intermediate_size", "hidden_size"),
        },
        ("head_dim",),
    )
    #: Prefix of the backbone's tensors in task-model checkpoints (HF's ``base_model_prefix``).
    checkpoint_prefix: ClassVar[str] = "model."
    #: Checkpoint name prefixes of the classifiers this class loads itself (none for the bare backbone).
    classifier_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Per-head norms of queries and keys before the rotation (Qwen3, Gemma 3).
    qk_norm: ClassVar[bool] = False
    #: Gemma's RMSNorm, scaled by ``1 + weight`` in float32.
    norm_offset: ClassVar[bool] = False
    #: Gemma 2/3: norms after attention and around the feed-forward layer.
    sandwich_norms: ClassVar[bool] = False
    #: Gemma: embeddings times ``sqrt(hidden_size)`` (rounded to the model's dtype, as transformers).
    scale_embeddings: ClassVar[bool] = False
    #: The config field that says whether the attention projections have biases, and its default.
    attention_bias_field: ClassVar[tuple[str, bool]] = ("attention_bias", False)

    # -- what the config says, per family --------------------------------------------------------

    @classmethod
    def norm_class(cls) -> type[RMSNorm]:
        return OffsetRMSNorm if cls.norm_offset else RMSNorm

    @classmethod
    def head_dim(cls, config: PretrainedConfig) -> int:
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    @classmethod
    def activation(cls, config: PretrainedConfig) -> str:
        """The feed-forward activation's name (``hidden_act``; Gemma 2/3 ``hidden_activation``)."""
        return getattr(config, "hidden_act", None) or "silu"

    @classmethod
    def attention_biases(cls, config: PretrainedConfig) -> tuple[bool, bool]:
        """Whether the q/k/v projections and the output projection have biases (:attr:`attention_bias_field`)."""
        field, default = cls.attention_bias_field
        bias = bool(getattr(config, field, default))
        return bias, bias

    @classmethod
    def mlp_bias(cls, config: PretrainedConfig) -> bool:
        return bool(getattr(config, "mlp_bias", False))

    @classmethod
    def attention_scale(cls, config: PretrainedConfig, head_dim: int) -> float:
        return head_dim**-0.5

    @classmethod
    def attention_softcap(cls, config: PretrainedConfig) -> float | None:
        """The cap of the attention scores (Gemma 2's ``attn_logit_softcapping``), or ``None``."""
        return None

    @classmethod
    def is_causal(cls, config: PretrainedConfig) -> bool:
        return bool(getattr(config, "is_causal", True))

    @classmethod
    def layer_types(cls, config: PretrainedConfig) -> list[str]:
        """Each layer's attention, ``"full_attention"`` or ``"sliding_attention"``: the config's
        ``layer_types``, else full attention everywhere."""
        types = getattr(config, "layer_types", None)
        return check_layer_types(config, list(types) if types else [GLOBAL] * int(config.num_hidden_layers))

    @classmethod
    def window(cls, config: PretrainedConfig, causal: bool) -> int | None:
        """How far a sliding layer sees, in tokens either side (``varlen_attention``'s ``window``).

        transformers: a causal window holds ``sliding_window`` tokens, itself included; a
        bidirectional one (``is_causal: false``) ``sliding_window`` tokens on each side.
        """
        return int(config.sliding_window) - int(causal)

    # -- the model -------------------------------------------------------------------------------

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        cls = type(self)
        self.causal = cls.is_causal(config)
        types = cls.layer_types(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cls, config, t, self.causal) for t in types)
        self.norm = cls.norm_class()(config.hidden_size, config.rms_norm_eps)
        head_dim = cls.head_dim(config)
        keyed = isinstance(getattr(config, "rope_parameters", None), dict) and all(
            isinstance(config.rope_parameters.get(t), dict) for t in set(types)
        )
        # Plain float32 tensors rather than buffers, so that casting the model leaves them exact.
        self._rotary_parameters = {t: rotary_parameters(config, head_dim, t if keyed else None) for t in set(types) or {GLOBAL}}
        softcap = cls.attention_softcap(config)
        self._attention_op = "varlen_attention" if softcap is None else "varlen_attention_softcap"
        # A prefix's states depend on it alone when attention is causal, windowless and plain.
        self.shares_prefixes = self.causal and softcap is None and all(layer.self_attn.window is None for layer in self.layers)

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        super().check_config(config, shapes, overridden)
        if not getattr(config, "head_dim", None):  # the heads split hidden_size between them
            ConfigChecks(multiples=(("hidden_size", "num_attention_heads"),)).check(config, shapes, overridden)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embed(batch.input_ids)
        return self.decode(x, batch, self.batch_rotary(batch, x.dtype))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings ``[T, H]`` the layers start from (scaled, for Gemma)."""
        x = F.embedding(input_ids, self.embed_tokens.weight)
        if self.scale_embeddings:
            x = x * torch.tensor(self.hidden_size**0.5).to(x.dtype)
        return x

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[str, Rotary]:
        """Each token's cos and sin per layer type, as ``dtype`` (angles in float32), for ``[T]``
        positions; a multimodal model passes its own ``(cos, sin)`` to :meth:`decode` instead."""
        return {t: rotary_cos_sin(inv_freq, positions, dtype, scaling) for t, (inv_freq, scaling) in self._rotary_parameters.items()}

    def batch_rotary(self, batch: PackedBatch, dtype: torch.dtype) -> dict[str, Rotary]:
        """:meth:`rotary` of a packed batch's positions (Phi-3's LongRoPE also reads each sequence's length)."""
        return self.rotary(batch.positions, dtype)

    def decode(
        self,
        x: torch.Tensor,
        batch: PackedBatch,
        rotary: dict[str, Rotary],
        after_layer: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """The layers and the final norm over input embeddings ``x`` (``[T, H]``: :meth:`embed`'s,
        or a vision-language model's with image features in place) and ``rotary`` (per layer type).

        ``after_layer(i, x, delta)``, when given, runs after layer ``i`` on its residual stream
        ``x`` and output ``delta`` (the hidden states are ``x + delta``) and returns them, changed
        as it likes: Qwen3-VL's deepstack adds vision features to the first layers' outputs.
        """
        attention = kernel_for(self, self._attention_op, batch.device)
        if batch.prefix is not None:  # shared prefixes (poolkit.runtime.prefix): their keys and values read, or kept
            attention = batch.prefix.attention(attention, batch.device)
        linear = kernel_for(self, "linear_act", batch.device)
        delta = None
        for i, layer in enumerate(self.layers):
            x, delta = layer(x, delta, rotary[layer.self_attn.layer_type], batch, attention, linear)
            if after_layer is not None:
                x, delta = after_layer(i, x, delta)
        return self.norm(x) if delta is None else self.norm.add(delta, x)[1]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._load(weights)

    def _load(self, weights: Iterable[tuple[str, torch.Tensor]], optional: Callable[[str], bool] = lambda n: False) -> None:
        named = ((self.parameter_name(name), tensor) for name, tensor in weights)
        fused = fuse_projections(self, ((n, t) for n, t in named if n is not None))
        load_into(self, fused, rename=lambda name: name, optional=optional)

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """The Hugging Face base-model name of a checkpoint tensor, or ``None`` to skip it."""
        return base_model_name(checkpoint_name, self.checkpoint_prefix, self.classifier_prefixes, _UNUSED)
