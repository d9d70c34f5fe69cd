"""What of a batch's prompts shares a prefix: the groups within the batch, the cache's prefixes
each prompt finds, and what each prompt leaves in the cache for the next calls.

Within a batch, prompts are grouped by the longest prefix they share, at any length (at least
:data:`MIN_PREFIX` tokens, and each prompt keeps a token of its own); prompts with media share
those that hold the same media whole, the others text that ends before any prompt's media.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .cache import BLOCK, PrefixCache, Reuse, Scope, TextBlocks
from .media import PromptMedia

if TYPE_CHECKING:
    from ...contracts.architecture import Architecture

#: The shortest prefix shared within a batch: below it, sharing saves less than it costs.
MIN_PREFIX = 16


class Shared(NamedTuple):
    """A prompt's prefix shared within its batch: its ``scope``, the ``keys`` its tokens are
    compared by (token ids, or rows of id and positions) and the prefix's ``length``."""

    scope: Scope
    keys: np.ndarray
    length: int


class PrefixKey(NamedTuple):
    """A prefix as the cache finds it exactly: its scope and its tokens (:func:`key_of`)."""

    scope: Scope
    ids: tuple


class Kept(NamedTuple):
    """What of prompt number ``prompt`` is left in the cache, in whole blocks: its ``keys`` under
    ``scope``, and the ``text`` blocks before its media (:meth:`PrefixCache.put`)."""

    prompt: int
    scope: Scope
    keys: np.ndarray
    text: TextBlocks | None


def key_of(seq: np.ndarray) -> tuple:
    """``seq`` (token ids, or rows of id and positions) as a hashable key."""
    rows = seq.tolist()
    return tuple(map(tuple, rows)) if seq.ndim > 1 else tuple(rows)


def _shared(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens ``a`` and ``b`` share (rows of a 2-D array: whole rows)."""
    n = min(len(a), len(b))
    unequal = a[:n] != b[:n]
    differ = np.flatnonzero(unequal.any(axis=1) if unequal.ndim > 1 else unequal)
    return int(differ[0]) if differ.size else n


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


def within(ids: list[np.ndarray], scopes: list[Scope], spans: list[PromptMedia | None] | None) -> dict[int, Shared]:
    """The prefixes shared within a batch, by prompt. Prompts with media first share those that
    hold the same media whole (scoped by their digest); the others share text that ends before
    any prompt's media."""
    if spans is None:
        return {i: Shared(scopes[i], ids[i], n) for i, n in _groups(ids, scopes).items()}
    out: dict[int, Shared] = {}
    held = [(scopes[i], s.digest) if s is not None and s.last >= 0 and scopes[i] is not None else None for i, s in enumerate(spans)]
    keys = [s.keys if s is not None else ids[i] for i, s in enumerate(spans)]
    found = {i: n for i, n in _groups(keys, held).items() if spans[i].holds_media(n)}
    members = collections.Counter((held[i], n, keys[i][:n].tobytes()) for i, n in found.items())
    out.update({i: Shared(held[i], keys[i], n) for i, n in found.items() if members[held[i], n, keys[i][:n].tobytes()] > 1})
    text = [None if i in out else scopes[i] for i in range(len(ids))]
    heads = [ids[i] if s is None else ids[i][: s.first + 1] for i, s in enumerate(spans)]
    out.update({i: Shared(scopes[i], ids[i], n) for i, n in _groups(heads, text).items()})
    return out


def lookup(cache: PrefixCache, scope: Scope, seq: np.ndarray, span: PromptMedia | None) -> Reuse | None:
    """The longest cached prefix a prompt begins with: one that holds its media (kept apart
    by them), else one of text that ends before them."""
    if span is None:
        return cache.longest(scope, seq, len(seq) - 1)
    if span.last >= 0:
        found = cache.longest((scope, span.digest), span.keys, len(seq) - 1, least=span.last + 1)
        if found is not None:
            return found
    return cache.longest(scope, seq, min(len(seq) - 1, span.first), counted=span.last < 0)


def kept(i: int, seq: np.ndarray, scope: Scope, span: PromptMedia | None, start: int) -> Kept | None:
    """What of prompt ``i`` is left in the cache, in whole blocks; ``None``: nothing. A prompt that
    found a prefix (of ``start`` tokens) leaves none, but for one whose prefix was text before its
    media: it leaves its blocks that hold the media, its prefix's states and its own."""
    if len(seq) <= BLOCK or scope is None:
        return None
    n = (len(seq) - 1) // BLOCK * BLOCK
    if span is not None and span.holds_media(n) and not span.holds_media(start):
        return Kept(i, (scope, span.digest), span.keys[:n], span.text_blocks(scope))
    if start:
        return None
    if span is None:
        return Kept(i, scope, seq[:n], None)
    n = min(n, span.first // BLOCK * BLOCK)
    return Kept(i, scope, seq[:n], None) if n else None


def token_bytes(arch: Architecture) -> int:
    """At most how many bytes one token's prefix states take: keys and values of every layer
    (each no wider than the hidden size) and its last states."""
    layers = len(getattr(arch, "layers", None) or getattr(getattr(arch, "language_model", None), "layers", None) or ()) or 1
    size = next(arch.parameters()).element_size()
    return (2 * layers + 1) * int(arch.hidden_size) * size
