"""The prefix cache: shared prefixes' states kept across calls, within a byte budget.

A prefix's key is its token ids with its scope (:func:`scope_of`: the request's ``cache_salt`` and
its LoRA adapter's load), and the cache holds a digest of the scope, never the scope itself. A
prompt finds the longest cached prefix of whole :data:`BLOCK`-token blocks it begins with; a
batch's shared prefix is found by its exact ids.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Hashable, NamedTuple, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from ...contracts.params import PoolingParams

#: Prefixes are cached and found across calls in whole blocks of this many tokens.
BLOCK = 16
#: Bytes of prefix states kept across calls unless ``POOLKIT_PREFIX_CACHE_BYTES`` says otherwise.
DEFAULT_CACHE_BYTES = 512 << 20
#: Bytes an entry's key costs beside its states: the scope's digest, the key's tuples and the
#: dictionary slots of the entry and its adapter (``sys.getsizeof`` on CPython 3.11: about 300).
KEY_OVERHEAD = 384

Scope = Hashable


@dataclass
class Entry:
    """One prefix's states: per layer its keys and values ``[n, kv_heads, head_dim]`` (as the
    attention read them), and the last layer's states ``[n, hidden]``."""

    ids: tuple  # token ids, or per token its id and positions (a prefix holding media)
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    hidden: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, self.hidden))


class Reuse(NamedTuple):
    """The prefix states a prompt reads: ``entry``'s first ``length`` tokens' (all of a batch's
    shared prefix; a run of whole blocks of a cached one)."""

    entry: Entry
    length: int


class TextBlocks(NamedTuple):
    """The first ``length`` tokens of a kept prefix that holds media (its whole blocks before
    them), found by their token ids alone in ``scope`` too (:meth:`PrefixCache.put`)."""

    scope: Scope
    length: int


def key_bytes(ids: tuple) -> int:
    """The memory of an entry's token ids as its key holds them (a pointer and an int each; a
    prefix holding media keeps a tuple of id and positions per token: counted at four)."""
    per_token = 36 if not ids or not isinstance(ids[0], tuple) else 4 * 36 + 56
    return KEY_OVERHEAD + 56 + per_token * len(ids)


def _chain(digest: bytes, ids: Sequence[int]) -> list[bytes]:
    """The digest of each whole block of ``ids`` with everything before it (and the scope's
    ``digest``, :func:`_digest_of`)."""
    out = []
    for start in range(0, len(ids) - len(ids) % BLOCK, BLOCK):
        block = np.asarray(ids[start : start + BLOCK], dtype=np.int64).tobytes()
        digest = hashlib.blake2b(digest + block, digest_size=16).digest()
        out.append(digest)
    return out


#: An entry's key in the cache: its scope's digest and its token ids.
_Key = tuple[bytes, tuple]


class _Held(NamedTuple):
    """A cached entry and the bytes it counts for (its states and its key)."""

    entry: Entry
    size: int


class _BlockHit(NamedTuple):
    """Where a block's digest leads: the entry whose first ``length`` tokens end with that block."""

    key: _Key
    length: int


class PrefixCache:
    """Prefix states kept across calls, least recently used out first, within ``max_bytes``.

    An entry is found by its exact ids (a batch's shared prefix) or, for a single prompt, as the
    longest run of whole blocks that begins it (each block's digest chains the ones before it).
    Keys hold a digest of the scope, never the scope itself, and what a key holds counts in the
    budget with the states (:func:`key_bytes`): nothing a client sends grows the cache past it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: collections.OrderedDict[_Key, _Held] = collections.OrderedDict()
        self._blocks: dict[bytes, _BlockHit] = {}
        #: The adapter identity of each entry that an adapter computed (:meth:`drop_adapter`).
        self._adapters: dict[_Key, Any] = {}
        self._lock = threading.Lock()
        #: Prompt tokens whose states came from the cache, and prompts that looked, so far.
        self.hits = self.lookups = 0

    def __len__(self) -> int:
        return len(self._entries)

    def exact(self, scope: Scope, ids: tuple[int, ...]) -> Entry | None:
        """The cached entry of exactly ``ids`` (a batch's shared prefix), or ``None``."""
        key = (_digest_of(scope), ids)
        with self._lock:
            self.lookups += 1
            held = self._entries.get(key)
            if held is None:
                return None
            self._entries.move_to_end(key)
            self.hits += len(ids)
            return held.entry

    def longest(
        self, scope: Scope, ids: Sequence[int] | np.ndarray, limit: int, least: int = 1, counted: bool = True
    ) -> Reuse | None:
        """The cached entry with the longest run of whole blocks that begins ``ids`` (at most
        ``limit`` tokens, and none if shorter than ``least``), with that length; ``counted``: the
        lookup counts as a prompt's (not its second try)."""
        with self._lock:
            self.lookups += counted
            found: _BlockHit | None = None
            for k, digest in enumerate(_chain(_digest_of(scope), ids[:limit])):
                hit = self._blocks.get(digest)
                if hit is None or hit.key not in self._entries:
                    break
                found = _BlockHit(hit.key, (k + 1) * BLOCK)
            if found is None or found.length < least:
                return None
            self._entries.move_to_end(found.key)
            self.hits += found.length
            return Reuse(self._entries[found.key].entry, found.length)

    def put(self, scope: Scope, entry: Entry, text: TextBlocks | None = None) -> None:
        """Keep ``entry`` under ``scope``; ``text``: its first tokens (ending before its media)
        are found by their token ids alone in that scope too (a prefix that holds media serves as
        the text before them)."""
        digest = _digest_of(scope)
        key = (digest, entry.ids)
        size = entry.nbytes + key_bytes(entry.ids)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            while self._entries and self.bytes + size > self.max_bytes:
                self._pop(next(iter(self._entries)))
            self._entries[key] = _Held(entry, size)
            self.bytes += size
            adapter = _adapter_of(scope)
            if adapter is not None:
                self._adapters[key] = adapter
            for k, block in enumerate(_chain(digest, entry.ids)):
                self._blocks[block] = _BlockHit(key, (k + 1) * BLOCK)
            if text is not None:
                ids = np.asarray(entry.ids[: text.length], dtype=np.int64).reshape(text.length, -1)[:, 0]
                for k, block in enumerate(_chain(_digest_of(text.scope), ids)):
                    self._blocks[block] = _BlockHit(key, (k + 1) * BLOCK)
            if len(self._blocks) > 4 * max(1, self.bytes // max(1, size)) * (len(entry.ids) // BLOCK + 1):
                self._blocks = {d: hit for d, hit in self._blocks.items() if hit.key in self._entries}

    def clear(self) -> None:
        """Forget every kept prefix (vLLM's ``reset_prefix_cache``); the hit and lookup counters go on.
        States a running batch already read stay with it."""
        with self._lock:
            self._entries.clear()
            self._blocks.clear()
            self._adapters.clear()
            self.bytes = 0

    def drop_adapter(self, identity: int) -> None:
        """Forget the states an adapter computed (``identity``: the load it was, unloaded now)."""
        with self._lock:
            for key in [k for k, held in self._adapters.items() if held == identity]:
                self._pop(key)

    def _pop(self, key: _Key) -> None:
        held = self._entries.pop(key)
        self._adapters.pop(key, None)
        self.bytes -= held.size


def scope_of(params: PoolingParams) -> Scope:
    """What a prompt's prefix states are kept apart by: its ``cache_salt`` and the load of its LoRA
    adapter (its identity, :meth:`poolkit.lora.manager.Adapters.identity`: never its name, which
    another adapter may take after it); ``None`` for a prompt that reads no shared prefix (vLLM's
    ``skip_reading_prefix_cache``)."""
    if params.skip_reading_prefix_cache:
        return None
    return (params.cache_salt, params.lora_identity if params.lora_request is not None else None)


def _adapter_of(scope: Scope) -> Any:
    """The adapter identity a scope holds (a prefix holding media is scoped ``(scope, digest)``)."""
    while isinstance(scope, tuple) and len(scope) == 2 and isinstance(scope[0], tuple):
        scope = scope[0]
    return scope[1] if isinstance(scope, tuple) and len(scope) == 2 else None


def _digest_of(scope: Scope) -> bytes:
    """What the cache keeps of a scope: a digest, whatever a client put in it (a ``cache_salt`` of
    a megabyte costs the cache 16 bytes)."""
    return hashlib.blake2b(repr(scope).encode(), digest_size=16).digest()
