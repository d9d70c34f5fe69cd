"""An int8 linear layer: weights int8 per output channel, activations int8 per token at run time
(``quantization="int8"``, :mod:`poolkit.builtin_models.quantize`).

Each row of the input (one token) is rounded to 256 levels spanning its own range, so an outlier in
one token costs no other token its resolution, and a one-sided input (a GELU's output) loses no
half of the levels to values it never takes; the weight's rows (output channels) were rounded to
``[-levels, levels]`` when the model loaded. The matmul sums exact integer products and the result
is rescaled by the token's and the channel's scale, then the bias and the activation follow:
``act(step[m] * scale[n] * sum_k (q_x[m, k] - zero[m]) * q_w[n, k] + bias[n])``.

The op's contract, which every ``linear_int8`` kernel keeps (same arguments and defaults as the
reference, which is what ``poolkit.kernel_reference("linear_int8")`` returns) and models rely on
without importing this module: ``fn(x, weight, scale, bias=None, act="none", inv_smooth=None) -> out``

- ``x``: ``[..., in_features]`` float inputs, any float dtype;
- ``weight``: ``[out_features, in_features]`` int8, within ``[-levels, levels]`` where ``levels``
  is the kernel's ``weight_levels`` attribute (127 unless the kernel's arithmetic cannot take
  full-range weights, see below);
- ``scale``: ``[out_features]`` float32, the weight rows' scales; ``bias``: ``[out_features]``
  float32 or ``None``;
- ``act``: a name of :data:`poolkit.kernels.linear.ACTIVATIONS`;
- ``inv_smooth``: ``[in_features]`` float32 or ``None``: the inputs are multiplied by it before they
  are quantized (SmoothQuant's division of the activations, whose factors the weights took);
- returns ``[..., out_features]`` in ``x``'s dtype, no autograd.

The ``:onednn`` kernel runs the integer matmul with oneDNN (``torch.ops.onednn.qlinear_pointwise``
on weights packed once), the tokens as uint8. On CPUs without VNNI (AVX2,
AVX-512 before Cascade Lake) oneDNN multiplies with ``vpmaddubsw``, which adds two uint8 x int8
products into a saturating int16: full-range weights overflow it (255 x 127 x 2 > 32767), so there
the kernel asks for weights within ``[-63, 63]`` (``weight_levels`` 63) and its sums are exact
again. With VNNI (``vpdpbusd`` adds into int32) and AMX it takes ``[-127, 127]``.
"""

from __future__ import annotations

import functools

import torch

from poolkit.hookspecs import hookimpl
from poolkit.kernel import Kernel
from poolkit.kernels.linear import ACTIVATIONS, _bucketed_rows, _packed, row_bucket

#: The largest magnitude of a quantized weight, where the kernel's arithmetic takes full-range weights.
LEVELS = 127
INPUT_LEVELS = 255
#: The oneDNN ops the ``:onednn`` kernel calls; without both it is unavailable.
ONEDNN_INT8_OPS = ("qlinear_prepack", "qlinear_pointwise")


def quantize_rows(
    x: torch.Tensor, inv_smooth: torch.Tensor | None = None, levels: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row of ``x`` (``[m, k]``) rounded to 256 levels spanning its own range (and zero).

    Returns:
        ``q``, the levels ``0..255`` as float32 values, ``[m, k]``; ``step``, each row's level
        width, and ``zero``, the level of 0.0 (a whole number), both ``[m, 1]``: ``x`` is about
        ``(q - zero) * step``. A row of zeros keeps zeros.
    """
    x = x.float() * inv_smooth if inv_smooth is not None else x.float()
    low, high = torch.aminmax(x, dim=-1, keepdim=True)
    step = (high.clamp_min(0) - low.clamp_max(0)).clamp_min_(torch.finfo(torch.float32).tiny) / levels
    zero = torch.round(-low.clamp_max(0) / step)
    return torch.clamp_(torch.round(x / step) + zero, 0, levels), step, zero


def linear_int8(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    act: str = "none",
    inv_smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference: the integer products summed in float32 (exact while ``in_features * 255 *
    127 < 2**24``, ``in_features`` up to 518; within float32's rounding beyond), then the rescale,
    the bias and the activation."""
    q, step, zero = quantize_rows(x.reshape(-1, x.shape[-1]), inv_smooth, INPUT_LEVELS)
    y = ((q - zero) @ weight.float().t()) * step * scale
    if bias is not None:
        y = y + bias
    return ACTIVATIONS[act](y).reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


linear_int8.weight_levels = LEVELS


def linear_int8_onednn(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    act: str = "none",
    inv_smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`linear_int8` with oneDNN's integer matmul (CPU only; another device goes to the
    reference). oneDNN takes one zero point for all rows, so the matmul runs with none and each
    row's own comes off afterwards: ``sum_k (q - zero) w = sum_k q w - zero * sum_k w``."""
    if x.device.type != "cpu":
        return linear_int8(x, weight, scale, bias, act, inv_smooth)
    rows, n = _bucketed_rows(x.reshape(-1, x.shape[-1]))
    q, step, zero = quantize_rows(rows, inv_smooth, INPUT_LEVELS)
    y = torch.ops.onednn.qlinear_pointwise(
        q.to(torch.uint8), 1.0, 0, _packed(weight, ("int8", None)), scale, _zero_points(weight.shape[0]),
        None, 1.0, 0, torch.float32, "none", [], "",
    )
    y = torch.addcmul(bias, y, step) if bias is not None else y.mul_(step)
    y.addr_((step * zero).squeeze(1), _packed(weight, ("int8", "sums")) * scale, alpha=-1)
    return ACTIVATIONS[act](y[:n]).reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


@functools.cache
def _zero_points(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


@functools.cache
def has_int8_dot() -> bool:
    """Whether this CPU adds uint8 x int8 products into int32 directly (VNNI, AMX-INT8)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _onednn_int8_available() -> bool:
    return torch.backends.mkldnn.is_available() and all(hasattr(torch.ops.onednn, op) for op in ONEDNN_INT8_OPS)


linear_int8_onednn.weight_levels = LEVELS if has_int8_dot() else 63


@hookimpl
def poolkit_register_kernels(register):
    register("linear_int8:torch", Kernel(fn=linear_int8, reference=linear_int8, device="any"))
    register(
        "linear_int8:onednn",
        Kernel(
            fn=linear_int8_onednn,
            reference=linear_int8,
            device="cpu",
            priority=10,
            is_available=_onednn_int8_available,
            row_bucket=row_bucket,
        ),
    )
