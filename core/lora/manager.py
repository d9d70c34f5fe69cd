"""Adapters bound to a loaded model's layers: loaded once, kept in an LRU, mixed in one batch.

Each linear layer an adapter targets gets a :class:`LayerAdapters`: every loaded adapter's factors
stacked in slots (``A [slots, R, in]``, ``B [slots, out, R]``; a layer fused from several
projections, q/k/v or gate/up, holds each part's factors in its own rows and columns). The built-in
layers add its :meth:`~LayerAdapters.add` to their output (``layer.__dict__["lora"]``, the contract
in the layers' own code); a layer called as a module gets it from a forward hook. While a
batch runs, :meth:`Adapters.active` says which tokens (and which pooled rows) each adapter owns:
the engine orders a batch's sequences by adapter, so each adapter owns one run of tokens, and the
``lora_delta`` kernel adds ``B (A x)`` run by run. A module of ``modules_to_save`` (a classifier
head) is swapped row by row for the adapter's copy.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..contracts.errors import InvalidRequest
from ..plugins.lookup import kernel_for
from .adapter import Adapter, read_adapter
from .request import LoRARequest

logger = logging.getLogger(__name__)

#: A run of tokens (or pooled rows) that one adapter owns: ``(start, stop, slot)``.
Segment = tuple[int, int, int]
#: The identities of adapter loads (:meth:`Adapters.identity`), unique in the process.
_IDENTITIES = itertools.count(1)


class BatchState(threading.local):
    """Which adapter owns which tokens and rows of the batch running now on this thread (none
    between batches): each thread running the model sees its own batch."""

    def __init__(self) -> None:
        self.tokens: list[Segment] = []
        self.rows: list[Segment] = []
        self.num_tokens = self.num_rows = 0

    def segments(self, rows: int) -> list[Segment]:
        """The runs of an input of ``rows`` rows: the tokens' (with filler rows after them), or the
        sequences' (pooled rows); none for anything else."""
        if not self.tokens:
            return []
        if rows >= self.num_tokens:
            return self.tokens
        if rows == self.num_rows:
            return self.rows
        return []


class LayerAdapters:
    """The adapters of one linear layer, in slots; ``pieces``: how many projections the layer
    stacks by output rows (q/k/v fused: 3), each adapter's factors for piece ``i`` in columns
    ``i * max_rank ...`` of the stacks, in the model's dtype (the products run at the speed of its
    matmuls, and add into its outputs in place)."""

    def __init__(self, state: BatchState, layer: nn.Linear, pieces: int, slots: int, max_rank: int) -> None:
        self.state = state
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
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.present.discard(slot)

    @property
    def busy(self) -> bool:
        """Whether a batch with adapters is running."""
        return bool(self.state.tokens)

    def add(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the layer's output for ``x``) plus each token's adapter's ``B (A x)``: ``x`` is
        ``[tokens, in]`` (or pooled rows), or a padded ``[sequences, length, in]`` batch (the
        transformers fallback's), whose runs of sequences are runs of ``length`` rows flattened."""
        segments = self.state.segments(x.shape[0])
        if any(s[2] not in self.present for s in segments):  # an adapter with no factors here
            segments = [s for s in segments if s[2] in self.present]
        if not segments:
            return out
        if x.dim() == 3 and x.shape[0] == self.state.num_rows:
            length = x.shape[1]
            segments = [(a * length, b * length, slot) for a, b, slot in segments]
        return self.kernel(x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1]), self.a, self.b, segments).view(out.shape)

    def hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        return self.add(inputs[0], out)


class EmbeddingAdapters:
    """The adapters of one embedding table (jina-embeddings-v3's task adapters): each adapter's
    ``A`` (``[r, vocab]``) kept as rows ``[vocab, R]``, its ``B`` (``[dim, r]``) as ``[R, dim]``, so a
    token's embedding gains ``B A[:, id]``: the row of ``A`` its id picks, times ``B``."""

    def __init__(self, state: BatchState, layer: nn.Embedding, slots: int, max_rank: int) -> None:
        self.state = state
        weight = layer.weight
        self.a = torch.zeros(slots, layer.num_embeddings, max_rank, dtype=weight.dtype, device=weight.device)
        self.b = torch.zeros(slots, max_rank, layer.embedding_dim, dtype=weight.dtype, device=weight.device)
        self.present: set[int] = set()

    def put(self, slot: int, target: Target, a: torch.Tensor, b: torch.Tensor) -> None:
        r = a.shape[0]
        self.a[slot, :, :r] = a.T.to(self.a.dtype)
        self.b[slot, :r] = b.T.to(self.b.dtype)
        self.present.add(slot)

    def clear(self, slot: int) -> None:
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.present.discard(slot)

    def hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        segments = [s for s in self.state.segments(ids.shape[0]) if s[2] in self.present] if ids.dim() == 1 else []
        for start, stop, slot in segments:
            out[start:stop] += self.a[slot][ids[start:stop]] @ self.b[slot]
        return out


class SavedModules:
    """A module of ``modules_to_save`` (a classifier head): each adapter's own copy of its tensors,
    applied to the rows that adapter owns."""

    def __init__(self, state: BatchState, module: nn.Module) -> None:
        self.state = state
        self.module = module
        self.copies: dict[int, dict[str, torch.Tensor]] = {}
        self._inside = False

    def hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        if self._inside:  # the copy's own call
            return out
        segments = [s for s in self.state.segments(inputs[0].shape[0]) if s[2] in self.copies]
        if not segments:
            return out
        out = out.clone()
        self._inside = True
        try:
            for start, stop, slot in segments:
                out[start:stop] = torch.func.functional_call(module, self.copies[slot], (inputs[0][start:stop],))
        finally:
            self._inside = False
        return out


@dataclass(frozen=True)
class Target:
    """Where a checkpoint's linear layer lives in the model: the module, and its output rows there
    (piece ``piece`` of the ``pieces`` projections the module stacks)."""

    module: str
    row: int
    rows: int
    piece: int = 0
    pieces: int = 1


@dataclass
class Loaded:
    slot: int
    adapter: Adapter


class Adapters:
    """The LoRA adapters of one loaded model (``LLM(enable_lora=True)``).

    Args:
        model: the loaded :class:`~poolkit.loading.model.PoolingModel`.
        max_lora_rank: the highest rank an adapter may have (vLLM's ``max_lora_rank``).
        max_loras: the most adapters one batch mixes (vLLM's ``max_loras``); a batch with more runs
            in parts.
        max_cpu_loras: the most adapters kept loaded (an LRU; default ``max_loras``).
    """

    def __init__(self, model: Any, max_lora_rank: int, max_loras: int, max_cpu_loras: int | None) -> None:
        arch = model.architecture
        if getattr(model, "quantization", None):
            raise InvalidRequest("LoRA adapters run on float models; load the model without quantization")
        if not getattr(arch, "takes_adapters", False):
            raise InvalidRequest(
                f"architecture {model.architecture_name} does not take LoRA adapters yet (docs/lora.md lists the families that do)"
            )
        self.model = model
        self.max_rank = max_lora_rank
        self.max_loras = max_loras
        self.capacity = max(max_cpu_loras or max_loras, max_loras)
        self.state = BatchState()
        self._loaded: collections.OrderedDict[str, Loaded] = collections.OrderedDict()
        self._layers: dict[str, LayerAdapters | EmbeddingAdapters] = {}
        self._saved: dict[str, SavedModules] = {}
        self._lock = threading.RLock()
        #: Signalled when a running batch part lets its slots go (:meth:`_pinned`).
        self._freed = threading.Condition(self._lock)
        #: How many running batch parts use each slot: a pinned slot is never unbound or reused.
        self._pins: collections.Counter[int] = collections.Counter()
        #: The identity of each load of an adapter, by ``(name, path)``, until the name is removed.
        self._identities: dict[tuple[str, str], int] = {}
        #: Called with an identity when its adapter is removed: the caches drop what it computed.
        self.forgotten: list[Callable[[int], None]] = []
        #: Adapters read and checked but not bound yet (:meth:`check`), with where they go, by name.
        self._checked: dict[str, tuple[Adapter, list[tuple[Target, torch.Tensor, torch.Tensor]]]] = {}
        self._fused = _fused_parts(arch)
        self._modules = dict(arch.named_modules())
        #: The checkpoint's own adapters (:meth:`add_own`), by name.
        self._own: dict[str, Adapter] = {}

    @property
    def loaded(self) -> list[LoRARequest]:
        """The requests of the adapters in memory, least recently used first."""
        return [entry.adapter.request for entry in self._loaded.values()]

    def check(self, request: LoRARequest) -> None:
        """Read and check ``request``'s adapter without binding it (nothing a running batch uses
        changes): what a request's preparation does, on any thread.

        Raises:
            InvalidRequest: the adapter cannot be read, or does not fit this model.
        """
        with self._lock:
            if self._same(request) or request.lora_name in self._checked:
                return
            adapter = self._read(request)
            if len(self._checked) >= self.capacity:  # read again when bound, if it comes to that
                self._checked.pop(next(iter(self._checked)))
            self._checked[request.lora_name] = (adapter, self._bindings(adapter))

    def validate(self, request: LoRARequest) -> None:
        """Read and check ``request``'s adapter and keep nothing: whether it could replace the
        adapter loaded under its name (vLLM's ``load_inplace``), which stays as it is meanwhile.

        Raises:
            InvalidRequest: the adapter cannot be read, or does not fit this model.
        """
        self._bindings(self._read(request))

    def identity(self, request: LoRARequest) -> int:
        """Which load of an adapter ``request`` runs with: a number given to its name and path at
        their first use and kept until the name is removed (:meth:`remove`), so that an adapter
        unloaded and loaded again under its name, from new files or the same path, is another
        identity. Caches key what an adapter computed by it, never by the name."""
        with self._lock:
            key = (request.lora_name, request.lora_path)
            if key not in self._identities:
                self._identities[key] = next(_IDENTITIES)
            return self._identities[key]

    def slot(self, request: LoRARequest) -> int:
        """The slot of ``request``'s adapter, read and bound first when it is not loaded (the least
        recently used one not in use leaves when the LRU is full). Called where the model's batches
        run: an adapter leaving zeroes its slot.

        Raises:
            InvalidRequest: the adapter cannot be read, or does not fit this model.
        """
        with self._lock:
            return self._slots([request])[request.lora_name]

    @contextlib.contextmanager
    def _pinned(self, requests: Sequence[LoRARequest]) -> Iterator[dict[str, int]]:
        """The slots of the adapters of ``requests`` (by name), bound together and kept from being
        unbound or reused until the block ends, whichever threads run batches meanwhile; a part
        that needs more slots than are free or unpinned waits for running parts to end."""
        with self._freed:
            while True:
                slots = self._slots(requests, wait=True)
                if slots is not None:
                    break
                self._freed.wait()
            self._pins.update(slots.values())
        try:
            yield slots
        finally:
            with self._freed:
                self._pins -= collections.Counter(slots.values())  # counts that reach zero go
                self._freed.notify_all()

    def _slots(self, requests: Sequence[LoRARequest], wait: bool = False) -> dict[str, int] | None:
        """Bind the adapters of ``requests`` that are not bound, each into a free slot or the slot
        of the least recently used adapter that is not pinned nor among ``requests``. With
        ``wait``, ``None`` (nothing bound) when too few slots are free or unpinned; without, that
        is an error."""
        wanted = {r.lora_name: r for r in requests}
        bound = {name for name, r in wanted.items() if self._same(r)}
        new = [r for name, r in wanted.items() if name not in bound]
        spare = [n for n, e in self._loaded.items() if n not in wanted and self._pins[e.slot] == 0]
        if len(new) > self.capacity - len(self._loaded) + len(spare):
            if wait:
                return None
            raise InvalidRequest(f"all {self.capacity} LoRA slots are in use by running batches")
        for request in new:
            checked = self._checked.pop(request.lora_name, None)
            if checked is None or checked[0].request.lora_path != request.lora_path:
                adapter = self._read(request)
                checked = (adapter, self._bindings(adapter))
            adapter, bindings = checked
            used = {e.slot for e in self._loaded.values()}
            if len(used) >= self.capacity:
                oldest = spare.pop(0)
                slot = self._loaded.pop(oldest).slot
                self._unbind(slot)
                used.discard(slot)
            slot = min(set(range(self.capacity)) - used)
            self._bind(slot, adapter, bindings)
            self._loaded[request.lora_name] = Loaded(slot, adapter)
        for name in wanted:
            self._loaded.move_to_end(name)
        return {name: self._loaded[name].slot for name in wanted}

    def add_own(self, name: str, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> LoRARequest:
        """An adapter the checkpoint itself carries (jina-embeddings-v3's task adapters), kept in
        memory once: ``factors`` as :class:`Adapter` holds them. Returns the request that names it
        (:meth:`own`); binding it later reads nothing from disk.

        Raises:
            InvalidRequest: its rank is above ``max_lora_rank``, or it does not fit the model.
        """
        request = LoRARequest(name, 1_000_000 + len(self._own), f"(carried by {self.model.name})")
        rank = max((a.shape[0] for a, _ in factors.values()), default=0)
        if rank > self.max_rank:
            raise InvalidRequest(f"LoRA rank {rank} is greater than max_lora_rank {self.max_rank}.")
        adapter = Adapter(request, rank, dict(factors))
        self._bindings(adapter)
        self._own[name] = adapter
        return request

    def own(self, name: str | None) -> LoRARequest | None:
        """The request of the checkpoint's own adapter ``name`` (:meth:`add_own`); for ``None``, its
        default one (the architecture's ``default_task_adapter``); else ``None``."""
        if name is None:
            name = getattr(self.model.architecture, "default_task_adapter", None)
        adapter = self._own.get(name) if name is not None else None
        return adapter.request if adapter is not None else None

    def _read(self, request: LoRARequest) -> Adapter:
        own = self._own.get(request.lora_name)
        if own is not None and own.request.lora_path == request.lora_path:
            return own
        return read_adapter(request, max_rank=self.max_rank, allow_pickle=bool(self.model.allow_pickle))

    def _same(self, request: LoRARequest) -> bool:
        """Whether ``request``'s adapter is bound (a name bound from another path is refused)."""
        entry = self._loaded.get(request.lora_name)
        if entry is not None and entry.adapter.request.lora_path != request.lora_path:
            raise InvalidRequest(
                f"LoRA adapter '{request.lora_name}' is loaded from {entry.adapter.request.lora_path}, not {request.lora_path}"
            )
        return entry is not None

    def remove(self, name: str) -> bool:
        """Unload adapter ``name``, and forget its loads (:meth:`identity`): the caches drop what
        they computed (:attr:`forgotten`), and the name loaded again is a new identity. Whether it
        was loaded. A batch running with it finishes with it first."""
        with self._freed:
            self._checked.pop(name, None)
            while name in self._loaded and self._pins[self._loaded[name].slot]:
                self._freed.wait()
            entry = self._loaded.pop(name, None)
            if entry is not None:
                self._unbind(entry.slot)
            gone = [key for key in self._identities if key[0] == name]
            identities = [self._identities.pop(key) for key in gone]
        for identity in identities:
            for forget in self.forgotten:
                forget(identity)
        return entry is not None

    def plan(self, batches: list[Any], params: Sequence[Any]) -> Iterator[tuple[Any, list[int] | None]]:
        """Each batch's members (an index array) with their adapters' slots (``None``: no adapter in
        the batch): the base model's sequences first, then each adapter's together, so that every
        adapter owns one run of tokens; a batch mixing more than ``max_loras`` adapters runs in parts."""
        if all(p.lora_request is None for p in params):
            for members in batches:
                yield members, None
            return
        for members in batches:
            requests = [params[i].lora_request for i in members]
            names = list(dict.fromkeys(r.lora_name for r in requests if r is not None))
            if not names:
                yield members, None
                continue
            for k in range(0, len(names), self.max_loras):
                group = set(names[k : k + self.max_loras])
                chosen = [j for j, r in enumerate(requests) if (r is None and k == 0) or (r is not None and r.lora_name in group)]
                with self._pinned([requests[j] for j in chosen if requests[j] is not None]) as bound:
                    slots = [bound[requests[j].lora_name] if requests[j] is not None else -1 for j in chosen]
                    order = sorted(range(len(chosen)), key=slots.__getitem__)
                    yield members[[chosen[j] for j in order]], [slots[j] for j in order]

    @contextlib.contextmanager
    def active(self, lens: Sequence[int], slots: Sequence[int]) -> Iterator[None]:
        """Within the block, sequence ``i`` (``lens[i]`` tokens) runs with the adapter in
        ``slots[i]`` (``-1``: none); sequences of one adapter must be consecutive."""
        tokens: list[Segment] = []
        rows: list[Segment] = []
        start = 0
        for i, (n, slot) in enumerate(zip(lens, slots)):
            if slot >= 0:
                if tokens and tokens[-1][2] == slot and tokens[-1][1] == start:
                    tokens[-1] = (tokens[-1][0], start + n, slot)
                    rows[-1] = (rows[-1][0], i + 1, slot)
                else:
                    tokens.append((start, start + n, slot))
                    rows.append((i, i + 1, slot))
            start += n
        state = self.state
        before = state.tokens, state.rows, state.num_tokens, state.num_rows  # a pass inside another's block
        state.tokens, state.rows, state.num_tokens, state.num_rows = tokens, rows, start, len(lens)
        try:
            yield
        finally:
            state.tokens, state.rows, state.num_tokens, state.num_rows = before

    # -- binding -------------------------------------------------------------------------------

    def _target(self, layer: str) -> Target | None:
        """Where the checkpoint's linear layer ``layer`` lives in the model: the architecture's own
        answer (:meth:`~poolkit.contracts.architecture.Architecture.adapter_target`) where it gives
        one, else its checkpoint names (``parameter_name``) and its fused layers' parts; ``None``
        for a layer the model skips. A ``Target`` whose module is no linear layer is refused."""
        arch = self.model.architecture
        placed = arch.adapter_target(layer)
        if placed is not None:
            path, piece, pieces = placed
            if not path:
                return None
            module = self._modules.get(path)
            if isinstance(module, nn.Embedding):
                return Target(path, 0, module.embedding_dim)
            if not isinstance(module, nn.Linear):
                return Target("", 0, 0)
            parts = getattr(module, "parts", None)  # the pieces' sizes where the module says them, else equal
            sizes = list(parts.values()) if parts and len(parts) == pieces else [module.out_features // pieces] * pieces
            return Target(path, sum(sizes[:piece]), sizes[piece], piece, pieces)
        name = _model_name(arch, layer)
        if name is None:
            return None
        fused = self._fused.get(name)
        if fused is not None:
            return fused
        module = self._modules.get(name)
        return Target(name if module is not None else "", 0, getattr(module, "out_features", 0))

    def _bindings(self, adapter: Adapter) -> list[tuple[Target, torch.Tensor, torch.Tensor]]:
        """Where each of the adapter's layers goes, with its factors, checked."""
        arch = self.model.architecture
        name = adapter.name
        out = []
        unknown = []
        for layer, (a, b) in adapter.factors.items():
            target = self._target(layer)
            if target is None:  # a layer whose weights the model does not use either (BERT's pooler, say)
                logger.info("LoRA adapter '%s': %s is not used by model '%s'", name, layer, self.model.name)
                continue
            module = self._modules.get(target.module)
            if not isinstance(module, (nn.Linear, nn.Embedding)):
                unknown.append(layer)
                continue
            width = module.in_features if isinstance(module, nn.Linear) else module.num_embeddings
            if a.shape[1] != width or b.shape[0] != target.rows:
                raise InvalidRequest(
                    f"LoRA adapter '{name}' does not fit model '{self.model.name}': its {layer} maps "
                    f"{a.shape[1]} -> {b.shape[0]} features, the model's layer {width} -> {target.rows}"
                )
            out.append((target, a, b))
        if unknown:
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise InvalidRequest(
                f"LoRA adapter '{name}' targets modules that model '{self.model.name}' ({self.model.architecture_name}) "
                f"has no linear layer for: {', '.join(unknown[:3])}{more}"
            )
        for key, tensor in adapter.saved.items():
            path, _, kind = key.rpartition(".")
            module_path = _saved_module(arch, path)
            if module_path is None:
                raise InvalidRequest(f"LoRA adapter '{name}' saves module '{path}', which model '{self.model.name}' does not have")
            param = getattr(arch.get_submodule(module_path), kind, None)
            if not isinstance(param, torch.Tensor) or param.shape != tensor.shape:
                have = "none" if not isinstance(param, torch.Tensor) else tuple(param.shape)
                raise InvalidRequest(
                    f"LoRA adapter '{name}' does not fit model '{self.model.name}': its {key} is {tuple(tensor.shape)}, the model's {have}"
                )
        return out

    def _bind(self, slot: int, adapter: Adapter, bindings: list[tuple[Target, torch.Tensor, torch.Tensor]]) -> None:
        arch = self.model.architecture
        for target, a, b in bindings:
            layer = self._layers.get(target.module)
            if layer is None:
                module = arch.get_submodule(target.module)
                if isinstance(module, nn.Embedding):
                    layer = self._layers[target.module] = EmbeddingAdapters(self.state, module, self.capacity, self.max_rank)
                else:
                    layer = self._layers[target.module] = LayerAdapters(self.state, module, target.pieces, self.capacity, self.max_rank)
                    module.__dict__["lora"] = layer
                module.register_forward_hook(layer.hook)
            layer.put(slot, target, a, b)
        for key, tensor in adapter.saved.items():
            path, _, kind = key.rpartition(".")
            module_path = _saved_module(arch, path)
            saved = self._saved.get(module_path)
            if saved is None:
                module = arch.get_submodule(module_path)
                saved = self._saved[module_path] = SavedModules(self.state, module)
                module.register_forward_hook(saved.hook)
            base = dict(saved.module.named_parameters(recurse=False))
            copy = saved.copies.setdefault(slot, dict(base))
            copy[kind] = tensor.to(base[kind].dtype).to(base[kind].device)

    def _unbind(self, slot: int) -> None:
        for layer in self._layers.values():
            layer.clear(slot)
        for saved in self._saved.values():
            saved.copies.pop(slot, None)


def _fused_parts(arch: nn.Module) -> dict[str, Target]:
    """The projections of the model's fused linear layers (a module with ``parts``, the built-in
    ``FusedLinear``: ``{checkpoint name relative to its parent: output rows}``), by the name a
    checkpoint gives each."""
    found: dict[str, Target] = {}
    for path, module in arch.named_modules():
        parts = getattr(module, "parts", None)
        if not isinstance(module, nn.Linear) or not parts:
            continue
        parent, row = path.rpartition(".")[0], 0
        for piece, (part, rows) in enumerate(parts.items()):
            found[f"{parent}.{part}" if parent else part] = Target(path, row, rows, piece, len(parts))
            row += rows
    return found


def _model_name(arch: nn.Module, layer: str) -> str | None:
    """A checkpoint layer's name in the model (a task model's prefix stripped, as its weights are);
    ``None`` for a layer whose weights the model skips."""
    rename = getattr(arch, "parameter_name", None)
    if rename is None:
        return layer
    name = rename(layer + ".weight")
    return None if name is None else name.removesuffix(".weight")


def _saved_module(arch: nn.Module, path: str) -> str | None:
    placed = arch.adapter_target(path)
    for candidate in (path, _model_name(arch, path) or path, *([placed[0]] if placed and placed[0] else [])):
        try:
            arch.get_submodule(candidate)
        except AttributeError:
            continue
        return candidate
    return None


def model_adapters(model: Any, args: Any) -> Adapters | None:
    """The adapters of a loaded model: ``Adapters`` with ``enable_lora``, or when the checkpoint
    carries adapters of its own (:meth:`~poolkit.contracts.architecture.Architecture.task_adapters`,
    jina-embeddings-v3's tasks), which are added and may all run in one batch; else ``None``."""
    own = model.architecture.task_adapters()
    if not args.enable_lora and not own:
        return None
    rank = max((a.shape[0] for factors in own.values() for a, _ in factors.values()), default=0)
    loras = max(args.max_loras, len(own))
    adapters = Adapters(model, max(args.max_lora_rank, rank), loras, (args.max_cpu_loras or args.max_loras) + len(own))
    for name, factors in own.items():
        adapters.add_own(name, factors)
    return adapters


def enabled(adapters: Adapters | None, lora_request: Any) -> Adapters:
    """The model's adapters, for ``lora_request``.

    Raises:
        InvalidRequest: the model was loaded without ``enable_lora`` (vLLM's words).
    """
    if adapters is None:
        raise InvalidRequest(f"Got lora_request {lora_request} but LoRA is not enabled! Load the model with enable_lora=True (--enable-lora)")
    return adapters


def adapted_params(params: list[Any], lora_request: Any, adapters: Adapters | None) -> list[Any]:
    """``params`` (one per prompt) with the LoRA adapters of ``lora_request``: one request for every
    prompt, or a list of one per prompt (``None``: the base model). Each adapter is read and checked
    here, before anything runs.

    Raises:
        InvalidRequest: LoRA is not enabled, the list's length is not the prompts', an item is no
            :class:`LoRARequest`, or an adapter cannot be read or does not fit the model.
    """
    if lora_request is None:
        return params
    adapters = enabled(adapters, lora_request)
    requests = list(lora_request) if isinstance(lora_request, (list, tuple)) else [lora_request] * len(params)
    if len(requests) != len(params):
        raise InvalidRequest(f"Lora request list should be the same length as the prompts ({len(requests)} for {len(params)})")
    copies: dict[tuple[int, str], Any] = {}
    out = []
    for p, request in zip(params, requests):
        if request is None:
            out.append(p)
            continue
        if not isinstance(request, LoRARequest):
            raise InvalidRequest(f"lora_request must be a LoRARequest or a list of them, got {type(request).__name__}")
        key = (id(p), request.lora_name)
        if key not in copies:
            adapters.check(request)
            copies[key] = p.with_lora(request, adapters.identity(request))
        out.append(copies[key])
    return out
