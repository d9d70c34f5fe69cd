"""The LoRA manager of one loaded model (:class:`Adapters`, ``model.adapters``): which adapters are
loaded, in which slots, until when.

Four things are called "adapter" in LoRA; here each has its own name:

- a prompt's :class:`~poolkit.lora.request.LoRARequest` names one (vLLM's);
- its PEFT checkpoint, read from disk and checked, is a :class:`~poolkit.lora.checkpoint.PeftCheckpoint`
  (placed on the model's layers by :class:`~poolkit.lora.names.CheckpointNames`);
- bound into a slot of the model's layers, it is a :class:`SlotBinding`, kept in an LRU of at most
  ``capacity`` bindings (``max_cpu_loras``);
- each targeted layer's :class:`~poolkit.lora.injection.SlotStack` holds every binding's factors
  by slot (:mod:`poolkit.lora.injection`).

A running batch part pins the slots of its adapters (:meth:`Adapters.pinned`): a pinned slot is
never unbound nor reused. Each load of a name and path has an identity (:meth:`Adapters.identity`)
that caches key their results by, forgotten (:attr:`Adapters.forgotten`) when the name is removed.
Which adapter owns which tokens while a batch runs is the runtime's
(:mod:`poolkit.runtime.adapter_runs`). At the manager's door, :func:`model_adapters` builds one for a
loaded model and :func:`adapted_params` gives each prompt's parameters their request.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from ..contracts.capabilities import TaskAdapters
from ..contracts.errors import InvalidRequest
from .checkpoint import PeftCheckpoint, read_checkpoint
from .injection import ActiveRuns, EmbeddingSlotStack, SavedModuleCopies, SlotStack, attach, attach_saved
from .names import CheckpointNames, Placement
from .request import LoRARequest

if TYPE_CHECKING:
    from ..config.settings import EngineArgs
    from ..contracts.architecture import LoadedModel
    from ..contracts.params import PoolingParams

#: The identities of adapter loads (:meth:`Adapters.identity`), unique in the process.
_IDENTITIES = itertools.count(1)


class SlotBinding(NamedTuple):
    """A checkpoint bound into a slot of the model's layers."""

    slot: int
    checkpoint: PeftCheckpoint


class Checked(NamedTuple):
    """A checkpoint read and placed (:meth:`Adapters.check`), not bound yet."""

    checkpoint: PeftCheckpoint
    placements: list[Placement]


class Adapters:
    """The LoRA manager of one loaded model (``LLM(enable_lora=True)``, ``model.adapters``): its
    adapters' checkpoints bound in slots, the LRU of them, the slots pinned by running batch parts,
    and each load's identity.

    Args:
        model: the loaded :class:`~poolkit.loading.model.PoolingModel`.
        max_lora_rank: the highest rank an adapter may have (vLLM's ``max_lora_rank``).
        max_loras: the most adapters one batch mixes (vLLM's ``max_loras``); a batch with more runs
            in parts.
        max_cpu_loras: the most adapters kept loaded (an LRU; default ``max_loras``).
    """

    def __init__(self, model: LoadedModel, max_lora_rank: int, max_loras: int, max_cpu_loras: int | None) -> None:
        arch = model.architecture
        if model.quantization:
            raise InvalidRequest("LoRA adapters run on float models; load the model without quantization")
        if not arch.takes_adapters:
            raise InvalidRequest(
                f"architecture {model.architecture_name} does not take LoRA adapters yet (docs/lora.md lists the families that do)"
            )
        self.model = model
        self.max_rank = max_lora_rank
        self.max_loras = max_loras
        self.capacity = max(max_cpu_loras or max_loras, max_loras)
        #: Which tokens each slot owns while a batch runs (set by :mod:`poolkit.runtime.adapter_runs`).
        self.runs = ActiveRuns()
        self.names = CheckpointNames.of(model)
        self._loaded: collections.OrderedDict[str, SlotBinding] = collections.OrderedDict()
        self._stacks: dict[str, SlotStack | EmbeddingSlotStack] = {}
        self._saved: dict[str, SavedModuleCopies] = {}
        self._lock = threading.RLock()
        #: Signalled when a running batch part lets its slots go (:meth:`pinned`).
        self._freed = threading.Condition(self._lock)
        #: How many running batch parts use each slot: a pinned slot is never unbound or reused.
        self._pins: collections.Counter[int] = collections.Counter()
        #: The identity of each load of an adapter, by ``(name, path)``, until the name is removed.
        self._identities: dict[tuple[str, str], int] = {}
        #: Called with an identity when its adapter is removed: the caches drop what it computed.
        self.forgotten: list[Callable[[int], None]] = []
        #: Checkpoints read and checked but not bound yet (:meth:`check`), with where they go, by name.
        self._checked: dict[str, Checked] = {}
        #: The model checkpoint's own adapters (:meth:`add_own`), by name.
        self._own: dict[str, PeftCheckpoint] = {}

    @property
    def loaded(self) -> list[LoRARequest]:
        """The requests of the adapters in memory, least recently used first."""
        return [binding.checkpoint.request for binding in self._loaded.values()]

    def check(self, request: LoRARequest) -> None:
        """Read and check ``request``'s checkpoint without binding it (nothing a running batch uses
        changes): what a request's preparation does, on any thread.

        Raises:
            InvalidRequest: the adapter cannot be read, or does not fit this model.
        """
        with self._lock:
            if self._same(request) or request.lora_name in self._checked:
                return
            checkpoint = self._read(request)
            if len(self._checked) >= self.capacity:  # read again when bound, if it comes to that
                self._checked.pop(next(iter(self._checked)))
            self._checked[request.lora_name] = Checked(checkpoint, self.names.place(checkpoint))

    def validate(self, request: LoRARequest) -> None:
        """Read and check ``request``'s checkpoint and keep nothing: whether it could replace the
        adapter loaded under its name (vLLM's ``load_inplace``), which stays as it is meanwhile.

        Raises:
            InvalidRequest: the adapter cannot be read, or does not fit this model.
        """
        self.names.place(self._read(request))

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
    def pinned(self, requests: Sequence[LoRARequest]) -> Iterator[dict[str, int]]:
        """The slots of the adapters of ``requests`` (by name), bound together and kept from being
        unbound or reused until the block ends, whichever threads run batches meanwhile; a batch
        part that needs more slots than are free or unpinned waits for running parts to end."""
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
        spare = [n for n, b in self._loaded.items() if n not in wanted and self._pins[b.slot] == 0]
        if len(new) > self.capacity - len(self._loaded) + len(spare):
            if wait:
                return None
            raise InvalidRequest(f"all {self.capacity} LoRA slots are in use by running batches")
        for request in new:
            checked = self._checked.pop(request.lora_name, None)
            if checked is None or checked.checkpoint.request.lora_path != request.lora_path:
                checkpoint = self._read(request)
                checked = Checked(checkpoint, self.names.place(checkpoint))
            used = {b.slot for b in self._loaded.values()}
            if len(used) >= self.capacity:
                oldest = spare.pop(0)
                slot = self._loaded.pop(oldest).slot
                self._unbind(slot)
                used.discard(slot)
            slot = min(set(range(self.capacity)) - used)
            self._bind(slot, checked)
            self._loaded[request.lora_name] = SlotBinding(slot, checked.checkpoint)
        for name in wanted:
            self._loaded.move_to_end(name)
        return {name: self._loaded[name].slot for name in wanted}

    def add_own(self, name: str, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> LoRARequest:
        """An adapter the model's checkpoint itself carries (jina-embeddings-v3's task adapters),
        kept in memory once: ``factors`` as :class:`PeftCheckpoint` holds them. Returns the request
        that names it (:meth:`own`); binding it later reads nothing from disk.

        Raises:
            InvalidRequest: its rank is above ``max_lora_rank``, or it does not fit the model.
        """
        request = LoRARequest(name, 1_000_000 + len(self._own), f"(carried by {self.model.name})")
        rank = max((a.shape[0] for a, _ in factors.values()), default=0)
        if rank > self.max_rank:
            raise InvalidRequest(f"LoRA rank {rank} is greater than max_lora_rank {self.max_rank}.")
        checkpoint = PeftCheckpoint(request, rank, dict(factors))
        self.names.place(checkpoint)
        self._own[name] = checkpoint
        return request

    def own_names(self) -> list[str]:
        """The names of the checkpoint's own adapters (its tasks, jina-embeddings-v3's), in order."""
        return list(self._own)

    def own_prompts(self) -> dict[str, str]:
        """The prompt names the checkpoint's own adapters answer to, each with the text it puts before
        an input: every adapter's name (no text), and the architecture's task prompts
        (:class:`~poolkit.contracts.capabilities.TaskAdapters`, jina-embeddings-v5's)."""
        arch = self.model.architecture
        prompts = arch.task_prompts() if isinstance(arch, TaskAdapters) else {}
        return {**dict.fromkeys(self._own, ""), **{name: prompt.prefix for name, prompt in prompts.items()}}

    def own(self, name: str | None) -> LoRARequest | None:
        """The request of the checkpoint's own adapter ``name`` (:meth:`add_own`), or of the one its
        task prompt ``name`` runs (the architecture's ``task_prompts``); for ``None``, its default
        one (the architecture's ``default_task_adapter``); else ``None``."""
        arch = self.model.architecture
        if not isinstance(arch, TaskAdapters):
            return None
        prompts = arch.task_prompts()
        if name is None:
            name = arch.default_task_adapter
        elif name in prompts:
            name = prompts[name].adapter
        checkpoint = self._own.get(name) if name is not None else None
        return checkpoint.request if checkpoint is not None else None

    def _read(self, request: LoRARequest) -> PeftCheckpoint:
        """``request``'s checkpoint: the model's own (:meth:`add_own`), or read from its directory."""
        own = self._own.get(request.lora_name)
        if own is not None and own.request.lora_path == request.lora_path:
            return own
        return read_checkpoint(request, max_rank=self.max_rank, allow_pickle=bool(self.model.allow_pickle))

    def _same(self, request: LoRARequest) -> bool:
        """Whether ``request``'s adapter is bound (a name bound from another path is refused)."""
        binding = self._loaded.get(request.lora_name)
        if binding is not None and binding.checkpoint.request.lora_path != request.lora_path:
            raise InvalidRequest(
                f"LoRA adapter '{request.lora_name}' is loaded from {binding.checkpoint.request.lora_path}, not {request.lora_path}"
            )
        return binding is not None

    def remove(self, name: str) -> bool:
        """Unload adapter ``name``, and forget its loads (:meth:`identity`): the caches drop what
        they computed (:attr:`forgotten`), and the name loaded again is a new identity. Whether it
        was loaded. A batch running with it finishes with it first."""
        with self._freed:
            self._checked.pop(name, None)
            while name in self._loaded and self._pins[self._loaded[name].slot]:
                self._freed.wait()
            binding = self._loaded.pop(name, None)
            if binding is not None:
                self._unbind(binding.slot)
            gone = [key for key in self._identities if key[0] == name]
            identities = [self._identities.pop(key) for key in gone]
        for identity in identities:
            for forget in self.forgotten:
                forget(identity)
        return binding is not None

    # -- binding -------------------------------------------------------------------------------

    def _bind(self, slot: int, checked: Checked) -> None:
        """Put a checked checkpoint's factors into ``slot`` of its layers' stacks (a layer's stack
        made and attached on its first use), and its saved modules' copies."""
        arch = self.model.architecture
        for target, a, b in checked.placements:
            stack = self._stacks.get(target.module)
            if stack is None:
                module = arch.get_submodule(target.module)
                if isinstance(module, nn.Embedding):
                    stack = EmbeddingSlotStack(self.runs, module, self.capacity, self.max_rank)
                else:
                    stack = SlotStack(self.runs, module, target.pieces, self.capacity, self.max_rank)
                self._stacks[target.module] = stack
                attach(module, stack)
            stack.put(slot, target, a, b)
        for key, tensor in checked.checkpoint.saved.items():
            path, _, kind = key.rpartition(".")
            module_path = self.names.saved_module(path)
            saved = self._saved.get(module_path)
            if saved is None:
                saved = self._saved[module_path] = SavedModuleCopies(self.runs, arch.get_submodule(module_path))
                attach_saved(saved.module, saved)
            base = dict(saved.module.named_parameters(recurse=False))
            copy = saved.copies.setdefault(slot, dict(base))
            copy[kind] = tensor.to(base[kind].dtype).to(base[kind].device)

    def _unbind(self, slot: int) -> None:
        """Zero ``slot`` in every stack and drop its saved modules' copies (its binding left)."""
        for stack in self._stacks.values():
            stack.clear(slot)
        for saved in self._saved.values():
            saved.copies.pop(slot, None)


def model_adapters(model: LoadedModel, args: EngineArgs) -> Adapters | None:
    """The adapters of a loaded model: ``Adapters`` with ``enable_lora``, or when the checkpoint
    carries adapters of its own (:class:`~poolkit.contracts.capabilities.TaskAdapters`,
    jina-embeddings-v3's tasks), which are added and may all run in one batch; else ``None``."""
    arch = model.architecture
    own = arch.task_adapters() if isinstance(arch, TaskAdapters) else {}
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


def adapted_params(params: list[PoolingParams], lora_request: Any, adapters: Adapters | None) -> list[PoolingParams]:
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
    copies: dict[tuple[int, str], PoolingParams] = {}
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
