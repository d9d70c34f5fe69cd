"""The linear layers the built-in model families share: activations fused into the matmul, linears
through a kernel (with their LoRA adapters' products), int8 linears, and projections fused at load
time. The other shared building blocks are in :mod:`poolkit.builtin_models.blocks`.

Compute kernels are reached only through the kernel registry (:func:`poolkit.plugins.lookup.kernel_for`):
the helpers take the kernel the architecture selected as an argument, so they stay free of any kernel module.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.kernel import LINEAR_PROBE
from poolkit.plugins.lookup import kernel_for

_GELU_TANH = functools.partial(F.gelu, approximate="tanh")
#: transformers' ``hidden_act`` names of the activations that the ``linear_act`` op fuses into its
#: matmul: the op's name for each (a name of the op's contract,
#: :data:`poolkit.contracts.kernel.LINEAR_ACTIVATIONS`, which every kernel takes; tests/architecture/test_layering.py
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

class Int8Linear(nn.Module):
    """A linear layer quantized to int8 (``quantization="int8"``): its weight rounded per output
    channel, its inputs per token at run time by the ``linear_int8`` kernel
    (:mod:`poolkit.builtin_models.blocks.quantize` builds it; the op's contract is in docs/plugins.md).
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

    def gated(self, x: torch.Tensor, act: str, gate_first: bool) -> torch.Tensor:
        """``act(gate) * up`` of this layer's two halves (a gated feed-forward's gate and up
        projections), by the ``gated_linear_int8`` kernel: one pass where it fuses the product."""
        fn = kernel_for(self, "gated_linear_int8", x.device)
        args = (x, self.qweight, self.scale, self.bias, act, self.inv_smooth, self.outliers, self.outlier_weight)
        return fn(*args, rotation=self.rotation, gate_first=gate_first)

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


def linear(x: torch.Tensor, layer: nn.Linear, kernel: Callable, act: str = "none", probed: bool = False) -> torch.Tensor:
    """A linear layer in its weights' dtype (bf16 matmuls on a bf16 model), input cast to match.

    Args:
        x: ``[..., in_features]`` inputs.
        layer: the layer whose weight and bias to apply.
        kernel: the ``linear_act`` kernel the architecture selected (:func:`~poolkit.plugins.lookup.kernel_for`).
        act: an activation of the ``linear_act`` op, fused into the matmul.
        probed: the call the probe runs (:data:`~poolkit.contracts.kernel.LINEAR_PROBE`), not probed again.

    A layer that LoRA adapters target carries their slot stack as its ``lora`` entry: while a batch
    with adapters runs, their products are added to the matmul's output before the activation.
    """
    if LINEAR_PROBE.current is not None and not probed:
        return LINEAR_PROBE.current(layer, x, lambda x: linear(x, layer, kernel, act, True))
    if isinstance(layer, Int8Linear):
        return layer(x, act)
    stack = layer.__dict__.get("lora")  # its LoRA slot stack (poolkit.lora.injection): the layer's forward never runs here
    if stack is not None and stack.busy:  # the adapters' products join before the activation
        x = x.to(layer.weight.dtype)
        return _OP_ACTIVATIONS[act](stack.add(x, kernel(x, layer.weight, layer.bias)))
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
    probed: bool = False,
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
        probed: as :func:`linear`'s.
    """
    if LINEAR_PROBE.current is not None and not probed:
        return LINEAR_PROBE.current(layer, x, lambda x: gated_linear(x, layer, kernels, act, act_fn, gate_first, True))
    gated, plain = kernels
    if isinstance(layer, Int8Linear):  # the gated_linear_int8 op, or its own matmul then act_fn below
        if act is not None:
            return layer.gated(x, act, gate_first)
        both = layer(x)
    else:
        x = x.to(layer.weight.dtype)
        stack = layer.__dict__.get("lora")  # as in linear()
        stack = stack if stack is not None and stack.busy else None
        if act is not None and stack is None:
            return gated(x, layer.weight, layer.bias, act, gate_first)
        both = plain(x, layer.weight, layer.bias)
        if stack is not None:
            both = stack.add(x, both)
    first, second = both.chunk(2, dim=-1)
    gate, up = (first, second) if gate_first else (second, first)
    return act_fn(gate) * up


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
