"""Shared prefixes computed once: within a batch, and across calls through a bounded cache.

In a causal model the states of a prompt's first ``p`` tokens depend on those tokens alone, so
prompts that begin alike (an embedder's instruction before each query, a reranker's system text
and query before each document) need them computed once. For an architecture that says so
(:class:`~poolkit.contracts.capabilities.SharesPrefixes`: causal attention, positions from 0, no
sliding window, nothing that reads a sequence's length), the engine's forward pass runs in two steps:

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

Prompts with media (a vision-language model's, whose architecture names its placeholder tokens:
:class:`~poolkit.contracts.capabilities.MediaPlaceholders`) share too, but a prefix never splits a prompt's
media: it ends before the prompt's first placeholder (text alone: keyed by its token ids, so an
instruction before different images is shared; it runs without the media) or holds every
placeholder (keyed by the media too: a digest of its tensors in the scope, and each token's
``positions`` beside its id, so the same text with another image never shares; it runs with the
media, and the prompt's rest with its positions only). Each step's sequences read the part of
their media that describes their tokens (:func:`media_part`).

The package's modules: ``cache`` (:class:`PrefixCache`, entries and their scopes), ``media`` (where a
prompt's media lie: :class:`PromptMedia`), ``plan`` (which prompts share what within a batch, what
each finds in and leaves to the cache) and ``sharing`` (the two-step forward pass:
:class:`PrefixSharing`, :func:`forward`, and :class:`PrefixState`, what the attention reads).
"""

from .cache import BLOCK, DEFAULT_CACHE_BYTES, KEY_OVERHEAD, Entry, PrefixCache, Reuse, Scope, TextBlocks, key_bytes, scope_of
from .media import PER_TOKEN, PromptMedia, media_part
from .plan import MIN_PREFIX, Kept, PrefixKey, Shared
from .sharing import PrefixSharing, PrefixState, forward

__all__ = [
    "BLOCK", "DEFAULT_CACHE_BYTES", "KEY_OVERHEAD", "MIN_PREFIX", "PER_TOKEN", "Entry", "Kept", "PrefixCache", "PrefixKey",
    "PrefixSharing", "PrefixState", "PromptMedia", "Reuse", "Scope", "Shared", "TextBlocks", "forward", "key_bytes",
    "media_part", "scope_of",
]
