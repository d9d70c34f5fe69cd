"""What the Triton kernels share: where they can run, and how they are registered."""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch

from poolkit.contracts.kernel import Kernel, KernelPriority


def triton_available() -> bool:
    """Whether Triton kernels can run in this process: Triton is installed and CUDA is up."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def triton_kernel(fn: Callable) -> Kernel:
    """A CUDA kernel written in Triton (declared with :func:`~poolkit.contracts.kernel.implements`), preferred
    over the torch ones wherever Triton runs."""
    return Kernel(fn=fn, device="cuda", priority=KernelPriority.COMPILED, is_available=triton_available)
