"""Kernels: the contract (:class:`Kernel`) and the lookup of the best one for an op and a device."""

from __future__ import annotations

from .kernel_spec import Kernel, check_kernel
from .lookup import select_kernel

__all__ = ["Kernel", "check_kernel", "select_kernel"]
