"""Rotary encoders running on packed batches: NomicBERT and GTE's "new" architecture.

nomic-embed-text (``NomicBertModel``; v2-moe's mixture-of-experts layers are in
:mod:`poolkit.builtin_models.nomic_moe`) and Alibaba's gte-v1.5 / gte-multilingual / Snowflake's
arctic-embed-v2 (``NewModel``, ``GteModel``) are one family: a post-LayerNorm BERT whose
positions are rotary and whose feed-forward block is gated (SwiGLU, GeGLU). They differ only in
configuration — config field names, tensor names, biases, rotary variants — so one
implementation serves both, switched by a :class:`RotaryEncoderSpec` that each family reads off
its config, and a :class:`Layout` that says where its checkpoints keep each tensor.

Both are remote-code models on the hub and poolkit never runs that code: the math follows the
published modeling code (nomic-ai's ``modeling_hf_nomic_bert.py``, Alibaba-NLP's ``new-impl``
``modeling.py``). Where that code depends on the padded batch (NomicBERT's dynamic NTK scaling
reads the padded length), each sequence here is computed as the published model computes it
alone, so results never depend on the rest of the batch.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

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

from .layers import (
    PooledClassifier,
    RMSNorm,
    Rotary,
    RotarySpec,
    TokenClassifier,
    activated_linear,
    activation_function,
    add_token_types,
    attention_head_dim,
    encoder_checks,
    fused_activation,
    gated_linear,
    linear,
    post_norm,
    rotate_interleaved,
)
from .nomic_moe import MoESpec, NomicMoE, moe_spec
from .quantize import Quantizable

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


NOMIC_LAYOUT = Layout(
    prefix="bert.",
    modules={
        "embeddings.norm": "emb_ln",
        "layers.{i}.attn.qkv": "encoder.layers.{i}.attn.Wqkv",
        "layers.{i}.attn.out": "encoder.layers.{i}.attn.out_proj",
        "layers.{i}.attn_norm": "encoder.layers.{i}.norm1",
        "layers.{i}.mlp.up_gate": ("encoder.layers.{i}.mlp.fc11", "encoder.layers.{i}.mlp.fc12"),
        "layers.{i}.mlp.up": "encoder.layers.{i}.mlp.fc1",
        "layers.{i}.mlp.down": "encoder.layers.{i}.mlp.fc2",
        "layers.{i}.mlp_norm": "encoder.layers.{i}.norm2",
        # mixture-of-experts layers (nomic_moe): the router, the stacked experts, their shared bias
        "layers.{i}.mlp.router": "encoder.layers.{i}.mlp.router.layer",
        "layers.{i}.mlp.experts": "encoder.layers.{i}.mlp.experts.mlp",
        "layers.{i}.mlp": "encoder.layers.{i}.mlp.experts",
    },
)
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


# -- the encoder ------------------------------------------------------------------------------------


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


class RotaryAttention(nn.Module):
    """Self-attention within each sequence, queries and keys rotated (and, with log-n scaling, queries scaled)."""

    def __init__(self, spec: RotaryEncoderSpec) -> None:
        super().__init__()
        hidden = spec.hidden_size
        self.num_heads = spec.num_heads
        self.head_dim = attention_head_dim(hidden, self.num_heads)
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


class GatedMLP(nn.Module):
    """``down(act(gate) * up)``, ``up`` and ``gate`` from one projection (up first)."""

    def __init__(self, spec: RotaryEncoderSpec) -> None:
        super().__init__()
        self.up_gate = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=spec.up_bias)
        self.down = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=spec.down_bias)
        self.act = activation_function(spec.activation)
        self.fused_act = fused_activation(spec.activation)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        kernels = (kernel_for(self, "gated_linear", x.device), linear_act)
        return linear(gated_linear(x, self.up_gate, kernels, self.fused_act, self.act, gate_first=False), self.down, linear_act)


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
            self.mlp = GatedMLP(spec) if spec.gated else MLP(spec)
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


class RotaryEncoder(Quantizable, Architecture):
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
    def spec(cls, config: Any) -> RotaryEncoderSpec:
        """The encoder a config describes; a :class:`ModelLoadError` names a field this code does not cover."""
        raise NotImplementedError

    def __init__(self, config: Any) -> None:
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


# -- NomicBERT --------------------------------------------------------------------------------------

#: NomicBERT's GPT-2-style config fields, by the standard name they stand for.
_NOMIC_FIELDS = {
    "hidden_size": "n_embd",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "max_position_embeddings": "n_positions",
    "layer_norm_eps": "layer_norm_epsilon",
}
#: ``activation_function`` -> (activation, gated), as NomicBERT's blocks build their MLP: every
#: GELU variant is the exact GELU there.
_NOMIC_ACTIVATIONS = {
    "swiglu": ("silu", True), "geglu": ("gelu", True), "glu": ("sigmoid", True),
    **{name: ("gelu", False) for name in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")},
}


def _nomic(config: Any, standard: str, default: Any = None) -> Any:
    """A NomicBERT config value: its GPT-2-style field if the config has one, else the standard field."""
    legacy = _NOMIC_FIELDS.get(standard)
    value = getattr(config, legacy, None) if legacy else None
    if value is None:
        value = getattr(config, standard, None)
    return default if value is None else value


def _positive_ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _nomic_activation(config: Any) -> tuple[str, bool]:
    if getattr(config, "n_embd", None) is None and getattr(config, "activation_function", None) is None:
        # transformers' own NomicBertConfig: a gated MLP with hidden_act.
        return str(getattr(config, "hidden_act", "silu")), True
    name = getattr(config, "activation_function", "swiglu")
    if name not in _NOMIC_ACTIVATIONS:
        raise ModelLoadError(
            f"unsupported activation_function '{name}' for NomicBERT; poolkit runs {', '.join(_NOMIC_ACTIVATIONS)}"
        )
    return _NOMIC_ACTIVATIONS[name]


def _nomic_intermediate(config: Any) -> int | None:
    """The feed-forward width NomicBERT builds: ``n_inner`` (default ``4 * n_embd``, or ``8/3 * n_embd``
    gated), rounded up to a multiple of 256 when gated; transformers' config gives it as is."""
    hidden = _nomic(config, "hidden_size")
    if getattr(config, "n_embd", None) is None:
        return getattr(config, "intermediate_size", None)
    try:
        gated = _nomic_activation(config)[1]
    except ModelLoadError:
        return None
    inner = getattr(config, "n_inner", None)
    if not _positive_ints(hidden) or not (inner is None or _positive_ints(inner)):
        return None
    if not gated:
        return inner or 4 * hidden
    inner = inner or int(8 * hidden / 3)
    return (inner + 255) // 256 * 256


def _nomic_vocab(config: Any) -> int | None:
    """The vocabulary NomicBERT builds: ``vocab_size`` rounded up to ``pad_vocab_size_multiple``."""
    vocab, multiple = getattr(config, "vocab_size", None), getattr(config, "pad_vocab_size_multiple", None) or 1
    return (vocab + multiple - 1) // multiple * multiple if _positive_ints(vocab, multiple) else None


def _refuse(field: str, value: Any, why: str) -> ModelLoadError:
    return ModelLoadError(f"unsupported {field} {value!r}: {why}")


def _nomic_switches(config: Any) -> None:
    """Refuse, naming the field, the NomicBERT variants this implementation does not cover."""
    for name, why in (
        ("prenorm", "poolkit runs NomicBERT's post-norm blocks only"),
        ("rotary_emb_scale_base", "xPos rotary scaling is not supported"),
        ("rotary_head_dim", "rotating over the heads axis is not supported"),
    ):
        value = getattr(config, name, None)
        if value:
            raise _refuse(name, value, why)
    kv_heads, heads = getattr(config, "num_heads_kv", None), _nomic(config, "num_attention_heads")
    if kv_heads is not None and kv_heads != heads:
        raise _refuse("num_heads_kv", kv_heads, f"grouped-query attention is not supported (n_head is {heads})")
    fraction = getattr(config, "rotary_emb_fraction", 1.0)
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise _refuse("rotary_emb_fraction", fraction, "NomicBERT without rotary positions is not supported")
    moe_spec(config, _nomic_activation(config)[1])


def _nomic_checks(hidden: str) -> ConfigChecks:
    """NomicBERT's config checks, its width named ``hidden`` (``n_embd`` in its own config)."""
    return ConfigChecks(
        sizes=(
            "n_embd", "n_layer", "n_head", "n_inner", "n_positions",
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
            "max_position_embeddings",
        ),
        multiples=(("n_embd", "n_head"), ("hidden_size", "num_attention_heads")),
        layers={name: r"(?:^|\.)encoder\.layers\.(\d+)\." for name in ("n_layer", "num_hidden_layers")},
        shapes={
            "embeddings.word_embeddings.weight": ("vocab_size", hidden),
            "embeddings.token_type_embeddings.weight": ("type_vocab_size", hidden),
            "encoder.layers.0.attn.Wqkv.weight": ((3, hidden), hidden),
            "encoder.layers.0.mlp.fc11.weight": ("intermediate_size", hidden),
            "encoder.layers.0.mlp.fc1.weight": ("intermediate_size", hidden),
            "encoder.layers.1.mlp.router.layer.weight": ("num_experts", hidden),
            "encoder.layers.1.mlp.experts.mlp.w1": (("num_experts", "intermediate_size"), hidden),
        },
    )


class NomicBertModel(RotaryEncoder):
    """nomic-embed-text's encoder (NomicBERT): rotary positions, SwiGLU, no biases, 8k context.

    Reads the checkpoint's own config fields (``n_embd``, ``n_layer``, ``n_head``, ``n_inner``,
    ``rotary_emb_fraction``, ``rotary_emb_base``, ``rotary_emb_interleaved``,
    ``rotary_scaling_factor``, ``qkv_proj_bias``, ``mlp_fc1_bias``, ...) or transformers' names
    for them, and the checkpoint's tensor names (``emb_ln``, ``encoder.layers.N.attn.Wqkv``,
    ``mlp.fc11`` / ``fc12`` / ``fc2``, ``norm1`` / ``norm2``). With ``rotary_scaling_factor`` (as
    nomic's model card sets for 8192 tokens), a sequence longer than ``max_trained_positions``
    gets dynamic NTK scaling from its own length. With ``moe_every_n_layers`` (nomic-embed-text-v2-moe:
    ``num_experts``, ``moe_top_k``) every such layer's feed-forward block is a mixture of experts
    (:class:`~poolkit.builtin_models.nomic_moe.NomicMoE`, tensors ``mlp.router.layer``,
    ``mlp.experts.mlp.w1`` / ``w2``, ``mlp.experts.bias``).

    Example:
        >>> model = NomicBertModel(PretrainedConfig.from_dict(json.loads(config_json)))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
    """

    layout: ClassVar[Layout] = NOMIC_LAYOUT
    config_checks: ClassVar[ConfigChecks] = _nomic_checks("hidden_size")

    @classmethod
    def check_config(cls, config: Any, shapes: Any, overridden: Any = ()) -> None:
        """:attr:`config_checks`, naming ``n_embd`` rather than ``hidden_size`` in a config that has it."""
        checks = cls.config_checks if getattr(config, "n_embd", None) is None else _nomic_checks("n_embd")
        checks.check(config, shapes, overridden)

    @classmethod
    def configure(cls, config: Any, tokenizer: Any) -> None:
        """Refuse what this implementation does not cover, and give the GPT-2-style fields their
        standard names too (``n_embd`` is ``hidden_size``...), with the feed-forward width and the
        padded vocabulary NomicBERT builds."""
        _nomic_switches(config)
        for standard, legacy in _NOMIC_FIELDS.items():
            value = getattr(config, legacy, None)
            if value is not None:
                setattr(config, standard, value)
        inner = _nomic_intermediate(config)
        if inner is not None:
            config.intermediate_size = inner
        vocab = _nomic_vocab(config)
        if vocab is not None:
            config.vocab_size = vocab
        hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
        if getattr(config, "head_dim", None) is not None and _positive_ints(hidden, heads):
            config.head_dim = hidden // heads

    @classmethod
    def spec(cls, config: Any) -> RotaryEncoderSpec:
        _nomic_switches(config)
        hidden, heads = int(_nomic(config, "hidden_size")), int(_nomic(config, "num_attention_heads"))
        head_dim = attention_head_dim(hidden, heads)
        fraction = getattr(config, "rotary_emb_fraction", 1.0)
        rotary_dim = head_dim * fraction
        dynamic = float(getattr(config, "rotary_scaling_factor", None) or 0) or None
        if rotary_dim != int(rotary_dim) or int(rotary_dim) % 2 or rotary_dim < (4 if dynamic else 2):
            raise _refuse(
                "rotary_emb_fraction", fraction, f"it must rotate an even number of the {head_dim} head dimensions"
            )
        theta = getattr(config, "rotary_emb_base", None)
        if theta is None:
            params = getattr(config, "rope_parameters", None) or {}
            kind = params.get("rope_type", "default")
            if kind != "default":
                raise _refuse("rope_parameters", params, f"rope_type '{kind}' is not supported for NomicBERT")
            theta = params.get("rope_theta", 1000.0)
        activation, gated = _nomic_activation(config)
        original = getattr(config, "n_embd", None) is not None
        qkv_bias = bool(getattr(config, "qkv_proj_bias", original))
        rotary = RotarySpec(
            dim=int(rotary_dim), theta=float(theta), interleaved=bool(getattr(config, "rotary_emb_interleaved", False)),
            dynamic_factor=dynamic, trained_positions=int(getattr(config, "max_trained_positions", None) or 2048),
        )
        return RotaryEncoderSpec(
            hidden_size=hidden, num_layers=int(_nomic(config, "num_hidden_layers")), num_heads=heads,
            intermediate_size=int(_nomic_intermediate(config)),
            vocab_size=int(_nomic_vocab(config) or config.vocab_size),
            type_vocab_size=int(getattr(config, "type_vocab_size", 2) or 0),
            max_positions=int(_nomic(config, "max_position_embeddings", 2048)),
            norm_eps=float(_nomic(config, "layer_norm_eps", 1e-12)), rotary=rotary, activation=activation, gated=gated,
            qkv_bias=qkv_bias, out_bias=qkv_bias, up_bias=bool(getattr(config, "mlp_fc1_bias", original)),
            down_bias=bool(getattr(config, "mlp_fc2_bias", original)), moe=moe_spec(config, gated),
        )


# -- GTE ("new") ------------------------------------------------------------------------------------

_GTE_NORMS = {"layer_norm": False, "rms_norm": True}


def _gte_switches(config: Any) -> None:
    """Refuse, naming the field, the GTE variants this implementation does not cover (rotary: :func:`gte_rotary`)."""
    position = getattr(config, "position_embedding_type", "rope")
    if position != "rope":
        raise _refuse("position_embedding_type", position, "poolkit's GTE has rotary positions ('rope') only")
    if getattr(config, "pack_qkv", True) is False:
        raise _refuse("pack_qkv", False, "poolkit's GTE loads packed qkv_proj weights only")
    norm = getattr(config, "layer_norm_type", "layer_norm")
    if norm not in _GTE_NORMS:
        raise _refuse("layer_norm_type", norm, f"GTE's norms are {' or '.join(_GTE_NORMS)}")


def gte_rotary(config: Any, head_dim: int) -> RotarySpec:
    """GTE's rotary positions from ``rope_theta`` / ``rope_scaling`` (or transformers' ``rope_parameters``);
    a scaling other than GTE's ``ntk`` is refused."""
    legacy = getattr(config, "rope_scaling", None) or {}
    params = {**legacy, **(getattr(config, "rope_parameters", None) or {})}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ("default", "ntk"):
        raise _refuse("rope_scaling", legacy or params, f"rope type '{kind}'; GTE scales with 'ntk' only")
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
    def configure(cls, config: Any, tokenizer: Any) -> None:
        """Refuse what this implementation does not cover, before the sizes are checked."""
        _gte_switches(config)
        gte_rotary(config, head_dim=2)  # its rope type: the head size is checked later

    @classmethod
    def spec(cls, config: Any) -> RotaryEncoderSpec:
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


@hookimpl
def poolkit_register_architectures(register):
    register("NomicBertModel", NomicBertModel)
    register("NewModel", NewModel)
    register("GteModel", NewModel)
    register("GteNewModel", NewModel)
    register("NewForSequenceClassification", NewForSequenceClassification)
    register("GteNewForSequenceClassification", NewForSequenceClassification)
    register("NewForTokenClassification", NewForTokenClassification)
