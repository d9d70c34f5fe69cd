"""MaxSim, ColBERT's late-interaction score: for each query token, the best document token.

``score = sum over query tokens q of max over document tokens d of q . d`` (fp32). The torch
reference pads the documents of a call into one ``[N, L, D]`` block; the CPU kernel multiplies the
query with the packed tokens in one matmul and takes a segmented maximum (no padding); the Triton
kernel walks each document's packed tokens in tiles and keeps a running maximum per query token.

The op's contract, which every ``maxsim`` kernel keeps (same arguments as the reference, which is
what ``poolkit.kernel_reference("maxsim")`` returns): ``fn(query, docs, cu_seqlens) -> scores``

- ``query``: ``[Lq, D]`` token vectors of one query, any float dtype;
- ``docs``: ``[T, D]`` every document's token vectors, concatenated, on ``query``'s device;
- ``cu_seqlens``: ``[N + 1]`` integer offsets into ``docs``: document ``i`` is
  ``docs[cu_seqlens[i]:cu_seqlens[i + 1]]``;
- returns ``[N]`` float32 scores on ``docs``' device, computed in fp32; a document with no
  tokens scores 0.
"""

from __future__ import annotations

import functools

import torch

from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, KernelPriority, implements

from .triton_support import triton_kernel


def maxsim_reference(query: torch.Tensor, docs: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """MaxSim of one query against packed documents.

    Args:
        query: ``[Lq, D]`` query token vectors.
        docs: ``[T, D]`` every document's token vectors, concatenated.
        cu_seqlens: ``[N + 1]`` offsets: document ``i`` is ``docs[cu_seqlens[i]:cu_seqlens[i + 1]]``.

    Returns:
        ``[N]`` fp32 scores.
    """
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if not lens:
        return torch.zeros(0, dtype=torch.float32, device=docs.device)
    parts = torch.split(docs[int(cu_seqlens[0]) : int(cu_seqlens[-1])].float(), lens)
    padded = torch.nn.utils.rnn.pad_sequence(parts, batch_first=True)
    mask = torch.arange(padded.shape[1], device=docs.device)[None] < torch.tensor(lens, device=docs.device)[:, None]
    sims = torch.einsum("qd,ntd->nqt", query.float(), padded)
    sims = sims.masked_fill(~mask.unsqueeze(1), float("-inf"))
    best = sims.max(dim=-1).values
    return torch.where(torch.isinf(best), torch.zeros_like(best), best).sum(dim=-1)


@implements(maxsim_reference)
def maxsim_packed(query, docs, cu_seqlens) -> torch.Tensor:
    """The same as :func:`maxsim_reference` without padding: one matmul of the query against every
    packed document token, then each document's maximum per query token (a segmented max)."""
    n = cu_seqlens.numel() - 1
    if n <= 0:
        return torch.zeros(0, dtype=torch.float32, device=docs.device)
    cu = cu_seqlens.to(device=docs.device, dtype=torch.long)
    sims = docs[int(cu[0]) : int(cu[-1])].float() @ query.float().T  # [T, Lq]
    segments = torch.repeat_interleave(torch.arange(n, device=docs.device), cu.diff())
    best = torch.full((n, query.shape[0]), float("-inf"), device=docs.device)
    best.scatter_reduce_(0, segments.unsqueeze(1).expand_as(sims), sims, "amax")
    return torch.where(torch.isinf(best), torch.zeros_like(best), best).sum(dim=-1)


@implements(maxsim_reference)
def maxsim_triton(query, docs, cu_seqlens) -> torch.Tensor:
    """The same as :func:`maxsim_reference`, as one Triton program per document."""
    import triton

    kernel = _maxsim_kernel()
    n = cu_seqlens.numel() - 1
    lq, dim = query.shape
    out = torch.empty(n, dtype=torch.float32, device=docs.device)
    if n == 0:
        return out
    block_q = max(16, triton.next_power_of_2(lq))
    block_d = max(16, triton.next_power_of_2(dim))
    kernel[(n,)](
        query.contiguous(), docs.contiguous(), cu_seqlens.to(torch.int32).contiguous(), out,
        lq, dim, BLOCK_Q=block_q, BLOCK_D=block_d, BLOCK_T=16,
    )
    return out


@functools.cache
def _maxsim_kernel():
    """Compile the Triton kernel once (importing triton only when it is used)."""
    import triton
    import triton.language as tl

    @triton.jit
    def maxsim_kernel(q_ptr, d_ptr, cu_ptr, out_ptr, lq, dim, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
        doc = tl.program_id(0)
        start = tl.load(cu_ptr + doc)
        end = tl.load(cu_ptr + doc + 1)
        rq = tl.arange(0, BLOCK_Q)
        rd = tl.arange(0, BLOCK_D)
        q = tl.load(q_ptr + rq[:, None] * dim + rd[None, :], mask=(rq[:, None] < lq) & (rd[None, :] < dim), other=0.0)
        q = q.to(tl.float32)
        best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        for t0 in range(start, end, BLOCK_T):
            rt = t0 + tl.arange(0, BLOCK_T)
            d = tl.load(d_ptr + rt[:, None] * dim + rd[None, :], mask=(rt[:, None] < end) & (rd[None, :] < dim), other=0.0)
            sims = tl.dot(q, tl.trans(d.to(tl.float32)))
            sims = tl.where(rt[None, :] < end, sims, float("-inf"))
            best = tl.maximum(best, tl.max(sims, axis=1))
        best = tl.where((rq < lq) & (best > float("-inf")), best, 0.0)
        tl.store(out_ptr + doc, tl.sum(best, axis=0))

    return maxsim_kernel


@hookimpl
def poolkit_register_kernels(register):
    register("maxsim:torch", Kernel(fn=maxsim_reference, reference=maxsim_reference, device="any"))
    register("maxsim:packed", Kernel(fn=maxsim_packed, device="cpu", priority=KernelPriority.FAST_PATH))
    register("maxsim:triton", triton_kernel(maxsim_triton))
