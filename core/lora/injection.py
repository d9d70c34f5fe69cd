"""Layer injection: the slot stacks a model's layers carry, and how each layer runs its stack.

Every linear layer a LoRA adapter targets carries a :class:`SlotStack`: the factors of every adapter
bound to the model, stacked in slots (``A [slots, R, in]``, ``B [slots, out, R]``; a layer fused
from several projections, q/k/v or gate/up, holds each part's factors in its own rows and columns).
An embedding table carries an :class:`EmbeddingSlotStack` (jina-embeddings-v3's task adapters).

:func:`attach` gives a layer its stack by ONE path, its ``lora`` entry (``layer.__dict__["lora"]``),
which two readers use, never both for one call:

- the built-in layer helpers (``poolkit.builtin_models.blocks.linear``'s ``linear`` and
  ``gated_linear``) run a native family's matmul through a kernel themselves, never calling the
  layer, and add the entry's products before the activation;
- a layer called as a module (every layer of the transformers fallback and of a plugin's
  architecture; a built-in family's heads) adds them in its own ``forward``: ``attach`` gives the
  layer a subclass of its own class whose ``forward`` does (as ``torch.nn.utils.parametrize``
  injects parametrizations), so no forward hook is needed.

A module of ``modules_to_save`` (a classifier head), swapped for the adapter's copy row by row, is no
linear layer of a stack: it gets a forward hook (:func:`attach_saved`).

Which tokens each slot's factors apply to is :class:`ActiveRuns`: the runs of tokens (and pooled
rows) each adapter owns while a batch runs (:mod:`poolkit.runtime.adapter_runs` sets them), one per
thread.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, NamedTuple

import torch
from torch import nn

from ..plugins.lookup import kernel_for
from .names import Target

#: The name of a layer's slot stack in its ``__dict__``: the contract with the built-in layer helpers.
ENTRY = "lora"


class Run(NamedTuple):
    """A run of tokens (or pooled rows) that the adapter in ``slot`` owns: rows ``start`` to ``stop``."""

    start: int
    stop: int
    slot: int


class ActiveRuns(threading.local):
    """Which adapter owns which tokens and rows of the batch running now on this thread (none
    between batches): each thread running the model sees its own batch."""

    def __init__(self) -> None:
        self.tokens: list[Run] = []
        self.rows: list[Run] = []
        self.num_tokens = self.num_rows = 0

    def segments(self, rows: int) -> list[Run]:
        """The runs of an input of ``rows`` rows: the tokens' (with filler rows after them), or the
        sequences' (pooled rows); none for anything else."""
        if not self.tokens:
            return []
        if rows >= self.num_tokens:
            return self.tokens
        if rows == self.num_rows:
            return self.rows
        return []

    @contextlib.contextmanager
    def running(self, tokens: list[Run], rows: list[Run], num_tokens: int, num_rows: int) -> Iterator[None]:
        """Within the block, the batch of ``num_tokens`` tokens in ``num_rows`` sequences runs with
        the runs ``tokens`` (and, pooled, ``rows``); the runs before it come back after (a pass
        inside another's block)."""
        before = self.tokens, self.rows, self.num_tokens, self.num_rows
        self.tokens, self.rows, self.num_tokens, self.num_rows = tokens, rows, num_tokens, num_rows
        try:
            yield
        finally:
            self.tokens, self.rows, self.num_tokens, self.num_rows = before


def rows_by_slot(segments: list[Run], device: torch.device) -> dict[int, torch.Tensor]:
    """The rows of ``segments`` by slot (an adapter's runs together), for a module whose work is one
    call per adapter however many runs it owns."""
    runs: dict[int, list[torch.Tensor]] = {}
    for start, stop, slot in segments:
        runs.setdefault(slot, []).append(torch.arange(start, stop, device=device))
    return {slot: torch.cat(parts) for slot, parts in runs.items()}


class SlotStack:
    """The slots of one linear layer; ``pieces``: how many projections the layer stacks by output
    rows (q/k/v fused: 3), each adapter's factors for piece ``i`` in columns ``i * max_rank ...`` of
    the stacks, in the model's dtype (the products run at the speed of its matmuls, and add into
    its outputs in place)."""

    def __init__(self, runs: ActiveRuns, layer: nn.Linear, pieces: int, slots: int, max_rank: int) -> None:
        self.runs = runs
        self.max_rank = max_rank
        width = max_rank * pieces
        weight = layer.weight
        self.a = torch.zeros(slots, width, layer.in_features, dtype=weight.dtype, device=weight.device)
        self.b = torch.zeros(slots, layer.out_features, width, dtype=weight.dtype, device=weight.device)
        self.present: set[int] = set()
        self.kernel = kernel_for(self, "lora_delta", weight.device)

    def put(self, slot: int, target: Target, a: torch.Tensor, b: torch.Tensor) -> None:
        """One projection's factors for the adapter in ``slot``: its rows of the layer's output."""
        r, col = a.shape[0], target.piece * self.max_rank
        row, rows = target.row, target.rows
        self.a[slot, col : col + r] = a.to(self.a.dtype)
        self.b[slot, row : row + rows, col : col + r] = b.to(self.b.dtype)
        self.present.add(slot)

    def clear(self, slot: int) -> None:
        """Zero ``slot`` (its adapter left)."""
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.present.discard(slot)

    @property
    def busy(self) -> bool:
        """Whether a batch with adapters is running."""
        return bool(self.runs.tokens)

    def add(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the layer's output for ``x``) plus each token's adapter's ``B (A x)``: ``x`` is
        ``[tokens, in]`` (or pooled rows), or a padded ``[sequences, length, in]`` batch (the
        transformers fallback's), whose runs of sequences are runs of ``length`` rows flattened."""
        segments = self.runs.segments(x.shape[0])
        if any(s.slot not in self.present for s in segments):  # an adapter with no factors here
            segments = [s for s in segments if s.slot in self.present]
        if not segments:
            return out
        if x.dim() == 3 and x.shape[0] == self.runs.num_rows:
            length = x.shape[1]
            segments = [Run(s.start * length, s.stop * length, s.slot) for s in segments]
        return self.kernel(x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1]), self.a, self.b, segments).view(out.shape)


class EmbeddingSlotStack:
    """The slots of one embedding table (jina-embeddings-v3's task adapters): each adapter's
    ``A`` (``[r, vocab]``) kept as rows ``[vocab, R]``, its ``B`` (``[dim, r]``) as ``[R, dim]``, so a
    token's embedding gains ``B A[:, id]``: the row of ``A`` its id picks, times ``B``."""

    def __init__(self, runs: ActiveRuns, layer: nn.Embedding, slots: int, max_rank: int) -> None:
        self.runs = runs
        weight = layer.weight
        self.a = torch.zeros(slots, layer.num_embeddings, max_rank, dtype=weight.dtype, device=weight.device)
        self.b = torch.zeros(slots, max_rank, layer.embedding_dim, dtype=weight.dtype, device=weight.device)
        self.present: set[int] = set()

    def put(self, slot: int, target: Target, a: torch.Tensor, b: torch.Tensor) -> None:
        """The table's factors for the adapter in ``slot`` (``target``: the whole table)."""
        r = a.shape[0]
        self.a[slot, :, :r] = a.T.to(self.a.dtype)
        self.b[slot, :r] = b.T.to(self.b.dtype)
        self.present.add(slot)

    def clear(self, slot: int) -> None:
        """Zero ``slot`` (its adapter left)."""
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.present.discard(slot)

    def add(self, ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the table's rows for the packed token ids ``ids``) plus each token's adapter's
        ``B A[:, id]``, in place."""
        segments = [s for s in self.runs.segments(ids.shape[0]) if s.slot in self.present] if ids.dim() == 1 else []
        for slot, rows in rows_by_slot(segments, ids.device).items():
            out.index_add_(0, rows, self.a[slot][ids[rows]] @ self.b[slot])
        return out


class SavedModuleCopies:
    """A module of ``modules_to_save`` (a classifier head): each adapter's own copy of its tensors,
    by slot, applied to the rows that adapter owns."""

    def __init__(self, runs: ActiveRuns, module: nn.Module) -> None:
        self.runs = runs
        self.module = module
        self.copies: dict[int, dict[str, torch.Tensor]] = {}
        self._inside = False

    def hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        """The module's forward hook: the rows of each adapter with a copy computed again with it."""
        if self._inside:  # the copy's own call
            return out
        segments = [s for s in self.runs.segments(inputs[0].shape[0]) if s.slot in self.copies]
        if not segments:
            return out
        out = out.clone()
        self._inside = True
        try:
            for slot, rows in rows_by_slot(segments, out.device).items():
                out[rows] = torch.func.functional_call(module, self.copies[slot], (inputs[0][rows],))
        finally:
            self._inside = False
        return out


class _StackedForward:
    """Mixed before a layer's own class by :func:`attach`: the layer called as a module adds its
    slot stack's products to what its own ``forward`` returns."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.__dict__[ENTRY].add(x, super().forward(x, *args, **kwargs))  # type: ignore[misc]


#: The subclass :func:`attach` gives layers of each class, made once per class.
_STACKED: dict[type, type] = {}


def attach(module: nn.Linear | nn.Embedding, stack: SlotStack | EmbeddingSlotStack) -> None:
    """Give ``module`` its slot stack: its ``lora`` entry, read by the built-in layer helpers, and
    a class whose ``forward`` adds it where the module is called as one."""
    module.__dict__[ENTRY] = stack
    cls = type(module)
    if cls not in _STACKED.values():
        stacked = _STACKED.get(cls)
        if stacked is None:
            stacked = _STACKED[cls] = type(f"LoRA{cls.__name__}", (_StackedForward, cls), {"__module__": cls.__module__})
        module.__class__ = stacked


def attach_saved(module: nn.Module, copies: SavedModuleCopies) -> None:
    """Swap ``module`` (a module of ``modules_to_save``) for an adapter's copy on that adapter's rows."""
    module.register_forward_hook(copies.hook)
