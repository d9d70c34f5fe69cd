"""Layer code the built-in model families share: activations, norms, linears through a kernel,
rotary positions, token-type embeddings, projections fused at load time, an encoder's config checks
and position limit, the token and pooled classifiers and a causal LM's next-token head (``lm_head``).

Every family imports these from here, never from another family's module. Compute kernels are
reached only through the kernel registry (:func:`poolkit.plugins.lookup.kernel_for`): the helpers
take the kernel the architecture selected as an argument, so they stay free of any kernel module.
This module is the one home of rotary positions: reading them off a config (:func:`rotary_parameters`,
:class:`RotarySpec`), their frequencies, each token's ``cos`` and ``sin``, and the interleaved rotation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks, Dim
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.plugins.lookup import kernel_for
from poolkit.plugins.manager import registry

_GELU_TANH = functools.partial(F.gelu, approximate="tanh")
#: transformers' ``hidden_act`` names of the activations that the ``linear_act`` op fuses into its
#: matmul: the op's name for each (a name of the op's contract,
#: :data:`poolkit.contracts.kernel.LINEAR_ACTIVATIONS`, which every kernel takes; tests/test_layering.py
#: checks it) and the same activation computed with torch directly, for where the op does not run it.
#: Other names (the op's ``tanh`` and ``sigmoid`` too) stay unfused, computed by transformers' ``ACT2FN``.
_FUSABLE_ACTIVATIONS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "gelu": ("gelu", F.gelu),
    "gelu_new": ("gelu_tanh", _GELU_TANH),
    "gelu_pytorch_tanh": ("gelu_tanh", _GELU_TANH),
    "relu": ("relu", F.relu),
    "silu": ("silu", F.silu),
    "swish": ("silu", F.silu),
}

Rotary = tuple[torch.Tensor, torch.Tensor]
#: A layer's attention type (``config.layer_types``), as transformers 5 names them: all positions of the
#: sequence, or a sliding window (ModernBERT's local attention).
GLOBAL, SLIDING = "full_attention", "sliding_attention"

#: Called with every layer and input :func:`linear` and :func:`gated_linear` see, while a model is
#: calibrated for quantization (:mod:`poolkit.builtin_models.quantize`); ``None`` otherwise.
observer: Callable[[nn.Module, torch.Tensor], None] | None = None


class Int8Linear(nn.Module):
    """A linear layer quantized to int8 (``quantization="int8"``): its weight rounded per output
    channel, its inputs per token at run time by the ``linear_int8`` kernel
    (:mod:`poolkit.builtin_models.quantize` builds it; the op's contract is in docs/plugins.md).
    A few outlier input channels may stay in float (LLM.int8()'s decomposition): the kernel sees
    them as zeros (their ``inv_smooth`` and weight columns are 0), so they widen no token's range,
    and their products are added in float32. With a ``rotation`` (a Hadamard block size) the
    weight rows were multiplied by the rotation and the kernel rotates the smoothed inputs alike.

    Attributes:
        qweight: ``[out_features, in_features]`` int8; ``scale``: ``[out_features]`` float32,
            the weight is ``qweight * scale[:, None]`` (times the smoothing's factors, which the
            inputs lose: ``inv_smooth``, ``[in_features]`` float32 or ``None``);
        bias: ``[out_features]`` float32 or ``None``;
        outliers: ``[c]`` the input channels kept in float, or ``None``; ``outlier_weight``:
            ``[c, out_features]`` float32, their weight columns, transposed.
    """

    def __init__(
        self,
        qweight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        inv_smooth: torch.Tensor | None,
        outliers: torch.Tensor | None = None,
        outlier_weight: torch.Tensor | None = None,
        rotation: int = 0,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.rotation = rotation
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.register_buffer("inv_smooth", inv_smooth)
        self.register_buffer("outliers", outliers)
        self.register_buffer("outlier_weight", outlier_weight)

    def forward(self, x: torch.Tensor, act: str = "none") -> torch.Tensor:
        fn = kernel_for(self, "linear_int8", x.device)
        args = (x, self.qweight, self.scale, self.bias, act, self.inv_smooth, self.outliers, self.outlier_weight)
        return fn(*args, rotation=self.rotation) if self.rotation else fn(*args)

    def extra_repr(self) -> str:
        outliers = 0 if self.outliers is None else len(self.outliers)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"smoothed={self.inv_smooth is not None}, float_channels={outliers}, rotation={self.rotation}")


#: The ``linear_act`` op's activations by its names, computed with torch (where LoRA adapters add
#: their products between the matmul and the activation).
_OP_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    **{op: fn for op, fn in _FUSABLE_ACTIVATIONS.values()},
}


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function of a config's ``hidden_act``, as transformers' ``ACT2FN`` defines it."""
    if name in _FUSABLE_ACTIVATIONS:
        return _FUSABLE_ACTIVATIONS[name][1]
    from transformers.activations import ACT2FN

    try:
        return ACT2FN[name]
    except KeyError:
        raise ModelLoadError(f"unsupported activation '{name}' in the model config") from None


def fused_activation(name: Any) -> str | None:
    """The ``linear_act`` op's name of ``hidden_act`` ``name``, or ``None`` if the op cannot fuse it."""
    fusable = _FUSABLE_ACTIVATIONS.get(name) if isinstance(name, str) else None
    return None if fusable is None else fusable[0]


#: The sizes every encoder's config gives, each a positive integer.
ENCODER_SIZES = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
)


#: The tensors of BERT's layout that every encoder keeping it has (BERT, RoBERTa, XLM-R, MPNet), with
#: their sizes: the token and position embeddings and the first feed-forward layer.
_BERT_LAYOUT_SHAPES: Mapping[str, tuple[Dim, ...]] = {
    "embeddings.word_embeddings.weight": ("vocab_size", "hidden_size"),
    "embeddings.position_embeddings.weight": ("max_position_embeddings", "hidden_size"),
    "encoder.layer.0.intermediate.dense.weight": ("intermediate_size", "hidden_size"),
}


def encoder_checks(layers: str, sizes: tuple[str, ...] = (), shapes: Mapping[str, tuple[Dim, ...]] | None = None) -> ConfigChecks:
    """An encoder's config checks: the :data:`ENCODER_SIZES` and its family's own ``sizes``, attention
    heads that divide the hidden size, as many layers as the checkpoint tensors ``layers`` finds (a
    regular expression, its group the layer index), and the tensor ``shapes``."""
    return ConfigChecks(
        sizes=ENCODER_SIZES + tuple(sizes),
        multiples=(("hidden_size", "num_attention_heads"),),
        layers={"num_hidden_layers": layers},
        shapes=dict(shapes or {}),
    )


def bert_layout_checks(sizes: tuple[str, ...], shapes: Mapping[str, tuple[Dim, ...]]) -> ConfigChecks:
    """:func:`encoder_checks` of an encoder laid out as BERT (layers ``encoder.layer.N.``, the
    tensors every such checkpoint has), with its family's own ``sizes`` and tensor ``shapes``."""
    return encoder_checks(r"(?:^|\.)encoder\.layer\.(\d+)\.", sizes, {**_BERT_LAYOUT_SHAPES, **shapes})


def check_positions(batch: PackedBatch, max_positions: int) -> None:
    """Refuse a batch whose longest sequence has more tokens than the model has positions.

    Raises:
        InvalidRequest: naming both lengths.
    """
    if batch.max_len > max_positions:
        raise InvalidRequest(
            f"a sequence of {batch.max_len} tokens is longer than the model's {max_positions} positions; truncate the input"
        )


def attention_head_dim(hidden_size: int, num_heads: int) -> int:
    """Width of one attention head, ``hidden_size // num_heads``.

    Raises:
        ModelLoadError: the hidden size does not split evenly into the heads.
    """
    if hidden_size % num_heads:
        raise ModelLoadError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}")
    return hidden_size // num_heads


def linear(x: torch.Tensor, layer: nn.Linear, kernel: Callable, act: str = "none") -> torch.Tensor:
    """A linear layer in its weights' dtype (bf16 matmuls on a bf16 model), input cast to match.

    Args:
        x: ``[..., in_features]`` inputs.
        layer: the layer whose weight and bias to apply.
        kernel: the ``linear_act`` kernel the architecture selected (:func:`~poolkit.plugins.lookup.kernel_for`).
        act: an activation of the ``linear_act`` op, fused into the matmul.
    """
    if observer is not None:
        observer(layer, x)
    if isinstance(layer, Int8Linear):
        return layer(x, act)
    adapters = layer.__dict__.get("lora")
    if adapters is not None and adapters.busy:  # LoRA adapters (poolkit.lora): their products join before the activation
        x = x.to(layer.weight.dtype)
        return _OP_ACTIVATIONS[act](adapters.add(x, kernel(x, layer.weight, layer.bias)))
    return kernel(x.to(layer.weight.dtype), layer.weight, layer.bias, act)


def activated_linear(
    x: torch.Tensor, layer: nn.Linear, kernel: Callable, act: str | None, act_fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``act_fn`` of a linear layer's output, fused into the matmul where the ``linear_act`` op has it.

    Args:
        x, layer, kernel: as :func:`linear`'s.
        act: the op's name of the activation (:func:`fused_activation`), or ``None`` when the op has
            none: then the matmul runs alone and ``act_fn`` after it.
        act_fn: the activation itself (:func:`activation_function`).
    """
    if act is None:
        return act_fn(linear(x, layer, kernel))
    return linear(x, layer, kernel, act)


def gated_linear(
    x: torch.Tensor,
    layer: nn.Linear,
    kernels: tuple[Callable, Callable],
    act: str | None,
    act_fn: Callable[[torch.Tensor], torch.Tensor],
    gate_first: bool = True,
) -> torch.Tensor:
    """``act(gate) * up`` of the two halves of ``layer``'s output (a SwiGLU / GeGLU feed-forward
    input), in the layer's dtype.

    Args:
        x: ``[..., in_features]`` inputs.
        layer: the fused gate and up projection, ``2 * inner`` output features.
        kernels: the ``gated_linear`` and ``linear_act`` kernels the architecture selected.
        act: the ``gated_linear`` op's name of the activation (:func:`fused_activation`), or
            ``None`` when the op has none: then the matmul runs alone and ``act_fn`` after it.
        act_fn: the activation itself (:func:`activation_function`).
        gate_first: the activated half is the first ``inner`` features (else the second).
    """
    gated, plain = kernels
    if observer is not None:
        observer(layer, x)
    if isinstance(layer, Int8Linear):
        first, second = layer(x).chunk(2, dim=-1)
        gate, up = (first, second) if gate_first else (second, first)
        return act_fn(gate) * up
    x = x.to(layer.weight.dtype)
    adapters = layer.__dict__.get("lora")
    adapters = adapters if adapters is not None and adapters.busy else None
    if act is not None and adapters is None:
        return gated(x, layer.weight, layer.bias, act, gate_first)
    both = plain(x, layer.weight, layer.bias)
    first, second = (both if adapters is None else adapters.add(x, both)).chunk(2, dim=-1)
    gate, up = (first, second) if gate_first else (second, first)
    return act_fn(gate) * up


def add_token_types(x: torch.Tensor, batch: PackedBatch, table: nn.Embedding) -> torch.Tensor:
    """``x`` plus each token's type embedding from ``table``: type 0's for every token of a batch
    without type ids (BERT's default)."""
    if batch.token_type_ids is None:
        return x + table.weight[0]
    return x + F.embedding(batch.token_type_ids, table.weight)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least fp32 (fp64 stays fp64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def fp32_layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm in at least fp32, whatever the weights' dtype: with bf16 weights the residual
    stream stays fp32 and only the matmuls run in bf16 (mixed precision)."""
    x = _wide(x)
    return F.layer_norm(x, x.shape[-1:], norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps)


def post_norm(
    module: nn.Module, x: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(x + residual)`` of a post-norm layer through the ``residual_norm`` kernel op: the
    residual stream in at least fp32 and the same in the weights' dtype, the next matmul's input.

    Args:
        module: the module asking (its kernels are looked up once, :func:`~poolkit.plugins.lookup.kernel_for`).
        x: a sublayer's output; residual: the residual stream, or ``None`` (an embeddings' norm).
        norm: an ``nn.LayerNorm`` or an :class:`RMSNorm`.
    """
    op = kernel_for(module, "residual_norm", x.device)
    return op(x, residual, norm.weight, getattr(norm, "bias", None), norm.eps, not isinstance(norm, nn.LayerNorm))


def residual_stream(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a pre-norm model's residual stream: float32 when ``x`` is narrower.

    In bf16 each layer's residual add rounds the stream to 8 bits of mantissa, and 28 of them
    cost Qwen3-0.6B's embeddings most of their parity (least cosine to float32 0.99987; with a
    float32 stream 0.99992, the matmuls in bf16 alike). The stream's norms read it in float32
    anyway and write the sublayers' inputs in the model's dtype, so only the adds widen.
    """
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and scaled in the input's dtype, as transformers
    does; through the ``rms_norm`` kernel op, which also adds a pre-norm layer's residual
    (:meth:`add`) in the same pass."""

    #: Scale by ``1 + weight`` in float32 (Gemma's norms) instead of ``weight``.
    offset = False

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernel_for(self, "rms_norm", x.device)(x, self.weight, self.eps, self.offset)[1]

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x + residual, norm(x + residual))``: a pre-norm layer's residual add and its next norm."""
        return kernel_for(self, "rms_norm", x.device)(x, self.weight, self.eps, self.offset, residual)


class OffsetRMSNorm(RMSNorm):
    """Gemma's RMSNorm: scaled by ``1 + weight`` (weights stored centred on 0), computed and scaled
    in float32 and only then cast to the input's dtype, as transformers' ``GemmaRMSNorm`` does."""

    offset = True

    def __init__(self, size: int, eps: float) -> None:
        super().__init__(size, eps)
        nn.init.zeros_(self.weight)


# -- rotary positions ------------------------------------------------------------------------------

#: Rotary types :func:`rotary_parameters` computes as transformers computes them. ``dynamic`` is plain
#: RoPE up to ``max_position_embeddings``, and poolkit never runs a longer sequence; ``longrope``
#: switches frequencies by the length of the batch and is refused.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_parameters(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """The rotary parameters of a layer type: ``rope_parameters`` (transformers 5, per layer type
    for Gemma 3) or ``rope_theta`` / ``rope_scaling`` (older configs), as one dict."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    return dict(params)


def rotary_parameters(config: Any, head_dim: int, layer_type: str | None = None) -> tuple[torch.Tensor, float]:
    """The rotary inverse frequencies (float32, ``[head_dim // 2]``) and the cos/sin scaling of a
    layer type. Scaled types come from transformers' own ``ROPE_INIT_FUNCTIONS``, so they match it.

    Raises:
        ModelLoadError: a rotary type whose frequencies depend on the batch, or an unknown one.
    """
    params = rope_parameters(config, layer_type)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ModelLoadError(f"unsupported rope_type '{kind}'; poolkit's decoders support {', '.join(ROPE_TYPES)}")
    if float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)) != 1.0:
        raise ModelLoadError("partial_rotary_factor is not supported; rotary embeddings span the whole head")
    if kind in ("default", "dynamic"):
        theta = params.get("rope_theta", getattr(config, "rope_theta", None))
        if theta is None:
            theta = getattr(config, "default_theta", 10_000.0)
        return rotary_inv_freq(theta, head_dim), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    layered = layer_type is not None and isinstance((getattr(config, "rope_parameters", None) or {}).get(layer_type), dict)
    try:
        if layered:
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](config, None, layer_type=layer_type)
        else:
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](config, None)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot compute '{kind}' rotary embeddings from the config: {type(exc).__name__}: {exc}") from None
    if inv_freq.shape[0] * 2 != head_dim:
        raise ModelLoadError(f"'{kind}' rotary embeddings cover {inv_freq.shape[0] * 2} of the {head_dim} head dimensions")
    return inv_freq.float(), float(scaling)


def rotary_inv_freq(theta: float, head_dim: int) -> torch.Tensor:
    """Plain RoPE's inverse frequencies ``theta ** (-2i / head_dim)``, float32, ``[head_dim // 2]``."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
    return 1.0 / (float(theta) ** exponents)


@dataclass(frozen=True)
class RotarySpec:
    """Rotary positions as an encoder family configures them (NomicBERT, GTE; the families read it
    off their configs), with their NTK scalings.

    Attributes:
        dim: how many leading dimensions of each head are rotated (all, or NomicBERT's
            ``rotary_emb_fraction`` of them).
        theta: the rotary base.
        interleaved: rotate pairs of even and odd dimensions (GPT-J, :func:`rotate_interleaved`)
            instead of the first and second halves (GPT-NeoX, the ``rotary`` kernel op).
        ntk_factor: GTE's fixed NTK scaling (``rope_scaling: {"type": "ntk"}``): the base times
            ``factor`` and every frequency divided by ``factor ** (2 / dim)``, or with ``mixed_b``
            each frequency ``m`` divided by ``exp(a * m ** mixed_b)``.
        ntk_mixed_b: the exponent of mixed NTK scaling; ``None`` for fixed.
        dynamic_factor: NomicBERT's dynamic NTK scaling (``rotary_scaling_factor``): a sequence
            longer than ``trained_positions`` gets the base
            ``theta * (factor * n / trained - (factor - 1)) ** (dim / (dim - 2))``.
        trained_positions: NomicBERT's ``max_trained_positions``.
    """

    dim: int
    theta: float
    interleaved: bool = False
    ntk_factor: float | None = None
    ntk_mixed_b: float | None = None
    dynamic_factor: float | None = None
    trained_positions: int = 2048

    @functools.lru_cache(maxsize=256)
    def inv_freq(self, length: int = 0) -> torch.Tensor:
        """The float32 inverse frequencies ``[dim // 2]`` of a sequence of ``length`` tokens."""
        if self.dynamic_factor and length > self.trained_positions:
            factor, dim = self.dynamic_factor, self.dim
            base = self.theta * ((factor * length / self.trained_positions) - (factor - 1)) ** (dim / (dim - 2))
            return rotary_inv_freq(base, self.dim)
        if self.ntk_factor is not None and self.ntk_factor > 1:
            factor = self.ntk_factor
            if self.ntk_mixed_b is None:
                return rotary_inv_freq(self.theta * factor, self.dim) / factor ** (2 / self.dim)
            a = torch.tensor(factor).log() / (self.dim / 2) ** self.ntk_mixed_b
            lambdas = (a * torch.arange(1, self.dim // 2 + 1).float() ** self.ntk_mixed_b).exp()
            return rotary_inv_freq(self.theta, self.dim) / lambdas
        return rotary_inv_freq(self.theta, self.dim)

    def cos_sin(self, batch: PackedBatch, dtype: torch.dtype) -> Rotary:
        """Each token's ``cos`` and ``sin`` as ``dtype``, ``[T, dim]`` (their angles in float32).

        With dynamic scaling, a sequence longer than ``trained_positions`` gets its own base, as
        the published model computes it alone, so results never depend on the rest of the batch.
        """
        inv_freq = self.inv_freq()
        if self.dynamic_factor and batch.max_len > self.trained_positions:
            rows = [inv_freq if n <= self.trained_positions else self.inv_freq(n) for n in batch.seq_lens]
            inv_freq = torch.stack(rows).to(batch.device)[batch.seq_ids]
        return rotary_cos_sin(inv_freq, batch.positions, dtype)


def rotary_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, scaling: float = 1.0, wide: bool = False
) -> Rotary:
    """Each token's rotary ``cos`` and ``sin`` (times ``scaling``) as ``dtype``, ``[T, head_dim]``.

    The angles are computed in float32 whatever ``dtype`` is, as transformers does. ``inv_freq`` is
    ``[head_dim // 2]``, or ``[T, head_dim // 2]`` for frequencies of each token's own. ``wide``:
    rounded to ``dtype``, then held in at least float32 (ModernBERT's: the ``rotary`` op then
    computes in float32, as transformers' ModernBERT does).
    """
    angles = positions.float().unsqueeze(-1) * inv_freq.to(positions.device)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    if scaling != 1.0:
        cos, sin = cos * scaling, sin * scaling
    cos, sin = cos.to(dtype), sin.to(dtype)
    return (_wide(cos), _wide(sin)) if wide else (cos, sin)


def rotate_interleaved(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """``x`` with its first ``cos.shape[-1]`` dimensions rotated in adjacent pairs (GPT-J style),
    the rest as they are; ``cos`` and ``sin`` are ``[T, rotary dim]``."""
    cos, sin = rotary
    dim = cos.shape[-1]
    head, tail = x[..., :dim], x[..., dim:]
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (dim // 2,)
    c, s = cos[..., : dim // 2].reshape(shape), sin[..., : dim // 2].reshape(shape)
    even, odd = head[..., 0::2], head[..., 1::2]
    head = torch.stack((even * c - odd * s, odd * c + even * s), dim=-1).flatten(-2)
    return head if tail.shape[-1] == 0 else torch.cat((head, tail), dim=-1)


# -- projections fused at load time ----------------------------------------------------------------


class FusedLinear(nn.Linear):
    """A linear layer whose checkpoint stores it as separate projections, stacked by output rows.

    Args:
        in_features: input width.
        parts: each projection's name in the checkpoint, relative to the module holding this
            layer (``"self.query"``, ``"q_proj"``), and its output rows, in stacking order.
        bias: whether the layer (and so each projection) has a bias.
    """

    def __init__(self, in_features: int, parts: dict[str, int], bias: bool = True) -> None:
        super().__init__(in_features, sum(parts.values()), bias=bias)
        self.parts = dict(parts)


def fuse_projections(
    model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass checkpoint tensors through, stacking the parts of each :class:`FusedLinear` of ``model``.

    ``weights`` carry ``model``'s own parameter names. Tensors already fused (a checkpoint saved
    by poolkit) pass through; parts of a layer the model lacks pass through unchanged, to be
    reported as unused.

    Raises:
        ModelLoadError: a part has the wrong shape, or a fused parameter lacks one of its parts
            (named as in the checkpoint).
    """
    sources: dict[str, tuple[str, str]] = {}
    targets: dict[str, tuple[str, FusedLinear, torch.Tensor]] = {}
    for path, module in model.named_modules():
        if isinstance(module, FusedLinear):
            parent = path.rpartition(".")[0]
            for kind, param in module.named_parameters(recurse=False):
                target = f"{path}.{kind}"
                targets[target] = (parent, module, param)
                sources.update({_join(parent, part, kind): (target, part) for part in module.parts})
    pending: dict[str, dict[str, torch.Tensor]] = {}
    done: set[str] = set()
    for name, tensor in weights:
        source = sources.get(name)
        if source is None:
            if name in targets:
                done.add(name)
            yield name, tensor
            continue
        target, part = source
        _, module, param = targets[target]
        expected = (module.parts[part], *param.shape[1:])
        if tuple(tensor.shape) != expected:
            raise ModelLoadError(
                f"checkpoint tensor '{name}' has shape {tuple(tensor.shape)}, but the model expects {expected}"
            )
        got = pending.setdefault(target, {})
        got[part] = tensor
        if len(got) == len(module.parts):
            del pending[target]
            done.add(target)
            yield target, torch.cat([got[p] for p in module.parts])
    missing = []
    for target, (parent, module, _) in targets.items():
        if target not in done:
            kind = target.rpartition(".")[2]
            missing += [_join(parent, part, kind) for part in module.parts if part not in pending.get(target, {})]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ModelLoadError(f"checkpoint lacks weights for {', '.join(missing[:5])}{more}")


def _join(*names: str) -> str:
    return ".".join(name for name in names if name)


class TokenClassifier:
    """Mixin: Hugging Face's ``*ForTokenClassification`` classifier, one Linear on every token (dropout is
    inference-free), named ``classifier_name`` in checkpoints."""

    default_pooling_type: ClassVar[str | None] = None
    #: The classifier's name in checkpoints, ``classifier`` (BERT) or ``score`` (Qwen); ``classifier_prefixes`` match it.
    classifier_name: ClassVar[str] = "classifier"
    classifier_prefixes: ClassVar[tuple[str, ...]] = ("classifier.",)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        setattr(self, self.classifier_name, nn.Linear(self.hidden_size, self.num_labels))

    def token_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)


class PooledClassifier:
    """Mixin: BERT's ``*ForSequenceClassification`` head: the pooled first-token vector through the
    ``pooler`` (:attr:`pooler_class`: dense and tanh), then ``classifier``; the ``token_classify`` task
    applies the bare ``classifier`` to every token, as vLLM does."""

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("pooler.", "classifier.")
    #: The family's pooler module, built with the hidden size.
    pooler_class: ClassVar[type[nn.Module]]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.pooler = self.pooler_class(self.hidden_size)
        self.classifier = nn.Linear(self.hidden_size, self.num_labels)

    def sequence_classifier(self) -> nn.Module:
        return nn.Sequential(self.pooler, self.classifier)

    def token_classifier(self) -> nn.Module:
        return self.classifier


class CausalLMHead:
    """Mixin: the next-token head of a ``*ForCausalLM`` checkpoint as :meth:`lm_head`.

    Process reward models such as math-shepherd are causal LMs read through their LM head: with
    ``STEP`` pooling the ``token_classify`` task takes the logits of the step-tag tokens (the
    ``returned_token_ids`` columns) from :meth:`lm_head`. Its weight is the input embeddings when
    the model ties them; otherwise the checkpoint's tensors, kept as loaded and copied to the
    model's device and dtype the first time the head runs. A safetensors tensor maps its file, so
    an embedding model served from a causal-LM checkpoint (Qwen3-Embedding) keeps no copy of a
    head it never reads.

    A next-token head is no masked-LM head: the model offers every task but ``sparse_embed``
    (SPLADE), which would read it as one.

    Subclasses say where the input embeddings are (:meth:`input_embedding_weight`) and whether
    they are tied (:meth:`ties_lm_head`); ``load_weights`` keeps the tensors named in
    :attr:`lm_head_tensors` on their way to the subclass's own loading.
    """

    #: Checkpoint names of the head's tensors, by the head's parameter name.
    lm_head_tensors: ClassVar[dict[str, str]] = {"weight": "lm_head.weight"}
    #: Tasks a next-token head must not serve.
    not_lm_head_tasks: ClassVar[frozenset[str]] = frozenset({"sparse_embed"})

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._lm_tensors: dict[str, torch.Tensor] = {}
        self._lm_copies: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    @property
    def pooling_tasks(self) -> frozenset[str]:
        return frozenset(registry("task").names()) - self.not_lm_head_tasks

    def input_embedding_weight(self) -> torch.Tensor:
        """The ``[vocab, H]`` input embeddings (the head's weight when tied)."""
        raise NotImplementedError

    def ties_lm_head(self) -> bool:
        """Whether the head's weight is the input embeddings."""
        return bool(getattr(self.config, "tie_word_embeddings", False))

    def has_lm_head(self) -> bool:
        """Whether the head's weight is known: tied, or kept from the checkpoint."""
        return self.ties_lm_head() or "weight" in self._lm_tensors

    def keep_lm_head(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """Pass every checkpoint tensor on, keeping a reference to the head's."""
        names = {name: param for param, name in self.lm_head_tensors.items()}
        self._lm_tensors.clear()
        self._lm_copies.clear()
        for name, tensor in weights:
            if name in names:
                self._lm_tensors[names[name]] = tensor
            yield name, tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(self.keep_lm_head(weights))

    def lm_head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.lm_logits if self.has_lm_head() else None

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, H]`` hidden rows -> ``[n, vocab]`` next-token logits, in the model's dtype."""
        weights = self._lm_weights(hidden.device)
        weight = weights["weight"]
        return self.transform_logits(F.linear(hidden.to(weight.dtype), weight, weights.get("bias")))

    def transform_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model does to the head's output before it is a logit (nothing by default)."""
        return logits

    def _lm_weights(self, device: torch.device) -> dict[str, torch.Tensor]:
        embeddings = self.input_embedding_weight()
        dtype = embeddings.dtype
        key = (torch.device(device), dtype)
        found = self._lm_copies.get(key)
        if found is None:
            found = {name: t.detach().to(device=device, dtype=dtype) for name, t in self._lm_tensors.items()}
            if self.ties_lm_head():
                found["weight"] = embeddings
            self._lm_copies.clear()  # one copy: the model's device and dtype
            self._lm_copies[key] = found
        return found
