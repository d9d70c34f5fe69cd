"""An int8 linear layer: weights int8 per output channel, activations int8 per token at run time
(``quantization="int8"``, :mod:`poolkit.builtin_models.blocks.quantize`).

Each row of the input (one token) is rounded to 256 levels spanning its own range, so an outlier in
one token costs no other token its resolution, and a one-sided input (a GELU's output) loses no
half of the levels to values it never takes; the weight's rows (output channels) were rounded to
``[-levels, levels]`` when the model loaded. The matmul sums exact integer products and the result
is rescaled by the token's and the channel's scale, then the bias and the activation follow:
``act(step[m] * scale[n] * sum_k (q_x[m, k] - zero[m]) * q_w[n, k] + bias[n])``.

The op's contract, which every ``linear_int8`` kernel keeps (same arguments and defaults as the
reference, which is what ``poolkit.kernel_reference("linear_int8")`` returns) and models rely on
without importing this module: ``fn(x, weight, scale, bias=None, act="none", inv_smooth=None,
outliers=None, outlier_weight=None, rotation=0) -> out``

- ``x``: ``[..., in_features]`` float inputs, any float dtype;
- ``weight``: ``[out_features, in_features]`` int8, within ``[-levels, levels]`` where ``levels``
  is the kernel's ``weight_levels`` attribute (127 unless the kernel's arithmetic cannot take
  full-range weights, see below);
- ``scale``: ``[out_features]`` float32, the weight rows' scales; ``bias``: ``[out_features]``
  float32 or ``None``;
- ``act``: a name of :data:`poolkit.kernels.linear.ACTIVATIONS`;
- ``inv_smooth``: ``[in_features]`` float32 or ``None``: the inputs are multiplied by it before they
  are quantized (SmoothQuant's division of the activations, whose factors the weights took);
- ``outliers``: ``[c]`` int64 input channels or ``None``, with ``outlier_weight``: ``[c, out_features]``
  float32: those channels of ``x`` times it, in float32, are added before the activation (LLM.int8()'s
  decomposition: the channels kept in float, which ``inv_smooth`` zeroes for the integer part);
- ``rotation``: ``0`` or a block size ``b`` (a power of two from 16 dividing ``in_features``; a kernel
  lists those it takes in its ``rotations`` attribute): the smoothed rows are multiplied by the
  block-diagonal normalized Hadamard matrix of blocks of ``b``
  (:func:`~poolkit.contracts.kernel.hadamard_rows`) before they are rounded, the weight having been
  multiplied by it when the model loaded (``W x = (W H)(H x)``): an outlier spread over its block
  costs the row's other values less resolution (QuaRot's rotation);
- returns ``[..., out_features]`` in ``x``'s dtype, no autograd.

The ``:onednn`` kernel runs the integer matmul with oneDNN (``torch.ops.onednn.qlinear_pointwise``
on weights packed once), the tokens as uint8. The passes around it, rounding the rows to uint8
and rescaling the output, are compiled C (``int8.c``, built for this CPU on first use by
:mod:`poolkit.kernels.compiler`): each reads its rows once while they are in cache, where torch
takes five passes over the input and a uint8 copy; without a compiler torch's passes run, with
the same arithmetic. In a bf16 model the rescale also applies the activation and writes bf16
(:func:`rescale_bf16`, with AVX-512): one pass over the output instead of three. On CPUs without VNNI (AVX2,
AVX-512 before Cascade Lake) oneDNN multiplies with ``vpmaddubsw``, which adds two uint8 x int8
products into a saturating int16: full-range weights overflow it (255 x 127 x 2 > 32767), so there
the kernel asks for weights within ``[-63, 63]`` (``weight_levels`` 63) and its sums are exact
again. With VNNI (``vpdpbusd`` adds into int32) and AMX it takes ``[-127, 127]``.

On CPUs with AMX-INT8 the ``:amx`` kernel runs the whole layer in one compiled call
(``poolkit_int8_amx``): each chunk of rows rounded as above into a scratch buffer, the integer
matmul on AMX tiles (``TDPBUSD``: uint8 x int8 into int32) over weights packed once into the tiles'
layout, and the rescale, bias, float channels and activation applied to each 32 x 32 block of
results while the tiles compute the next, rounded once to the input's dtype; each row's zero point
comes off exactly (one float32 FMA up to 512 inputs, where every term is a whole number below 2^24;
integers beyond), so its sums are exact where the reference's float32 sums round. The float
channels' products go on bf16 tiles too, each value and weight as two bf16 halves (within 2^-16 of
each float32 product), where eight FMAs a vector in the epilogue made them the layer's bottleneck.

The ``gated_linear_int8`` op, a gated feed-forward's gate and up projections as one int8 layer and
their product: ``fn(x, weight, scale, bias=None, act="silu", inv_smooth=None, outliers=None,
outlier_weight=None, rotation=0, gate_first=True) -> out``

- the arguments as ``linear_int8``'s, for ``weight`` ``[2 * inner, in_features]`` (the gate and up
  projections stacked by output rows; ``scale``, ``bias`` and ``outlier_weight``'s columns alike);
  ``act`` is applied to the gate half, the first ``inner`` features when ``gate_first``, else the
  second; a kernel's ``weight_levels`` and ``rotations`` are those of ``linear_int8``'s kernel of the
  same kind, whose choice the model's weights were rounded for;
- returns ``act(gate) * up`` of the layer's output before any activation, ``[..., inner]`` in
  ``x``'s dtype: the reference computes the layer in float32, then the product, and rounds once.

Its ``:amx`` and ``:vnni`` kernels are the one-pass layers on the same packed weight, each block of
results 16 gate columns and the 16 up columns they multiply, read side by side: the epilogue
computes the product in float32 and writes only it, where the plain layer wrote the ``[..., 2 *
inner]`` output for a second pass (the ``gated_activation`` op) to read. ``:onednn`` is
``linear_int8:onednn``'s layer, then that pass.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from poolkit.config import cpu
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, KernelPriority, hadamard_rows, implements

from .compiler import load_typed_library, workers
from .linear import (
    _PARALLEL_MACS,
    ACTIVATIONS,
    AMX_ACTIVATIONS,
    INT8_PACKERS,
    _packed,
    gated_activation,
    gated_activation_c,
    row_bucket,
)

#: The largest magnitude of a quantized weight, where the kernel's arithmetic takes full-range weights.
LEVELS = 127
#: The Hadamard block sizes (``rotation``) every built-in kernel takes.
ROTATIONS = (16, 32, 64, 128, 256, 512)
INPUT_LEVELS = 255
#: The oneDNN ops the ``:onednn`` kernel calls; without both it is unavailable.
ONEDNN_INT8_OPS = ("qlinear_prepack", "qlinear_pointwise")
SOURCE = Path(__file__).with_name("int8.c")
#: The dtype codes of int8.c's inputs.
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
#: Below this many elements a compiled pass runs on the calling thread alone.
_PARALLEL_ELEMENTS = 1 << 16


def quantize_rows(
    x: torch.Tensor, inv_smooth: torch.Tensor | None = None, levels: int = 255, rotation: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row of ``x`` (``[m, k]``) rounded to 256 levels spanning its own range (and zero), after
    ``inv_smooth`` and the ``rotation`` (:func:`~poolkit.contracts.kernel.hadamard_rows`, 0: none).

    Returns:
        ``q``, the levels ``0..255`` as float32 values, ``[m, k]``; ``step``, each row's level
        width, and ``zero``, the level of 0.0 (a whole number), both ``[m, 1]``: ``x`` is about
        ``(q - zero) * step``. A row of zeros keeps zeros.
    """
    x = x.float() * inv_smooth if inv_smooth is not None else x.float()
    if rotation:
        x = hadamard_rows(x, rotation)
    low, high = torch.aminmax(x, dim=-1, keepdim=True)
    # at least the smallest normal float, whose reciprocal is finite: a row of zeros stays zeros
    step = ((high.clamp_min(0) - low.clamp_max(0)) / levels).clamp_min_(torch.finfo(torch.float32).tiny)
    zero = torch.round(-low.clamp_max(0) / step)
    # times the step's reciprocal, as the compiled pass computes it: the same levels to the last tie
    return torch.clamp_(torch.round(x * step.reciprocal()) + zero, 0, levels), step, zero


def linear_int8(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    act: str = "none",
    inv_smooth: torch.Tensor | None = None,
    outliers: torch.Tensor | None = None,
    outlier_weight: torch.Tensor | None = None,
    rotation: int = 0,
) -> torch.Tensor:
    """The reference: the integer products summed in float32 (exact while ``in_features * 255 *
    127 < 2**24``, ``in_features`` up to 518; within float32's rounding beyond), then the rescale,
    the bias, the float channels' products and the activation."""
    rows = x.reshape(-1, x.shape[-1])
    q, step, zero = quantize_rows(rows, inv_smooth, INPUT_LEVELS, rotation)
    y = ((q - zero) @ weight.float().t()) * step * scale
    if bias is not None:
        y = y + bias
    if outliers is not None:
        y = y + rows[:, outliers].float() @ outlier_weight
    return ACTIVATIONS[act](y).reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


linear_int8.weight_levels = LEVELS
linear_int8.rotations = ROTATIONS


def gated_linear_int8(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, act: str = "silu",
    inv_smooth: torch.Tensor | None = None, outliers: torch.Tensor | None = None,
    outlier_weight: torch.Tensor | None = None, rotation: int = 0, gate_first: bool = True,
) -> torch.Tensor:
    """``act(gate) * up`` of an int8 gated feed-forward's gate and up projections stacked (``weight``
    ``[2 * inner, in_features]``), the reference: :func:`linear_int8` in float32, then the product,
    rounded once to ``x``'s dtype."""
    y = linear_int8(x.float(), weight, scale, bias, "none", inv_smooth, outliers, outlier_weight, rotation)
    return gated_activation(y, act, gate_first).to(x.dtype)


gated_linear_int8.weight_levels = LEVELS
gated_linear_int8.rotations = ROTATIONS


@implements(linear_int8)
def linear_int8_onednn(
    x, weight, scale, bias=None, act="none", inv_smooth=None, outliers=None, outlier_weight=None, rotation=0
) -> torch.Tensor:
    """:func:`linear_int8` with oneDNN's integer matmul (CPU only; another device goes to the
    reference). oneDNN takes one zero point for all rows, so the matmul runs with none and each
    row's own comes off afterwards: ``sum_k (q - zero) w = sum_k q w - zero * sum_k w``; the float
    channels' products are added in the same pass."""
    if x.device.type != "cpu":
        return linear_int8(x, weight, scale, bias, act, inv_smooth, outliers, outlier_weight, rotation)
    rows = x.reshape(-1, x.shape[-1])
    q, step, zero = round_rows(rows, inv_smooth, row_bucket(rows.shape[0]), rotation)
    y = torch.ops.onednn.qlinear_pointwise(
        q, 1.0, 0, _packed(weight, ("int8", None)), scale, _zero_points(weight.shape[0]),
        None, 1.0, 0, torch.float32, "none", [], "",
    )[: rows.shape[0]]
    extra = None if outliers is None else (rows, outliers, outlier_weight)
    sums = _packed(weight, ("int8", "sums")) * scale
    if x.dtype == torch.bfloat16:
        low = rescale_bf16(y, step, zero, sums, bias, extra, act)
        if low is not None:
            return low.reshape(*x.shape[:-1], weight.shape[0])
    y = rescale(y, step, zero, sums, bias, extra)
    return ACTIVATIONS[act](y).reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


@implements(linear_int8)
def linear_int8_amx(
    x, weight, scale, bias=None, act="none", inv_smooth=None, outliers=None, outlier_weight=None, rotation=0
) -> torch.Tensor:
    """:func:`linear_int8` in one pass on AMX-INT8 tiles (``int8.c``, ``poolkit_int8_amx``): each
    chunk of rows rounded to uint8 levels into a scratch buffer, the integer matmul on the tiles,
    and each row's zero point (taken off in integers, exactly), the scales, the bias, the float
    channels' products and the activation applied to each 32 x 32 block of results while the tiles
    compute the next, rounded once to ``x``'s dtype. Takes float32 or bf16 inference on the CPU with
    ``in_features`` a multiple of 64, ``out_features`` of 32 and an activation of
    :data:`~poolkit.kernels.linear.AMX_ACTIVATIONS`; hands any other call to :func:`linear_int8_onednn`."""
    return _one_pass("amx", x, weight, scale, bias, act, inv_smooth, outliers, outlier_weight, rotation)


@implements(linear_int8)
def linear_int8_vnni(
    x, weight, scale, bias=None, act="none", inv_smooth=None, outliers=None, outlier_weight=None, rotation=0
) -> torch.Tensor:
    """:func:`linear_int8_amx` on a CPU with AVX512-VNNI and no AMX (``poolkit_int8_vnni``): the same
    one pass, the same packed weight and the same exact integer sums, with ``VPDPBUSD`` on the vector
    registers in place of the tiles; the float channels' products are FMAs in the epilogue. The same
    calls go to :func:`linear_int8_onednn`."""
    return _one_pass("vnni", x, weight, scale, bias, act, inv_smooth, outliers, outlier_weight, rotation)


@implements(gated_linear_int8)
def gated_linear_int8_onednn(
    x, weight, scale, bias=None, act="silu", inv_smooth=None, outliers=None, outlier_weight=None, rotation=0, gate_first=True
) -> torch.Tensor:
    """:func:`gated_linear_int8` as :func:`linear_int8_onednn`'s layer in ``x``'s dtype, then the
    product by :func:`~poolkit.kernels.linear.gated_activation_c` (one compiled pass in bf16 where it
    builds, else torch's)."""
    both = linear_int8_onednn(x, weight, scale, bias, "none", inv_smooth, outliers, outlier_weight, rotation)
    return gated_activation_c(both, act, gate_first)


@implements(gated_linear_int8)
def gated_linear_int8_amx(
    x, weight, scale, bias=None, act="silu", inv_smooth=None, outliers=None, outlier_weight=None, rotation=0, gate_first=True
) -> torch.Tensor:
    """:func:`gated_linear_int8` in :func:`linear_int8_amx`'s one pass on the same packed weight: each
    block of results is 16 gate columns and the 16 up columns they multiply, read side by side, and
    the epilogue computes ``act(gate) * up`` in float32 and writes only the product, rounded once.
    The wide output, its second pass and its rounding are gone. Calls the pass does not take go to
    :func:`gated_linear_int8_onednn`."""
    return _one_pass("amx", x, weight, scale, bias, act, inv_smooth, outliers, outlier_weight, rotation, gate_first)


@implements(gated_linear_int8)
def gated_linear_int8_vnni(
    x, weight, scale, bias=None, act="silu", inv_smooth=None, outliers=None, outlier_weight=None, rotation=0, gate_first=True
) -> torch.Tensor:
    """:func:`gated_linear_int8_amx` with :func:`linear_int8_vnni`'s one pass (AVX512-VNNI without AMX)."""
    return _one_pass("vnni", x, weight, scale, bias, act, inv_smooth, outliers, outlier_weight, rotation, gate_first)


def _one_pass(
    kind: str, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, act: str,
    inv_smooth: torch.Tensor | None, outliers: torch.Tensor | None, outlier_weight: torch.Tensor | None, rotation: int,
    gate_first: bool | None = None,
) -> torch.Tensor:
    """The layer by ``int8.c``'s one-pass kernel of ``kind`` (``"amx"``, ``"vnni"``), or by
    :func:`linear_int8_onednn` where that kernel does not take the call (:func:`_one_pass_runs`);
    with ``gate_first`` given, a gated layer's ``act(gate) * up`` (:func:`gated_linear_int8`), by
    :func:`gated_linear_int8_onednn` where the kernel does not take it."""
    lib = _amx_library() if kind == "amx" else _vnni_library()
    if not _one_pass_runs(x, weight, act, lib):
        if gate_first is not None:
            return gated_linear_int8_onednn(x, weight, scale, bias, act, inv_smooth, outliers, outlier_weight, rotation, gate_first)
        return linear_int8_onednn(x, weight, scale, bias, act, inv_smooth, outliers, outlier_weight, rotation)
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    (m, k), n = rows.shape, weight.shape[0]
    width = n if gate_first is None else n // 2
    out = torch.empty((m, width), dtype=x.dtype)
    if m:
        smooth, scale32, bias32 = (t if t is None else t.float().contiguous() for t in (inv_smooth, scale, bias))
        cols = None if outliers is None else outliers.to(torch.int64).contiguous()
        c = 0 if cols is None else cols.numel()
        if kind == "amx":  # the channels' weights as bf16 halves in tiles, and those tiles' width
            run, held = lib.poolkit_int8_amx, None if cols is None else _packed(outlier_weight, ("int8", "channels"))
            channels = (None if held is None else held.data_ptr(), _channel_width(c))
        else:
            run, held = lib.poolkit_int8_vnni, None if cols is None else outlier_weight.float().contiguous()
            channels = (None if held is None else held.data_ptr(),)
        code = run(
            rows.data_ptr(), _DTYPES[rows.dtype], rows.stride(0), m, None if smooth is None else smooth.data_ptr(),
            rotation, _packed(weight, ("int8", "dpbusd")).data_ptr(), k, n, scale32.data_ptr(),
            _packed(weight, ("int8", "int_sums")).data_ptr(), None if bias32 is None else bias32.data_ptr(),
            None if cols is None else cols.data_ptr(), c, *channels,
            AMX_ACTIVATIONS[act], out.data_ptr(), _DTYPES[x.dtype], 0 if gate_first is None else 1 if gate_first else 2,
            _chunk_rows(k, n),
            int(-(-m // 32) >= 2 * torch.get_num_threads()), workers(m * n * k >= _PARALLEL_MACS),
        )
        if code:
            if code == 1:
                raise MemoryError("poolkit int8 kernel: out of memory for its scratch rows")
            raise ValueError(f"poolkit int8 kernel: cannot compute {list(weight.shape)} with {act!r} (code {code})")
    return out.reshape(*x.shape[:-1], width)


def _one_pass_runs(x: torch.Tensor, weight: torch.Tensor, act: str, lib: ctypes.CDLL | None) -> bool:
    """Whether a one-pass kernel (its library ``lib``, ``None`` where this build lacks it) takes this
    call: a float32 or bf16 input on the CPU, an int8 weight whose ``in_features`` is a multiple of 64
    and ``out_features`` of 32, an activation it applies."""
    n, k = weight.shape
    return (
        act in AMX_ACTIVATIONS
        and x.dtype in _DTYPES
        and x.device.type == "cpu"
        and weight.dtype == torch.int8
        and x.shape[-1] == k
        and k > 0
        and k % 64 == 0
        and n > 0
        and n % 32 == 0
        and lib is not None
    )


def _chunk_rows(k: int, n: int) -> int:
    """Rows per cache chunk of the AMX-INT8 kernel, as :func:`poolkit.kernels.linear._chunk_rows`
    chooses them for bf16 by bytes: 32 when the int8 weight fits the L2 cache (1.5 MiB), else about
    768 KiB of uint8 rows, at most 512."""
    if n * k <= 3 << 19:
        return 32
    return max(32, min(512, (768 * 1024 // k) // 32 * 32))


def round_rows(
    rows: torch.Tensor, inv_smooth: torch.Tensor | None, padded: int, rotation: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows` of ``rows`` (``[n, k]``) as uint8 levels, ``[padded, k]`` (rows past
    ``n`` zero: oneDNN keeps a primitive per shape, so calls come in :func:`row_bucket` sizes), with
    ``step`` and ``zero`` (``[n, 1]``). One compiled pass where int8.c builds, torch's otherwise."""
    n, k = rows.shape
    lib = _library()
    if lib is None or rows.dtype not in _DTYPES or rows.stride(-1) != 1:
        levels, step, zero = quantize_rows(rows, inv_smooth, INPUT_LEVELS, rotation)
        q = levels.to(torch.uint8)
        return (torch.cat([q, q.new_zeros(padded - n, k)]) if padded != n else q), step, zero
    q = torch.empty((padded, k), dtype=torch.uint8)
    q[n:].zero_()
    step, zero = torch.empty((n, 1)), torch.empty((n, 1))
    smooth = None if inv_smooth is None else inv_smooth.float().contiguous()
    code = lib.poolkit_quantize_rows(
        rows.data_ptr(), _DTYPES[rows.dtype], rows.stride(0), None if smooth is None else smooth.data_ptr(), rotation,
        k, INPUT_LEVELS, q.data_ptr(), step.data_ptr(), zero.data_ptr(), n, workers(rows.numel() >= _PARALLEL_ELEMENTS),
    )
    if code:
        if code == 1:
            raise MemoryError("poolkit int8 kernel: out of memory for a rotated row")
        raise ValueError(f"poolkit int8 kernel: cannot round rows of {k} with rotation {rotation} (code {code})")
    return q, step, zero


def rescale(
    y: torch.Tensor, step: torch.Tensor, zero: torch.Tensor, scaled_sums: torch.Tensor, bias: torch.Tensor | None,
    extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``step * (y - zero * scaled_sums) + bias + x[:, cols] @ w`` of the matmul's float32 output
    ``y`` (``[n, out]``, each row's integer sums times the weight rows' scales; ``scaled_sums``: the
    weight rows' sums times their scales; ``extra``: ``(x, cols, w)``, the layer's input rows ``[n, k]``,
    the float channels ``[c]`` and their weights ``[c, out]``, or ``None``), in place: one compiled
    pass where int8.c builds (the channels read from ``x`` there, not gathered first), torch's
    otherwise."""
    lib = _library()
    channels = _channels(extra)
    if lib is None or not y.is_contiguous() or channels is None:
        y = torch.addcmul(bias, y, step) if bias is not None else y.mul_(step)
        y = y.addr_((step * zero).squeeze(1), scaled_sums, alpha=-1)
        return y if extra is None else y.addmm_(extra[0][:, extra[1]].float(), extra[2])
    arguments, _held = channels  # noqa: F841 - the tensors the pointers point into, alive through the call
    lib.poolkit_rescale_rows(
        y.data_ptr(), y.shape[1], step.data_ptr(), zero.data_ptr(), scaled_sums.data_ptr(),
        None if bias is None else bias.data_ptr(), *arguments, y.shape[0], workers(y.numel() >= _PARALLEL_ELEMENTS),
    )
    return y


def rescale_bf16(
    y: torch.Tensor, step: torch.Tensor, zero: torch.Tensor, scaled_sums: torch.Tensor, bias: torch.Tensor | None,
    extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, act: str,
) -> torch.Tensor | None:
    """:func:`rescale`, then the activation, written as bf16 in the same compiled pass (a bf16
    model's layer: one pass over the output instead of three); ``None`` where that pass does not
    run (no compiler, no AVX-512, an activation it lacks, a width not a multiple of 16)."""
    lib = _library()
    code = AMX_ACTIVATIONS.get(act)
    channels = _channels(extra)
    if lib is None or code is None or not y.is_contiguous() or y.shape[1] % 16 or channels is None:
        return None
    arguments, _held = channels  # noqa: F841 - the tensors the pointers point into, alive through the call
    out = torch.empty(y.shape, dtype=torch.bfloat16)
    failed = lib.poolkit_rescale_rows_bf16(
        y.data_ptr(), y.shape[1], step.data_ptr(), zero.data_ptr(), scaled_sums.data_ptr(),
        None if bias is None else bias.data_ptr(), *arguments, code, out.data_ptr(), y.shape[0],
        workers(y.numel() >= _PARALLEL_ELEMENTS),
    )
    return None if failed else out


def _channels(extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> tuple[tuple, tuple] | None:
    """The compiled rescale's arguments for the float channels (``x``, its dtype code and row stride,
    the channels, their weights, their count; no channels: nulls and 0) and the tensors they point
    into, which the caller holds through the call; ``None`` where it cannot read ``x`` in place."""
    if extra is None:
        return (None, 0, 0, None, None, 0), ()
    x, cols, w = extra
    if x.dtype not in _DTYPES or x.stride(-1) != 1:
        return None
    cols, w = cols.to(torch.int64).contiguous(), w.float().contiguous()
    return (x.data_ptr(), _DTYPES[x.dtype], x.stride(0), cols.data_ptr(), w.data_ptr(), cols.numel()), (x, cols, w)


_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "poolkit_int8_amx": (
        _P, ctypes.c_int, _I, _I, _P, _I, _P, _I, _I, _P, _P, _P, _P, _I, _P, _I, ctypes.c_int, _P, ctypes.c_int,
        ctypes.c_int, _I, ctypes.c_int, _I,
    ),
    "poolkit_int8_amx_available": (),
    "poolkit_int8_vnni": (
        _P, ctypes.c_int, _I, _I, _P, _I, _P, _I, _I, _P, _P, _P, _P, _I, _P, ctypes.c_int, _P, ctypes.c_int, ctypes.c_int, _I,
        ctypes.c_int, _I,
    ),
    "poolkit_int8_vnni_available": (),
    "poolkit_int8_pack": (_P, _I, _I, _P),
    "poolkit_quantize_rows": (_P, ctypes.c_int, _I, _P, _I, _I, ctypes.c_int, _P, _P, _P, _I, _I),
    "poolkit_rescale_rows": (_P, _I, _P, _P, _P, _P, _P, ctypes.c_int, _I, _P, _P, _I, _I, _I),
    "poolkit_rescale_rows_bf16": (_P, _I, _P, _P, _P, _P, _P, ctypes.c_int, _I, _P, _P, _I, ctypes.c_int, _P, _I, _I),
}


@functools.cache
def _library() -> ctypes.CDLL | None:
    return load_typed_library(SOURCE, _SIGNATURES)


@functools.cache
def _amx_library() -> ctypes.CDLL | None:
    """int8.c built for this machine, when the CPU has AMX-INT8 (:mod:`poolkit.config.cpu`), the build
    holds the AMX kernel and the kernel grants its tiles."""
    lib = _library() if cpu.cpu_features().amx_int8 else None
    return lib if lib is not None and lib.poolkit_int8_amx_available() else None


@functools.cache
def _vnni_library() -> ctypes.CDLL | None:
    """int8.c built for this machine, when the CPU has AVX512-VNNI (:mod:`poolkit.config.cpu`), the
    build holds the VNNI kernel and oneDNN is not capped below it (:func:`has_int8_dot`)."""
    lib = _library() if cpu.cpu_features().avx512_vnni else None
    return lib if lib is not None and lib.poolkit_int8_vnni_available() and has_int8_dot() else None


def _channel_width(c: int) -> int:
    """The AMX kernel's channel tiles' width for ``c`` float channels: three bf16 products each, in
    tiles of 32."""
    return -(-3 * c // 32) * 32


def pack_channels(outlier_weight: torch.Tensor) -> torch.Tensor:
    """The float channels' weights ``[c, n]`` (float32) as the AMX kernel's bf16 channel tiles: rows
    ``wh`` (each weight's nearest bf16), ``wl`` (its remainder's), ``wh`` again, zero-padded to
    :func:`_channel_width` rows, against the rows' ``h, h, l`` halves (``int8.c``'s channel_row);
    each block of 32 columns in the tiles' pair-interleaved layout, as ``linear.c`` packs bf16 weights."""
    w = outlier_weight.detach().float()
    c, n = w.shape
    high = w.bfloat16()
    low = (w - high.float()).bfloat16()
    rows = torch.zeros(_channel_width(c), n, dtype=torch.bfloat16)
    rows[:c], rows[c : 2 * c], rows[2 * c : 3 * c] = high, low, high
    # packed[((j * chunks + cc) * 2 + t) * 512 + r * 32 + 2 * col + e] = rows[32 cc + 2 r + e][32 j + 16 t + col]
    tiles = rows.t().reshape(n // 32, 2, 16, -1, 16, 2).permute(0, 3, 1, 4, 2, 5)
    return tiles.contiguous().reshape(-1)


def pack_dpbusd(weight: torch.Tensor) -> torch.Tensor:
    """An int8 weight ``[n, k]`` in the one-pass kernels' layout (``poolkit_int8_pack``): for each 4
    inputs, 16 columns' 4 weights in 64 bytes, what AMX's ``TDPBUSD`` loads as a tile row and
    ``VPDPBUSD`` as a vector."""
    weight = weight.contiguous()
    packed = torch.empty(weight.numel(), dtype=torch.int8)
    _library().poolkit_int8_pack(weight.data_ptr(), weight.shape[1], weight.shape[0], packed.data_ptr())
    return packed


INT8_PACKERS.update(dpbusd=pack_dpbusd, channels=pack_channels)


@functools.cache
def _zero_points(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


#: oneDNN's instruction-set caps (``ONEDNN_MAX_CPU_ISA``) below which it multiplies int8 without VNNI.
_ISAS_WITHOUT_VNNI = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE"})


@functools.cache
def has_int8_dot() -> bool:
    """Whether this CPU adds uint8 x int8 products into int32 directly (VNNI, AMX-INT8:
    :attr:`poolkit.config.cpu.CpuFeatures.int8_dot`), and oneDNN may use it (``ONEDNN_MAX_CPU_ISA`` /
    ``DNNL_MAX_CPU_ISA`` can cap it below VNNI)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap not in _ISAS_WITHOUT_VNNI and cpu.cpu_features().int8_dot


def declines() -> str | None:
    """Why int8 does not pay on this CPU, or ``None``: without an int8 dot product (VNNI, AMX-INT8)
    oneDNN's int8 matmul sums in saturating int16 steps and the rounding passes cost more than it
    saves (all-MiniLM-L6-v2: 0.88-0.93x float32, docs/performance.md); ``quantization="int8"``
    then keeps the model in float and says so (``poolkit info``)."""
    if has_int8_dot():
        return None
    return "this CPU has no int8 dot product (VNNI or AMX-INT8), where int8 is slower than float32; the model stays in float"


def _onednn_int8_available() -> bool:
    return torch.backends.mkldnn.is_available() and all(hasattr(torch.ops.onednn, op) for op in ONEDNN_INT8_OPS)


linear_int8_onednn.weight_levels = LEVELS if has_int8_dot() else 63
linear_int8_onednn.declines = declines
gated_linear_int8_onednn.weight_levels = linear_int8_onednn.weight_levels
linear_int8_amx.weight_levels = linear_int8_vnni.weight_levels = LEVELS
gated_linear_int8_amx.weight_levels = gated_linear_int8_vnni.weight_levels = LEVELS
for _kernel in (linear_int8_onednn, linear_int8_amx, linear_int8_vnni, gated_linear_int8_onednn, gated_linear_int8_amx,
                gated_linear_int8_vnni):
    _kernel.rotations = ROTATIONS


@hookimpl
def poolkit_register_kernels(register):
    for op, reference, onednn, vnni, amx in (
        ("linear_int8", linear_int8, linear_int8_onednn, linear_int8_vnni, linear_int8_amx),
        ("gated_linear_int8", gated_linear_int8, gated_linear_int8_onednn, gated_linear_int8_vnni, gated_linear_int8_amx),
    ):
        register(f"{op}:torch", Kernel(fn=reference, reference=reference, device="any"))
        # the one-pass kernels ahead of oneDNN's matmul where their library is built: AMX's tiles, then VNNI's registers
        for impl, fn, priority, available in (
            ("onednn", onednn, KernelPriority.COMPILED, _onednn_int8_available),
            ("vnni", vnni, KernelPriority.SPECIALIZED, lambda: _onednn_int8_available() and _vnni_library() is not None),
            ("amx", amx, KernelPriority.TOP, lambda: _onednn_int8_available() and _amx_library() is not None),
        ):
            register(f"{op}:{impl}", Kernel(fn=fn, device="cpu", priority=priority, is_available=available, row_bucket=row_bucket))
