"""The kernel contract: an implementation of an op for a device type, with the torch reference it must match.

Kept apart from the lookup (:mod:`poolkit.plugins.lookup`) so the plugin manager can check kernels without
importing what queries its registries.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Iterator, TypeVar

import torch

#: The activations of the ``linear_act`` op, by the names its ``act`` argument takes (``gated_linear`` and
#: ``linear_int8`` take the same): every kernel of the op takes every one of them, so a model fuses any without
#: knowing which kernel runs. ``none`` is no activation; the others are torch's ``gelu``, ``gelu`` with
#: ``approximate="tanh"``, ``relu``, ``silu``, ``tanh`` and ``sigmoid``, as the op's reference computes them
#: (:data:`poolkit.kernels.linear.ACTIVATIONS`, which implements exactly these names).
LINEAR_ACTIVATIONS = ("none", "gelu", "gelu_tanh", "relu", "silu", "tanh", "sigmoid")


#: ``probe(layer, x, compute)``: what a linear layer runs instead of ``compute(x)`` (its matmul and
#: fused epilogue) while a probe is set; it must return ``compute(x)``'s result, or a tensor equal to it
#: (int8 calibration gives back the float run's outputs for the layers before the one it measures).
LinearProbe = Callable[[torch.nn.Module, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]


@dataclass
class _Probe:
    current: LinearProbe | None = None


#: The probe of the linear layers now, read by the native families' linear layers on every call
#: (``LINEAR_PROBE.current``; ``None``: none). Set it with :func:`probing`.
LINEAR_PROBE = _Probe()


@contextlib.contextmanager
def probing(probe: LinearProbe) -> Iterator[None]:
    """Run every linear layer of the native families through ``probe`` inside the block: int8
    calibration reads each layer's inputs so (and replays the float run's outputs while it measures each
    layer's cost), and ``poolkit bench --breakdown`` times the matmuls."""
    previous, LINEAR_PROBE.current = LINEAR_PROBE.current, probe
    try:
        yield
    finally:
        LINEAR_PROBE.current = previous


def hadamard_rows(x: torch.Tensor, block: int) -> torch.Tensor:
    """Each row of ``x`` (``[..., k]``, float32, ``k`` a multiple of ``block``) times the block-diagonal
    normalized Hadamard matrix of blocks of ``block`` (Sylvester's order: ``H[i, j] = (-1)^popcount(i & j)
    / sqrt(block)``, symmetric and its own inverse): the ``rotation`` of the ``linear_int8`` op, which a
    model applies to an int8 layer's weight rows once (``W x = (W H)(H x)``) and the kernel to its inputs."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    return (blocks @ _hadamard(block, x.device)).reshape(x.shape)


@functools.cache
def _hadamard(block: int, device: torch.device) -> torch.Tensor:
    index = torch.arange(block)
    bits = torch.bitwise_and(index[:, None], index[None, :])
    parity = torch.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits = bits >> 1
    return ((1 - 2 * parity).float() / block**0.5).to(device)


class KernelPriority(IntEnum):
    """The ranks the built-in kernels take among the kernels of an op (:attr:`Kernel.priority`), named for
    what puts a kernel there. ``Kernel`` takes any int: a plugin places its kernel at, between or above
    these (``poolkit plugins --all`` shows every kernel's rank and what it is selected for)."""

    #: Runs and is tested, but is slower than the reference on this CPU, so only a call by name takes it
    #: (oneDNN's ``linear_act`` and ``gated_linear`` where torch does not dispatch to AVX-512).
    BELOW_REFERENCE = -10
    #: The pure-torch reference, registered for ``"any"`` device: what runs where nothing ranks higher.
    REFERENCE = 0
    #: Faster than the reference on the CPU, and below any compiled kernel of its op that runs: torch's ops
    #: arranged better (packed MaxSim, SPLADE's maximum before its activation, prefix attention as two flash
    #: attentions), or a compiled kernel's lesser build (attention on AVX-512's vector units, below AMX's tiles).
    FAST_PATH = 5
    #: A compiled kernel or a library's: C built for this CPU (``kernels/*.c``), oneDNN, Triton and
    #: FlashAttention on CUDA.
    COMPILED = 10
    #: A compiled kernel for a CPU tier that beats a library's general code there, below the top tier (the
    #: int8 layer on AVX512-VNNI, over oneDNN's int8 matmul).
    SPECIALIZED = 15
    #: The top of an op: the AMX tiles' layers, over oneDNN's and VNNI's; where the example plugin puts its
    #: override of ``segment_pool``, above that op's built-ins.
    TOP = 20


@dataclass(frozen=True)
class Kernel:
    """One implementation of an op.

    Attributes:
        fn: the implementation.
        reference: a pure-torch implementation with the same signature and defaults; tests
            compare ``fn`` with it. It is not run in ``fn``'s place: an op that must run
            everywhere has a kernel of its own for ``"any"`` device (``poolkit.kernel_reference``
            returns a built-in op's reference). Left out, it is the one ``fn`` was declared
            against with :func:`implements`.
        device: device type ``fn`` runs on (``"cpu"``, ``"cuda"``) or ``"any"``.
        priority: higher wins among available kernels for the same op and device; on a tie, a
            kernel for the exact device type beats an ``"any"`` one. The built-in kernels rank at a
            :class:`KernelPriority`; kept as a plain ``int``.
        is_available: whether ``fn`` can run in this process (a library is installed, ...).
        row_bucket: the row count (first dimension) this kernel would rather see than ``n``,
            at least ``n``; ``None`` takes any count. A kernel that compiles or caches per input
            shape (oneDNN keeps a primitive per shape; CUDA graphs are captured per size) declares
            its buckets here, and the engine pads each packed batch with filler sequences to
            :func:`poolkit.kernel_rows` tokens, so every ``[T, ...]`` tensor of the forward pass
            already has a bucketed count and nothing is copied to pad it. Other callers may
            still pass any count.
    """

    fn: Callable
    reference: Callable | None = None
    device: str = "any"
    priority: int = KernelPriority.REFERENCE
    is_available: Callable[[], bool] = lambda: True
    row_bucket: Callable[[int], int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority", int(self.priority))
        if self.reference is None:
            declared = getattr(self.fn, "reference", None)
            if declared is None:
                raise TypeError(f"Kernel({getattr(self.fn, '__qualname__', self.fn)!r}) needs its op's reference: pass "
                                "reference=, or declare the function with poolkit.implements(reference)")
            object.__setattr__(self, "reference", declared)


F = TypeVar("F", bound=Callable)


def implements(reference: Callable) -> Callable[[F], F]:
    """Declares a function a kernel of ``reference``'s op: the op's contract is typed once, in its
    reference, and each kernel names the same parameters with the same defaults, which this checks
    when the kernel is defined (a renamed or reordered parameter, or another default, raises
    ``TypeError`` at import, not a wrong answer at run time) before giving the kernel the reference's
    annotations and naming it as ``fn.reference``, the :class:`Kernel` reference it registers with."""

    def declare(fn: F) -> F:
        if _parameters(fn) != _parameters(reference):
            raise TypeError(
                f"kernel {fn.__qualname__}{inspect.signature(fn)} does not take the arguments of its op's "
                f"reference {reference.__qualname__}{inspect.signature(reference)}"
            )
        fn.__annotations__ = dict(reference.__annotations__)
        setattr(fn, "reference", reference)
        return fn

    return declare


def _parameters(fn: Callable) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def check_kernel(name: str, obj: object) -> Kernel:
    if not isinstance(obj, Kernel):
        raise TypeError(f"kernel '{name}' must be a poolkit.Kernel, got {type(obj).__name__}")
    if ":" not in name:
        raise TypeError(f"kernel names are '<op>:<impl>', got '{name}'")
    return obj
