"""Kernels: the contract (:class:`Kernel`) and the lookups of an op's kernels for a device."""

from __future__ import annotations

from .kernel_spec import Kernel, check_kernel
from .lookup import kernel_ops, kernel_reference, kernel_rows, kernel_table, select_kernel

__all__ = ["Kernel", "check_kernel", "kernel_ops", "kernel_reference", "kernel_rows", "kernel_table", "select_kernel"]
