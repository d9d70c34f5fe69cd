"""SPLADE pooling: ``log(1 + relu(logits))`` reduced (max or sum) into one row per sequence.

The op takes a block of MLM logit rows and, for each row, the sequence it belongs to, and folds
the activated rows into a ``[B, vocab]`` fp32 accumulator in place. The SPLADE head calls it on
bounded chunks of rows, so the ``[tokens, vocab]`` logits of a long batch never exist at once.
The torch reference runs everywhere; on the CPU, max pooling reduces the raw logits before
activating them (the activation is monotonic); the Triton kernel fuses activation and reduction
on CUDA, one program per (run of rows of one sequence, block of vocabulary).

The op's contract, which every ``splade_pool`` kernel keeps (same arguments and defaults as the
reference, which is what ``poolkit.kernel_reference("splade_pool")`` returns):
``fn(logits, segment_ids, out, strategy="max", activation="relu") -> out``

- ``logits``: ``[N, V]`` MLM logit rows, any float dtype, never modified;
- ``segment_ids``: ``[N]`` integer row of ``out`` each logit row belongs to, in any order;
- ``out``: ``[B, V]`` float32 accumulator on ``logits``' device, filled with ``-inf`` (max) or
  ``0`` (sum) before the first call and updated in place, so that calls on chunks of rows add up;
- ``strategy``: ``"max"`` or ``"sum"`` (:data:`STRATEGIES`); ``activation``: ``"relu"``,
  ``"log1p_relu"`` or ``"none"`` (:data:`ACTIVATIONS`); anything else, or mismatched shapes, is a
  ``ValueError``;
- returns ``out``.
"""

from __future__ import annotations

import functools

import torch

from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, KernelPriority, implements

from .triton_support import triton_kernel

STRATEGIES = ("max", "sum")
#: ``relu``: ``log1p(relu(x))`` (SPLADE); ``log1p_relu``: ``log1p(log1p(relu(x)))`` (OpenSearch
#: SPLADE, sentence-transformers' name); ``none``: the raw logits (``use_activation=False``).
ACTIVATIONS = ("relu", "log1p_relu", "none")
_ACT_CODES = {"none": 0, "relu": 1, "log1p_relu": 2}


def _check(logits: torch.Tensor, segment_ids: torch.Tensor, out: torch.Tensor, strategy: str, activation: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"SPLADE strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"SPLADE activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if logits.ndim != 2 or out.ndim != 2 or logits.shape[1] != out.shape[1]:
        raise ValueError(f"logits {tuple(logits.shape)} and out {tuple(out.shape)} must be [N, V] and [B, V]")
    if segment_ids.shape != logits.shape[:1]:
        raise ValueError(f"segment_ids {tuple(segment_ids.shape)} must have one entry per logit row ({logits.shape[0]})")
    if out.dtype != torch.float32:
        raise ValueError(f"out must be float32, got {out.dtype}")


def _activate_(x: torch.Tensor, activation: str) -> torch.Tensor:
    """``activation`` (see :data:`ACTIVATIONS`) applied to the fp32 tensor ``x``, in place."""
    if activation != "none":
        torch.relu_(x).log1p_()
        if activation == "log1p_relu":
            x.log1p_()
    return x


def splade_pool_reference(
    logits: torch.Tensor, segment_ids: torch.Tensor, out: torch.Tensor, strategy: str = "max", activation: str = "relu"
) -> torch.Tensor:
    """Fold activated logit rows into ``out[segment_ids]``, in place (pure torch).

    Args:
        logits: ``[N, V]`` MLM logits, any float dtype; computed on in fp32, never modified.
        segment_ids: ``[N]`` row of ``out`` each logit row belongs to (any order).
        out: ``[B, V]`` fp32 accumulator: ``-inf`` (max) or ``0`` (sum) before the first call.
        strategy: ``"max"`` or ``"sum"`` over the rows of a segment.
        activation: ``"relu"``, ``"log1p_relu"`` or ``"none"`` (see :data:`ACTIVATIONS`).

    Returns:
        ``out``.
    """
    _check(logits, segment_ids, out, strategy, activation)
    if logits.shape[0] == 0:
        return out
    x = logits.float()
    x = _activate_(x.clone() if x is logits else x, activation)  # the caller's logits stay intact
    index = segment_ids.to(device=out.device, dtype=torch.long)
    if strategy == "max":
        out.scatter_reduce_(0, index.unsqueeze(1).expand_as(x), x, "amax", include_self=True)
    else:
        out.index_add_(0, index, x)
    return out


@implements(splade_pool_reference)
def splade_pool_reduce_first(logits, segment_ids, out, strategy="max", activation="relu") -> torch.Tensor:
    """The same as :func:`splade_pool_reference`, with ``max`` taken before the activation.

    Every activation is non-decreasing, so the maximum of the activated rows is the activation
    of the rows' maximum: the raw logits are max-reduced in their own dtype (exact), and only the
    ``[segments, V]`` result is widened and activated, instead of all ``[N, V]`` rows. Bit for
    bit the reference's result; ``sum`` goes to the reference.
    """
    if strategy != "max":
        return splade_pool_reference(logits, segment_ids, out, strategy, activation)
    _check(logits, segment_ids, out, strategy, activation)
    if logits.shape[0] == 0:
        return out
    index = segment_ids.to(device=out.device, dtype=torch.long)
    rows, local = torch.unique(index, return_inverse=True)
    peak = logits.new_full((rows.numel(), logits.shape[1]), float("-inf"))
    peak.scatter_reduce_(0, local.unsqueeze(1).expand_as(logits), logits, "amax", include_self=True)
    x = _activate_(peak.float(), activation)
    out[rows] = torch.maximum(out[rows], x)
    return out


@implements(splade_pool_reference)
def splade_pool_triton(logits, segment_ids, out, strategy="max", activation="relu") -> torch.Tensor:
    """The same as :func:`splade_pool_reference`, fused in one Triton kernel.

    Rows are grouped into runs of one segment (packed batches hold each sequence's rows
    together; other orders are sorted first), and each program reduces one run over one block
    of the vocabulary into registers, then folds it into ``out``: no atomics, deterministic.
    """
    import triton

    _check(logits, segment_ids, out, strategy, activation)
    n, vocab = logits.shape
    if n == 0:
        return out
    segment_ids = segment_ids.to(device=logits.device, dtype=torch.long)
    segments, counts = torch.unique_consecutive(segment_ids, return_counts=True)
    if segments.numel() != torch.unique(segments).numel():  # a segment in several runs: sort rows by segment
        order = torch.argsort(segment_ids, stable=True)
        logits, segment_ids = logits[order], segment_ids[order]
        segments, counts = torch.unique_consecutive(segment_ids, return_counts=True)
    starts = torch.zeros(segments.numel() + 1, dtype=torch.int64, device=logits.device)
    torch.cumsum(counts, 0, out=starts[1:])
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    if out.stride(1) != 1:
        raise ValueError("out must have contiguous rows")
    block_v = min(1024, triton.next_power_of_2(vocab))
    grid = (segments.numel(), triton.cdiv(vocab, block_v))
    _splade_kernel()[grid](
        logits, starts, segments, out, vocab, logits.stride(0), out.stride(0),
        SUM=strategy == "sum", ACT=_ACT_CODES[activation], BLOCK_V=block_v,
    )
    return out


@functools.cache
def _splade_kernel():
    """Compile the Triton kernel once (importing triton only when it is used)."""
    import triton
    import triton.language as tl

    @triton.jit
    def splade_kernel(
        x_ptr, starts_ptr, segments_ptr, out_ptr, vocab, stride_x, stride_out,
        SUM: tl.constexpr, ACT: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        run = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        mask = cols < vocab
        start = tl.load(starts_ptr + run)
        end = tl.load(starts_ptr + run + 1)
        segment = tl.load(segments_ptr + run)
        if SUM:
            acc = tl.zeros((BLOCK_V,), tl.float32)
        else:
            acc = tl.full((BLOCK_V,), float("-inf"), tl.float32)
        for row in range(start, end):
            x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            # log1p(y) as log(u) * y / (u - 1), u = 1 + y: accurate for small y (Goldberg); the
            # interpreter runs no libdevice log1p.
            if ACT >= 1:
                y = tl.maximum(x, 0.0)
                u = 1.0 + y
                x = tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))
            if ACT == 2:
                u = 1.0 + x
                x = tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))
            if SUM:
                acc += x
            else:
                acc = tl.maximum(acc, x)
        target = out_ptr + segment * stride_out + cols
        previous = tl.load(target, mask=mask, other=0.0)
        if SUM:
            acc = previous + acc
        else:
            acc = tl.maximum(previous, acc)
        tl.store(target, acc, mask=mask)

    return splade_kernel


@hookimpl
def poolkit_register_kernels(register):
    register("splade_pool:torch", Kernel(fn=splade_pool_reference, reference=splade_pool_reference, device="any"))
    register(
        "splade_pool:reduce_first",
        Kernel(fn=splade_pool_reduce_first, device="cpu", priority=KernelPriority.FAST_PATH),
    )
    register("splade_pool:triton", triton_kernel(splade_pool_triton))
