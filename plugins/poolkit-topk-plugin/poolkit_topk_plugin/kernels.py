"""An override of a built-in kernel: ``segment_pool`` on the CPU through running sums.

What an override takes: a kernel registered under a name of its own (``segment_pool:topk_cumsum``)
for the built-in op, with a priority above the built-in kernels' (``KernelPriority.TOP``, above
``segment_pool``'s ``REFERENCE`` and ``COMPILED``), the op's reference reused
through ``poolkit.kernel_reference`` (what tests compare with, and what the modes this kernel
does not handle go to), and an ``is_available`` that poolkit asks on every lookup. Here that is
an opt-in switch, ``POOLKIT_TOPK_SEGMENT_POOL=1``, so that installing the example changes no
result: models loaded while it is set pool their ``sum`` and ``mean`` sequences with this kernel.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from poolkit import Kernel, KernelPriority, hookimpl, kernel_reference

__all__ = ["SWITCH", "segment_pool_cumsum"]

#: The environment variable that makes the kernel available (``1``).
SWITCH = "POOLKIT_TOPK_SEGMENT_POOL"


def segment_pool_cumsum(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, mode: str = "mean", normalize: bool = False
) -> torch.Tensor:
    """``segment_pool`` with each sequence's sum taken as the difference of two running sums (fp64).

    Takes and returns what the built-in ``segment_pool`` does (``[T, H]`` hidden states and
    ``[B + 1]`` offsets in, ``[B, H]`` float32 out); modes other than ``sum`` and ``mean``, and
    malformed inputs, go to the reference.
    """
    if mode not in ("sum", "mean") or hidden.ndim != 2 or cu_seqlens.ndim != 1 or cu_seqlens.numel() < 1:
        return kernel_reference("segment_pool")(hidden, cu_seqlens, mode, normalize)
    cu = cu_seqlens.to(device=hidden.device, dtype=torch.long)
    running = torch.cat([hidden.new_zeros(1, hidden.shape[1], dtype=torch.float64), hidden.double().cumsum(0)])
    out = running[cu[1:]] - running[cu[:-1]]
    if mode == "mean":
        out /= cu.diff().clamp(min=1).unsqueeze(1)
    out = out.float()
    return F.normalize(out, p=2, dim=-1, eps=1e-12) if normalize else out


def _switched_on() -> bool:
    return os.environ.get(SWITCH, "") not in ("", "0")


@hookimpl
def poolkit_register_kernels(register):
    register(
        "segment_pool:topk_cumsum",
        Kernel(
            fn=segment_pool_cumsum,
            reference=kernel_reference("segment_pool"),
            device="cpu",
            priority=KernelPriority.TOP,
            is_available=_switched_on,
        ),
    )
