"""The embedding cache (``poolkit serve --cache-size N``): results of earlier inputs, per model.

An entry is one input's result, keyed by everything that decides it: the task, the request's
pooling parameters (all of them, not a chosen few, so a new parameter can never be left out of
the key), the prompt name, whether special tokens were added, and the exact input (its text or
its token ids). The cache is bounded in entries (``--cache-size``) and in bytes
(``--cache-max-bytes``). Each served model has its own cache; every route that runs inputs through
:func:`~poolkit.entrypoints.serving.work.run_task` shares it. Least recently used entries go first.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Hashable

import torch

from ...contracts.params import PoolingParams

#: An input's cached result: its tensor (:func:`packed`), its token ids and whether it was truncated.
Entry = tuple[torch.Tensor, list[int], bool]


#: Bytes an entry costs beyond its tensor, ids and input: the key's tuple, the entry's tuple and the
#: dictionary slot (measured with ``sys.getsizeof`` on CPython 3.11: about 400).
ENTRY_OVERHEAD = 512


def tensor_bytes(tensor: torch.Tensor) -> int:
    """The memory of a result tensor as the cache holds it (a sparse one: its indices and values)."""
    if tensor.is_sparse:
        return tensor_bytes(tensor._indices()) + tensor_bytes(tensor._values())
    return tensor.element_size() * tensor.numel()


def entry_bytes(key: Hashable, entry: Entry) -> int:
    """The memory an entry holds: its result tensor, its token ids, the input in its key (a text or
    token ids) and :data:`ENTRY_OVERHEAD`."""
    tensor, ids, _ = entry
    given = key[-1] if isinstance(key, tuple) else key
    key_bytes = len(given.encode("utf-8", "surrogatepass")) if isinstance(given, str) else 8 * len(given)
    return tensor_bytes(tensor) + 8 * len(ids) + key_bytes + ENTRY_OVERHEAD


def packed(tensor: torch.Tensor) -> torch.Tensor:
    """A result as the cache keeps it: a copy, sparse when that is smaller (a SPLADE row of the
    vocabulary's width has a few hundred non-zero weights)."""
    if tensor.dim() == 1 and tensor.is_floating_point():
        nonzero = int(torch.count_nonzero(tensor))
        if nonzero * (8 + tensor.element_size()) < tensor.numel() * tensor.element_size():
            return tensor.to_sparse().coalesce()
    return tensor.clone()


def unpacked(tensor: torch.Tensor) -> torch.Tensor:
    """A cached result as the routes read it: dense."""
    return tensor.to_dense() if tensor.is_sparse else tensor


class EmbeddingCache:
    """An LRU cache of per-input results with at most ``size`` entries and ``max_bytes`` bytes.

    Entries are counted in bytes (:func:`entry_bytes`) as well as in number: a sparse vector is a
    dense row of the vocabulary's width and a token-level result one row per token, so a count
    alone says little of the memory. An entry larger than ``max_bytes`` is not kept. It is used
    from the event loop only, so it takes no lock.
    """

    def __init__(self, size: int, max_bytes: int) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[Entry, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def keys(
        task: str, params: PoolingParams, prompt_name: str | None, tokenization: Hashable, prompts: list[Any], adapter: Any = None
    ) -> list[Hashable] | None:
        """The key of each input's result, or ``None`` when an input is one the cache does not hold
        (an image, a multimodal prompt: anything but a text or a list of token ids); ``tokenization``:
        how the texts are tokenized (special tokens, retrieval side); ``adapter``:
        the load of the LoRA adapter the inputs run with (its identity,
        :meth:`poolkit.lora.manager.Adapters.identity`, never its name alone)."""
        settings = (task, json.dumps(params.model_dump(mode="json"), sort_keys=True, default=str), prompt_name, tokenization, adapter)
        keys: list[Hashable] = []
        for prompt in prompts:
            if isinstance(prompt, str):
                keys.append((settings, "text", prompt))
            elif isinstance(prompt, dict) and set(prompt) == {"prompt_token_ids"}:
                keys.append((settings, "ids", tuple(prompt["prompt_token_ids"])))
            else:
                return None
        return keys

    def drop_adapter(self, identity: Any) -> None:
        """Forget the results of an adapter load (``identity``), unloaded or replaced now."""
        for key in [k for k in self._entries if isinstance(k, tuple) and k[0][4] == identity]:
            self.bytes -= self._entries.pop(key)[1]

    def get(self, key: Hashable) -> Entry | None:
        held = self._entries.get(key)
        if held is None:
            return None
        self._entries.move_to_end(key)
        return held[0]

    def put(self, key: Hashable, entry: Entry) -> None:
        cost = entry_bytes(key, entry)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if cost > self.max_bytes:
            return
        self._entries[key] = (entry, cost)
        self.bytes += cost
        while len(self._entries) > self.size or self.bytes > self.max_bytes:
            _, (_, freed) = self._entries.popitem(last=False)
            self.bytes -= freed
