"""LoRA's low-rank products over a packed batch in which runs of tokens have different adapters.

``lora_delta(x [T, in], out [T, out], a [S, R, in], b [S, out, R], segments) -> out`` adds, for
each ``(start, stop, slot)`` of ``segments``, ``(x[start:stop] @ a[slot].T) @ b[slot].T`` to
``out[start:stop]`` (the shrink to rank ``R``, then the expand), in place, and returns ``out``.
Tokens in no segment (the base model's) are left as they are. The engine orders a batch's
sequences by adapter, so each adapter in the batch owns one run and the op runs two small matmuls
per adapter: the segmented form of vLLM's punica kernels (SGMV) on packed tokens.

The op's contract, which every ``lora_delta`` kernel keeps (same arguments as the reference, which
is what ``poolkit.kernel_reference("lora_delta")`` returns) and :mod:`poolkit.lora.manager` relies on:
``fn(x, out, a, b, segments) -> out``

- ``x``: ``[T, in]`` the layer's inputs; ``out``: ``[T, out]`` its outputs, changed in place;
- ``a``: ``[S, R, in]``, ``b``: ``[S, out, R]``, the slots' factors in ``out``'s dtype (``b``
  already times the adapter's scaling; rows and columns an adapter does not use are zeros);
- ``segments``: ``(start, stop, slot)`` runs of rows, disjoint, on the host;
- returns ``out``; the products are computed in the factors' dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch

from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel


def lora_delta_reference(
    x: torch.Tensor, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, segments: Sequence[tuple[int, int, int]]
) -> torch.Tensor:
    """Each segment's ``B (A x)`` added to its rows of ``out`` (pure torch, every device)."""
    for start, stop, slot in segments:
        rows = x[start:stop].to(a.dtype)
        out[start:stop] += ((rows @ a[slot].t()) @ b[slot].t()).to(out.dtype)
    return out


@hookimpl
def poolkit_register_kernels(register):
    register("lora_delta:torch", Kernel(fn=lora_delta_reference, reference=lora_delta_reference, device="any"))
