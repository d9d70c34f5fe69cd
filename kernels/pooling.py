"""Sequence pooling over packed batches, with the L2 normalisation of embeddings fused in.

``segment_pool(hidden [T, H], cu_seqlens [B + 1], mode, normalize) -> [B, H]`` reduces each
sequence's rows (``cu_seqlens[i]:cu_seqlens[i + 1]``) in fp32. The torch reference runs
everywhere (and is the CPU path, where pooling is a negligible share of the work); on CUDA, the
Triton kernel does the reduction, the division and the normalisation in one launch, one program
per sequence, instead of a cast, a scatter, a division and a norm over the whole batch.

The op's contract, which every ``segment_pool`` kernel keeps (same arguments and defaults as the
reference, which is what ``poolkit.kernel_reference("segment_pool")`` returns) and poolers rely
on without importing this module: ``fn(hidden, cu_seqlens, mode="mean", normalize=False) -> pooled``

- ``hidden``: ``[T, H]`` packed hidden states, any float dtype;
- ``cu_seqlens``: ``[B + 1]`` integer offsets from ``0`` to ``T`` (any device): sequence ``i``
  owns rows ``cu_seqlens[i]:cu_seqlens[i + 1]``;
- ``mode``: one of :data:`MODES`, ``"mean"``, ``"mean_sqrt_len"`` (sum / sqrt(n)), ``"max"`` or
  ``"sum"``; another is a ``ValueError``;
- ``normalize``: L2-normalise each pooled row (``F.normalize``, ``eps=1e-12``);
- returns ``[B, H]`` float32 on ``hidden``'s device; a sequence with no rows pools to zeros.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, implements

from .triton_support import triton_kernel

#: Reductions of :func:`segment_pool_reference`, with the Triton kernel's codes.
MODES = {"mean": 0, "mean_sqrt_len": 1, "max": 2, "sum": 3}
#: ``F.normalize``'s floor on the norm.
_EPS = 1e-12


def _check(hidden: torch.Tensor, cu_seqlens: torch.Tensor, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"segment_pool mode {mode!r} is not one of {', '.join(MODES)}")
    if hidden.ndim != 2 or cu_seqlens.ndim != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [T, H] and cu_seqlens {tuple(cu_seqlens.shape)} [B + 1]")


def segment_pool_reference(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, mode: str = "mean", normalize: bool = False
) -> torch.Tensor:
    """Pool each sequence of a packed batch (pure torch).

    Args:
        hidden: ``[T, H]`` packed hidden states, any float dtype.
        cu_seqlens: ``[B + 1]`` offsets: sequence ``i`` owns rows ``cu_seqlens[i]:cu_seqlens[i + 1]``.
        mode: ``"mean"``, ``"mean_sqrt_len"`` (sum / sqrt(n)), ``"max"`` or ``"sum"``.
        normalize: L2-normalise each pooled row (``F.normalize``).

    Returns:
        ``[B, H]`` fp32; a sequence with no rows pools to zeros.
    """
    _check(hidden, cu_seqlens, mode)
    lens = cu_seqlens.diff().to(hidden.device)
    seq_ids = torch.repeat_interleave(torch.arange(lens.numel(), device=hidden.device), lens)
    values = hidden.float()
    if mode == "max":
        out = torch.full((lens.numel(), hidden.shape[1]), float("-inf"), device=hidden.device)
        out.scatter_reduce_(0, seq_ids.unsqueeze(1).expand_as(values), values, "amax")
        out.masked_fill_((lens == 0).unsqueeze(1), 0.0)
    else:
        out = torch.zeros(lens.numel(), hidden.shape[1], device=hidden.device).index_add_(0, seq_ids, values)
        if mode != "sum":
            count = lens.clamp(min=1).float().unsqueeze(1)
            out /= count if mode == "mean" else count.sqrt()
    return F.normalize(out, p=2, dim=-1, eps=_EPS) if normalize else out


@implements(segment_pool_reference)
def segment_pool_triton(hidden, cu_seqlens, mode="mean", normalize=False) -> torch.Tensor:
    """The same as :func:`segment_pool_reference`, in one Triton launch (one program per sequence)."""
    import triton

    _check(hidden, cu_seqlens, mode)
    num_seqs, width = cu_seqlens.numel() - 1, hidden.shape[1]
    out = torch.empty(num_seqs, width, dtype=torch.float32, device=hidden.device)
    if num_seqs == 0:
        return out
    hidden = hidden if hidden.stride(1) == 1 else hidden.contiguous()
    block_h = triton.next_power_of_2(width)
    block_t = max(1, min(64, 8192 // block_h))
    _pool_kernel()[(num_seqs,)](
        hidden, cu_seqlens.to(device=hidden.device, dtype=torch.int64), out, width, hidden.stride(0), out.stride(0),
        MODE=MODES[mode], NORMALIZE=normalize, BLOCK_T=block_t, BLOCK_H=block_h,
    )
    return out


@functools.cache
def _pool_kernel():
    """Compile the Triton kernel once (importing triton only when it is used)."""
    import triton
    import triton.language as tl

    @triton.jit
    def segment_pool_kernel(
        x_ptr, cu_ptr, out_ptr, width, stride_x, stride_out,
        MODE: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        seq = tl.program_id(0)
        start = tl.load(cu_ptr + seq)
        end = tl.load(cu_ptr + seq + 1)
        cols = tl.arange(0, BLOCK_H)
        in_row = cols < width
        if MODE == 2:
            acc = tl.full((BLOCK_H,), float("-inf"), tl.float32)
        else:
            acc = tl.zeros((BLOCK_H,), tl.float32)
        for t0 in range(start, end, BLOCK_T):
            rows = t0 + tl.arange(0, BLOCK_T)
            mask = (rows[:, None] < end) & in_row[None, :]
            if MODE == 2:
                x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=float("-inf"))
                acc = tl.maximum(acc, tl.max(x.to(tl.float32), axis=0))
            else:
                x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
                acc += tl.sum(x.to(tl.float32), axis=0)
        count = tl.maximum(end - start, 1).to(tl.float32)
        if MODE == 0:
            acc = acc / count
        if MODE == 1:
            acc = acc / tl.sqrt(count)
        if MODE == 2:
            acc = tl.where(end > start, acc, 0.0)
        acc = tl.where(in_row, acc, 0.0)
        if NORMALIZE:
            acc = acc / tl.maximum(tl.sqrt(tl.sum(acc * acc, axis=0)), 1e-12)
        tl.store(out_ptr + seq * stride_out + cols, acc, mask=in_row)

    return segment_pool_kernel


@hookimpl
def poolkit_register_kernels(register):
    register("segment_pool:torch", Kernel(fn=segment_pool_reference, reference=segment_pool_reference, device="any"))
    register("segment_pool:triton", triton_kernel(segment_pool_triton))
