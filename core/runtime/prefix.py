"""Shared prefixes computed once: within a batch, and across calls through a bounded cache.

In a causal model the states of a prompt's first ``p`` tokens depend on those tokens alone, so
prompts that begin alike (an embedder's instruction before each query, a reranker's system text
and query before each document) need them computed once. For an architecture that says so
(``shares_prefixes``: causal attention, positions from 0, no sliding window, nothing that reads a
sequence's length), the engine's forward pass runs in two steps:

1. the prefixes not known yet run as sequences of their own, and every layer's keys and values
   (after the rotation) and the last layer's states of their tokens are kept;
2. the prompts run from where their prefix ends (:attr:`~poolkit.PackedBatch.starts`): each
   token's attention reads its prefix's keys and values, then its own sequence's, causally (the
   ``prefix_attention`` kernel op).

The prompts' states are then put back together, prefix rows first, so pooling and heads see the
hidden states of the whole prompts (a mean pools the prefix tokens too; token outputs include them).

Within a batch, prompts are grouped by the longest prefix they share, at any length (at least
:data:`MIN_PREFIX` tokens, and each prompt keeps a token of its own). Across calls, a
:class:`PrefixCache` keeps the prefixes' states, least recently used out first, within a byte
budget: a prompt reuses the longest cached prefix of whole :data:`BLOCK`-token blocks, and the
prompts that found none leave theirs (in whole blocks) for the next calls. A prefix's key is its
token ids with its scope: the request's ``cache_salt`` (tenants never share states) and its LoRA
adapter (states under one adapter are another's). Results equal the unshared run's up to the
rounding of another summation order (fp32: 1e-5).

Prompts with media (a vision-language model's, whose architecture names its
:attr:`~poolkit.Architecture.placeholder_tokens`) share too, but a prefix never splits a prompt's
media: it ends before the prompt's first placeholder (text alone: keyed by its token ids, so an
instruction before different images is shared; it runs without the media) or holds every
placeholder (keyed by the media too: a digest of its tensors in the scope, and each token's
``positions`` beside its id, so the same text with another image never shares; it runs with the
media, and the prompt's rest with its positions only). Each step's sequences read the part of
their media that describes their tokens (:func:`media_part`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch

from ..config.environment import env_number
from ..contracts.batch import PackedBatch, device_tensor
from ..plugins.lookup import kernel_for

logger = logging.getLogger(__name__)

#: The shortest prefix shared within a batch: below it, sharing saves less than it costs.
MIN_PREFIX = 16
#: Prefixes are cached and found across calls in whole blocks of this many tokens.
BLOCK = 16
#: Bytes of prefix states kept across calls unless ``POOLKIT_PREFIX_CACHE_BYTES`` says otherwise.
DEFAULT_CACHE_BYTES = 512 << 20

Scope = Hashable
#: The media tensor that describes each token (``[..., tokens]``, a multimodal model's rotary
#: positions): a part of a prompt reads its own columns of it; the other tensors describe the media.
PER_TOKEN = "positions"


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


def _chain(digest: bytes, ids: Sequence[int]) -> list[bytes]:
    """The digest of each whole block of ``ids`` with everything before it (and the scope's
    ``digest``, :func:`_digest_of`)."""
    out = []
    for start in range(0, len(ids) - len(ids) % BLOCK, BLOCK):
        block = np.asarray(ids[start : start + BLOCK], dtype=np.int64).tobytes()
        digest = hashlib.blake2b(digest + block, digest_size=16).digest()
        out.append(digest)
    return out


#: Bytes an entry's key costs beside its states: the scope's digest, the key's tuples and the
#: dictionary slots of the entry and its adapter (``sys.getsizeof`` on CPython 3.11: about 300).
KEY_OVERHEAD = 384


def key_bytes(ids: tuple) -> int:
    """The memory of an entry's token ids as its key holds them (a pointer and an int each; a
    prefix holding media keeps a tuple of id and positions per token: counted at four)."""
    per_token = 36 if not ids or not isinstance(ids[0], tuple) else 4 * 36 + 56
    return KEY_OVERHEAD + 56 + per_token * len(ids)


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
        self._entries: collections.OrderedDict[tuple[bytes, tuple[int, ...]], tuple[Entry, int]] = collections.OrderedDict()
        self._blocks: dict[bytes, tuple[tuple[bytes, tuple[int, ...]], int]] = {}
        #: The adapter identity of each entry that an adapter computed (:meth:`drop_adapter`).
        self._adapters: dict[tuple[bytes, tuple[int, ...]], Any] = {}
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
            return held[0]

    def longest(
        self, scope: Scope, ids: Sequence[int] | np.ndarray, limit: int, least: int = 1, counted: bool = True
    ) -> tuple[Entry, int] | None:
        """The cached entry with the longest run of whole blocks that begins ``ids`` (at most
        ``limit`` tokens, and none if shorter than ``least``), with that length; ``counted``: the
        lookup counts as a prompt's (not its second try)."""
        with self._lock:
            self.lookups += counted
            found = None
            for k, digest in enumerate(_chain(_digest_of(scope), ids[:limit])):
                hit = self._blocks.get(digest)
                if hit is None or hit[0] not in self._entries:
                    break
                found = (hit[0], (k + 1) * BLOCK)
            if found is None or found[1] < least:
                return None
            self._entries.move_to_end(found[0])
            self.hits += found[1]
            return self._entries[found[0]][0], found[1]

    def put(self, scope: Scope, entry: Entry, text: tuple[Scope, int] | None = None) -> None:
        """Keep ``entry`` under ``scope``; ``text``: its first ``n`` tokens (ending before its media)
        are found by their token ids alone in that scope too (a prefix that holds media serves as
        the text before them)."""
        key = (_digest_of(scope), entry.ids)
        size = entry.nbytes + key_bytes(entry.ids)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            while self._entries and self.bytes + size > self.max_bytes:
                self._pop(next(iter(self._entries)))
            self._entries[key] = (entry, size)
            self.bytes += size
            adapter = _adapter_of(scope)
            if adapter is not None:
                self._adapters[key] = adapter
            for k, digest in enumerate(_chain(key[0], entry.ids)):
                self._blocks[digest] = (key, (k + 1) * BLOCK)
            if text is not None:
                ids = np.asarray(entry.ids[: text[1]], dtype=np.int64).reshape(text[1], -1)[:, 0]
                for k, digest in enumerate(_chain(_digest_of(text[0]), ids)):
                    self._blocks[digest] = (key, (k + 1) * BLOCK)
            if len(self._blocks) > 4 * max(1, self.bytes // max(1, size)) * (len(entry.ids) // BLOCK + 1):
                self._blocks = {d: hit for d, hit in self._blocks.items() if hit[0] in self._entries}

    def drop_adapter(self, identity: Any) -> None:
        """Forget the states an adapter computed (``identity``: the load it was, unloaded now)."""
        with self._lock:
            for key in [k for k, held in self._adapters.items() if held == identity]:
                self._pop(key)

    def _pop(self, key: tuple[bytes, tuple[int, ...]]) -> None:
        _, size = self._entries.pop(key)
        self._adapters.pop(key, None)
        self.bytes -= size


class PrefixState:
    """What :attr:`PackedBatch.prefix` holds for an architecture's attention: the prefixes' keys
    and values per layer (``None`` in step 1), and which rows' keys and values to keep."""

    def __init__(
        self,
        keys: list[torch.Tensor] | None = None,
        values: list[torch.Tensor] | None = None,
        offsets: list[int] | None = None,
        keep: torch.Tensor | None = None,
    ) -> None:
        self.keys, self.values, self.offsets, self.keep = keys, values, offsets, keep
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def attention(self, op: Callable, device: torch.device) -> Callable:
        """The attention of one forward pass: ``op`` (the architecture's varlen attention) for
        sequences without a prefix, the ``prefix_attention`` op where they have one; each layer's
        keys and values of the :attr:`keep` rows kept, in layer order."""
        layers = iter(range(1 << 30))
        prefixed = kernel_for(self, "prefix_attention", device) if self.keys is not None else None

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, causal: bool = False,
                   scale: float | None = None, window: int | None = None, **kwargs: Any) -> torch.Tensor:
            layer = next(layers)
            if self.keep is not None:
                self.kept.append((k.index_select(0, self.keep), v.index_select(0, self.keep)))
            if prefixed is None:
                return op(q, k, v, batch, causal=causal, scale=scale, window=window, **kwargs)
            return prefixed(q, k, v, batch, self.keys[layer], self.values[layer], self.offsets, scale=scale)

        return attend


def _shared(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens ``a`` and ``b`` share (rows of a 2-D array: whole rows)."""
    n = min(len(a), len(b))
    unequal = a[:n] != b[:n]
    differ = np.flatnonzero(unequal.any(axis=1) if unequal.ndim > 1 else unequal)
    return int(differ[0]) if differ.size else n


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The prefixes' keys (or values) of one layer one after another; one prefix's as it is."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _key(seq: np.ndarray) -> tuple:
    """``seq`` (token ids, or rows of id and positions) as a hashable key."""
    rows = seq.tolist()
    return tuple(map(tuple, rows)) if seq.ndim > 1 else tuple(rows)


@dataclass
class PromptMedia:
    """What prefix sharing reads off a prompt's media: a text-only prefix ends at or before
    ``first`` (its first placeholder row, or its first position that is not the plain one); a
    prefix that holds the media goes past ``last`` (its last placeholder row, ``-1``: none) and
    is kept apart by ``digest`` (its media tensors'), its tokens compared by ``keys`` (each
    token's id, and its :data:`PER_TOKEN` positions where the media has them)."""

    media: dict
    first: int
    last: int
    digest: str
    keys: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, media: dict, placeholders: frozenset[int]) -> "PromptMedia | None":
        """The prompt's media as prefix sharing reads them; ``None`` where they do not describe
        its tokens (a :data:`PER_TOKEN` tensor of another length)."""
        rows = np.flatnonzero(np.isin(ids, np.fromiter(placeholders, dtype=np.int64)))
        first = int(rows[0]) if rows.size else len(ids)
        keys = ids
        positions = media.get(PER_TOKEN)
        if isinstance(positions, torch.Tensor):
            if positions.ndim == 0 or positions.shape[-1] != len(ids):
                return None
            per_token = positions.detach().to("cpu", torch.int64).reshape(-1, len(ids)).T.numpy()
            keys = np.ascontiguousarray(np.column_stack([ids, per_token]))
            plain = np.flatnonzero((per_token != np.arange(len(ids))[:, None]).any(axis=1))
            first = min(first, int(plain[0]) if plain.size else first)
        return cls(media, first, int(rows[-1]) if rows.size else -1, _digest(media), keys)

    def text_blocks(self, scope: Scope) -> tuple[Scope, int] | None:
        """For a kept prefix that holds the media: its whole blocks before them, found as text of ``scope``."""
        n = self.first // BLOCK * BLOCK
        return (scope, n) if n else None

    def holds_media(self, length: int) -> bool:
        """Whether a prefix of ``length`` tokens holds the media (else it ends before them)."""
        return self.last >= 0 and length > self.last


def _digest(media: dict) -> str:
    """A digest of a prompt's media tensors (bytes, dtype and shape, by name) but the per-token one."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(media):
        if name == PER_TOKEN:
            continue
        value = media[name]
        h.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            flat = value.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{flat.dtype}{tuple(value.shape)}".encode())
            h.update(flat.view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def media_part(media: dict | None, start: int, stop: int | None, pixels: bool) -> dict | None:
    """The media of a prompt's tokens ``start:stop``: its :data:`PER_TOKEN` tensor's columns, and
    the other tensors where ``pixels`` (the part holds the placeholders); ``None`` for none."""
    if media is None:
        return None
    out = {name: value[..., start:stop] if name == PER_TOKEN else value for name, value in media.items() if pixels or name == PER_TOKEN}
    return out or None


def _groups(seqs: list[np.ndarray], scopes: list[Scope]) -> dict[int, int]:
    """Per prompt that shares a prefix of at least :data:`MIN_PREFIX` tokens with others of its
    scope in this batch, that prefix's length (each prompt keeps one token of its own)."""
    order = sorted((i for i in range(len(seqs)) if scopes[i] is not None), key=lambda i: (repr(scopes[i]), seqs[i].tobytes()))
    out: dict[int, int] = {}
    run = [order[0]] if order else []
    common = 1 << 62
    for prev, cur in zip(order, order[1:]):
        shared = _shared(seqs[prev], seqs[cur]) if scopes[prev] == scopes[cur] else 0
        if min(common, shared) >= MIN_PREFIX:
            common = min(common, shared)
            run.append(cur)
            continue
        _close(run, common, seqs, out)
        run, common = [cur], 1 << 62
    _close(run, common, seqs, out)
    return out


def _close(run: list[int], common: int, seqs: list[np.ndarray], out: dict[int, int]) -> None:
    if len(run) < 2:
        return
    length = min(common, *(len(seqs[i]) - 1 for i in run))
    if length >= MIN_PREFIX:
        out.update({i: length for i in run})


def _within(
    ids: list[np.ndarray], scopes: list[Scope], spans: list[PromptMedia | None] | None
) -> dict[int, tuple[Scope, np.ndarray, int]]:
    """The prefixes shared within a batch: per prompt that shares one, its scope, the keys its
    tokens are compared by and its length. Prompts with media first share those that hold the
    same media whole (scoped by their digest); the others share text that ends before any
    prompt's media."""
    if spans is None:
        return {i: (scopes[i], ids[i], n) for i, n in _groups(ids, scopes).items()}
    out: dict[int, tuple[Scope, np.ndarray, int]] = {}
    held = [(scopes[i], s.digest) if s is not None and s.last >= 0 and scopes[i] is not None else None for i, s in enumerate(spans)]
    keys = [s.keys if s is not None else ids[i] for i, s in enumerate(spans)]
    found = {i: n for i, n in _groups(keys, held).items() if spans[i].holds_media(n)}
    members = collections.Counter((held[i], n, keys[i][:n].tobytes()) for i, n in found.items())
    out.update({i: (held[i], keys[i], n) for i, n in found.items() if members[held[i], n, keys[i][:n].tobytes()] > 1})
    text = [None if i in out else scopes[i] for i in range(len(ids))]
    heads = [ids[i] if s is None else ids[i][: s.first + 1] for i, s in enumerate(spans)]
    out.update({i: (scopes[i], ids[i], n) for i, n in _groups(heads, text).items()})
    return out


def scope_of(params: Any) -> Scope:
    """What a prompt's prefix states are kept apart by: its ``cache_salt`` and the load of its LoRA
    adapter (its identity, :meth:`poolkit.lora.manager.Adapters.identity`: never its name, which
    another adapter may take after it); ``None`` for a prompt that reads no shared prefix (vLLM's
    ``skip_reading_prefix_cache``)."""
    if getattr(params, "skip_reading_prefix_cache", None):
        return None
    lora = getattr(params, "lora_request", None)
    return (getattr(params, "cache_salt", None), getattr(params, "lora_identity", None) if lora is not None else None)


def _adapter_of(scope: Scope) -> Any:
    """The adapter identity a scope holds (a prefix holding media is scoped ``(scope, digest)``)."""
    while isinstance(scope, tuple) and len(scope) == 2 and isinstance(scope[0], tuple):
        scope = scope[0]
    return scope[1] if isinstance(scope, tuple) and len(scope) == 2 else None


def _digest_of(scope: Scope) -> bytes:
    """What the cache keeps of a scope: a digest, whatever a client put in it (a ``cache_salt`` of
    a megabyte costs the cache 16 bytes)."""
    return hashlib.blake2b(repr(scope).encode(), digest_size=16).digest()


def forward(
    sharing: "PrefixSharing | None", arch: Any, batch: PackedBatch, rows_for: Callable[[int], int] | None, flat: np.ndarray,
    params: Sequence[Any], adapters: Any, slots: Sequence[int] | None,
) -> tuple[torch.Tensor, list[int] | None]:
    """The engine's forward pass of ``batch`` (token ids ``flat``, one ``params`` per prompt, the
    adapters in ``slots``): shared prefixes computed once where ``sharing`` finds any, else the
    plain pass. Every pass runs padded with one-token filler sequences to ``rows_for(tokens)``
    rows (the kernels' row bucket, :func:`poolkit.kernel_rows`; ``None``: none), so that no kernel
    copies its rows to pad them. Returns the states and, per prompt, how many of its tokens'
    states came from a shared prefix (``None``: none)."""

    def run(step: PackedBatch) -> torch.Tensor:
        padded = step.with_filler(rows_for(step.num_tokens)) if rows_for is not None else step
        if padded is not step and step.prefix is not None:  # the filler sequences start at 0 and read no prefix
            extra = [0] * (padded.num_seqs - step.num_seqs)
            padded.starts = None if step.starts is None else [*step.starts, *extra]
            if step.prefix.offsets is not None:
                step.prefix.offsets = [*step.prefix.offsets, *extra]
            padded.prefix = step.prefix
        return arch(padded)[: step.num_tokens]

    if sharing is not None:
        ids = np.split(flat, np.cumsum(batch.seq_lens)[:-1])

        def active(lens: list[int], order: list[int]) -> Any:
            return adapters.active(lens, [slots[i] for i in order]) if slots is not None else contextlib.nullcontext()

        shared = sharing.forward(arch, batch, ids, [scope_of(p) for p in params], active, run)
        if shared is not None:
            return shared
    return run(batch), None


class PrefixSharing:
    """The shared-prefix forward pass of one loaded model (:func:`for_model`); ``cache`` keeps
    prefix states across calls, or is ``None``."""

    def __init__(self, cache: PrefixCache | None) -> None:
        self.cache = cache
        #: Prompts run, and tokens whose states came from a shared prefix, so far.
        self.prompts = self.shared_tokens = 0

    @classmethod
    def for_model(cls, model: Any, enabled: bool | None) -> "PrefixSharing | None":
        """Sharing for ``model``: ``None`` when its architecture cannot share prefixes, or
        ``enabled`` is ``False`` (``enable_prefix_caching=False``); on by default otherwise, as
        vLLM turns prefix caching on for decoders."""
        if enabled is False or not getattr(model.architecture, "shares_prefixes", False):
            return None
        budget = int(env_number("POOLKIT_PREFIX_CACHE_BYTES", DEFAULT_CACHE_BYTES))
        return cls(PrefixCache(budget) if budget > 0 else None)

    def forget(self, identity: Any) -> None:
        """Drop the kept states that the adapter load ``identity`` computed (it was unloaded)."""
        if self.cache is not None:
            self.cache.drop_adapter(identity)

    def forward(
        self, arch: Any, batch: PackedBatch, ids: list[np.ndarray], scopes: list[Scope], active: Callable[[list[int], list[int]], Any],
        run: Callable[[PackedBatch], torch.Tensor],
    ) -> tuple[torch.Tensor, list[int]] | None:
        """The last layer's states ``[T, H]`` of ``batch`` (whose prompts' token ids are ``ids``,
        each in its ``scopes``), shared prefixes computed once, and per prompt how many of its
        tokens' states came from a shared prefix; ``None`` when nothing is shared or
        kept, for the caller's plain forward pass. ``active(lens, order)`` is the context under which
        a pass over sequences of ``lens`` tokens, those of the prompts ``order``, runs (their LoRA adapters);
        ``run(step)`` runs a pass of ``arch``, padded as the engine pads (:func:`forward`)."""
        if batch.prefix is not None or batch.key_lens is not None:
            return None
        media = batch.extras.get("media")
        spans: list[PromptMedia | None] | None = None
        if media is not None and any(m is not None for m in media):
            placeholders = frozenset(getattr(arch, "placeholder_tokens", None) or ())
            if not placeholders:  # an architecture that cannot say where its media lie shares none
                return None
            spans = [PromptMedia.of(seq, m, placeholders) if m is not None else None for seq, m in zip(ids, media)]
            if any(s is None and m is not None for s, m in zip(spans, media)):
                return None
        within = _within(ids, scopes, spans)
        self.prompts += len(ids)
        plan: list[tuple[Entry, int] | None] = [None] * len(ids)
        missing: dict[tuple[Scope, tuple], list[int]] = {}
        for i, seq in enumerate(ids):
            if i in within:
                scope, keys, length = within[i]
                key = (scope, _key(keys[:length]))
                entry = self.cache.exact(*key) if self.cache is not None else None
                if entry is None:
                    missing.setdefault(key, []).append(i)
                else:
                    plan[i] = (entry, length)
            elif self.cache is not None and len(seq) > BLOCK and scopes[i] is not None:
                plan[i] = self._lookup(scopes[i], seq, spans[i] if spans is not None else None)
        if missing:
            self._compute(run, batch.device, missing, ids, spans, plan, active)
        keep = [k for i, p in enumerate(plan) if (k := self._kept(i, ids[i], scopes[i], spans, p[1] if p else 0)) is not None]
        if keep:  # no more than the cache holds: a batch of long documents keeps some, not all
            room = self.cache.max_bytes // self._token_bytes(arch)
            keep = keep[: int(np.searchsorted(np.cumsum([len(k[2]) for k in keep]), room, side="right"))]
        if all(p is None for p in plan) and not keep:
            return None
        cached = [p[1] if p is not None else 0 for p in plan]
        self.shared_tokens += sum(cached)
        return self._continue(run, batch, ids, spans, plan, keep, active), cached

    def _lookup(self, scope: Scope, seq: np.ndarray, span: PromptMedia | None) -> tuple[Entry, int] | None:
        """The longest cached prefix a prompt begins with: one that holds its media (kept apart
        by them), else one of text that ends before them."""
        if span is None:
            return self.cache.longest(scope, seq, len(seq) - 1)
        if span.last >= 0:
            found = self.cache.longest((scope, span.digest), span.keys, len(seq) - 1, least=span.last + 1)
            if found is not None:
                return found
        return self.cache.longest(scope, seq, min(len(seq) - 1, span.first), counted=span.last < 0)

    def _kept(
        self, i: int, seq: np.ndarray, scope: Scope, spans: list[PromptMedia | None] | None, start: int
    ) -> tuple[int, Scope, np.ndarray, tuple[Scope, int] | None] | None:
        """What of a prompt is left in the cache, in whole blocks: ``(prompt, scope, keys, text)``
        (``text``: :meth:`PrefixCache.put`'s); ``None``: nothing. A prompt that found a prefix
        (of ``start`` tokens) leaves none, but for one whose prefix was text before its media:
        it leaves its blocks that hold the media, its prefix's states and its own."""
        if self.cache is None or len(seq) <= BLOCK or scope is None:
            return None
        n = (len(seq) - 1) // BLOCK * BLOCK
        span = spans[i] if spans is not None else None
        if span is not None and span.holds_media(n) and not span.holds_media(start):
            return i, (scope, span.digest), span.keys[:n], span.text_blocks(scope)
        if start:
            return None
        if span is None:
            return i, scope, seq[:n], None
        n = min(n, span.first // BLOCK * BLOCK)
        return (i, scope, seq[:n], None) if n else None

    @staticmethod
    def _token_bytes(arch: Any) -> int:
        """At most how many bytes one token's prefix states take: keys and values of every layer
        (each no wider than the hidden size) and its last states."""
        layers = len(getattr(arch, "layers", None) or getattr(getattr(arch, "language_model", None), "layers", None) or ()) or 1
        size = next(arch.parameters()).element_size()
        return (2 * layers + 1) * int(arch.hidden_size) * size

    def _compute(
        self, run: Callable[[PackedBatch], torch.Tensor], device: torch.device, missing: dict[tuple[Scope, tuple], list[int]],
        ids: list[np.ndarray], spans: list[PromptMedia | None] | None, plan: list[tuple[Entry, int] | None], active: Callable[[list[int], list[int]], Any],
    ) -> None:
        """Step 1: the prefixes not known yet, as sequences of their own (with the media of those
        that hold them), their states kept."""
        keys = list(missing)
        lens = [len(prefix) for _, prefix in keys]
        firsts = [members[0] for members in missing.values()]
        step = PackedBatch(device_tensor(np.concatenate([ids[i][:n] for i, n in zip(firsts, lens)]), torch.long, device), lens)
        if spans is not None:
            parts = [media_part(s.media, 0, n, True) if (s := spans[i]) is not None and s.holds_media(n) else None
                     for i, n in zip(firsts, lens)]
            if any(m is not None for m in parts):
                step.extras["media"] = parts
        step.prefix = PrefixState(keep=torch.arange(step.num_tokens, device=device))
        with active(lens, firsts):
            hidden = run(step)
        bounds = np.cumsum([0, *lens])
        for n, key in enumerate(keys):
            a, b = int(bounds[n]), int(bounds[n + 1])
            entry = Entry(key[1], [k[a:b].clone() for k, _ in step.prefix.kept], [v[a:b].clone() for _, v in step.prefix.kept],
                          hidden[a:b].clone())
            if self.cache is not None:
                span = spans[firsts[n]] if spans is not None else None
                self.cache.put(key[0], entry, span.text_blocks(key[0][0]) if span is not None and span.holds_media(b - a) else None)
            for i in missing[key]:
                plan[i] = (entry, b - a)

    def _continue(
        self, run: Callable[[PackedBatch], torch.Tensor], batch: PackedBatch, ids: list[np.ndarray],
        spans: list[PromptMedia | None] | None,
        plan: list[tuple[Entry, int] | None], keep: list[tuple[int, Scope, np.ndarray, Any]], active: Callable[[list[int], list[int]], Any],
    ) -> torch.Tensor:
        """Step 2: every prompt from where its prefix ends (with the part of its media that
        describes its rest: no pixels where the prefix held them), then the prompts' states whole."""
        device = batch.device
        starts = [p[1] if p is not None else 0 for p in plan]
        entries: dict[int, tuple[Entry, int]] = {}
        offsets = []
        for p in plan:
            if p is None:
                offsets.append(0)
                continue
            if id(p[0]) not in entries:
                entries[id(p[0])] = (p[0], sum(len(e.ids) for e, _ in entries.values()))
            offsets.append(entries[id(p[0])][1])
        suffixes = [seq[start:] for seq, start in zip(ids, starts)]
        lens = [len(s) for s in suffixes]
        step = PackedBatch(device_tensor(np.concatenate(suffixes), torch.long, device), lens, starts=starts)
        if spans is not None:
            step.extras["media"] = [
                None if s is None else s.media if start == 0 else media_part(s.media, start, None, not s.holds_media(start))
                for s, start in zip(spans, starts)
            ]
        bounds = np.cumsum([0, *lens])
        kept_rows = np.concatenate([np.arange(bounds[i], bounds[i] + len(k) - starts[i]) for i, _, k, _ in keep]) if keep else None
        used = [e for e, _ in entries.values()]
        layers = len(used[0].keys) if used else 0
        step.prefix = PrefixState(
            [_joined([e.keys[layer] for e in used]) for layer in range(layers)] if used else None,
            [_joined([e.values[layer] for e in used]) for layer in range(layers)] if used else None,
            offsets,
            device_tensor(kept_rows, torch.long, device) if kept_rows is not None and kept_rows.size else None,
        )
        with active(lens, list(range(len(ids)))):
            hidden = run(step)
        if step.prefix.kept and self.cache is not None:
            at = 0
            for i, scope, keys, text in keep:
                s, n = starts[i], len(keys) - starts[i]  # the rows of its prefix (text before its media), then its own
                rows = slice(at, at + n)
                a = int(bounds[i])
                own = ([k[rows] for k, _ in step.prefix.kept], [v[rows] for _, v in step.prefix.kept], [hidden[a : a + n]])
                if plan[i] is None:
                    own = tuple([t.clone() for t in part] for part in own)
                else:
                    head = plan[i][0]
                    own = tuple([torch.cat([h[:s], t]) for h, t in zip(before, part)]
                                for before, part in zip((head.keys, head.values, [head.hidden]), own))
                self.cache.put(scope, Entry(_key(keys), own[0], own[1], own[2][0]), text)
                at += n
        if not used:
            return hidden
        sources = torch.cat([hidden, *(e.hidden for e in used)])
        base = {id(e): hidden.shape[0] + off for e, off in entries.values()}
        index = np.concatenate([
            np.concatenate([np.arange(base[id(p[0])], base[id(p[0])] + p[1]) if p is not None else np.zeros(0, np.int64),
                            np.arange(bounds[i], bounds[i + 1])])
            for i, p in enumerate(plan)
        ])
        return sources.index_select(0, device_tensor(index, torch.long, device))
