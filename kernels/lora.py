"""LoRA's low-rank products over a packed batch in which runs of tokens have different adapters.

``lora_delta(x [T, in], out [T, out], a [S, R, in], b [S, out, R], segments) -> out`` adds, for
each ``(start, stop, slot)`` of ``segments``, ``(x[start:stop] @ a[slot].T) @ b[slot].T`` to
``out[start:stop]`` (the shrink to rank ``R``, then the expand), in place, and returns ``out``.
Tokens in no segment (the base model's) are left as they are. A batch keeps its length order
(:mod:`poolkit.runtime.adapter_runs`), so an adapter may own several runs, one per stretch of its
consecutive sequences: the segmented form of vLLM's punica kernels (SGMV) on packed tokens, every
segment of a layer in one call.

The op's contract, which every ``lora_delta`` kernel keeps (same arguments as the reference, which
is what ``poolkit.kernel_reference("lora_delta")`` returns) and the slot stacks of
:mod:`poolkit.lora.injection` rely on:
``fn(x, out, a, b, segments) -> out``

- ``x``: ``[T, in]`` the layer's inputs; ``out``: ``[T, out]`` its outputs, changed in place;
- ``a``: ``[S, R, in]``, ``b``: ``[S, out, R]``, the slots' factors in the model's dtype (``b``
  already times the adapter's scaling; rows and columns an adapter does not use are zeros);
- ``segments``: ``(start, stop, slot)`` runs of rows, disjoint, on the host;
- returns ``out``; the products are computed in the factors' dtype (at least; a kernel may use float32).

On the CPU the ``:cpu`` kernel runs every segment in one compiled call (``lora.c``, AVX-512): each
block of a run's rows shrunk and expanded where it lies, the sums in float32, each output rounded
once; no gather, no padding to the longest run, no call per adapter.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Sequence

import torch

from poolkit.config import cpu
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, KernelPriority, implements

from .compiler import load_typed_library, workers
from .triton_support import triton_kernel

SOURCE = Path(__file__).with_name("lora.c")
#: The dtype codes of lora.c.
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "poolkit_lora_available": (),
    "poolkit_lora_delta": (_P, _I, _P, _I, ctypes.c_int, _P, _P, _I, _I, _I, _P, _I, _I),
}
#: Below this many multiply-adds a call runs on the calling thread alone.
_PARALLEL_MACS = 1 << 20


def lora_delta_reference(
    x: torch.Tensor, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, segments: Sequence[tuple[int, int, int]]
) -> torch.Tensor:
    """Each segment's ``B (A x)`` added to its rows of ``out`` (pure torch, every device), in the
    factors' dtype."""
    if len(segments) > 2:
        return _batched(x, out, a, b, segments)
    for start, stop, slot in segments:
        shrunk = x[start:stop].to(a.dtype) @ a[slot].t()
        if out.dtype == b.dtype:  # the expand adds into the rows in place, one pass
            out[start:stop].addmm_(shrunk, b[slot].t())
        else:
            out[start:stop] += (shrunk @ b[slot].t()).to(out.dtype)
    return out


def _batched(x: torch.Tensor, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, segments: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    """Many segments as two batched matmuls over the segments padded to the longest (small matmuls
    one by one cost more in calls than in arithmetic); each segment's rows added back as a slice."""
    rows, slots = _gather_plan(tuple(segments), x.device)
    count = len(segments)
    factors_a, factors_b = (a[:count], b[:count]) if slots is None else (a[slots], b[slots])
    # [S, L, in]; a shorter segment's padding repeats its last row (index_select: advanced indexing is slower on the CPU)
    gathered = torch.index_select(x.to(a.dtype), 0, rows.flatten()).view(*rows.shape, x.shape[-1])
    delta = torch.bmm(torch.bmm(gathered, factors_a.transpose(1, 2)), factors_b.transpose(1, 2))  # [S, L, out]
    for i, (start, stop, _) in enumerate(segments):
        out[start:stop] += delta[i, : stop - start].to(out.dtype)
    return out


@functools.lru_cache(maxsize=4)
def _gather_plan(segments: tuple[tuple[int, int, int], ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows each padded segment reads (``[S, L]``) and the slots they use (``None`` when the
    segments use slots ``0..S-1`` in order: the stacks' first ``S`` slots, no copy). Every layer of a
    batch asks for the same segments: worked out once."""
    longest = max(stop - start for start, stop, _ in segments)
    index = torch.arange(longest)
    rows = torch.stack([(start + index).clamp_max(stop - 1) for start, stop, _ in segments]).to(device)
    slots = [slot for _, _, slot in segments]
    return rows, None if slots == list(range(len(slots))) else torch.tensor(slots, device=device)


@implements(lora_delta_reference)
def lora_delta_triton(x, out, a, b, segments) -> torch.Tensor:
    """The same as :func:`lora_delta_reference`, every segment in one Triton launch: a program per
    (segment, block of rows, block of output columns) shrinks its rows to rank ``R`` and expands
    them to its columns, in float32, and adds them to ``out``."""
    import triton

    if not segments:
        return out
    device = out.device
    starts, stops, slots = (torch.tensor(column, dtype=torch.int32, device=device) for column in zip(*segments))
    longest = max(stop - start for start, stop, _ in segments)
    width, rank, features = x.shape[1], a.shape[1], out.shape[1]
    x = x if x.stride(1) == 1 else x.contiguous()
    block_m, block_n, block_k = 16, max(16, min(64, triton.next_power_of_2(features))), max(16, min(64, triton.next_power_of_2(width)))
    grid = (len(segments), triton.cdiv(longest, block_m), triton.cdiv(features, block_n))
    _delta_kernel()[grid](
        x, out, a, b, starts, stops, slots, width, rank, features,
        x.stride(0), out.stride(0), a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=max(16, triton.next_power_of_2(rank)),
    )
    return out


@functools.cache
def _delta_kernel():
    """Compile the Triton kernel once (importing triton only when it is used)."""
    import triton
    import triton.language as tl

    @triton.jit
    def lora_delta_kernel(
        x_ptr, out_ptr, a_ptr, b_ptr, starts_ptr, stops_ptr, slots_ptr, width, rank, features,
        stride_x, stride_out, stride_a_slot, stride_a_rank, stride_b_slot, stride_b_row,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    ):
        segment = tl.program_id(0)
        start = tl.load(starts_ptr + segment)
        stop = tl.load(stops_ptr + segment)
        slot = tl.load(slots_ptr + segment).to(tl.int64)
        rows = start + tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        if start + tl.program_id(1) * BLOCK_M < stop:
            in_rows = rows < stop
            ranks = tl.arange(0, BLOCK_R)
            in_rank = ranks < rank
            shrunk = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
            for k0 in range(0, width, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                in_k = ks < width
                xs = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=in_rows[:, None] & in_k[None, :], other=0.0)
                a = tl.load(
                    a_ptr + slot * stride_a_slot + ranks[None, :] * stride_a_rank + ks[:, None],
                    mask=in_rank[None, :] & in_k[:, None], other=0.0,
                )
                shrunk += tl.dot(xs.to(tl.float32), a.to(tl.float32), input_precision="ieee")  # not TF32
            cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
            in_cols = cols < features
            b = tl.load(
                b_ptr + slot * stride_b_slot + cols[None, :] * stride_b_row + ranks[:, None],
                mask=in_cols[None, :] & in_rank[:, None], other=0.0,
            )
            delta = tl.dot(shrunk, b.to(tl.float32), input_precision="ieee")
            where = out_ptr + rows[:, None] * stride_out + cols[None, :]
            mask = in_rows[:, None] & in_cols[None, :]
            tl.store(where, (tl.load(where, mask=mask, other=0.0).to(tl.float32) + delta).to(out_ptr.dtype.element_ty), mask=mask)

    return lora_delta_kernel


@functools.cache
def _library() -> ctypes.CDLL | None:
    """lora.c built for this machine, where the CPU has AVX-512 (:mod:`poolkit.config.cpu`), the build
    holds its AVX-512 code (and there is a C compiler)."""
    lib = load_typed_library(SOURCE, _SIGNATURES) if cpu.cpu_features().avx512f else None
    return lib if lib is not None and lib.poolkit_lora_available() else None


@implements(lora_delta_reference)
def lora_delta_cpu(x, out, a, b, segments) -> torch.Tensor:
    """:func:`lora_delta_reference` in one compiled call on the CPU (``lora.c``): float32 or bf16,
    ``x``, ``out`` and the factors of one dtype, rows of unit stride, ``in`` and ``out`` widths
    multiples of 16; any other call goes to the reference, and so do one or two runs, which the
    reference multiplies in place with torch's own matmuls (faster than lora.c on one long run:
    all-MiniLM-L6-v2's layers, 12% against 15% of the base matmuls' time; with 16 adapters over
    96 sequences lora.c took 19%, the reference 105%)."""
    if len(segments) <= 2:
        return lora_delta_reference(x, out, a, b, segments)
    tokens, width = x.shape
    rank, features = a.shape[1], out.shape[1]
    if (
        _library() is None
        or x.device.type != "cpu"
        or not x.dtype == out.dtype == a.dtype == b.dtype
        or x.dtype not in _DTYPES
        or width % 16
        or features % 16
        or x.stride(1) != 1
        or out.stride(1) != 1
        or not (a.is_contiguous() and b.is_contiguous())
    ):
        return lora_delta_reference(x, out, a, b, segments)
    runs = _runs(tuple(segments))
    rows = sum(stop - start for start, stop, _ in segments)
    code = _library().poolkit_lora_delta(
        x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0), _DTYPES[x.dtype], a.data_ptr(), b.data_ptr(), width,
        features, rank, runs.data_ptr(), len(segments), workers(rows * rank * (width + features) >= _PARALLEL_MACS),
    )
    if code:
        if code == 1:
            raise MemoryError("poolkit LoRA kernel: out of memory for its scratch")
        raise ValueError(f"poolkit LoRA kernel: cannot compute segments {list(segments)[:4]} (code {code})")
    return out


@functools.lru_cache(maxsize=4)
def _runs(segments: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
    """The segments as lora.c reads them (``[count, 3]`` int64); every layer of a batch asks for the same."""
    return torch.tensor(segments, dtype=torch.int64).reshape(-1, 3)


@hookimpl
def poolkit_register_kernels(register):
    register("lora_delta:torch", Kernel(fn=lora_delta_reference, reference=lora_delta_reference, device="any"))
    register(
        "lora_delta:cpu",
        Kernel(
            fn=lora_delta_cpu, device="cpu", priority=KernelPriority.COMPILED, is_available=lambda: _library() is not None
        ),
    )
    register("lora_delta:triton", triton_kernel(lora_delta_triton))
