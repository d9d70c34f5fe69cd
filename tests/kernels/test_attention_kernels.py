"""The compiled attention kernels (kernels/attention.c: AMX tiles, and AVX512-BF16 for CPUs
without AMX) against the torch reference: every mask they draw from ranges (causal, sliding
windows, ragged tails), grouped-query heads, soft-capping, strided views of a fused projection,
the calls they hand back, and their split over threads. Each kernel's numerical tests skip on CPUs
without its instructions or without a C compiler; test_cpu_tiers runs them built for an AVX2 CPU,
where both hand every call to the reference."""

from __future__ import annotations

import pytest
import torch

from poolkit import PackedBatch
from poolkit.kernels import attention
from poolkit.kernels.attention import (
    amx_softcap_varlen_attention,
    amx_varlen_attention,
    avx512_softcap_varlen_attention,
    avx512_varlen_attention,
    softcap_varlen_attention,
    varlen_attention,
)
from poolkit.plugins import registry
from poolkit.plugins.lookup import select_kernel

#: Each compiled kernel: (plain, soft-capped, available, the head sizes it takes).
KERNELS = {
    "amx": (amx_varlen_attention, amx_softcap_varlen_attention, attention._amx_available, 32),
    "avx512": (avx512_varlen_attention, avx512_softcap_varlen_attention, attention._avx512_available, 16),
}


def _kernel(name: str):
    plain, capped, available, _ = KERNELS[name]
    if not available():
        pytest.skip(f"no {name} kernel on this CPU, or no C compiler")
    return plain, capped


each_kernel = pytest.mark.parametrize("name", list(KERNELS))


def _float32_kernel() -> None:
    if not attention._f32_available():
        pytest.skip("no AVX-512 on this CPU, or no C compiler: the float32 kernel does not run")

# Unsorted; single tokens; lengths off and on the 16- and 32-key blocks; one past 512.
LENGTHS = [17, 1, 64, 5, 33, 2, 513, 16, 100]


def _inputs(lens, heads, kv_heads, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(lens)
    q = torch.randn(t, heads, d, generator=g).bfloat16()
    k, v = (torch.randn(t, kv_heads, d, generator=g).bfloat16() for _ in range(2))
    return PackedBatch.from_sequences([[0] * n for n in lens]), q, k, v


def test_the_compiled_kernels_are_registered_for_the_cpu() -> None:
    """AMX above AVX512-BF16 above the reference: the CPU's best kernel runs."""
    for op, reference in (("varlen_attention", varlen_attention), ("varlen_attention_softcap", softcap_varlen_attention)):
        amx, avx512 = (registry("kernel").get(f"{op}:{name}") for name in KERNELS)
        for entry in (amx, avx512):
            assert entry.device == "cpu" and entry.reference is reference
        assert amx.priority > avx512.priority > registry("kernel").get(f"{op}:torch").priority
        expected = amx.fn if amx.is_available() else avx512.fn if avx512.is_available() else reference
        assert select_kernel(op, "cpu") is expected


@each_kernel
@pytest.mark.parametrize("d", [16, 32, 48, 64, 128, 256])
@pytest.mark.parametrize(
    "causal, window", [(False, None), (True, None), (False, 7), (True, 40)], ids=["full", "causal", "window", "causal-window"]
)
def test_compiled_attention_matches_the_float32_reference(name: str, d: int, causal: bool, window: int | None) -> None:
    if d % KERNELS[name][3]:
        pytest.skip(f"the {name} kernel hands d={d} to the reference")
    plain, _ = _kernel(name)
    heads, kv_heads = (4, 2) if d < 256 else (2, 1)
    batch, q, k, v = _inputs(LENGTHS, heads, kv_heads, d)
    with torch.inference_mode():
        got = plain(q, k, v, batch, causal=causal, window=window, scale=0.2)
        exact = varlen_attention(q.float(), k.float(), v.float(), batch, causal=causal, window=window, scale=0.2)
        low = varlen_attention(q, k, v, batch, causal=causal, window=window, scale=0.2)  # torch's own bf16 kernel
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    torch.testing.assert_close(got.float(), exact, atol=2e-2, rtol=2e-2)
    # As close to the float32 result as torch's bf16 attention (a per-token cosine).
    cos = torch.nn.functional.cosine_similarity
    assert cos(got.float().flatten(1), exact.flatten(1)).min() >= cos(low.float().flatten(1), exact.flatten(1)).min() - 1e-4


@pytest.mark.parametrize("d", [16, 32, 48, 64, 128, 256])
@pytest.mark.parametrize(
    "causal, window", [(False, None), (True, None), (False, 7), (True, 40)], ids=["full", "causal", "window", "causal-window"]
)
def test_avx512_attention_in_float32_is_as_close_to_float64_as_torchs(d: int, causal: bool, window: int | None) -> None:
    """float32 calls: FMA products, a float32 softmax (e^x to 2e-7) and float32 probabilities, so
    the error against float64 is float32 rounding, of the size of torch's own float32 attention. Any
    AVX-512 CPU runs them, with or without AVX512-BF16."""
    _float32_kernel()
    heads, kv_heads = (4, 2) if d < 256 else (2, 1)
    batch, q, k, v = _inputs(LENGTHS, heads, kv_heads, d, seed=4)
    q, k, v = q.float() + 0.01 * torch.randn(q.shape), k.float(), v.float()  # off the bf16 grid
    with torch.inference_mode():
        got = avx512_varlen_attention(q, k, v, batch, causal=causal, window=window, scale=0.2)
        exact = varlen_attention(q.double(), k.double(), v.double(), batch, causal=causal, window=window, scale=0.2)
        torchs = varlen_attention(q, k, v, batch, causal=causal, window=window, scale=0.2)
    assert got.dtype == torch.float32 and got.shape == q.shape
    ours, theirs = ((t.double() - exact).abs().max().item() for t in (got, torchs))
    assert ours <= 4 * theirs + 1e-6, (ours, theirs)
    capped = avx512_softcap_varlen_attention(q * 4, k, v, batch, causal=causal, window=window, scale=0.3, softcap=5.0)
    exact = softcap_varlen_attention(q.double() * 4, k.double(), v.double(), batch, causal=causal, window=window,
                                     scale=0.3, softcap=5.0)
    assert (capped.double() - exact).abs().max() < 1e-5


@each_kernel
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_compiled_softcapped_attention_matches_the_reference(name: str, causal: bool) -> None:
    plain, capped = _kernel(name)
    batch, q, k, v = _inputs(LENGTHS, 4, 2, 128, seed=1)
    q = q * 4  # scores large enough for the cap to bite
    with torch.inference_mode():
        got = capped(q, k, v, batch, causal=causal, scale=0.3, softcap=5.0)
        exact = softcap_varlen_attention(q.float(), k.float(), v.float(), batch, causal=causal, scale=0.3, softcap=5.0)
        uncapped = varlen_attention(q.float(), k.float(), v.float(), batch, causal=causal, scale=0.3)
    torch.testing.assert_close(got.float(), exact, atol=2e-2, rtol=2e-2)
    assert (exact - uncapped).abs().max() > 0.1  # the cap changed the result
    assert torch.equal(capped(q, k, v, batch, causal=causal, scale=0.3), plain(q, k, v, batch, causal=causal, scale=0.3))


@each_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_compiled_attention_reads_strided_views_of_a_fused_projection(name: str, dtype: torch.dtype) -> None:
    """float32 calls copy each head's keys and values contiguous first (AVX-512's float32 build)."""
    if dtype == torch.float32:
        _float32_kernel()
    plain, _ = _kernel(name)
    lens = [40, 3, 77]
    batch = PackedBatch.from_sequences([[0] * n for n in lens])
    qkv = torch.randn(sum(lens), 3, 4, 64).to(dtype)  # BERT's fused q/k/v output, viewed per head
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous()
    got = plain(q, k, v, batch)
    assert torch.equal(got, plain(q.contiguous(), k.contiguous(), v.contiguous(), batch))


@each_kernel
def test_compiled_attention_is_the_same_on_one_thread_and_two(name: str) -> None:
    plain, _ = _kernel(name)
    batch, q, k, v = _inputs(LENGTHS, 6, 3, 64, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = plain(q, k, v, batch, causal=True)
        torch.set_num_threads(2)
        two = plain(q, k, v, batch, causal=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@each_kernel
def test_compiled_attention_hands_what_it_cannot_run_to_the_reference(name: str, monkeypatch) -> None:
    """fp16, a bias, head sizes off the AVX-512 build's grid of 16 (or past 256), and gradients go to
    the reference."""
    plain, capped, _, _ = KERNELS[name]
    calls = []
    monkeypatch.setattr(attention, "varlen_attention", lambda *a: calls.append(a) or "ref")
    monkeypatch.setattr(attention, "softcap_varlen_attention", lambda *a: calls.append(a) or "ref")
    batch = PackedBatch.from_sequences([[1, 2, 3], [4, 5]])
    q = torch.randn(5, 2, 64)
    other = q.half()
    assert plain(other, other, other, batch) == "ref"
    assert capped(other, other, other, batch, softcap=3.0) == "ref"
    b = q.bfloat16()
    assert plain(b, b, b, batch, bias=torch.zeros(2, 3, 3)) == "ref"
    for d in (24, 512):
        odd = torch.randn(5, 2, d).bfloat16()
        assert plain(odd, odd, odd, batch) == "ref"
    wants_grad = b.clone().requires_grad_()
    assert plain(wants_grad, b, b, batch) == "ref"
    assert len(calls) == 6


def test_the_amx_kernel_runs_its_other_calls_on_the_avx512_build(monkeypatch) -> None:
    """What the AMX tiles do not take (float32; bf16 head sizes of 16 that are not of 32, as 48 or
    80) an AMX CPU still runs compiled: the AVX-512 build's answer to the bit, the reference never called."""
    _kernel("amx")
    _float32_kernel()
    want = {}
    batch, q, k, v = _inputs([17, 1, 40, 5], 4, 2, 48, seed=5)
    want["bf16"] = avx512_varlen_attention(q, k, v, batch, causal=True)
    q32, k32, v32 = (t.float() for t in (q, k, v))
    want["f32"] = avx512_varlen_attention(q32, k32, v32, batch)
    want["capped"] = avx512_softcap_varlen_attention(q32, k32, v32, batch, softcap=5.0)
    monkeypatch.setattr(attention, "varlen_attention", lambda *a: pytest.fail("handed to the reference"))
    monkeypatch.setattr(attention, "softcap_varlen_attention", lambda *a: pytest.fail("handed to the reference"))
    assert torch.equal(amx_varlen_attention(q, k, v, batch, causal=True), want["bf16"])
    assert torch.equal(amx_varlen_attention(q32, k32, v32, batch), want["f32"])
    assert torch.equal(amx_softcap_varlen_attention(q32, k32, v32, batch, softcap=5.0), want["capped"])


@each_kernel
def test_compiled_attention_gives_single_tokens_their_own_values(name: str) -> None:
    """A one-token sequence (the engine's filler rows) sees only itself: its output is its value."""
    plain, _ = _kernel(name)
    batch, q, k, v = _inputs([5, 1, 1, 40, 1], 4, 2, 64, seed=3)
    got = plain(q, k, v, batch, causal=True)
    for token in (5, 6, 47):
        assert torch.equal(got[token], v[token].repeat_interleave(2, dim=0))


def _hidden_keys_reference(q, k, v, lens, keys, causal, scale=None, softcap=None):
    """Each sequence alone, in float64, its keys past ``keys[i]`` masked out."""
    out, start = [], 0
    for n, kept in zip(lens, keys):
        qs, ks, vs = (t[start : start + n].double().transpose(0, 1) for t in (q, k, v))
        ks, vs = (t.repeat_interleave(qs.shape[0] // t.shape[0], dim=0) for t in (ks, vs))
        scores = qs @ ks.transpose(1, 2) * (scale or qs.shape[-1] ** -0.5)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        allowed = torch.arange(n) < kept
        if causal:
            allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
        out.append((torch.softmax(scores, -1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("op", ["varlen_attention", "varlen_attention_softcap"])
@pytest.mark.parametrize(
    "lens, keys",
    [([12, 12, 5, 12, 1, 30], [9, 12, 3, 4, 1, 30]), ([30, 12, 12, 12, 5, 1], [30, 9, 12, 4, 3, 1])],
    ids=["length-groups", "length-runs"],
)
def test_every_cpu_kernel_hides_the_keys_past_key_lens(op: str, causal: bool, lens, keys) -> None:
    """A batch with ``key_lens`` (a ColBERT query's unattended [MASK] expansion): no token sees
    the hidden ones, which still attend, in every registered CPU kernel (the compiled ones hand the
    call to the reference), through both paths of the reference (runs of equal lengths, gathered
    groups)."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(sum(lens), 4, 32, generator=g)
    k, v = (torch.randn(sum(lens), 2, 32, generator=g) for _ in range(2))
    batch = PackedBatch(torch.zeros(sum(lens), dtype=torch.long), lens, key_lens=keys)
    kwargs = {"softcap": 5.0} if op.endswith("softcap") else {}
    expected = _hidden_keys_reference(q, k, v, lens, keys, causal, **kwargs)
    assert not torch.allclose(expected, _hidden_keys_reference(q, k, v, lens, lens, causal, **kwargs), atol=1e-2)
    kernels = {n: registry("kernel").get(n) for n in registry("kernel").names() if n.startswith(op + ":")}
    kernels = {n: entry.fn for n, entry in kernels.items() if entry.device != "cuda"}
    assert len(kernels) >= 1 + len(KERNELS)
    for name, fn in kernels.items():
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
            got = fn(q.to(dtype), k.to(dtype), v.to(dtype), batch, causal, **kwargs)
            assert torch.allclose(got.double(), expected, atol=tol), (name, dtype)


def _prefixed(lens, starts, heads, kv_heads, d, dtype, seed=5):
    """Whole causal sequences (prefix + own tokens) and the same split: the suffixes packed with
    ``starts``, their prefixes' keys and values packed one after another (the first two sequences,
    and the fifth, continue one prefix; the others their own or none)."""
    g = torch.Generator().manual_seed(seed)
    whole = [n + s for n, s in zip(lens, starts)]
    q = torch.randn(sum(whole), heads, d, generator=g).to(dtype)
    k, v = (torch.randn(sum(whole), kv_heads, d, generator=g).to(dtype) for _ in range(2))
    bounds = [0, *torch.cumsum(torch.tensor(whole), 0).tolist()]
    for i in (1, 4):  # the same prefix as sequence 0
        for t in (q, k, v):
            t[bounds[i] : bounds[i] + starts[i]] = t[bounds[0] : bounds[0] + starts[0]]
    tail = torch.cat([torch.arange(bounds[i] + s, bounds[i + 1]) for i, s in enumerate(starts)])
    heads_of = [torch.arange(bounds[i], bounds[i] + s) for i, s in enumerate(starts) if s and i not in (1, 4)]
    offsets, at = [], 0
    for i, s in enumerate(starts):
        offsets.append(0 if i in (1, 4) else at)
        at += s if s and i not in (1, 4) else 0
    head = torch.cat(heads_of)
    split = PackedBatch(torch.zeros(len(tail), dtype=torch.long), lens, starts=starts)
    return PackedBatch(torch.zeros(sum(whole), dtype=torch.long), whole), (q, k, v), tail, (q[tail], k[tail], v[tail], split, k[head], v[head], offsets)


# Prefixes of odd and even lengths, past a 32-key block, one-token suffixes after a prefix, none.
PREFIX_LENS, PREFIX_STARTS = [21, 7, 5, 40, 1, 1, 33, 64], [9, 9, 0, 37, 9, 0, 16, 130]


@pytest.mark.parametrize("d", [16, 48, 64, 128, 256])
def test_avx512_prefix_attention_equals_the_whole_sequences_attention(d: int) -> None:
    """``prefix_attention:avx512``: the suffixes' outputs are the whole causal sequences' rows in
    float32 (to its rounding against float64, as the whole-sequence kernel's), and in bf16 within a
    bf16 step of ``varlen_attention:avx512`` on the whole sequences (same products and softmax)."""
    _float32_kernel()
    from poolkit.kernels.attention import avx512_prefix_attention

    heads, kv_heads = (4, 2) if d < 256 else (2, 1)
    for dtype in (torch.float32, torch.bfloat16) if attention._avx512_available() else (torch.float32,):
        whole, (q, k, v), tail, split = _prefixed(PREFIX_LENS, PREFIX_STARTS, heads, kv_heads, d, dtype)
        with torch.inference_mode():
            got = avx512_prefix_attention(*split, scale=0.2)
            plain = avx512_varlen_attention(q, k, v, whole, causal=True, scale=0.2)[tail]
            exact = varlen_attention(q.double(), k.double(), v.double(), whole, causal=True, scale=0.2)[tail]
        assert got.dtype == dtype and got.shape == split[0].shape
        if dtype == torch.float32:
            ours, theirs = ((t.double() - exact).abs().max().item() for t in (got, plain))
            assert ours <= 4 * theirs + 1e-6, (ours, theirs)
        else:
            step = 2**-7 * plain.float().abs().clamp_min(2**-6)  # one bf16 step of each component
            assert ((got.float() - plain.float()).abs() <= step).all()
            torch.testing.assert_close(got.double(), exact, atol=2e-2, rtol=2e-2)


def test_avx512_prefix_attention_is_the_same_on_one_thread_and_two() -> None:
    _kernel("avx512")
    from poolkit.kernels.attention import avx512_prefix_attention

    _, _, _, split = _prefixed(PREFIX_LENS, PREFIX_STARTS, 6, 3, 64, torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = avx512_prefix_attention(*split)
        torch.set_num_threads(2)
        two = avx512_prefix_attention(*split)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_prefix_attention_kernels_rank_and_hand_back(monkeypatch) -> None:
    """The compiled variant ranks above the CPU flash one and the reference, and hands fp16, head
    sizes off its grid and gradients to the reference."""
    from poolkit.kernels.attention import avx512_prefix_attention, prefix_attention
    from poolkit.kernels.prefix import prefix_attention_flash

    kernels = registry("kernel")
    compiled, flash = kernels.get("prefix_attention:avx512"), kernels.get("prefix_attention:flash")
    assert compiled.priority > flash.priority > kernels.get("prefix_attention:torch").priority
    assert compiled.reference is prefix_attention and compiled.device == "cpu"
    expected = avx512_prefix_attention if compiled.is_available() else prefix_attention_flash if flash.is_available() else prefix_attention
    assert select_kernel("prefix_attention", "cpu") is expected
    calls = []
    monkeypatch.setattr(attention, "prefix_attention", lambda *a: calls.append(a) or "ref")
    for dtype, d in ((torch.float16, 64), (torch.bfloat16, 24), (torch.bfloat16, 512)):
        _, _, _, split = _prefixed([3, 2, 4, 1, 2, 1, 1, 1], [2, 2, 0, 3, 2, 0, 1, 1], 2, 1, d, dtype)
        assert avx512_prefix_attention(*split) == "ref"
    _, _, _, (q, *rest) = _prefixed([3, 2, 4, 1, 2, 1, 1, 1], [2, 2, 0, 3, 2, 0, 1, 1], 2, 1, 64, torch.bfloat16)
    assert avx512_prefix_attention(q.clone().requires_grad_(), *rest) == "ref"
    assert len(calls) == 4
