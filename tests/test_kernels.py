"""Kernels against their torch references (the Triton ones run under TRITON_INTERPRET=1)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from poolkit.kernel import select_kernel
from poolkit.kernels import linear, pooling
from poolkit.kernels.linear import ACTIVATIONS, linear_act, linear_act_onednn
from poolkit.kernels.pooling import segment_pool_reference
from poolkit.plugins import registry

onednn = pytest.mark.skipif(not linear._onednn_available(), reason="torch built without oneDNN")


def _inputs(dtype: torch.dtype, shape=(37, 48), out_features=72, bias=True):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = torch.randn(out_features, shape[-1], generator=g, dtype=torch.float64) / shape[-1] ** 0.5
    b = torch.randn(out_features, generator=g, dtype=torch.float64) if bias else None
    return x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)


@onednn
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_fused_linear_equals_reference_in_float32(act: str, bias: bool) -> None:
    x, w, b = _inputs(torch.float32, bias=bias)
    torch.testing.assert_close(linear_act_onednn(x, w, b, act), linear_act(x, w, b, act), atol=2e-5, rtol=1e-5)


@onednn
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_fused_linear_in_bfloat16_is_as_close_to_exact_as_the_reference(act: str) -> None:
    """bf16: the fused kernel rounds once (after the activation), the reference twice."""
    if torch.bfloat16 not in linear._onednn_dtypes():
        pytest.skip("oneDNN has no bf16 on this CPU")
    x, w, b = _inputs(torch.bfloat16, shape=(64, 384), out_features=256)
    exact = linear_act(x.double(), w.double(), b.double(), act)
    fused, reference = linear_act_onednn(x, w, b, act), linear_act(x, w, b, act)
    assert fused.dtype == torch.bfloat16
    fused_error = (fused.double() - exact).abs().max().item()
    reference_error = (reference.double() - exact).abs().max().item()
    assert fused_error <= reference_error * 1.01 + 1e-6


@onednn
def test_fused_linear_shapes_and_layouts() -> None:
    x, w, b = _inputs(torch.float32, shape=(2, 5, 48))
    torch.testing.assert_close(linear_act_onednn(x, w, b, "gelu"), linear_act(x, w, b, "gelu"), atol=2e-5, rtol=1e-5)
    strided = torch.randn(48, 9).t()  # a non-contiguous [9, 48] view
    torch.testing.assert_close(linear_act_onednn(strided, w, b, "relu"), linear_act(strided, w, b, "relu"), atol=2e-5, rtol=1e-5)
    assert linear_act_onednn(x[0, :0], w, b, "gelu").shape == (0, 72)


@onednn
def test_fused_linear_repacks_a_changed_weight() -> None:
    """The packed copy of a weight follows in-place updates and dtype conversions of the module."""
    layer = torch.nn.Linear(48, 72)
    x = torch.randn(5, 48)
    with torch.no_grad():
        first = linear_act_onednn(x, layer.weight, layer.bias, "gelu")
        layer.weight.mul_(2)
        torch.testing.assert_close(linear_act_onednn(x, layer.weight, layer.bias, "gelu"),
                                   linear_act(x, layer.weight, layer.bias, "gelu"), atol=2e-5, rtol=1e-5)
        assert not torch.allclose(first, linear_act(x, layer.weight, layer.bias, "gelu"))
        layer.to(torch.bfloat16)  # swaps .data under the same Parameter
        if torch.bfloat16 in linear._onednn_dtypes():
            got = linear_act_onednn(x.bfloat16(), layer.weight, layer.bias, "gelu")
            assert got.dtype == torch.bfloat16
            torch.testing.assert_close(got.float(), linear_act(x, layer.weight.float(), layer.bias.float(), "gelu"),
                                       atol=0.1, rtol=0.02)


@onednn
def test_packed_weights_leave_modules_picklable_and_go_with_their_weight() -> None:
    import copy
    import gc
    import pickle

    layer = torch.nn.Linear(48, 72)
    x = torch.randn(3, 48)
    with torch.no_grad():
        before = linear_act_onednn(x, layer.weight, layer.bias)
        clone = pickle.loads(pickle.dumps(layer))
        torch.testing.assert_close(linear_act_onednn(x, clone.weight, clone.bias), before)
        torch.testing.assert_close(linear_act_onednn(x, copy.deepcopy(layer).weight, layer.bias), before)
    key = id(layer.weight)
    assert key in linear._PACKED
    del layer
    gc.collect()
    assert key not in linear._PACKED


def test_fused_linear_falls_back_where_onednn_cannot_run() -> None:
    """fp64 and autograd go to the reference, with the same result exactly."""
    x, w, b = _inputs(torch.float64)
    assert torch.equal(linear_act_onednn(x, w, b, "gelu"), linear_act(x, w, b, "gelu"))
    x32, w32, b32 = _inputs(torch.float32)
    w32.requires_grad_(True)
    out = linear_act_onednn(x32, w32, b32, "tanh")
    out.sum().backward()
    assert w32.grad is not None and torch.equal(out.detach(), linear_act(x32, w32.detach(), b32, "tanh"))


def test_registry_picks_the_fused_kernel_on_cpu() -> None:
    expected = linear_act_onednn if linear._onednn_available() else linear_act
    assert select_kernel("linear_act", "cpu") is expected


# -- segment_pool: sequence pooling (+ L2 normalisation) over packed batches -----------------------


def naive_pool(hidden: torch.Tensor, lens: list[int], mode: str, normalize: bool) -> torch.Tensor:
    rows = []
    for seq in torch.split(hidden.double(), lens):
        if seq.shape[0] == 0:
            rows.append(torch.zeros(hidden.shape[1], dtype=torch.float64))
            continue
        pooled = {"mean": seq.mean(0), "sum": seq.sum(0), "max": seq.amax(0), "mean_sqrt_len": seq.sum(0) / len(seq) ** 0.5}
        rows.append(pooled[mode])
    out = torch.stack(rows)
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


POOL_LENS = [3, 1, 70, 0, 9]


@pytest.mark.parametrize("mode", sorted(pooling.MODES))
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_pool_reference_matches_per_sequence_pooling(mode: str, normalize: bool, dtype: torch.dtype) -> None:
    hidden = (torch.randn(sum(POOL_LENS), 48, generator=torch.Generator().manual_seed(2)) * 3).to(dtype)
    cu = torch.tensor([0, *POOL_LENS]).cumsum(0)
    out = segment_pool_reference(hidden, cu, mode, normalize)
    assert out.dtype == torch.float32 and out.shape == (len(POOL_LENS), 48)
    torch.testing.assert_close(out.double(), naive_pool(hidden, POOL_LENS, mode, normalize), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mode 'median'"):
        segment_pool_reference(hidden, cu, "median")


def test_segment_pool_is_the_reference_on_cpu() -> None:
    assert select_kernel("segment_pool", "cpu") is segment_pool_reference
    entry = registry("kernel").get("segment_pool:triton")
    assert entry.device == "cuda" and entry.reference is segment_pool_reference
    if not torch.cuda.is_available():
        assert not entry.is_available()


def test_segment_pool_triton_interpreted_matches_reference() -> None:
    pytest.importorskip("triton", reason="pip install triton (the gpu extra) to test the Triton kernels")
    script = textwrap.dedent(
        f"""
        import torch
        from poolkit.kernels.pooling import MODES, segment_pool_reference, segment_pool_triton
        lens = {POOL_LENS}
        cu = torch.tensor([0, *lens]).cumsum(0)
        for width in (48, 384):
            hidden = torch.randn(sum(lens), width, generator=torch.Generator().manual_seed(4)) * 3
            for dtype in (torch.float32, torch.bfloat16):
                for mode in MODES:
                    for normalize in (False, True):
                        got = segment_pool_triton(hidden.to(dtype), cu, mode, normalize)
                        ref = segment_pool_reference(hidden.to(dtype), cu, mode, normalize)
                        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (width, dtype, mode, normalize)
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]


def test_embed_head_fuses_pooling_and_normalisation(tiny_encoders, monkeypatch) -> None:
    """The fused path gives what pooling, then normalising by hand, gives."""
    from poolkit import LLM, PoolingParams
    from poolkit.builtin_poolers.poolers import SegmentPooler

    calls = []
    pooled = SegmentPooler.pooled
    monkeypatch.setattr(SegmentPooler, "pooled", lambda self, *a, **k: calls.append(k) or pooled(self, *a, **k))
    llm = LLM(str(tiny_encoders["bert"]), pooler_config={"pooling_type": "MEAN"})
    texts = ["a short one", "and a somewhat longer sentence to pool"]
    fused = torch.tensor([o.outputs.embedding for o in llm.embed(texts)])
    assert calls == [{"normalize": True}]
    raw = torch.tensor([o.outputs.embedding for o in llm.embed(texts, PoolingParams(use_activation=False))])
    torch.testing.assert_close(fused, torch.nn.functional.normalize(raw, dim=-1), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))


def test_onednn_linear_pads_rows_to_a_few_shapes():
    # Issue 14's soak: oneDNN caches a primitive per input shape, so packed batches (a new token
    # count almost every time) grew a server's memory without bound. Rows go in bucketed.
    from poolkit.kernels.linear import linear_act, linear_act_onednn, row_bucket

    assert [row_bucket(n) for n in (1, 16, 17, 1000, 1024, 1025, 8192)] == [16, 16, 32, 1024, 1024, 1280, 8192]
    assert len({row_bucket(n) for n in range(1, 8193)}) <= 40
    w, b = torch.randn(48, 32), torch.randn(48)
    with torch.inference_mode():
        for shape in ((1, 32), (37, 32), (3, 5, 32), (1030, 32)):
            x = torch.randn(*shape)
            got = linear_act_onednn(x, w, b, "gelu")
            assert got.shape == (*shape[:-1], 48)
            torch.testing.assert_close(got, linear_act(x, w, b, "gelu"), atol=1e-4, rtol=1e-4)
