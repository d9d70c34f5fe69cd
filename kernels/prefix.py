"""The ``prefix_attention`` op's fast variants: on the CPU, two flash attentions merged by their
log-sum-exp; on CUDA, one Triton launch.

On the CPU (``prefix_attention:flash``), each group of sequences that continue one prefix with one
length runs as two calls of torch's CPU flash attention: the queries of all of them at once against
the prefix's keys (one long query sequence, no mask, the prefix read once instead of copied per
sequence), and each sequence's queries against its own keys, causally, both in float32. The two
partial results are merged by their log-sum-exps, which is the softmax over all the keys, and
rounded to the model's dtype once.

On CUDA (``prefix_attention:triton``), a program per (sequence, query head, block of query rows) reads its prefix's keys and values
(rows ``offsets[i] : offsets[i] + starts[i]`` of the packed prefix tensors), then its own sequence's
up to each query, with an online softmax in float32 (IEEE dots, not TF32): the program is
:mod:`poolkit.kernels.prefix_triton`, imported on the first launch. The op's contract and
its torch reference are :func:`poolkit.kernels.attention.prefix_attention`; the CUDA variant is
registered through the kernel hook like every kernel, and checked against the reference under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch

from poolkit.contracts.batch import device_tensor
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, KernelPriority, implements

from .attention import prefix_attention, prefix_groups
from .triton_support import triton_kernel


@implements(prefix_attention)
def prefix_attention_flash(q, k, v, batch, prefix_k, prefix_v, offsets, scale=None) -> torch.Tensor:
    """:func:`~poolkit.kernels.attention.prefix_attention` as two CPU flash attentions per group of
    sequences, merged by their log-sum-exps."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    heads, dim = q.shape[1], q.shape[2]
    repeat = heads // k.shape[1]
    out = q.new_empty(q.shape)
    heads_of = lambda t: t.repeat_interleave(repeat, dim=-2) if repeat > 1 else t  # noqa: E731
    for offset, start, length, n, rows in prefix_groups(batch, offsets):
        qq = q[rows].view(n, length, heads, dim).transpose(1, 2).float()  # each half's output unrounded until the merge
        kk, vv = (heads_of(t[rows].view(n, length, -1, dim)).transpose(1, 2).float() for t in (k, v))
        own, own_lse = flash(qq, kk, vv, 0.0, True, scale=scale)
        if start:
            pk, pv = (heads_of(t[offset : offset + start]).transpose(0, 1).unsqueeze(0).float() for t in (prefix_k, prefix_v))
            together = qq.transpose(0, 1).reshape(1, heads, n * length, dim)
            seen, seen_lse = flash(together, pk, pv, 0.0, False, scale=scale)
            seen = seen.view(heads, n, length, dim).transpose(0, 1)
            seen_lse = seen_lse.view(heads, n, length).transpose(0, 1)
            top = torch.maximum(seen_lse, own_lse)
            a, b = (seen_lse - top).exp().unsqueeze(-1), (own_lse - top).exp().unsqueeze(-1)
            own = (seen.float() * a + own.float() * b) / (a + b)
        out.index_copy_(0, rows, own.transpose(1, 2).reshape(rows.shape[0], heads, dim).to(q.dtype))
    return out


@implements(prefix_attention)
def prefix_attention_triton(q, k, v, batch, prefix_k, prefix_v, offsets, scale=None) -> torch.Tensor:
    """:func:`~poolkit.kernels.attention.prefix_attention` in one Triton launch."""
    import triton

    from .prefix_triton import prefix_attention_kernel

    tokens, heads, dim = q.shape
    out = torch.empty_like(q)
    if tokens == 0:
        return out
    device = q.device
    starts = device_tensor(batch.starts or [0] * batch.num_seqs, torch.int64, device)
    offs = device_tensor(offsets, torch.int64, device)
    cu = batch.cu_seqlens.to(device)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    prefix_k, prefix_v = (t if t.numel() and t.stride(-1) == 1 else t.contiguous() for t in (prefix_k, prefix_v))
    block_m, block_n = 16, 32
    grid = (batch.num_seqs, heads, triton.cdiv(batch.max_len, block_m))
    prefix_attention_kernel[grid](
        q, k, v, prefix_k, prefix_v, out, cu, starts, offs,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        prefix_k.stride(0), prefix_k.stride(1), prefix_v.stride(0), prefix_v.stride(1), out.stride(0), out.stride(1),
        heads // k.shape[1], dim, dim**-0.5 if scale is None else float(scale),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(dim)),
    )
    return out


def _flash_available() -> bool:
    return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


@hookimpl
def poolkit_register_kernels(register):
    register(
        "prefix_attention:flash",
        Kernel(fn=prefix_attention_flash, device="cpu", priority=KernelPriority.FAST_PATH, is_available=_flash_available),
    )
    register("prefix_attention:triton", triton_kernel(prefix_attention_triton))
