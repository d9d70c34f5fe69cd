"""The AMX attention kernel (kernels/attention.c) against the torch reference: every mask it
draws from ranges (causal, sliding windows, ragged tails), grouped-query heads, soft-capping,
strided views of a fused projection, the calls it hands back, and its split over threads.
The numerical tests skip on CPUs without AMX or without a C compiler."""

from __future__ import annotations

import pytest
import torch

from poolkit import PackedBatch
from poolkit.kernel import select_kernel
from poolkit.kernels import attention
from poolkit.kernels.attention import (
    amx_softcap_varlen_attention,
    amx_varlen_attention,
    softcap_varlen_attention,
    varlen_attention,
)
from poolkit.plugins import registry

needs_amx = pytest.mark.skipif(attention._library() is None, reason="no AMX, or no C compiler")

# Unsorted; single tokens; lengths off and on the 16- and 32-key blocks; one past 512.
LENGTHS = [17, 1, 64, 5, 33, 2, 513, 16, 100]


def _inputs(lens, heads, kv_heads, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(lens)
    q = torch.randn(t, heads, d, generator=g).bfloat16()
    k, v = (torch.randn(t, kv_heads, d, generator=g).bfloat16() for _ in range(2))
    return PackedBatch.from_sequences([[0] * n for n in lens]), q, k, v


def test_amx_kernels_are_registered_for_the_cpu() -> None:
    for op, reference in (("varlen_attention", varlen_attention), ("varlen_attention_softcap", softcap_varlen_attention)):
        entry = registry("kernel").get(f"{op}:amx")
        assert entry.device == "cpu" and entry.reference is reference
        assert entry.priority > registry("kernel").get(f"{op}:torch").priority
        expected = entry.fn if attention._library() is not None else reference
        assert select_kernel(op, "cpu") is expected


@needs_amx
@pytest.mark.parametrize("d", [32, 64, 128, 256])
@pytest.mark.parametrize(
    "causal, window", [(False, None), (True, None), (False, 7), (True, 40)], ids=["full", "causal", "window", "causal-window"]
)
def test_amx_attention_matches_the_float32_reference(d: int, causal: bool, window: int | None) -> None:
    heads, kv_heads = (4, 2) if d < 256 else (2, 1)
    batch, q, k, v = _inputs(LENGTHS, heads, kv_heads, d)
    with torch.inference_mode():
        got = amx_varlen_attention(q, k, v, batch, causal=causal, window=window, scale=0.2)
        exact = varlen_attention(q.float(), k.float(), v.float(), batch, causal=causal, window=window, scale=0.2)
        low = varlen_attention(q, k, v, batch, causal=causal, window=window, scale=0.2)  # torch's own bf16 kernel
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    torch.testing.assert_close(got.float(), exact, atol=2e-2, rtol=2e-2)
    # As close to the float32 result as torch's bf16 attention (a per-token cosine).
    cos = torch.nn.functional.cosine_similarity
    assert cos(got.float().flatten(1), exact.flatten(1)).min() >= cos(low.float().flatten(1), exact.flatten(1)).min() - 1e-4


@needs_amx
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_amx_softcapped_attention_matches_the_reference(causal: bool) -> None:
    batch, q, k, v = _inputs(LENGTHS, 4, 2, 128, seed=1)
    q = q * 4  # scores large enough for the cap to bite
    with torch.inference_mode():
        got = amx_softcap_varlen_attention(q, k, v, batch, causal=causal, scale=0.3, softcap=5.0)
        exact = softcap_varlen_attention(q.float(), k.float(), v.float(), batch, causal=causal, scale=0.3, softcap=5.0)
        uncapped = varlen_attention(q.float(), k.float(), v.float(), batch, causal=causal, scale=0.3)
    torch.testing.assert_close(got.float(), exact, atol=2e-2, rtol=2e-2)
    assert (exact - uncapped).abs().max() > 0.1  # the cap changed the result
    assert torch.equal(
        amx_softcap_varlen_attention(q, k, v, batch, causal=causal, scale=0.3),
        amx_varlen_attention(q, k, v, batch, causal=causal, scale=0.3),
    )


@needs_amx
def test_amx_attention_reads_strided_views_of_a_fused_projection() -> None:
    lens = [40, 3, 77]
    batch = PackedBatch.from_sequences([[0] * n for n in lens])
    qkv = torch.randn(sum(lens), 3, 4, 64).bfloat16()  # BERT's fused q/k/v output, viewed per head
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous()
    got = amx_varlen_attention(q, k, v, batch)
    assert torch.equal(got, amx_varlen_attention(q.contiguous(), k.contiguous(), v.contiguous(), batch))


@needs_amx
def test_amx_attention_is_the_same_on_one_thread_and_two() -> None:
    batch, q, k, v = _inputs(LENGTHS, 6, 3, 64, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = amx_varlen_attention(q, k, v, batch, causal=True)
        torch.set_num_threads(2)
        two = amx_varlen_attention(q, k, v, batch, causal=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_amx_attention_hands_what_it_cannot_run_to_the_reference(monkeypatch) -> None:
    """float32, a bias, head sizes off the 32 grid, and gradients go to the reference."""
    calls = []
    monkeypatch.setattr(attention, "varlen_attention", lambda *a: calls.append(a) or "ref")
    monkeypatch.setattr(attention, "softcap_varlen_attention", lambda *a: calls.append(a) or "ref")
    batch = PackedBatch.from_sequences([[1, 2, 3], [4, 5]])
    q = torch.randn(5, 2, 64)
    assert amx_varlen_attention(q, q, q, batch) == "ref"
    assert amx_softcap_varlen_attention(q, q, q, batch, softcap=3.0) == "ref"
    b = q.bfloat16()
    assert amx_varlen_attention(b, b, b, batch, bias=torch.zeros(2, 3, 3)) == "ref"
    odd = torch.randn(5, 2, 48).bfloat16()
    assert amx_varlen_attention(odd, odd, odd, batch) == "ref"
    wants_grad = b.clone().requires_grad_()
    assert amx_varlen_attention(wants_grad, b, b, batch) == "ref"
    assert len(calls) == 5


@needs_amx
def test_amx_attention_gives_single_tokens_their_own_values() -> None:
    """A one-token sequence (the engine's filler rows) sees only itself: its output is its value."""
    batch, q, k, v = _inputs([5, 1, 1, 40, 1], 4, 2, 64, seed=3)
    got = amx_varlen_attention(q, k, v, batch, causal=True)
    for token in (5, 6, 47):
        assert torch.equal(got[token], v[token].repeat_interleave(2, dim=0))
