"""The ``varlen_attention_int8`` op (kernels/attention_int8.c, AVX512-VNNI) against a torch emulation of
its roundings and against the exact attention; the calls it hands to the float kernel; ``use_op``,
through which int8 calibration has a model's attention answered by it, and that calibration. The
numerical tests skip on CPUs without AVX512-VNNI or without a C compiler; test_cpu_tiers runs them
again built for Cascade Lake (VNNI without AVX512-BF16)."""

from __future__ import annotations

import pytest
import torch

from poolkit import PackedBatch
from poolkit.kernels import attention_int8
from poolkit.kernels.attention import amx_varlen_attention, avx512_varlen_attention, varlen_attention
from poolkit.kernels.attention_int8 import vnni_varlen_attention_int8
from poolkit.plugins.lookup import kernel_for, select_kernel, use_op

# Unsorted; single tokens; lengths off and on the 16-query blocks; odd (a half key pair); one past
# 512 keys (three chunks of exact int32 sums).
LENGTHS = [17, 1, 64, 5, 33, 2, 1100, 16, 100]


def _kernel() -> None:
    if attention_int8._library() is None:
        pytest.skip("no AVX512-VNNI on this CPU, or no C compiler: the int8 attention kernel does not run")


def _inputs(lens, heads, kv_heads, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(lens)
    q = torch.randn(t, heads, d, generator=g)
    k, v = (torch.randn(t, kv_heads, d, generator=g) for _ in range(2))
    return PackedBatch.from_sequences([[0] * n for n in lens]), q, k, v


def _rounded(x: torch.Tensor, dim: int, levels: int) -> torch.Tensor:
    """``x`` (float32) rounded to integers at ``levels`` for its largest |x| along ``dim``, as the kernel
    rounds (``x * (levels / top)`` in float32, to nearest even), scaled back in float64."""
    top = x.abs().amax(dim, keepdim=True)
    inv = torch.where(top > 0, levels / top, torch.zeros_like(top))
    return torch.round(x * inv).double() * (top.double() / levels)


def _emulated(q, k, v, lens, causal=False):
    """The kernel's arithmetic in float64: keys and queries rounded per token and head to 127 levels,
    the probabilities (their largest 1) to 4095, the values per dimension of a sequence's head to 1023."""
    d = q.shape[-1]
    out, start = [], 0
    for n in lens:
        qs, ks, vs = (t[start : start + n].transpose(0, 1) for t in (q, k, v))
        ks, vs = (t.repeat_interleave(qs.shape[0] // t.shape[0], 0) for t in (ks, vs))
        s = _rounded(qs, -1, 127) @ _rounded(ks, -1, 127).transpose(1, 2) * d**-0.5
        if causal:
            s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -torch.inf)
        p = torch.round(torch.exp(s - s.amax(-1, keepdim=True)) * 4095)
        out.append(((p @ _rounded(vs, 1, 1023)) / p.sum(-1, keepdim=True)).transpose(0, 1))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("d", [16, 32, 48, 64, 128, 256])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_int8_attention_computes_its_roundings(d: int, heads: int, kv_heads: int, causal: bool) -> None:
    """The emulation's numbers, but where a probability lands near half a level and 2^x's last bits (a
    relative 2.6e-6, a hundredth of a level) or float32's scores round it the other way: one level of
    a probability moves an output by at most 2 max|v| / 4095 (a query's sum is at least its largest
    probability's 4095), so two such flips: within 1e-3 max|v|, where rounding nothing is 2e-2 away."""
    _kernel()
    batch, q, k, v = _inputs(LENGTHS, heads, kv_heads, d)
    out = vnni_varlen_attention_int8(q, k, v, batch, causal=causal)
    expected = _emulated(q, k, v, LENGTHS, causal)
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert (out.double() - expected).abs().max() <= 1e-3 * v.abs().max()
    assert (varlen_attention(q, k, v, batch, causal=causal).double() - expected).abs().max() > 3e-3 * v.abs().max()


def test_int8_attention_stays_close_to_the_exact_attention() -> None:
    """What the roundings cost on random inputs: under 1.5% of the outputs' norm, no token and head
    below a cosine of 0.999 to the exact attention."""
    _kernel()
    batch, q, k, v = _inputs(LENGTHS, 4, 4, 64, seed=1)
    out, exact = vnni_varlen_attention_int8(q, k, v, batch), varlen_attention(q, k, v, batch)
    assert (out - exact).norm() <= 0.015 * exact.norm()
    assert torch.nn.functional.cosine_similarity(out, exact, dim=-1).min() >= 0.999


def test_int8_attention_sums_long_sequences_without_overflow() -> None:
    """Every probability at 4095 and every value at 1023 levels: each chunk of 256 key pairs sums to
    just under 2^31, and 1,100 keys take five chunks; the outputs are the values, as the exact
    attention's are."""
    _kernel()
    n, d = 1100, 32
    sign = torch.where(torch.arange(d) % 2 == 0, 1.0, -1.0)
    q = torch.randn(n, 2, d)
    k = torch.ones(n, 2, d)
    v = (sign * 3.0).expand(n, 2, d).contiguous()
    out = vnni_varlen_attention_int8(q, k, v, PackedBatch.from_sequences([[0] * n]))
    torch.testing.assert_close(out, v, rtol=1e-6, atol=1e-6)


def test_int8_attention_reads_strided_views_of_a_fused_projection() -> None:
    _kernel()
    batch, q, k, v = _inputs(LENGTHS, 4, 4, 32, seed=2)
    fused = torch.cat([q, k, v], dim=1)  # [T, 12, 32]: q, k, v views with the fused row stride
    views = fused[:, :4], fused[:, 4:8], fused[:, 8:]
    assert views[0].stride(0) == 12 * 32
    assert torch.equal(vnni_varlen_attention_int8(*views, batch), vnni_varlen_attention_int8(q, k, v, batch))


def test_int8_attention_is_the_same_on_one_thread_and_two() -> None:
    _kernel()
    batch, q, k, v = _inputs(LENGTHS, 4, 2, 64, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = vnni_varlen_attention_int8(q, k, v, batch)
        torch.set_num_threads(2)
        two = vnni_varlen_attention_int8(q, k, v, batch)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_int8_attention_gives_single_tokens_their_own_values() -> None:
    _kernel()
    batch, q, k, v = _inputs([1, 1, 3], 2, 2, 32)
    assert torch.equal(vnni_varlen_attention_int8(q, k, v, batch)[:2], v[:2])


@pytest.mark.parametrize(
    "call",
    [
        dict(window=3),
        dict(bias=torch.zeros(4, 1100, 1100)),
        dict(key_lens=True),
        dict(d=8),
    ],
    ids=["window", "bias", "key_lens", "d8"],
)
def test_int8_attention_hands_windows_biases_and_other_calls_to_the_float_kernel(call: dict) -> None:
    """What it has no integer path for runs as ``varlen_attention:avx512`` runs it, bit for bit."""
    call = dict(call)
    d, dtype = call.pop("d", 32), call.pop("dtype", torch.float32)
    batch, q, k, v = _inputs(LENGTHS, 4, 4, d, seed=4)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if call.pop("key_lens", False):
        batch = PackedBatch(torch.zeros(sum(LENGTHS), dtype=torch.long), LENGTHS, key_lens=[max(1, n - 1) for n in LENGTHS])
    assert torch.equal(vnni_varlen_attention_int8(q, k, v, batch, **call), avx512_varlen_attention(q, k, v, batch, **call))


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_int8_attention_runs_bf16_as_float32_where_no_amx_attention_does(monkeypatch, causal: bool, kv_heads: int) -> None:
    """Without an AMX bf16 attention (the Zen 4 class) bf16 calls run in integers: exactly the
    float32 path on the same values, its outputs rounded to bf16 as torch rounds them (the kernel
    widens a sequence's head at a time and rounds back). With one, bf16 is not run in integers:
    its calls go to the AMX kernel, and calibration does not try the op on a bf16 stream."""
    _kernel()
    batch, q, k, v = _inputs(LENGTHS, 4, kv_heads, 32, seed=5)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    monkeypatch.setattr(attention_int8, "_amx_available", lambda: False)
    assert torch.bfloat16 in vnni_varlen_attention_int8.dtypes
    out = vnni_varlen_attention_int8(q, k, v, batch, causal=causal)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, vnni_varlen_attention_int8(q.float(), k.float(), v.float(), batch, causal=causal).bfloat16())
    assert not torch.equal(out, avx512_varlen_attention(q, k, v, batch, causal=causal))  # integer products, not the float kernel's
    monkeypatch.setattr(attention_int8, "_amx_available", lambda: True)
    assert tuple(vnni_varlen_attention_int8.dtypes) == (torch.float32,) and torch.bfloat16 not in vnni_varlen_attention_int8.dtypes
    assert torch.equal(vnni_varlen_attention_int8(q, k, v, batch, causal=causal), amx_varlen_attention(q, k, v, batch, causal=causal))


def test_the_int8_attention_kernels_rank_and_declare_their_dtypes() -> None:
    """The reference is the exact attention and runs no dtype in integers; the VNNI kernel, where it
    builds, is the CPU's choice and runs float32 in integers, and bf16 where no AMX bf16 attention runs."""
    from poolkit.kernels.attention import _amx_available

    expected_dtypes = (torch.float32,) if _amx_available() else (torch.float32, torch.bfloat16)
    assert getattr(varlen_attention, "dtypes", ()) == () and tuple(vnni_varlen_attention_int8.dtypes) == expected_dtypes
    assert select_kernel("varlen_attention_int8", "meta") is varlen_attention
    expected = vnni_varlen_attention_int8 if attention_int8._library() is not None else varlen_attention
    assert select_kernel("varlen_attention_int8", "cpu") is expected


def test_use_op_has_a_module_and_its_children_ask_another_op() -> None:
    """Each module of the tree answers ``op`` with ``instead``'s kernel, memos made before dropped;
    ``None`` gives the op back."""
    outer = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2)))
    inner = outer[1][0]
    assert kernel_for(inner, "varlen_attention", "cpu") is select_kernel("varlen_attention", "cpu")
    use_op(outer, "varlen_attention", "varlen_attention_int8")
    for module in (outer, inner):
        assert kernel_for(module, "varlen_attention", "cpu") is select_kernel("varlen_attention_int8", "cpu")
    assert kernel_for(inner, "varlen_attention_softcap", "cpu") is select_kernel("varlen_attention_softcap", "cpu")
    use_op(outer, "varlen_attention", None)
    assert kernel_for(inner, "varlen_attention", "cpu") is select_kernel("varlen_attention", "cpu")
    plain = type("Owner", (), {})()
    use_op(plain, "varlen_attention", "varlen_attention_int8")
    assert kernel_for(plain, "varlen_attention", "cpu") is select_kernel("varlen_attention_int8", "cpu")
