"""glibc's allocator under CPU inference: tuned once a model is on the CPU, unless the user set it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from poolkit.runtime import allocator

glibc = pytest.mark.skipif(allocator._LIBC is None, reason="glibc only")

# A 40 MiB block: mapped afresh by glibc's defaults (above its largest dynamic mmap threshold, 32 MiB),
# taken from the reusable heap once poolkit has tuned malloc (MMAP_THRESHOLD is 64 MiB).
PROBE = textwrap.dedent(
    """
    import ctypes, json, sys

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def mapped(size=40 << 20):
        before = libc.mallinfo2().hblks
        block = libc.malloc(size)
        after = libc.mallinfo2().hblks
        libc.free(block)
        return after > before

    first = mapped()
    from poolkit import LLM
    from poolkit.runtime import allocator
    LLM(sys.argv[1])
    print(json.dumps({"before": first, "after": mapped(), "tuned": allocator.tune_allocator()}))
    """
)


def _probe(model_dir, **env) -> dict:
    import json

    clean = {k: v for k, v in os.environ.items() if k not in allocator.GLIBC_MALLOC_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_dir)], env={**clean, **env}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_loading_a_model_on_the_cpu_lets_glibc_reuse_large_blocks(minilm_dir) -> None:
    # nomic-embed-text-v1.5's shape in bf16 spent a third of its time page-faulting fresh mappings.
    assert _probe(minilm_dir) == {"before": True, "after": False, "tuned": True}


@glibc
def test_malloc_settings_in_the_environment_are_left_alone(minilm_dir) -> None:
    assert _probe(minilm_dir, MALLOC_MMAP_THRESHOLD_="1048576") == {"before": True, "after": True, "tuned": False}


def test_without_glibc_nothing_is_tuned_or_trimmed(monkeypatch) -> None:
    monkeypatch.setattr(allocator, "_LIBC", None)
    monkeypatch.setattr(allocator, "_TUNED", False)
    assert allocator.tune_allocator() is False
    allocator.release_freed_memory()  # a no-op, not an error


@glibc
def test_release_freed_memory_calls_malloc_trim(monkeypatch) -> None:
    calls = []

    class FakeLibc:
        def malloc_trim(self, pad: int) -> int:
            calls.append(pad)
            return 1

    monkeypatch.setattr(allocator, "_LIBC", FakeLibc())
    allocator.release_freed_memory()
    assert calls == [0]


def test_loading_a_model_freezes_the_python_heap(tiny_encoders) -> None:
    """In a fresh process (freezing is process-wide): a load collects and freezes the heap, after
    which embedding still works and frees what it allocates; POOLKIT_GC_FREEZE=0 leaves it alone."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import gc
        from poolkit import LLM
        before = gc.get_freeze_count()
        llm = LLM({str(tiny_encoders["bert"])!r}, device="cpu")
        frozen = gc.get_freeze_count()
        out = llm.embed(["a first text", "and a second one"])
        print(before, frozen, len(out), len(out[0].outputs.embedding))
        """
    )
    for setting, expect_frozen in (("1", True), ("0", False)):
        env = {**os.environ, "POOLKIT_GC_FREEZE": setting}
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        before, frozen, n, width = map(int, result.stdout.split())
        assert before == 0 and n == 2 and width > 0
        assert (frozen > 10_000) is expect_frozen, (setting, frozen)


def test_a_dropped_model_is_freed_after_the_heap_froze(tiny_encoders) -> None:
    """In a fresh process with freezing on: a model the program drops is freed by its next
    collection, or by the next load, while another model loaded beside it keeps working; frozen,
    its reference cycles would never be collected (each load of a bench's references stayed)."""
    script = textwrap.dedent(
        f"""
        import gc, weakref
        from poolkit import LLM
        path = {str(tiny_encoders["bert"])!r}
        kept = LLM(path, device="cpu")
        dropped = LLM(path, device="cpu")
        dropped.embed(["a text"])
        model = weakref.ref(dropped.model)
        del dropped
        gc.collect()
        collected = model() is None
        dropped = LLM(path, device="cpu")
        model = weakref.ref(dropped.model)
        del dropped
        again = LLM(path, device="cpu")
        print(collected, model() is None, gc.get_freeze_count() > 10_000, len(kept.embed(["still here"])[0].outputs.embedding))
        """
    )
    env = {**os.environ, "POOLKIT_GC_FREEZE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    collected, reloaded, frozen, width = result.stdout.split()
    assert (collected, reloaded, frozen) == ("True", "True", "True") and int(width) > 0

CACHES = textwrap.dedent(
    """
    import json, os, sys, torch
    from poolkit import LLM
    from poolkit.runtime.allocator import ONEDNN_CACHE_VARIABLES, release_freed_memory

    LLM(sys.argv[1])
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    w = torch.randn(1536, 384, dtype=torch.bfloat16)
    for m in range(1, 65):  # the caches filled to their bound
        torch.nn.functional.linear(torch.randn(m, 384, dtype=torch.bfloat16), w)
    release_freed_memory()
    start = rss()
    for m in range(65, 1265):  # a new row count each time, as a server's batches have
        torch.nn.functional.linear(torch.randn(m, 384, dtype=torch.bfloat16), w)
    release_freed_memory()
    print(json.dumps({"grew_mib": rss() - start, "caches": [os.environ.get(n) for n in ONEDNN_CACHE_VARIABLES]}))
    """
)


@glibc
def test_onednn_caches_are_bounded_once_a_model_is_loaded(minilm_dir) -> None:
    """oneDNN and ideep keep a bf16 matmul primitive per shape, about half a MiB each, 1,024 of each
    by default: 1,200 new row counts grew a process by about 1 GiB (the soak of four models grew
    50 MiB a minute). Loaded through poolkit, both caches hold ONEDNN_CACHE_CAPACITY entries."""
    clean = {k: v for k, v in os.environ.items() if k not in allocator.ONEDNN_CACHE_VARIABLES}
    run = subprocess.run([sys.executable, "-c", CACHES, str(minilm_dir)], env=clean, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["caches"] == [str(allocator.ONEDNN_CACHE_CAPACITY)] * 2
    assert result["grew_mib"] < 150, result  # unbounded: 600 MiB and more


def test_onednn_cache_settings_in_the_environment_are_left_alone(monkeypatch) -> None:
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "1024")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setattr(allocator, "_TUNED", False)
    allocator.tune_allocator()
    assert os.environ["LRU_CACHE_CAPACITY"] == "1024"
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(allocator.ONEDNN_CACHE_CAPACITY)
