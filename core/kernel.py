"""Kernels: an implementation of an op for a device type, checked against a torch reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import UnknownName


@dataclass(frozen=True)
class Kernel:
    """One implementation of an op.

    Attributes:
        fn: the implementation.
        reference: a pure-torch implementation with the same signature; tests compare ``fn``
            with it, and it runs wherever ``fn`` cannot.
        device: device type ``fn`` runs on (``"cpu"``, ``"cuda"``) or ``"any"``.
        priority: higher wins among available kernels for the same op and device; on a tie, a
            kernel for the exact device type beats an ``"any"`` one.
        is_available: whether ``fn`` can run in this process (a library is installed, ...).
    """

    fn: Callable
    reference: Callable
    device: str = "any"
    priority: int = 0
    is_available: Callable[[], bool] = lambda: True


def check_kernel(name: str, obj: object) -> Kernel:
    if not isinstance(obj, Kernel):
        raise TypeError(f"kernel '{name}' must be a poolkit.Kernel, got {type(obj).__name__}")
    if ":" not in name:
        raise TypeError(f"kernel names are '<op>:<impl>', got '{name}'")
    return obj


def select_kernel(op: str, device: torch.device | str) -> Callable:
    """The best available implementation of ``op`` for ``device``."""
    from .plugins import registry

    device_type = torch.device(device).type
    candidates = [
        entry.obj
        for entry in registry("kernel").entries()
        if entry.name.split(":", 1)[0] == op and entry.obj.device in (device_type, "any")
    ]
    available = [k for k in candidates if k.is_available()]
    if not available:
        raise UnknownName(f"no kernel for op '{op}' on device '{device_type}'")
    return max(available, key=lambda k: (k.priority, k.device == device_type)).fn
