"""The elementwise work around the matmuls on CUDA, each in one pass: Triton kernels of the
``residual_norm``, ``rms_norm``, ``rotary`` and ``gated_linear`` ops.

On an H100, bge-base spent 45% of its device time in unfused elementwise kernels (the residual
add 14%, LayerNorm 13%, GELU 9%, copies 7%) and Qwen3-Embedding-0.6B more than half (RMSNorm as
``pow``/``mean``/``mul`` chains, rotary embeddings on strided views of the packed q and k,
SwiGLU as an activation and a product over the two halves of one matmul's output): each is a
read and a write of the activations per torch op. The kernels here read each input once and
write each output once, computing in float32 and rounding once:

- ``residual_norm:triton``: a post-norm encoder's ``LayerNorm(x + residual)`` (or RMSNorm),
  writing the float32 residual stream and its low-precision copy for the next matmul in the
  same pass;
- ``rms_norm:triton``: a pre-norm decoder's residual add and the RMSNorm after it (Gemma's
  ``1 + weight`` too), and Qwen3's per-head q/k norms read in place from the packed projection;
- ``rotary:triton``: the rotation of q's or k's heads read in place from the packed projection
  (no strided copies, no ``cat``), the dimensions past the rotated ones copied through;
- ``gated_linear:triton``: one cuBLAS matmul over gate and up, then ``act(gate) * up`` in one
  pass over its output, instead of an activation pass and a product pass over strided halves.

``linear_act`` stays the reference on CUDA: cuBLAS adds the bias in the matmul's epilogue and the
activation is one pass after it. (cuBLASLt's GELU epilogue, ``torch._addmm_activation``, is the
tanh approximation on CUDA and the erf GELU on the CPU, so one call would mean two functions;
BERT-style encoders use the erf GELU, which no cuBLASLt epilogue computes.)

Each keeps its op's contract (:mod:`poolkit.kernels.elementwise`, :mod:`poolkit.kernels.linear`)
and hands any call it does not take (autograd, float64, a layout it cannot read in place, a
device other than CUDA) to the op's reference. Tests run the Triton kernels in Triton's
interpreter on the CPU (``TRITON_INTERPRET=1``, :func:`interpreting`) and compiled on a GPU.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import implements

from .elementwise import _row_layout, residual_norm, rms_norm, rotary, rotary_tables_fit
from .linear import gated_linear
from .triton_support import triton_available, triton_kernel

#: The activations the Triton passes compute, by the names of the ``linear_act`` contract.
_ACT_CODES = {"none": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "silu": 4, "tanh": 5, "sigmoid": 6}
#: Float dtypes the kernels read and write; others (float64) go to the references.
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """Whether Triton runs its interpreter (``TRITON_INTERPRET=1``): the kernels then take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def _runs(*tensors: torch.Tensor | None) -> bool:
    """Whether the Triton kernels take these tensors: on CUDA (any device when interpreting), in a
    dtype of :data:`_DTYPES`, outside autograd."""
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if t.dtype not in _DTYPES or (grad and t.requires_grad):
            return False
        if not (t.is_cuda or interpreting()):
            return False
    return True


def _rows(x: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``x`` as rows of its last dimension without a copy: ``(rows, inner, outer stride, inner
    stride)`` (:func:`poolkit.kernels.elementwise._row_layout`'s addressing: row ``i`` starts at
    ``(i // inner) * outer + (i % inner) * inner stride``), or ``None``."""
    layout = _row_layout(x) if x.dim() else None
    if layout is None:
        return None
    return (x.numel() // x.shape[-1] if x.shape[-1] else 0, *layout)


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int, int] | None:
    return _rows(b) if a.shape == b.shape else None


def _block(n: int) -> int:
    import triton

    return triton.next_power_of_2(max(n, 1))


# -- the norms -----------------------------------------------------------------------------------


@implements(rms_norm)
def rms_norm_triton(x, weight, eps, offset=False, residual=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`poolkit.kernels.elementwise.rms_norm` in one pass: ``total`` (in the promoted dtype
    of ``x`` and ``residual``: a float32 residual stream stays float32) and its RMSNorm in ``x``'s
    dtype, computed in float32 and rounded once."""
    layout = _rows(x)
    res_layout = None if residual is None else _same_rows(x, residual)
    if (
        not _runs(x, weight, residual)
        or layout is None
        or (residual is not None and (res_layout is None or residual.dtype not in (x.dtype, torch.float32)))
        or weight.shape != x.shape[-1:]
        or not weight.is_contiguous()
    ):
        return rms_norm(x, weight, eps, offset, residual)
    n = x.shape[-1]
    rows, inner, s_outer, s_inner = layout
    out_dtype = x.dtype if offset else torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    summed = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    total = x if residual is None else torch.empty(x.shape, dtype=summed, device=x.device)
    if rows:
        r = res_layout or layout
        _norm_kernel()[(rows,)](
            x, residual if residual is not None else x, weight, weight, total, out, out,
            n, inner, s_outer, s_inner, r[2], r[3], eps,
            HAS_RES=residual is not None, RMS=True, OFFSET=offset, HAS_BIAS=False,
            ROUND_SUM=summed != torch.float32, ROUND_NORMED=not offset and x.dtype != torch.float32,
            WRITE_SUM=residual is not None, WRITE_LOW=False, BLOCK=_block(n),
        )
    return total, out


@implements(residual_norm)
def residual_norm_triton(x, residual, weight, bias, eps, rms=False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`poolkit.kernels.elementwise.residual_norm` in one pass: the float32 residual stream
    and, when the weights are narrower, its copy in their dtype, both written by the same program."""
    layout = _rows(x)
    res_layout = None if residual is None else _same_rows(x, residual)
    if (
        not _runs(x, residual, weight, bias)
        or layout is None
        or (residual is not None and res_layout is None)
        or weight.shape != x.shape[-1:]
        or not weight.is_contiguous()
        or (bias is not None and (bias.shape != weight.shape or not bias.is_contiguous()))
    ):
        return residual_norm(x, residual, weight, bias, eps, rms)
    n = x.shape[-1]
    rows, inner, s_outer, s_inner = layout
    wide = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    low = wide if weight.dtype == torch.float32 else torch.empty(x.shape, dtype=weight.dtype, device=x.device)
    # The reference adds in the inputs' promoted dtype: x's own when both are bf16 (or fp16).
    summed = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    if rows:
        r = res_layout or layout
        _norm_kernel()[(rows,)](
            x, residual if residual is not None else x, weight, bias if bias is not None else weight, wide, wide, low,
            n, inner, s_outer, s_inner, r[2], r[3], eps,
            HAS_RES=residual is not None, RMS=rms, OFFSET=False, HAS_BIAS=bias is not None,
            ROUND_SUM=summed != torch.float32, ROUND_NORMED=False,
            WRITE_SUM=False, WRITE_LOW=low is not wide, BLOCK=_block(n),
        )
    return wide, low


@functools.cache
def _norm_kernel():
    """One row a program: ``x + residual`` (rounded to the inputs' dtype where the reference adds
    in it), its LayerNorm or RMSNorm in float32, the weight and bias; the sum written to
    ``sum_ptr`` where the op returns it, the result to ``out_ptr`` and, in a second dtype, to
    ``low_ptr``. Compiled on first use."""
    import triton
    import triton.language as tl

    @triton.jit
    def norm_kernel(
        x_ptr, res_ptr, w_ptr, b_ptr, sum_ptr, out_ptr, low_ptr,
        n, inner, sx_outer, sx_inner, sr_outer, sr_inner, eps,
        HAS_RES: tl.constexpr, RMS: tl.constexpr, OFFSET: tl.constexpr, HAS_BIAS: tl.constexpr,
        ROUND_SUM: tl.constexpr, ROUND_NORMED: tl.constexpr, WRITE_SUM: tl.constexpr, WRITE_LOW: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        x = tl.load(x_ptr + (row // inner) * sx_outer + (row % inner) * sx_inner + cols, mask=mask, other=0.0)
        h = x.to(tl.float32)
        if HAS_RES:
            r = tl.load(res_ptr + (row // inner) * sr_outer + (row % inner) * sr_inner + cols, mask=mask, other=0.0)
            h = h + r.to(tl.float32)
            if ROUND_SUM:
                h = h.to(x_ptr.dtype.element_ty).to(tl.float32)
        if WRITE_SUM:
            tl.store(sum_ptr + row * n + cols, h.to(sum_ptr.dtype.element_ty), mask=mask)
        if RMS:
            normed = h * tl.rsqrt(tl.sum(h * h, axis=0) / n + eps)
        else:
            mean = tl.sum(h, axis=0) / n
            centred = tl.where(mask, h - mean, 0.0)
            normed = centred * tl.rsqrt(tl.sum(centred * centred, axis=0) / n + eps)
        if ROUND_NORMED:  # transformers' RMSNorm casts the normed value before the weight
            normed = normed.to(x_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = normed * (1.0 + w) if OFFSET else normed * w
        if HAS_BIAS:
            y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
        if WRITE_LOW:
            tl.store(low_ptr + row * n + cols, y.to(low_ptr.dtype.element_ty), mask=mask)

    return norm_kernel


# -- rotary positions ----------------------------------------------------------------------------


@implements(rotary)
def rotary_triton(x, cos, sin) -> torch.Tensor:
    """:func:`poolkit.kernels.elementwise.rotary` in one pass over ``x`` read in place (a strided
    ``[T, H, d]`` view of a packed projection), computed in float32 and rounded once."""
    layout = _rows(x) if x.dim() >= 2 else None
    r = cos.shape[-1]
    if not _runs(x, cos, sin) or layout is None or not rotary_tables_fit(x, cos, sin):
        return rotary(x, cos, sin)
    rows, inner, s_outer, s_inner = layout
    if rows and rows // x.shape[0] != inner:
        return rotary(x, cos, sin)  # a token's heads must be one run of rows
    d = x.shape[-1]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if rows:
        _rotary_kernel()[(rows,)](
            x, cos, sin, out, d, r // 2, inner, s_outer, s_inner,
            HALF=_block(r // 2), TAIL=_block(d - r) if d > r else 1, HAS_TAIL=d > r,
        )
    return out


@functools.cache
def _rotary_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rotary_kernel(
        x_ptr, cos_ptr, sin_ptr, out_ptr, d, half, inner, s_outer, s_inner,
        HALF: tl.constexpr, TAIL: tl.constexpr, HAS_TAIL: tl.constexpr,
    ):
        row = tl.program_id(0)
        token = row // inner
        src = x_ptr + token * s_outer + (row % inner) * s_inner
        dst = out_ptr + row * d
        cols = tl.arange(0, HALF)
        mask = cols < half
        x1 = tl.load(src + cols, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + half + cols, mask=mask, other=0.0).to(tl.float32)
        angles = token * 2 * half
        c1 = tl.load(cos_ptr + angles + cols, mask=mask, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + angles + half + cols, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + angles + cols, mask=mask, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + angles + half + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dst + cols, (x1 * c1 - x2 * s1).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + half + cols, (x2 * c2 + x1 * s2).to(out_ptr.dtype.element_ty), mask=mask)
        if HAS_TAIL:
            rest = tl.arange(0, TAIL)
            in_tail = 2 * half + rest < d
            tail = tl.load(src + 2 * half + rest, mask=in_tail, other=0.0)
            tl.store(dst + 2 * half + rest, tail, mask=in_tail)

    return rotary_kernel


# -- the gated feed-forward input and the activations --------------------------------------------


@implements(gated_linear)
def gated_linear_triton(x, weight, bias, act="silu", gate_first=True) -> torch.Tensor:
    """:func:`poolkit.kernels.linear.gated_linear` as one cuBLAS matmul over both halves and one
    Triton pass writing ``act(gate) * up`` (float32 inside, rounded once)."""
    if not _runs(x, weight, bias) or act not in _ACT_CODES or x.dtype != weight.dtype or weight.shape[0] % 2:
        return gated_linear(x, weight, bias, act, gate_first)
    wide = F.linear(x, weight, bias)
    inner = weight.shape[0] // 2
    rows = wide.numel() // wide.shape[-1] if wide.shape[-1] else 0
    out = torch.empty((*x.shape[:-1], inner), dtype=x.dtype, device=x.device)
    if rows and inner:
        block = min(_block(inner), 1024)
        _gated_kernel()[(rows, (inner + block - 1) // block)](
            wide, out, inner, 0 if gate_first else inner, inner if gate_first else 0, ACT=_ACT_CODES[act], BLOCK=block,
        )
    return out


@functools.cache
def _gated_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def gated_kernel(wide_ptr, out_ptr, inner, gate_at, up_at, ACT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inner
        src = wide_ptr + row * 2 * inner
        v = tl.load(src + gate_at + cols, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(src + up_at + cols, mask=mask, other=0.0).to(tl.float32)
        if ACT == 1:  # the erf GELU
            v = 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
        elif ACT == 2:  # the tanh GELU, with tanh(u) = 2 sigmoid(2u) - 1
            u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
            v = 0.5 * v * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * u)) - 1.0))
        elif ACT == 3:
            v = tl.maximum(v, 0.0)
        elif ACT == 4:
            v = v / (1.0 + tl.exp(-v))
        elif ACT == 5:
            v = 2.0 / (1.0 + tl.exp(-2.0 * v)) - 1.0
        elif ACT == 6:
            v = 1.0 / (1.0 + tl.exp(-v))
        tl.store(out_ptr + row * inner + cols, (v * up).to(out_ptr.dtype.element_ty), mask=mask)

    return gated_kernel


@hookimpl
def poolkit_register_kernels(register):
    for op, fn in (
        ("rms_norm", rms_norm_triton),
        ("residual_norm", residual_norm_triton),
        ("rotary", rotary_triton),
        ("gated_linear", gated_linear_triton),
    ):
        register(f"{op}:triton", triton_kernel(fn))


__all__ = [
    "gated_linear_triton", "interpreting", "residual_norm_triton", "rms_norm_triton", "rotary_triton", "triton_available",
]
