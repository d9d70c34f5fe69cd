"""Queries over the registries: the best kernel for a device, a model's scorer, the tasks taking an option.

They sit above the plugin manager (they load plugins on first use), so the contract modules that
the manager checks registrations with never import it back.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from .errors import InvalidRequest, UnknownName
from .plugins import registry


def select_kernel(op: str, device: torch.device | str) -> Callable:
    """The best available implementation of ``op`` for ``device`` (a ``torch.device`` or its name).

    Among the kernels registered as ``"<op>:<impl>"`` for the device's type or ``"any"`` whose
    ``is_available()`` is true (asked on every call), the highest ``priority`` wins; on a tie, the
    one for the exact device type.
    """
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


def select_scorer(model: Any) -> Any:
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
