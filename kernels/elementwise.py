"""Norms, rotary positions and activations, each in one pass: the elementwise work around the matmuls.

Unfused, an RMSNorm in bf16 is six passes over its input (the float32 copy, the square, the
mean, the scaling, the cast back, the weight), a rotation five (two halves, a negation, a
concatenation, two products and a sum), and a post-norm layer's ``LayerNorm(x + residual)`` three
more with the cast of its result for the next matmul: on a CPU, after the matmuls and attention,
the largest cost of a forward pass (a third of Qwen3-0.6B's in bf16). The compiled kernels read
each input once and write each output once, computing in float32 and rounding once.

The contracts of the three ops registered here, which every kernel of the op keeps (same
arguments and defaults as the reference, which is what ``poolkit.kernel_reference(op)`` returns)
and models rely on without importing this module:

``rms_norm``: ``fn(x, weight, eps, offset=False, residual=None) -> (total, out)``

- ``x``: ``[..., n]`` float tensor; ``residual``: ``None`` or a tensor of ``x``'s shape and dtype;
- ``weight``: ``[n]``; ``eps``: float; ``offset``: scale by ``1 + weight`` (Gemma) instead of ``weight``;
- returns ``total``, ``x + residual`` (``x`` itself without a residual), and ``out``, the
  RMSNorm of ``total`` as transformers computes it: ``total * rsqrt(mean(total ** 2) + eps)`` in
  float32, then times ``weight`` in the result dtype of ``weight`` and ``total`` (``offset``:
  times ``1 + weight`` in float32, then in ``total``'s dtype). A kernel may round once where the
  reference rounds twice (bf16: the normed value, then the product).

``residual_norm``: ``fn(x, residual, weight, bias, eps, rms=False) -> (wide, low)``

- ``x``: ``[..., n]`` float tensor (a sublayer's output); ``residual``: ``None`` or a tensor of
  ``x``'s shape, any float dtype;
- ``weight``: ``[n]``; ``bias``: ``[n]`` or ``None``; ``eps``: float; ``rms``: RMSNorm
  (``weight * total * rsqrt(mean(total ** 2) + eps)``) instead of LayerNorm;
- returns ``wide``, the norm of ``x + residual`` computed and returned in at least float32 (the
  residual stream of a post-norm encoder in mixed precision), and ``low``, ``wide`` in
  ``weight``'s dtype (the next matmul's input; ``wide`` itself when the dtypes agree).

``rotary``: ``fn(x, cos, sin) -> out``

- ``x``: ``[T, ..., d]`` float tensor, the heads of ``T`` tokens;
- ``cos``, ``sin``: ``[T, r]``, each token's angles' cosines and sines, ``r <= d`` even;
- returns ``x`` with the first ``r`` dimensions of every head rotated half against half
  (transformers' ``rotate_half``: ``x * cos + cat(-x2, x1) * sin`` with ``x1, x2`` the two halves)
  and the others unchanged, ``x``'s shape and dtype. The reference computes in the promoted
  dtype of ``x`` and ``cos`` (bf16 with bf16 angles, as transformers' Llama; float32 with float32
  ones, as its ModernBERT), a kernel may compute in float32 and round once.

The same C library computes, in bf16 on CPUs with AVX512-BF16, the activations of the oneDNN
linear kernels (:func:`activation_c`, which :mod:`poolkit.kernels.linear` calls after a plain
matmul): not an op of its own, an implementation detail of those kernels.

The compiled implementations (``:c``) are C (``elementwise.c``) built for this CPU on first use
(:mod:`poolkit.kernels.compiler`); they take bf16 CPU tensors (with float32 ones beside them)
outside autograd and hand any other call (all-float32, fp16, fp64, strides they cannot read,
gradients) to the reference. Large
calls are split by rows over ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from poolkit.config import cpu
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, KernelPriority, implements

from .compiler import load_typed_library, workers

SOURCE = Path(__file__).with_name("elementwise.c")
#: The dtype codes of elementwise.c.
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
#: Below this many elements a call runs on the calling thread alone.
_PARALLEL_ELEMENTS = 1 << 18


# -- the references ----------------------------------------------------------------------------


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: bool = False, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + residual, RMSNorm(x + residual))``, the reference: transformers' ``LlamaRMSNorm``
    (``offset``: ``GemmaRMSNorm``) after the residual add.

    The sum is in the promoted dtype of ``x`` and ``residual``: a float32 residual stream stays
    float32 when a bf16 sublayer's output joins it. The norm is in ``x``'s dtype (with ``weight``'s
    promotion, as transformers), the dtype of the matmul that reads it.

    Args:
        x: ``[..., n]`` inputs (a sublayer's output).
        weight: ``[n]`` scale.
        eps: added to the mean square.
        offset: scale by ``1 + weight`` in float32 (Gemma's norms, weights stored centred on 0).
        residual: added to ``x`` first (a pre-norm layer's residual stream), or ``None``.
    """
    total = x if residual is None else x + residual
    h = total.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if offset:
        return total, (h * (1.0 + weight.float())).to(x.dtype)
    return total, weight * h.to(x.dtype)


def residual_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    rms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(x + residual)`` in at least float32, and the same in ``weight``'s dtype, the reference.

    Args:
        x: ``[..., n]`` a sublayer's output.
        residual: the residual stream, or ``None``.
        weight: ``[n]``; bias: ``[n]`` or ``None``.
        eps: added to the variance (mean square).
        rms: RMSNorm instead of LayerNorm.
    """
    total = x if residual is None else x + residual
    h = total.to(torch.promote_types(total.dtype, torch.float32))
    if rms:
        wide = weight.to(h.dtype) * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))
    else:
        wide = F.layer_norm(h, h.shape[-1:], weight.to(h.dtype), None if bias is None else bias.to(h.dtype), eps)
    return wide, wide.to(weight.dtype)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x``'s heads with their first ``cos.shape[-1]`` dimensions rotated (transformers'
    ``apply_rotary_pos_emb``), computed in the promoted dtype of ``x`` and ``cos``, the reference.

    Args:
        x: ``[T, ..., d]`` the heads of ``T`` tokens.
        cos: ``[T, r]`` cosines of each token's angles (``r <= d``, even).
        sin: ``[T, r]`` sines.
    """
    r = cos.shape[-1]
    dtype = torch.promote_types(x.dtype, cos.dtype)
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (r,)
    cos, sin = cos.to(dtype).view(shape), sin.to(dtype).view(shape)
    head, tail = x[..., :r].to(dtype), x[..., r:]
    x1, x2 = head.chunk(2, dim=-1)
    head = (head * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)
    return head if tail.shape[-1] == 0 else torch.cat((head, tail), dim=-1)


# -- the compiled kernels ----------------------------------------------------------------------

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "poolkit_activation": (_P, _I, _I, _I, _P, _I, _I, _I, _I, ctypes.c_int),
    "poolkit_has_activation": (),
    "poolkit_rms_norm": (_P, ctypes.c_int, _I, _I, _I, _P, ctypes.c_int, _P, ctypes.c_int, _P, ctypes.c_int,
                         _P, ctypes.c_int, _I, _I, _I, _F, ctypes.c_int),
    "poolkit_residual_norm": (_P, ctypes.c_int, _P, ctypes.c_int, _P, _P, ctypes.c_int, _P, _P, ctypes.c_int,
                              _I, _I, _I, _F, ctypes.c_int),
    "poolkit_rotary": (_P, ctypes.c_int, _I, _I, _I, _P, _P, ctypes.c_int, _P, _I, _I, _I, _I),
}


@functools.cache
def _library() -> ctypes.CDLL | None:
    return load_typed_library(SOURCE, _SIGNATURES)


def _compiled_available() -> bool:
    return _library() is not None


def _run_rows(fn, rows: int, elements: int, *args_before, args_after=()) -> None:
    """``fn(*args_before, rows, workers, *args_after)``: the kernel over ``rows``, split by rows over
    torch's intra-op thread count when the call is large."""
    if fn(*args_before, rows, workers(elements >= _PARALLEL_ELEMENTS), *args_after):
        raise MemoryError("poolkit elementwise kernel: out of memory for its scratch row")


def _compiled_runs(*tensors: torch.Tensor | None) -> bool:
    """Whether the C kernels take these tensors: on the CPU, bf16 among them and the rest float32,
    no gradient wanted. All-float32 calls keep torch's arithmetic, which is transformers' own to
    the last bit (a different reduction order would be as accurate, but tiny random models with
    large weights amplify a last-bit difference a hundredfold, and fp32 parity is checked there)."""
    present = [t for t in tensors if t is not None]
    return (
        all(t.device.type == "cpu" and t.dtype in _DTYPES for t in present)
        and any(t.dtype == torch.bfloat16 for t in present)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in present))
    )


def _row_layout(x: torch.Tensor) -> tuple[int, int, int] | None:
    """``(inner, outer_stride, inner_stride)`` addressing the rows of ``x`` (``[..., n]``, last
    dimension contiguous) as ``i // inner`` and ``i % inner``; ``None`` when they need more."""
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        return None
    if x.dim() == 1:
        return 1, 0, 0
    lead = [(size, stride) for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size != 1] or [(1, 0)]
    # Merge the inner dimensions into one run of equally spaced rows; the first stays the outer one.
    inner_size, inner_stride = lead[-1]
    for size, stride in reversed(lead[1:-1]):
        if stride != inner_size * inner_stride:
            return None
        inner_size *= size
    if len(lead) == 1:
        return 1, lead[0][1], 0
    return inner_size, lead[0][1], inner_stride


#: The activations :func:`activation_c` computes, by name (those of ``linear_act``), with their codes
#: in elementwise.c: those whose oneDNN post-ops cost more than a compiled pass (measured; oneDNN's
#: ReLU and erf GELU post-ops cost less).
C_ACTIVATIONS = {"silu": 1, "gelu_tanh": 2}


@functools.cache
def _has_activation() -> bool:
    """The CPU has AVX512-BF16 (:mod:`poolkit.config.cpu`) and the build holds the activation pass."""
    lib = _library() if cpu.cpu_features().avx512_bf16 else None
    return lib is not None and bool(lib.poolkit_has_activation())


def activation_c_runs(dtype: torch.dtype, width: int, act: str) -> bool:
    """Whether :func:`activation_c` computes ``act`` over ``width`` columns of ``dtype``: bf16, a
    width that is a multiple of 16, an activation of :data:`C_ACTIVATIONS`, a build with AVX512-BF16."""
    return dtype == torch.bfloat16 and width % 16 == 0 and act in C_ACTIVATIONS and _has_activation()


def activation_c(y: torch.Tensor, act: str, gate_first: bool | None = None) -> torch.Tensor:
    """``act(y)`` of a contiguous bf16 matmul output ``y`` (``[rows, n]``), in place; or, with
    ``gate_first`` given, ``act(gate) * up`` of its two halves (``[rows, 2 * inner]``, the gate the
    first half when ``gate_first``) into a new ``[rows, inner]`` tensor. Computed in float32 from
    the bf16 values and rounded once, as torch's own bf16 activations are.

    Only for calls :func:`activation_c_runs` accepts (``n``, or ``inner``, the width it checks),
    outside autograd: callers check first.
    """
    rows, width = y.shape
    inner = width if gate_first is None else width // 2
    out = y if gate_first is None else torch.empty((rows, inner), dtype=y.dtype)
    gate, up = (0, -1) if gate_first is None else ((0, inner) if gate_first else (inner, 0))
    if rows:
        code = _library().poolkit_activation(
            y.data_ptr(), width, gate, up, out.data_ptr(), inner, rows, workers(y.numel() >= _PARALLEL_ELEMENTS),
            inner, C_ACTIVATIONS[act],
        )
        if code:
            raise ValueError(f"poolkit activation kernel: cannot compute {act!r} over {inner} columns (code {code})")
    return out


@implements(rms_norm)
def rms_norm_c(x, weight, eps, offset=False, residual=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_norm` in one pass (C): the residual add, the norm and the scale, rounded once."""
    layout = _row_layout(x)
    lib = _library()
    if (
        lib is None
        or layout is None
        or not _compiled_runs(x, weight, residual)
        or (residual is not None and (residual.shape != x.shape or not residual.is_contiguous()))
        or weight.shape != x.shape[-1:]
        or not weight.is_contiguous()
    ):
        return rms_norm(x, weight, eps, offset, residual)
    n = x.shape[-1]
    rows = x.numel() // n if n else 0
    total = x if residual is None else torch.empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype))
    out_dtype = x.dtype if offset else torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty(x.shape, dtype=out_dtype)
    if rows:
        _run_rows(
            lib.poolkit_rms_norm, rows, x.numel(),
            x.data_ptr(), _DTYPES[x.dtype], *layout,
            None if residual is None else residual.data_ptr(), 0 if residual is None else _DTYPES[residual.dtype],
            None if residual is None else total.data_ptr(), _DTYPES[total.dtype],
            weight.data_ptr(), _DTYPES[weight.dtype], out.data_ptr(), _DTYPES[out_dtype],
            args_after=(n, eps, int(offset)),
        )
    return total, out


@implements(residual_norm)
def residual_norm_c(x, residual, weight, bias, eps, rms=False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`residual_norm` in one pass (C): the add, the norm and both outputs."""
    lib = _library()
    if (
        lib is None
        or not _compiled_runs(x, residual, weight, bias)
        or not x.is_contiguous()
        or (residual is not None and (residual.shape != x.shape or not residual.is_contiguous()))
        or weight.shape != x.shape[-1:]
        or (bias is not None and (bias.dtype != weight.dtype or bias.shape != weight.shape))
        or not weight.is_contiguous()
        or (bias is not None and not bias.is_contiguous())
    ):
        return residual_norm(x, residual, weight, bias, eps, rms)
    n = x.shape[-1]
    rows = x.numel() // n if n else 0
    wide = torch.empty(x.shape, dtype=torch.float32)
    low = wide if weight.dtype == torch.float32 else torch.empty(x.shape, dtype=weight.dtype)
    if rows:
        _run_rows(
            lib.poolkit_residual_norm, rows, x.numel(),
            x.data_ptr(), _DTYPES[x.dtype],
            None if residual is None else residual.data_ptr(), 0 if residual is None else _DTYPES[residual.dtype],
            weight.data_ptr(), None if bias is None else bias.data_ptr(), _DTYPES[weight.dtype],
            wide.data_ptr(), None if low is wide else low.data_ptr(), _DTYPES[low.dtype],
            args_after=(n, eps, int(rms)),
        )
    return wide, low


def rotary_tables_fit(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether a one-pass :func:`rotary` kernel reads ``cos`` and ``sin`` as they are: contiguous
    ``[T, r]`` tables of one shape, a row per token of ``x`` (``[T, ..., d]``), ``r`` even and at most ``d``."""
    r = cos.shape[-1]
    return (
        cos.dim() == 2
        and cos.shape == sin.shape
        and cos.shape[0] == x.shape[0]
        and r % 2 == 0
        and r <= x.shape[-1]
        and cos.is_contiguous()
        and sin.is_contiguous()
    )


@implements(rotary)
def rotary_c(x, cos, sin) -> torch.Tensor:
    """:func:`rotary` in one pass (C), computed in float32 and rounded once."""
    lib = _library()
    layout = _row_layout(x) if x.dim() >= 2 else None
    r = cos.shape[-1]
    if (
        lib is None
        or layout is None
        or not _compiled_runs(x, cos, sin)
        or cos.dtype != sin.dtype
        or not rotary_tables_fit(x, cos, sin)
    ):
        return rotary(x, cos, sin)
    n = x.shape[-1]
    rows = x.numel() // n if n else 0
    inner = rows // x.shape[0] if x.shape[0] else 1
    if layout[0] != inner and rows:
        # Rows of one token must be one run (a middle dimension of size 1 is fine, a split one is not).
        return rotary(x, cos, sin)
    out = torch.empty(x.shape, dtype=x.dtype)
    if rows:
        _run_rows(
            lib.poolkit_rotary, rows, x.numel(),
            x.data_ptr(), _DTYPES[x.dtype], *layout, cos.data_ptr(), sin.data_ptr(), _DTYPES[cos.dtype], out.data_ptr(),
            args_after=(n, r),
        )
    return out


@hookimpl
def poolkit_register_kernels(register):
    for op, compiled in (("rms_norm", rms_norm_c), ("residual_norm", residual_norm_c), ("rotary", rotary_c)):
        register(f"{op}:torch", Kernel(fn=compiled.reference, reference=compiled.reference, device="any"))
        register(
            f"{op}:c", Kernel(fn=compiled, device="cpu", priority=KernelPriority.COMPILED, is_available=_compiled_available)
        )
