"""LoRA adapters in the engine's batches: each sequence's adapter slot, and the runs of tokens each
adapter owns told to the model's layers while the batch runs.

The engine packs token-budget batches of length-sorted sequences (:meth:`poolkit.runtime.engine.Engine.batches`);
with adapters, :func:`plan` pins each batch's adapters' slots (:meth:`poolkit.lora.manager.Adapters.pinned`)
for as long as the batch runs and splits a batch mixing more than ``max_loras`` adapters into parts.
The sequences keep their order: sequences of one length stay together, so attention reads each
length's sequences as one slice (ordered by adapter instead, every length was scattered over the
adapters' runs and attention gathered its rows and copied them back, in every layer), and an
adapter owns a run wherever its sequences follow each other. :func:`active` turns a planned batch's
sequence lengths and slots into the runs the slot stacks read (:class:`poolkit.lora.injection.ActiveRuns`):
the ``lora_delta`` op adds ``B (A x)`` run by run, every run of a layer in one call.
"""

from __future__ import annotations

from typing import Any, ContextManager, Iterator, NamedTuple, Sequence

import numpy as np

from ..lora.injection import Run
from ..lora.manager import Adapters


class PlannedBatch(NamedTuple):
    """A batch's members (an index array), ordered by adapter, with their adapters' slots
    (``-1``: the base model; ``None``: no adapter in the batch)."""

    members: np.ndarray
    slots: list[int] | None


def plan(adapters: Adapters | None, batches: list[Any], params: Sequence[Any]) -> Iterator[PlannedBatch]:
    """Each batch's members, in the batch's order, with their adapters' slots; a batch mixing more
    than ``max_loras`` adapters runs in parts (the base model's sequences in the first). A part's
    slots stay pinned until the next part is asked for."""
    if adapters is None or all(p.lora_request is None for p in params):
        for members in batches:
            yield PlannedBatch(members, None)
        return
    for members in batches:
        requests = [params[i].lora_request for i in members]
        names = list(dict.fromkeys(r.lora_name for r in requests if r is not None))
        if not names:
            yield PlannedBatch(members, None)
            continue
        for k in range(0, len(names), adapters.max_loras):
            group = set(names[k : k + adapters.max_loras])
            chosen = [j for j, r in enumerate(requests) if (r is None and k == 0) or (r is not None and r.lora_name in group)]
            with adapters.pinned([requests[j] for j in chosen if requests[j] is not None]) as bound:
                slots = [bound[requests[j].lora_name] if requests[j] is not None else -1 for j in chosen]
                yield PlannedBatch(members[chosen], slots)


def active(adapters: Adapters, lens: Sequence[int], slots: Sequence[int]) -> ContextManager[None]:
    """Within the block, sequence ``i`` (``lens[i]`` tokens) runs with the adapter in ``slots[i]``
    (``-1``: none): consecutive sequences of one adapter make one run."""
    tokens: list[Run] = []
    rows: list[Run] = []
    start = 0
    for i, (n, slot) in enumerate(zip(lens, slots)):
        if slot >= 0:
            if tokens and tokens[-1].slot == slot and tokens[-1].stop == start:
                tokens[-1] = Run(tokens[-1].start, start + n, slot)
                rows[-1] = Run(rows[-1].start, i + 1, slot)
            else:
                tokens.append(Run(start, start + n, slot))
                rows.append(Run(i, i + 1, slot))
        start += n
    return adapters.runs.running(tokens, rows, start, len(lens))
