"""What only a CUDA GPU can check: the FlashAttention varlen kernel against its reference, and
an engine loop that never makes the host wait for the device. Skipped without a GPU; the whole
suite runs on one with ``POOLKIT_TEST_DEVICE=cuda`` (``.ci/gpu/run tests``)."""

from __future__ import annotations

import warnings

import pytest
import torch

from poolkit import LLM, PackedBatch
from poolkit.kernels.attention import flash_varlen_attention, varlen_attention
from poolkit.plugins import registry
from poolkit.plugins.lookup import select_kernel

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_flash_kernel_is_registered_for_cuda() -> None:
    entry = registry("kernel").get("varlen_attention:flash")
    assert entry.device == "cuda" and entry.reference is varlen_attention and entry.priority > 0
    assert select_kernel("varlen_attention", "cpu") is not flash_varlen_attention
    if not torch.cuda.is_available():
        assert not entry.is_available()


def test_flash_kernel_hands_what_it_cannot_run_to_the_reference(monkeypatch) -> None:
    """float32 and a bias go to the reference (on any device: checked here on the CPU)."""
    calls = []
    monkeypatch.setattr("poolkit.kernels.attention.varlen_attention", lambda *a: calls.append(a) or "ref")
    batch = PackedBatch.from_sequences([[1, 2, 3], [4, 5]])
    q = torch.randn(5, 2, 8)
    assert flash_varlen_attention(q, q, q, batch) == "ref"
    bias = torch.zeros(2, 3, 3)
    assert flash_varlen_attention(q.bfloat16(), q.bfloat16(), q.bfloat16(), batch, bias=bias) == "ref"
    assert len(calls) == 2


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_flash_varlen_matches_the_reference(dtype, causal, window, kv_heads) -> None:
    lens = [17, 1, 64, 5, 64, 33, 2]  # unsorted, repeated lengths, single tokens
    batch = PackedBatch.from_sequences([[0] * n for n in lens], device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(sum(lens), 4, 64, device="cuda", generator=g, dtype=dtype)
    k, v = (torch.randn(sum(lens), kv_heads, 64, device="cuda", generator=g, dtype=dtype) for _ in range(2))
    with torch.inference_mode():
        got = flash_varlen_attention(q, k, v, batch, causal=causal, window=window, scale=0.1)
        ref = varlen_attention(q.float(), k.float(), v.float(), batch, causal=causal, window=window, scale=0.1)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), ref, atol=2e-2, rtol=2e-2)


@cuda
def test_cuda_selects_flash() -> None:
    assert select_kernel("varlen_attention", "cuda") is flash_varlen_attention


@cuda
def test_embedding_loop_does_not_wait_for_the_device(tiny_encoders) -> None:
    """Between batches the host only queues work: no host-device synchronisation but the one
    wait per batch for its results (a CUDA event, which the debug mode does not count)."""
    llm = LLM(str(tiny_encoders["bert"]), device="cuda", dtype="bfloat16", max_batch_tokens=64)
    texts = [f"sentence number {i} " * (1 + i % 7) for i in range(40)]
    expected = [o.outputs.embedding for o in llm.embed(texts)]  # warm-up: kernels compiled, caches filled
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            got = [o.outputs.embedding for o in llm.embed(texts)]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]
    assert not syncs, syncs[:3]
    assert got == expected


# -- the engine's GPU loop, checked on any device ---------------------------------------------------


def test_slices_follow_the_token_budget_on_accelerators_only() -> None:
    from types import SimpleNamespace

    from poolkit.contracts.io import Prompt
    from poolkit.runtime.engine import OVERLAP_BATCHES, Engine
    from poolkit.runtime.estimates import CHARS_PER_TOKEN_GUESS

    prompts = [Prompt(text="x" * 100) for _ in range(50)]
    def on(device: str, standin: object = None) -> SimpleNamespace:
        engine = SimpleNamespace(model=SimpleNamespace(device=torch.device(device)), max_batch_tokens=25, standin=standin)
        engine.asynchronous = Engine.asynchronous.fget(engine)
        return engine

    assert Engine.slices(on("cpu"), prompts) == [(0, 50)]
    assert Engine.slices(on("cpu", standin=object()), prompts) == Engine.slices(on("cuda"), prompts)  # the CPU stand-in
    ranges = Engine.slices(on("cuda"), prompts)
    first = 25 * CHARS_PER_TOKEN_GUESS // 100  # prompts of 100 characters: one budget, so the device starts early
    per_slice = OVERLAP_BATCHES * 25 * CHARS_PER_TOKEN_GUESS // 100  # then OVERLAP_BATCHES budgets a slice
    assert ranges[0] == (0, first) and ranges[1] == (first, first + per_slice) and ranges[-1][1] == 50
    assert all(a == b for (_, a), (b, _) in zip(ranges, ranges[1:]))  # consecutive, nothing left out
    assert Engine.slices(on("cuda"), prompts[:1]) == [(0, 1)]


def test_prompts_tokenized_slice_by_slice_give_the_same_results(tiny_encoders, monkeypatch) -> None:
    """The overlapped path (several slices, tokenized on a worker thread) against one slice; an
    error in a later slice names the prompt by its place in the whole request."""
    from poolkit import InvalidRequest
    from poolkit.runtime.engine import Engine

    llm = LLM(str(tiny_encoders["bert"]), device="cpu", max_batch_tokens=40)
    texts = [f"sentence number {i} " * (1 + i % 5) for i in range(30)]
    want = [o.outputs.embedding for o in llm.embed(texts)]
    monkeypatch.setattr(Engine, "slices", lambda self, prompts: [(0, 7), (7, 8), (8, len(prompts))])
    got = llm.embed(texts)
    assert [o.outputs.embedding for o in got] == want
    assert [o.prompt_token_ids for o in got] == [o.prompt_token_ids for o in llm.embed(texts)]
    limit = llm.model.max_model_len.value
    with pytest.raises(InvalidRequest, match="input 12 has more tokens"):
        llm.embed(texts[:12] + ["word " * (limit + 5)] + texts[13:])


def test_outputs_on_the_cpu_are_handed_back_as_they_are() -> None:
    from poolkit.runtime.engine import to_host

    outputs = [torch.randn(3), torch.randn(2, 4)]
    assert all(a is b for a, b in zip(to_host(outputs)(), outputs))
    assert to_host([])() == []


@cuda
def test_outputs_on_the_gpu_come_back_in_one_copy() -> None:
    from poolkit.runtime.engine import to_host

    outputs = [torch.randn(3, device="cuda"), torch.randn(2, 4, device="cuda"), torch.randn((), device="cuda")]
    got = to_host(outputs)()
    assert all(g.device.type == "cpu" and torch.equal(g, o.cpu()) for g, o in zip(got, outputs))
    mixed = to_host([torch.ones(2, device="cuda"), torch.ones(2, device="cuda", dtype=torch.int64)])()
    assert [m.dtype for m in mixed] == [torch.float32, torch.int64]


def test_the_gpu_serve_profile_runs_on_the_cpu_stand_in(tmp_path) -> None:
    """``.ci/gpu/serve_profile.py`` (the GPU check's ``serve-profile`` step, whose first run on a
    GPU read nothing useful) on the CPU stand-in: two API processes under load, the samples and CPU
    times of the engine process and of the front both read back and summed up."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OUT=str(tmp_path), POOLKIT_STANDIN_TOKENS_PER_S="1000000")
    done = subprocess.run(
        [sys.executable, str(root / ".ci" / "gpu" / "serve_profile.py"), "--preset", "host-bert", "--device", "cpu",
         "--dtype", "float32", "--api-server-counts", "2", "--seconds", "2", "--connections", "8", "--processes", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any("serve (2 API processes) 8 x 1:" in line and "req/s" in line for line in lines), done.stdout[-2000:]
    processes = [line for line in lines if line.startswith("process ") and " cores (Python threads " in line]
    # each process's samples read back: the engine process (its batcher runs the model), the keeper and
    # the front (which of its threads show depends on the connections the kernel handed it)
    assert len(processes) >= 3 and any("poolkit-batcher" in line for line in processes), done.stdout[-3000:]
    samples = (tmp_path / "serve-2.txt").read_text().splitlines()
    assert any(line.startswith("#cpu process ") for line in samples)
    assert any("Batcher._loop (batching.py)" in line for line in samples)
