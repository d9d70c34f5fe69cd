"""The C heap under CPU inference: how glibc's allocator is set for it, and handing freed memory back.

A forward pass allocates and frees tensors of megabytes, of a different size almost every batch.
With glibc's defaults each of them is a fresh ``mmap`` (its dynamic threshold never settles on
such sizes) or a heap top given back after every free, so every allocation page-faults its
memory in again: on nomic-embed-text-v1.5's shape in bf16 (W3, one thread) a third of the time
went to that. poolkit raises glibc's mmap and trim thresholds once, when a model is loaded onto
the CPU (:func:`tune_allocator`), so freed blocks are reused; the server's batcher still hands
free memory back between batches (:func:`release_freed_memory`). Nothing changes without glibc,
or when the environment sets glibc's own malloc settings (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``): those are the user's choice.

oneDNN's caches: torch runs bf16 matmuls through oneDNN, and both oneDNN
(``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) and torch's ideep layer (``LRU_CACHE_CAPACITY``) keep the
primitive built for each shape, 1,024 of each by default, about half a MiB apiece. A server sees
a new token count almost every batch, so both only fill: a bf16 ``linear`` over 2,400 row counts
grew the process by 2.4 GiB; bounding either cache alone did not stop it, bounding both did.
:func:`tune_allocator` bounds both to :data:`ONEDNN_CACHE_CAPACITY` unless the environment sets
them; they are read when the first primitive is built, so this holds in a process that loads its
model before running a bf16 matmul (the CLI, the server) and changes nothing otherwise.

Python's own heap: once a model is loaded, :func:`freeze_python_heap` takes every object alive
then (hundreds of thousands: torch, transformers, the tokenizer's vocabulary) out of the cyclic
garbage collector's full passes, which otherwise walk all of them a few times per large request.
The heap thaws again when the ``LLM`` that holds a model is freed, so a dropped model is collected.
"""

from __future__ import annotations

import ctypes
import gc
import os
import weakref
from typing import Any

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap and are reused, not mapped afresh.
MMAP_THRESHOLD = 64 << 20
#: Free memory the heap keeps at its top before giving it back by itself.
TRIM_THRESHOLD = 512 << 20
#: Primitives kept by oneDNN's and ideep's caches (their default: 1,024 each). Offline ``embed``
#: of batches of varying shapes ran as fast with 16 or 64 of each as with 1,024.
ONEDNN_CACHE_CAPACITY = 64
#: The environment variables of those two caches.
ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
#: Environment variables that set glibc's malloc: when one is set, poolkit leaves malloc alone.
GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both exist in glibc only
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


_LIBC = _load_libc()
_TUNED = False


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for inference (:data:`MMAP_THRESHOLD`,
    :data:`TRIM_THRESHOLD`) and bound oneDNN's primitive caches (:data:`ONEDNN_CACHE_CAPACITY`),
    once per process. Returns whether the thresholds are poolkit's now: false without glibc or
    when the environment sets malloc itself (:data:`GLIBC_MALLOC_VARIABLES`)."""
    global _TUNED
    if _TUNED:
        return True
    for name in ONEDNN_CACHE_VARIABLES:
        os.environ.setdefault(name, str(ONEDNN_CACHE_CAPACITY))
    if _LIBC is None or any(os.environ.get(name) for name in GLIBC_MALLOC_VARIABLES):
        return False
    _TUNED = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(_LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _TUNED


def release_freed_memory() -> None:
    """Hand the memory the C heap holds free back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere).

    A batch allocates and frees tensors of a different size almost every time, and glibc keeps
    freed blocks for reuse, fragmented across its per-thread arenas. Under ``poolkit bench-serve``
    (16 clients, five minutes, two servers side by side) a server's resident memory grew 23%
    after its first minute without this and shrank 7% with it, at the same throughput; one call
    takes about 0.1 ms.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def freeze_python_heap(owner: object | None = None) -> bool:
    """Collect garbage once, then move every object alive out of the cyclic collector's reach
    (``gc.freeze``), as vLLM does after loading a model; ``POOLKIT_GC_FREEZE=0`` leaves the
    collector alone. Returns whether it froze.

    A request of many inputs allocates tens of thousands of objects (prompts, token lists,
    outputs), which sets off a few full collections, each walking every object the process holds.
    Frozen objects are still freed when nothing refers to them; they are only never searched for
    reference cycles. ``embed`` of 20,000 short texts on a 1-layer model (the host's share alone,
    one thread): the collector's time 0.69 -> 0.18 s, the call 2.66 -> 1.93 s.

    A loaded model is such a cycle (its modules, its engine and their threads refer to one
    another), so a frozen model the program has dropped would never be freed: the heap is thawed
    (``gc.unfreeze``) when ``owner``, the object that holds the model, is freed, and before each
    collection here. The model is then freed by the next collection: the program's own
    ``gc.collect()``, the collector's next full pass, or the next load.
    """
    if os.environ.get("POOLKIT_GC_FREEZE", "1") == "0":
        return False
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    if owner is not None:
        weakref.finalize(owner, gc.unfreeze).atexit = False
    return True
