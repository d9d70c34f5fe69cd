"""The rotary encoder the family's members configure: a post-LayerNorm BERT whose positions are
rotary and whose feed-forward block is gated, switched by a :class:`RotaryEncoderSpec` each member
reads off its config and laid out in checkpoints as its :class:`Layout` says."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import TakesTokenTypes
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import base_model_name, load_into
from poolkit.plugins.lookup import kernel_for

from ..blocks.attention import MultiHeadAttention
from ..blocks.embeddings import add_token_types
from ..blocks.mlp import GatedMLP
from ..blocks.norms import RMSNorm, post_norm
from ..blocks.quantize import Quantizable
from ..blocks.rotary import Rotary, RotarySpec, rotate_interleaved
from ..blocks.linear import activated_linear, activation_function, fused_activation, linear
from .nomic_moe import MoESpec, NomicMoE

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: Checkpoint tensors the encoder does not use: the classifiers and LM heads of transformers' task models, position buffers.
_UNUSED = re.compile(r"^(pooler|cls|lm_head|classifier)\.|^embeddings\.(position_ids|rotary_emb\.)")


@dataclass(frozen=True)
class RotaryEncoderSpec:
    """Everything that varies between the family's models, read off a config.

    Attributes:
        hidden_size, num_layers, num_heads, intermediate_size, vocab_size, type_vocab_size (0: no
            token type embeddings), max_positions, norm_eps: the sizes.
        rotary: the rotary positions.
        activation: the activation's transformers name (``silu``, ``gelu``, ``sigmoid``...).
        gated: the feed-forward block is ``down(act(gate) * up)``, ``up`` and ``gate`` stacked in
            one projection (up first), else ``down(act(up))``.
        rms_norm: the layers' norms are RMSNorm (the embeddings' norm is a LayerNorm either way).
        qkv_bias, out_bias, up_bias, down_bias: which projections have a bias.
        logn_positions: GTE's ``logn_attention_scale``: queries are scaled by
            ``log(n) / log(logn_positions)`` for a sequence of ``n`` tokens; ``None`` is off.
        logn_clip: the scale is at least 1 (``logn_attention_clip1``).
        moe: NomicBERT's mixture of experts (nomic-embed-text-v2-moe): which layers have experts
            in place of the feed-forward block, and how many; ``None`` for none.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    type_vocab_size: int
    max_positions: int
    norm_eps: float
    rotary: RotarySpec
    activation: str
    gated: bool = True
    rms_norm: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    up_bias: bool = False
    down_bias: bool = False
    logn_positions: int | None = None
    logn_clip: bool = False
    moe: MoESpec | None = None


@dataclass(frozen=True)
class Layout:
    """Where a family's checkpoints keep each tensor of the encoder.

    Attributes:
        prefix: the encoder's prefix in task-model checkpoints (HF's ``base_model_prefix``).
        modules: a module of this implementation (``{i}`` the layer index) -> the checkpoint's
            module for it, or the checkpoint modules it stacks by output rows; each tensor of the
            module (``weight``, ``bias``, or another name) keeps its name. Modules not listed
            (task heads) have the same name in both.
    """

    prefix: str
    modules: Mapping[str, str | tuple[str, ...]]

    @functools.cached_property
    def _rules(self) -> list[tuple[re.Pattern[str], str, tuple[re.Pattern[str], ...], tuple[str, ...]]]:
        """Per module: (pattern, template) of our name, then of each checkpoint part."""
        rules = []
        for ours, theirs in self.modules.items():
            parts = (theirs,) if isinstance(theirs, str) else theirs
            rules.append((_pattern(ours), _template(ours), tuple(map(_pattern, parts)), tuple(map(_template, parts))))
        return rules

    def model_name(self, name: str) -> tuple[str, int, int]:
        """A checkpoint tensor's parameter name here, with its part index and the parts' count."""
        for _, ours, patterns, _ in self._rules:
            for index, pattern in enumerate(patterns):
                if found := pattern.match(name):
                    return found.expand(ours), index, len(patterns)
        return name, 0, 1

    def checkpoint_names(self, name: str) -> tuple[str, ...]:
        """The checkpoint tensors a parameter is loaded from."""
        for pattern, _, _, parts in self._rules:
            if found := pattern.match(name):
                return tuple(found.expand(p) for p in parts)
        return (name,)


def _pattern(module: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(module).replace(r"\{i\}", r"(\d+)") + r"(\.[^.]+)$")


def _template(module: str) -> str:
    return module.replace("{i}", r"\1") + (r"\2" if "{i}" in module else r"\1")


def _norm(spec: RotaryEncoderSpec) -> nn.Module:
    if spec.rms_norm:
        return RMSNorm(spec.hidden_size, spec.norm_eps)
    return nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)


class RotaryEmbeddings(nn.Module):
    """Token (and token type) embeddings, then LayerNorm; positions are rotary, applied in attention."""

    def __init__(self, spec: RotaryEncoderSpec) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(spec.type_vocab_size, spec.hidden_size) if spec.type_vocab_size > 0 else None
        )
        self.norm = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The normed embeddings, float32 and in the weights' dtype (:func:`post_norm`)."""
        x = F.embedding(batch.input_ids, self.word_embeddings.weight)
        if self.token_type_embeddings is not None:
            x = add_token_types(x, batch, self.token_type_embeddings)
        return post_norm(self, x, None, self.norm)


class RotaryAttention(MultiHeadAttention):
    """Self-attention within each sequence, queries and keys rotated (and, with log-n scaling, queries scaled)."""

    def __init__(self, spec: RotaryEncoderSpec) -> None:
        hidden = spec.hidden_size
        super().__init__(hidden, spec.num_heads)
        self.interleaved = spec.rotary.interleaved
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=spec.qkv_bias)
        self.out = nn.Linear(hidden, hidden, bias=spec.out_bias)

    def forward(
        self,
        x: torch.Tensor,
        rotary: Rotary,
        query_scale: torch.Tensor | None,
        batch: PackedBatch,
        attention: Callable,
        linear_act: Callable,
    ) -> torch.Tensor:
        qkv = linear(x, self.qkv, linear_act).view(-1, 3, self.num_heads, self.head_dim)
        # Rotated in the model's dtype with cos and sin in it too (their angles in float32), as
        # transformers' NomicBERT and GTE do: in bf16 a float32 rotation cost a tenth of the forward pass.
        if self.interleaved:
            qk = rotate_interleaved(qkv[:, :2], rotary)
        else:
            qk = kernel_for(self, "rotary", x.device)(qkv[:, :2], *rotary)
        if query_scale is not None:
            qk[:, 0] *= query_scale
        q, k = qk.unbind(1)
        context = attention(q, k, qkv[:, 2], batch)
        return linear(context.reshape(x.shape[0], -1), self.out, linear_act)


class MLP(nn.Module):
    """``down(act(up))``, the activation fused into the matmul where the kernel can."""

    def __init__(self, spec: RotaryEncoderSpec) -> None:
        super().__init__()
        self.up = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=spec.up_bias)
        self.down = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=spec.down_bias)
        self.act = activation_function(spec.activation)
        self.fused_act = fused_activation(spec.activation)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        return linear(activated_linear(x, self.up, linear_act, self.fused_act, self.act), self.down, linear_act)


class RotaryEncoderLayer(nn.Module):
    """One post-norm layer: ``norm(x + attn(x))``, then ``norm(x + mlp(x))``; ``mlp`` is a mixture
    of experts in the layers ``spec.moe`` gives them (``index`` is the layer's, from 0)."""

    def __init__(self, spec: RotaryEncoderSpec, index: int = 0) -> None:
        super().__init__()
        self.attn = RotaryAttention(spec)
        self.attn_norm = _norm(spec)
        if spec.moe is not None and spec.moe.has_experts(index):
            self.mlp = NomicMoE(spec.hidden_size, spec.intermediate_size, spec.moe, spec.activation)
        else:
            self.mlp = (
                GatedMLP(spec.hidden_size, spec.intermediate_size, spec.activation, ("up_gate", "down"),
                         (spec.up_bias, spec.down_bias), gate_first=False)
                if spec.gated else MLP(spec)
            )
        self.mlp_norm = _norm(spec)

    def forward(
        self,
        x: torch.Tensor,
        low: torch.Tensor,
        rotary: Rotary,
        query_scale: torch.Tensor | None,
        batch: PackedBatch,
        attention: Callable,
        linear_act: Callable,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream ``x`` stays float32; ``low`` is the same in the weights' dtype, the matmuls' input.
        x, low = post_norm(self, self.attn(low, rotary, query_scale, batch, attention, linear_act), x, self.attn_norm)
        return post_norm(self, self.mlp(low, linear_act), x, self.mlp_norm)


class RotaryEncoder(Quantizable, Architecture, TakesTokenTypes):
    """A rotary, gated, post-norm encoder: packed token ids in, last-layer hidden states ``[T, H]`` out.

    Subclasses read a :class:`RotaryEncoderSpec` off their config (:meth:`spec`) and say where
    their checkpoints keep each tensor (:attr:`layout`). Positions are rotary, counted from 0 in
    each sequence; attention stays within each sequence and no padding is computed, however long
    the sequences. The residual stream is float32 around bf16 matmuls.
    """

    default_pooling_type: ClassVar[str | None] = "CLS"
    takes_adapters: ClassVar[bool] = True
    layout: ClassVar[Layout]
    #: Checkpoint name prefixes of the classifiers this class loads itself (none for the bare encoder).
    classifier_prefixes: ClassVar[tuple[str, ...]] = ()
    #: The embeddings module (Jina's calls its tables as modules, for its task adapters).
    embeddings_class: ClassVar[type[nn.Module]] = RotaryEmbeddings

    @classmethod
    def spec(cls, config: PretrainedConfig) -> RotaryEncoderSpec:
        """The encoder a config describes; a :class:`ModelLoadError` names a field this code does not cover."""
        raise NotImplementedError

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        spec = self.spec(config)
        self._spec = spec
        self.uses_token_type_ids = spec.type_vocab_size > 1
        self.embeddings = self.embeddings_class(spec)
        self.layers = nn.ModuleList(RotaryEncoderLayer(spec, i) for i in range(spec.num_layers))

    @property
    def hidden_size(self) -> int:
        return self._spec.hidden_size

    @property
    def max_positions(self) -> int | None:
        return self._spec.max_positions

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        attention = kernel_for(self, "varlen_attention", batch.device)
        linear_act = kernel_for(self, "linear_act", batch.device)
        x, low = self.embeddings(batch)
        rotary = self.rotary(batch)
        query_scale = self.query_scale(batch)
        for layer in self.layers:
            x, low = layer(x, low, rotary, query_scale, batch, attention, linear_act)
        return x

    def rotary(self, batch: PackedBatch) -> Rotary:
        """Each token's ``cos`` and ``sin`` in the model's dtype, ``[T, rotary dim]`` (their angles in float32)."""
        return self._spec.rotary.cos_sin(batch, self.embeddings.word_embeddings.weight.dtype)

    def query_scale(self, batch: PackedBatch) -> torch.Tensor | None:
        """GTE's log-n scale of each token's query, ``[T, 1, 1]``; ``None`` when the model has none."""
        positions = self._spec.logn_positions
        if positions is None:
            return None
        scale = batch.lens.float().log() / torch.tensor(positions).log()
        if self._spec.logn_clip:
            scale = scale.clamp(min=1)
        return scale[batch.seq_ids][:, None, None]

    def adapter_target(self, layer: str) -> tuple[str, int, int] | None:
        """A checkpoint layer under this family's names (:attr:`layout`): GTE's separate q/k/v are
        pieces of ``qkv``; NomicBERT's ``Wqkv`` is ``qkv`` whole. A mixture-of-experts layer's
        router (``mlp.router.layer``) takes adapters; its experts (``mlp.experts.mlp``) are no
        linear layer, and an adapter naming them is refused."""
        name = base_model_name(layer + ".weight", self.layout.prefix, self.classifier_prefixes, _UNUSED)
        if name is None:
            return "", 0, 1
        ours, index, count = self.layout.model_name(name)
        return ours.removesuffix(".weight"), index, count

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        received: set[str] = set()
        tensors = self._model_tensors(weights, received)
        loaded = load_into(self, tensors, rename=lambda name: name, optional=lambda name: True)
        missing = [
            name
            for param, _ in self.named_parameters()
            if param not in loaded
            for name in self.layout.checkpoint_names(param)
            if name not in received
        ]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ModelLoadError(f"checkpoint lacks weights for {', '.join(missing[:5])}{more}")

    def _model_tensors(
        self, weights: Iterable[tuple[str, torch.Tensor]], received: set[str]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Checkpoint tensors under this model's names, the parts of stacked projections stacked."""
        pending: dict[str, dict[int, torch.Tensor]] = {}
        for checkpoint_name, tensor in weights:
            name = base_model_name(checkpoint_name, self.layout.prefix, self.classifier_prefixes, _UNUSED)
            if name is None:
                continue
            received.add(name)
            ours, index, count = self.layout.model_name(name)
            if count == 1:
                yield ours, tensor
                continue
            parts = pending.setdefault(ours, {})
            parts[index] = tensor
            if len(parts) == count:
                del pending[ours]
                shapes = {tuple(t.shape[1:]) for t in parts.values()}
                if len(shapes) != 1:
                    raise ModelLoadError(f"the checkpoint's parts of '{ours}' have different shapes")
                yield ours, torch.cat([parts[i] for i in range(count)])
