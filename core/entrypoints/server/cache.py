"""The embedding cache (``poolkit serve --cache-size N``): results of earlier inputs, per model.

An entry is one input's result, keyed by everything that decides it: the task, the request's
pooling parameters (all of them, not a chosen few, so a new parameter can never be left out of
the key), the prompt name, whether special tokens were added, and the exact input (its text or
its token ids). Each served model has its own cache; every route that runs inputs through
:func:`~poolkit.entrypoints.server.work.run_task` shares it. Least recently used entries go first.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Hashable

import torch

from ...contracts.params import PoolingParams

#: An input's cached result: its tensor, its token ids and whether it was truncated.
Entry = tuple[torch.Tensor, list[int], bool]


class EmbeddingCache:
    """An LRU cache of per-input results with at most ``size`` entries.

    It is used from the event loop only, so it takes no lock.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def keys(task: str, params: PoolingParams, prompt_name: str | None, special_tokens: bool, prompts: list[Any]) -> list[Hashable] | None:
        """The key of each input's result, or ``None`` when an input is one the cache does not hold
        (an image, a multimodal prompt: anything but a text or a list of token ids)."""
        settings = (task, json.dumps(params.model_dump(mode="json"), sort_keys=True, default=str), prompt_name, special_tokens)
        keys: list[Hashable] = []
        for prompt in prompts:
            if isinstance(prompt, str):
                keys.append((settings, "text", prompt))
            elif isinstance(prompt, dict) and set(prompt) == {"prompt_token_ids"}:
                keys.append((settings, "ids", tuple(prompt["prompt_token_ids"])))
            else:
                return None
        return keys

    def get(self, key: Hashable) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
