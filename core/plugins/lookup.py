"""Queries over the registries: the kernels of an op for a device, a model's scorer, the tasks taking an option.

They sit above the plugin manager (they load plugins on first use), so the contract modules that
the manager checks registrations with never import it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from ..contracts.errors import InvalidRequest, UnknownName
from ..contracts.kernel import Kernel, KernelPriority, check_kernel
from .manager import get_manager, registry
from .registries import Entry

if TYPE_CHECKING:
    from ..contracts.architecture import LoadedModel
    from ..contracts.scoring import Scorer

#: ``Kernel``, ``KernelPriority`` and ``check_kernel`` are the contract (:mod:`poolkit.contracts.kernel`),
#: named here too so that this module, the documented path of the kernel names, offers all of them.
__all__ = [
    "Kernel", "KernelPriority", "check_kernel", "kernel_for", "kernel_ops", "kernel_reference", "kernel_rows", "kernel_table",
    "option_owners", "row_planner", "select_kernel", "select_scorer", "use_op",
]


def select_kernel(op: str, device: torch.device | str) -> Callable:
    """The best available implementation of ``op`` for ``device``.

    Among the kernels registered as ``"<op>:<impl>"`` for the device's type or ``"any"`` whose
    ``is_available()`` is true, the highest ``priority`` wins; on a tie, the one for the exact
    device type, then the first by name. ``is_available()`` is asked again on every call, so a
    kernel that becomes usable (or stops being so) is picked up by the next call; callers that
    want one choice for a model's lifetime keep what this returns.

    Args:
        op: the op, the part of the kernel names before ``":"`` (``"segment_pool"``).
        device: a ``torch.device`` or a device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``); only
            its type counts.

    Returns:
        The winning kernel's ``fn``.

    Raises:
        UnknownName: no available kernel of ``op`` for the device type.

    Example:
        >>> pool = select_kernel("segment_pool", torch.device("cpu"))
        >>> pool(torch.ones(3, 2), torch.tensor([0, 1, 3]), "mean").shape
        torch.Size([2, 2])
    """
    device_type = torch.device(device).type
    entry = _selected(op, device_type)
    if entry is None:
        raise UnknownName(f"no kernel for op '{op}' on device '{device_type}'")
    return entry.obj.fn


def kernel_for(owner: Any, op: str, device: torch.device | str) -> Callable:
    """:func:`select_kernel`'s choice of ``op`` for ``device``, looked up once per owner object and
    device: what a model's layers and the poolers call on every forward pass or batch.

    The memo is a dict kept on the owner, ``owner.__dict__["_kernels"]``, keyed by
    ``(op, torch.device(device))``; a kernel that becomes available later shows in owners made
    after it. The owner needs a ``__dict__`` (any ``nn.Module``, any plain object). Where
    :func:`use_op` has the owner ask another op for ``op``, that op's kernel answers.

    Example:
        >>> class MeanPool:
        ...     def __call__(self, hidden, cu_seqlens):
        ...         return kernel_for(self, "segment_pool", hidden.device)(hidden, cu_seqlens, "mean")
    """
    cache = owner.__dict__.setdefault("_kernels", {})
    key = (op, torch.device(device))
    if key not in cache:
        cache[key] = select_kernel(owner.__dict__.get("_kernel_ops", {}).get(op, op), device)
    return cache[key]


def use_op(owner: Any, op: str, instead: str | None) -> None:
    """Have ``owner`` (and, for an ``nn.Module``, every module in it) call ``instead``'s kernel where
    its code asks :func:`kernel_for` for ``op``: an op with the same contract whose kernels compute it
    another way (int8 calibration answers a model's ``varlen_attention`` with ``varlen_attention_int8``);
    ``instead=None`` gives ``op`` back its own. The owners' memos of ``op`` are dropped, so the next
    call looks up again.

    Example:
        >>> use_op(model, "varlen_attention", "varlen_attention_int8")
    """
    for each in owner.modules() if isinstance(owner, torch.nn.Module) else (owner,):
        ops = each.__dict__.setdefault("_kernel_ops", {})
        if instead is None:
            ops.pop(op, None)
        else:
            ops[op] = instead
        memo = each.__dict__.get("_kernels", {})
        for key in [key for key in memo if key[0] == op]:
            del memo[key]


def kernel_rows(n: int, device: torch.device | str) -> int:
    """How many rows a packed batch of ``n`` tokens should have on ``device``: the largest
    ``row_bucket(n)`` of the kernels :func:`select_kernel` picks for the device now, ``n`` when
    none declares buckets. The engine pads its batches to it with filler sequences
    (:meth:`PackedBatch.with_filler`).

    Example:
        >>> kernel_rows(1000, "cpu")  # the oneDNN linear kernel's bucket
        1024
    """
    return row_planner(device)(n)


def row_planner(device: torch.device | str) -> Callable[[int], int]:
    """:func:`kernel_rows` for ``device`` with the kernels picked once, now: a run of many
    batches asks the registries (and each kernel's ``is_available()``) once, not per batch."""
    device_type = torch.device(device).type
    buckets = []
    for op in kernel_ops():
        entry = _selected(op, device_type)
        if entry is not None and entry.obj.row_bucket is not None:
            buckets.append(entry.obj.row_bucket)
    if not buckets:
        return lambda n: n
    return lambda n: max(n, *(int(bucket(n)) for bucket in buckets))


def kernel_reference(op: str) -> Callable:
    """The pure-torch reference of ``op``, to pass as ``Kernel(reference=...)`` of a plugin kernel.

    The reference of the op's built-in kernels (they share one), else, for an op that only
    plugins provide, the one of its first kernel by name. It can be called from a plugin's
    ``poolkit_register_kernels`` hook: the built-in kernels are registered before any other plugin.

    Raises:
        UnknownName: no kernel of ``op`` is registered; the message lists the known ops.

    Example:
        >>> Kernel(fn=my_segment_pool, reference=kernel_reference("segment_pool"), device="cpu",
        ...        priority=KernelPriority.TOP)
    """
    entries = _op_entries(op)
    if not entries:
        raise UnknownName(f"unknown kernel op '{op}'; available: {', '.join(kernel_ops()) or 'none'}")
    infos = get_manager().infos
    builtin = [e for e in entries if e.plugin in infos and infos[e.plugin].builtin]
    return (builtin or entries)[0].obj.reference


def kernel_ops() -> list[str]:
    """The ops that have at least one registered kernel, sorted."""
    return sorted({e.name.split(":", 1)[0] for e in registry("kernel").entries()})


def kernel_table(devices: Iterable[torch.device | str] = ("cpu", "cuda")) -> list[dict[str, Any]]:
    """Every registered kernel of every op for each device type, best first, with the selected one.

    One row per (op, device type, kernel for that type or ``"any"``), ranked as
    :func:`select_kernel` ranks them: ``op``, ``for_device`` (the device type asked about),
    ``kernel`` (its ``"<op>:<impl>"`` name), ``registered_by`` (the plugin that registered it),
    ``device``, ``priority``, ``available`` (``is_available()`` now) and ``selected`` (true for
    the one :func:`select_kernel` returns now; no row of an op and device is selected when none
    is available). For ``poolkit plugins`` and ``poolkit info``.

    Args:
        devices: the devices to rank for (``torch.device`` or strings); repeated types count once.
    """
    types = list(dict.fromkeys(torch.device(d).type for d in devices))
    rows: list[dict[str, Any]] = []
    for op in kernel_ops():
        for device_type in types:
            selected = False
            for entry in _ranked(op, device_type):
                available = bool(entry.obj.is_available())
                rows.append(
                    {
                        "op": op,
                        "for_device": device_type,
                        "kernel": entry.name,
                        "registered_by": entry.plugin,
                        "device": entry.obj.device,
                        "priority": entry.obj.priority,
                        "available": available,
                        "selected": available and not selected,
                    }
                )
                selected = selected or available
    return rows


def _op_entries(op: str) -> list[Entry]:
    """The registry entries of ``op``'s kernels, by name."""
    return [e for e in registry("kernel").entries() if e.name.split(":", 1)[0] == op]


def _ranked(op: str, device_type: str) -> list[Entry]:
    """``op``'s kernels for ``device_type`` or ``"any"``, in the order :func:`select_kernel` prefers them."""
    candidates = [e for e in _op_entries(op) if e.obj.device in (device_type, "any")]
    return sorted(candidates, key=lambda e: (e.obj.priority, e.obj.device == device_type), reverse=True)


def _selected(op: str, device_type: str) -> Entry | None:
    """The registry entry of the kernel :func:`select_kernel` picks now, ``None`` if none is available."""
    return next((e for e in _ranked(op, device_type) if e.obj.is_available()), None)


def select_scorer(model: LoadedModel) -> Scorer:
    """The :class:`poolkit.Scorer` a loaded model scores with.

    The one its architecture names in ``score_type``, else the supporting scorer of highest
    priority.

    Raises:
        InvalidRequest: no registered scorer supports the model; the message says why, in vLLM's
            words first (``Scoring API is only enabled for num_labels == 1`` from the
            cross-encoder scorer for a classifier with several labels, else ``This model does
            not support the Scoring API``). The server answers ``/score`` and ``/rerank`` with a
            404 then, as vLLM mounts no such routes for the model.
    """
    scorers = registry("scorer")
    named = model.architecture.score_type
    if named is not None:
        return scorers.get(named)
    ranked = sorted((e.obj for e in scorers.entries()), key=lambda s: -s.priority)
    for scorer in ranked:
        if scorer.supports(model):
            return scorer
    reason = next((r for r in (s.refusal(model) for s in ranked) if r), None)
    raise InvalidRequest(
        reason
        or "This model does not support the Scoring API. "
        f"Model '{model.name}' supports no scoring; supported tasks: {', '.join(model.supported_tasks())}"
    )


def option_owners(options: Iterable[str]) -> list[str]:
    """The registered tasks that take every one of ``options`` as output options, for error messages."""
    wanted = set(options)
    return [e.name for e in registry("task").entries() if wanted <= e.obj.output_options]
