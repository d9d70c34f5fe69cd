"""Kernels against their torch references (the Triton ones run under TRITON_INTERPRET=1)."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import torch
from suite_device import run_triton_script
from tolerances import assert_within_order_bound, gated_linear_bound, linear_act_bound, order_bound

from poolkit import Kernel
from poolkit.config import cpu
from poolkit.contracts.hookspecs import hookimpl
from poolkit.kernels import linear, pooling
from poolkit.kernels.linear import ACTIVATIONS, linear_act, linear_act_onednn
from poolkit.kernels.pooling import segment_pool_reference
from poolkit.plugins import registry
from poolkit.plugins.lookup import select_kernel

onednn = pytest.mark.skipif(not linear._onednn_available(), reason="torch built without oneDNN")


def _inputs(dtype: torch.dtype, shape=(37, 48), out_features=72, bias=True):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = torch.randn(out_features, shape[-1], generator=g, dtype=torch.float64) / shape[-1] ** 0.5
    b = torch.randn(out_features, generator=g, dtype=torch.float64) if bias else None
    return x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)


def _error(got: torch.Tensor, exact: torch.Tensor) -> float:
    """The relative RMS error of a bf16 result (one element's error is as much luck as accuracy)."""
    return ((got.double() - exact).norm() / exact.norm()).item()


@onednn
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_fused_linear_equals_reference_in_float32(act: str, bias: bool) -> None:
    x, w, b = _inputs(torch.float32, bias=bias)
    assert_within_order_bound(linear_act_onednn(x, w, b, act), linear_act(x, w, b, act), linear_act_bound(x, w, b, act))


@onednn
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_fused_linear_in_bfloat16_is_as_close_to_exact_as_the_reference(act: str) -> None:
    """bf16: with oneDNN's post-ops the kernel rounds once (after the activation), the reference
    twice; with the compiled activation (AVX512-BF16) both round twice."""
    if torch.bfloat16 not in linear._onednn_dtypes():
        pytest.skip("oneDNN has no bf16 on this CPU")
    x, w, b = _inputs(torch.bfloat16, shape=(64, 384), out_features=256)
    exact = linear_act(x.double(), w.double(), b.double(), act)
    fused, reference = linear_act_onednn(x, w, b, act), linear_act(x, w, b, act)
    assert fused.dtype == torch.bfloat16
    assert _error(fused, exact) <= _error(reference, exact) * 1.01


@onednn
def test_fused_linear_shapes_and_layouts() -> None:
    x, w, b = _inputs(torch.float32, shape=(2, 5, 48))
    assert_within_order_bound(linear_act_onednn(x, w, b, "gelu"), linear_act(x, w, b, "gelu"), linear_act_bound(x, w, b, "gelu"))
    strided = torch.randn(48, 9).t()  # a non-contiguous [9, 48] view
    assert_within_order_bound(linear_act_onednn(strided, w, b, "relu"), linear_act(strided, w, b, "relu"), linear_act_bound(strided, w, b, "relu"))
    assert linear_act_onednn(x[0, :0], w, b, "gelu").shape == (0, 72)


@onednn
def test_fused_linear_repacks_a_changed_weight() -> None:
    """The packed copy of a weight follows in-place updates and dtype conversions of the module."""
    layer = torch.nn.Linear(48, 72)
    x = torch.randn(5, 48)
    with torch.no_grad():
        first = linear_act_onednn(x, layer.weight, layer.bias, "gelu")
        layer.weight.mul_(2)
        assert_within_order_bound(linear_act_onednn(x, layer.weight, layer.bias, "gelu"),
                                  linear_act(x, layer.weight, layer.bias, "gelu"), linear_act_bound(x, layer.weight, layer.bias, "gelu"))
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
    key = (id(layer.weight), ("onednn", None))
    assert key in linear._PACKED
    del layer
    gc.collect()
    assert key not in linear._PACKED


def test_a_new_weight_at_a_freed_weights_address_is_packed_again() -> None:
    """An inference-mode weight whose data is swapped for a new storage at the same address (what
    ``module.to(dtype)`` often gets back from the allocator, depending on what ran before) is
    packed again: the cache knows storages, not addresses."""
    buf = bytearray(72 * 48 * 4)  # both storages live in it: the same address for certain
    with torch.inference_mode():
        layer = torch.nn.Linear(48, 72)
        layer.weight.data = torch.frombuffer(buf, dtype=torch.float32).view(72, 48).copy_(torch.randn(72, 48))
        x = torch.randn(5, 48)
        bound = order_bound(x, layer.weight, layer.bias)
        assert_within_order_bound(linear_act_onednn(x, layer.weight, layer.bias), linear_act(x, layer.weight, layer.bias), bound)
        address = layer.weight.data_ptr()
        layer.weight.data = torch.frombuffer(buf, dtype=torch.float32).view(72, 48)
        torch.frombuffer(buf, dtype=torch.float32).mul_(2)
        assert layer.weight.data_ptr() == address
        assert_within_order_bound(linear_act_onednn(x, layer.weight, layer.bias), linear_act(x, layer.weight, layer.bias), 2 * bound)


def test_fused_linear_falls_back_where_onednn_cannot_run() -> None:
    """fp64 and autograd go to the reference, with the same result exactly."""
    x, w, b = _inputs(torch.float64)
    assert torch.equal(linear_act_onednn(x, w, b, "gelu"), linear_act(x, w, b, "gelu"))
    x32, w32, b32 = _inputs(torch.float32)
    w32.requires_grad_(True)
    out = linear_act_onednn(x32, w32, b32, "tanh")
    out.sum().backward()
    assert w32.grad is not None and torch.equal(out.detach(), linear_act(x32, w32.detach(), b32, "tanh"))


def test_registry_picks_the_fused_kernel_on_cpu(monkeypatch) -> None:
    """AMX where the CPU has it, else oneDNN on CPUs with AVX-512, else the reference (MKL's sgemm
    beat oneDNN in fp32 on AVX2)."""
    amx = linear._amx_available()
    onednn = linear._onednn_available() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert linear._onednn_priority() == (10 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else -10)
    expected = linear.linear_act_amx if amx else linear_act_onednn if onednn else linear_act
    assert select_kernel("linear_act", "cpu") is expected
    gated = linear.gated_linear_amx if amx else linear.gated_linear_onednn if onednn else linear.gated_linear
    from poolkit.kernels import fused

    on_cuda = fused.gated_linear_triton if fused.triton_available() else linear.gated_linear  # Triton where a GPU runs it
    assert select_kernel("gated_linear", "cpu") is gated and select_kernel("gated_linear", "cuda") is on_cuda
    for capability, priority in (("AVX512", 10), ("AVX2", -10), ("DEFAULT", -10)):
        features = dataclasses.replace(cpu.cpu_features(), capability=capability)
        monkeypatch.setattr(cpu, "cpu_features", lambda f=features: f)
        assert linear._onednn_priority() == priority


# -- gated_linear: act(gate) * up of a fused gate/up projection (SwiGLU, GeGLU) --------------------


def test_gated_linear_reference_is_the_activated_half_times_the_other() -> None:
    x, w, b = _inputs(torch.float64, out_features=64)
    h = torch.nn.functional.linear(x, w, b)
    for act in ACTIVATIONS:
        torch.testing.assert_close(linear.gated_linear(x, w, b, act), ACTIVATIONS[act](h[:, :32]) * h[:, 32:])
        torch.testing.assert_close(linear.gated_linear(x, w, b, act, gate_first=False), ACTIVATIONS[act](h[:, 32:]) * h[:, :32])


@onednn
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("gate_first", [True, False], ids=["gate-first", "up-first"])
def test_gated_linear_onednn_equals_reference_in_float32(act: str, bias: bool, gate_first: bool) -> None:
    x, w, b = _inputs(torch.float32, out_features=96, bias=bias)
    with torch.inference_mode():
        got = linear.gated_linear_onednn(x, w, b, act, gate_first)
    assert got.shape == (37, 48)
    bound = gated_linear_bound(x, w, b, act, gate_first)
    assert_within_order_bound(got, linear.gated_linear(x, w, b, act, gate_first), bound)


@onednn
@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh"])
def test_gated_linear_onednn_in_bfloat16_is_as_close_to_exact_as_the_reference(act: str) -> None:
    """bf16: the kernel rounds the gate (or the matmul's output) and the product; the reference
    rounds the matmul's output, the activation and the product."""
    if torch.bfloat16 not in linear._onednn_dtypes():
        pytest.skip("oneDNN has no bf16 on this CPU")
    x, w, b = _inputs(torch.bfloat16, shape=(64, 384), out_features=512)
    exact = linear.gated_linear(x.double(), w.double(), b.double(), act)
    with torch.inference_mode():
        fused = linear.gated_linear_onednn(x, w, b, act)
    reference = linear.gated_linear(x, w, b, act)
    assert fused.dtype == torch.bfloat16
    assert _error(fused, exact) <= _error(reference, exact) * 1.01


@onednn
def test_gated_linear_onednn_shapes_repacking_and_fallbacks() -> None:
    x, w, b = _inputs(torch.float32, shape=(2, 5, 48), out_features=64)
    layer = torch.nn.Linear(48, 64)
    with torch.inference_mode():
        assert_within_order_bound(linear.gated_linear_onednn(x, w, b), linear.gated_linear(x, w, b),
                                  gated_linear_bound(x, w, b, "silu"))
        assert linear.gated_linear_onednn(x[0, :0], w, b).shape == (0, 32)
    with torch.no_grad():
        first = linear.gated_linear_onednn(x, layer.weight, layer.bias)
        layer.weight.mul_(2)  # the packed halves follow an in-place change of the weight
        again = linear.gated_linear_onednn(x, layer.weight, layer.bias)
        assert_within_order_bound(again, linear.gated_linear(x, layer.weight, layer.bias),
                                  gated_linear_bound(x, layer.weight, layer.bias, "silu"))
        assert not torch.allclose(first, again)
    assert (id(layer.weight), ("onednn", 0)) in linear._PACKED and (id(layer.weight), ("onednn", 1)) in linear._PACKED
    x64, w64, b64 = _inputs(torch.float64, out_features=64)  # fp64 and autograd: the reference, exactly
    assert torch.equal(linear.gated_linear_onednn(x64, w64, b64, "gelu"), linear.gated_linear(x64, w64, b64, "gelu"))
    w32 = w.clone().requires_grad_(True)
    out = linear.gated_linear_onednn(x, w32, b)
    out.sum().backward()
    assert w32.grad is not None


# -- the AMX kernels: matmul, bias, activation (and the gate's product) in one pass ----------------

amx = pytest.mark.skipif(not linear._amx_available(), reason="no AMX tiles (or no C compiler) on this machine")


@amx
@pytest.mark.parametrize("act", sorted(linear.AMX_ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rows", [1, 31, 33, 100])
def test_amx_linear_is_closer_to_exact_than_the_reference(act: str, bias: bool, rows: int) -> None:
    """One rounding (after bias and activation, from the float32 sums) where the reference rounds
    twice: never further from the float64 result, whatever the rows' count against the tiles' 32."""
    x, w, b = _inputs(torch.bfloat16, shape=(rows, 384), out_features=256, bias=bias)
    exact = linear_act(x.double(), w.double(), None if b is None else b.double(), act)
    with torch.inference_mode():
        got = linear.linear_act_amx(x, w, b, act)
    reference = linear_act(x, w, b, act)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 256)
    assert _error(got, exact) <= _error(reference, exact) * 1.01
    torch.testing.assert_close(got.float(), reference.float(), atol=0.05, rtol=0.02)


@amx
@pytest.mark.parametrize("act", sorted(set(linear.AMX_ACTIVATIONS) - {"none"}))
def test_amx_activations_are_within_half_an_ulp_on_both_tails(act: str) -> None:
    """Through identity weights the kernels' outputs are the activation of exact bf16 values (a
    gated layer's up half picks a column of ones): within half a bf16 ulp of the float64
    activation from -30 to 30 (the GELUs' far negative tails, where 1 + erf and 1 + tanh cancel,
    included), NaN kept."""
    values = torch.linspace(-30, 30, 32 * 400, dtype=torch.float64).bfloat16()
    v = values.double()
    # float64 forms without the cancellation that torch's own GELUs have far out
    exact = {
        "gelu": v * torch.special.erfc(-v / 2**0.5) / 2,
        "gelu_tanh": v * torch.sigmoid(2 * (2 / torch.pi) ** 0.5 * (v + 0.044715 * v**3)),
    }.get(act, ACTIVATIONS[act](v))
    x = torch.cat([values.view(-1, 32), torch.ones(400, 32, dtype=torch.bfloat16)], dim=1)
    gate_up = torch.zeros(64, 64, dtype=torch.bfloat16)
    gate_up[:32, :32] = torch.eye(32)
    gate_up[32:, 32] = 1
    with torch.inference_mode():
        results = [linear.gated_linear_amx(x, gate_up, None, act), linear.linear_act_amx(x, gate_up[:32], None, act)]
    normal = exact.abs() > 2.0**-120  # below that bf16 itself is subnormal
    ulp = 2.0 ** (torch.frexp(exact[normal]).exponent - 8).double()
    for result in results:
        got = result.double().flatten()
        assert ((got[normal] - exact[normal]).abs() <= ulp / 2).all()
        assert (got[~normal].abs() <= 2.0**-120).all()
    x[0, 0] = float("nan")
    with torch.inference_mode():
        assert linear.gated_linear_amx(x, gate_up, None, act)[0, 0].isnan()


@amx
@pytest.mark.parametrize("act", sorted(linear.AMX_ACTIVATIONS))
@pytest.mark.parametrize("gate_first", [True, False], ids=["gate-first", "up-first"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_amx_gated_linear_is_closer_to_exact_than_the_reference(act: str, gate_first: bool, bias: bool) -> None:
    x, w, b = _inputs(torch.bfloat16, shape=(70, 256), out_features=192, bias=bias)
    exact = linear.gated_linear(x.double(), w.double(), None if b is None else b.double(), act, gate_first)
    with torch.inference_mode():
        got = linear.gated_linear_amx(x, w, b, act, gate_first)
    reference = linear.gated_linear(x, w, b, act, gate_first)
    assert got.dtype == torch.bfloat16 and got.shape == (70, 96)
    assert _error(got, exact) <= _error(reference, exact) * 1.01
    torch.testing.assert_close(got.float(), reference.float(), atol=0.05, rtol=0.02)


@amx
@pytest.mark.parametrize("rows", [10, 300], ids=["split-by-columns", "split-by-rows"])
def test_amx_linear_gives_the_same_bits_on_any_number_of_threads(rows: int) -> None:
    x, w, b = _inputs(torch.bfloat16, shape=(rows, 512), out_features=2048)
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = linear.linear_act_amx(x, w, b, "silu"), linear.gated_linear_amx(x, w, b, "gelu_tanh")
            torch.set_num_threads(3)
            three = linear.linear_act_amx(x, w, b, "silu"), linear.gated_linear_amx(x, w, b, "gelu_tanh")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, c) for a, c in zip(one, three))


@amx
def test_amx_linear_reads_any_row_layout_and_hands_other_calls_to_onednn() -> None:
    x, w, b = _inputs(torch.bfloat16, shape=(2, 5, 64), out_features=96)
    with torch.inference_mode():
        want = linear.linear_act_amx(x.reshape(10, 64), w, b, "relu")
        assert torch.equal(linear.linear_act_amx(x, w, b, "relu"), want.reshape(2, 5, 96))
        wide = torch.cat([x.reshape(10, 64), torch.ones(10, 32, dtype=x.dtype)], dim=1)[:, :64]  # rows 96 apart
        assert torch.equal(linear.linear_act_amx(wide, w, b, "relu"), want)
        assert torch.equal(linear.linear_act_amx(x.reshape(10, 64).t().contiguous().t(), w, b, "relu"), want)
        assert linear.linear_act_amx(x[0, :0], w, b).shape == (0, 96)
        # What the tiles cannot take goes to the oneDNN kernel: inputs or outputs not multiples of
        # 32, activations it does not apply, float32, float16, autograd.
        for args in (_inputs(torch.bfloat16, shape=(7, 48), out_features=96), _inputs(torch.bfloat16, shape=(7, 64), out_features=72)):
            assert torch.equal(linear.linear_act_amx(*args, "gelu"), linear_act_onednn(*args, "gelu"))
        for act in ("tanh", "sigmoid"):
            assert torch.equal(linear.linear_act_amx(x, w, b, act), linear_act_onednn(x, w, b, act))
        x32, w32, b32 = _inputs(torch.float32, shape=(7, 64), out_features=96)
        assert torch.equal(linear.linear_act_amx(x32, w32, b32, "silu"), linear_act_onednn(x32, w32, b32, "silu"))
        x16, w16, b16 = (t.half() for t in (x32, w32, b32))
        assert torch.equal(linear.linear_act_amx(x16, w16, b16), linear_act_onednn(x16, w16, b16))
        assert torch.equal(linear.gated_linear_amx(x, w[:80], None), linear.gated_linear_onednn(x, w[:80], None))
    leaf = w.clone().requires_grad_(True)
    out = linear.linear_act_amx(x, leaf, b, "silu")
    out.float().sum().backward()
    assert leaf.grad is not None


@onednn
def test_without_amx_the_linear_kernels_are_oneDNN_s(monkeypatch) -> None:
    """A CPU without AMX tiles (or a build without them): the AMX kernels are unavailable, the
    registry picks oneDNN on AVX-512 (the torch reference on AVX2), and a direct call is oneDNN's."""
    monkeypatch.setattr(linear, "_amx_library", lambda: None)
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert select_kernel("linear_act", "cpu") is (linear_act_onednn if avx512 else linear_act)
    assert select_kernel("gated_linear", "cpu") is (linear.gated_linear_onednn if avx512 else linear.gated_linear)
    x, w, b = _inputs(torch.bfloat16, shape=(40, 64), out_features=96)
    with torch.inference_mode():
        assert torch.equal(linear.linear_act_amx(x, w, b, "silu"), linear_act_onednn(x, w, b, "silu"))
        assert torch.equal(linear.gated_linear_amx(x, w[:64], None), linear.gated_linear_onednn(x, w[:64], None))


@amx
def test_amx_linear_repacks_a_changed_weight_and_drops_the_packing_with_it() -> None:
    import gc

    layer = torch.nn.Linear(64, 128).bfloat16()
    x = torch.randn(40, 64).bfloat16()
    with torch.no_grad():
        first = linear.linear_act_amx(x, layer.weight, layer.bias)
        gated_first = linear.gated_linear_amx(x, layer.weight, layer.bias, "silu", False)
        layer.weight.mul_(2)
        again = linear.linear_act_amx(x, layer.weight, layer.bias)
        torch.testing.assert_close(again.float(), linear_act(x, layer.weight, layer.bias).float(), atol=0.05, rtol=0.02)
        assert not torch.allclose(first, again)
        gated = linear.gated_linear_amx(x, layer.weight, layer.bias, "silu", False)
        torch.testing.assert_close(gated.float(), linear.gated_linear(x, layer.weight, layer.bias, "silu", False).float(),
                                   atol=0.05, rtol=0.02)
        assert not torch.allclose(gated_first, gated)
    keys = [(id(layer.weight), ("amx", None)), (id(layer.weight), ("amx", False))]
    assert all(key in linear._PACKED for key in keys)
    del layer
    gc.collect()
    assert not any(key in linear._PACKED for key in keys)


@amx
def test_amx_linear_refuses_what_it_cannot_compute() -> None:
    """The C entry point checks its arguments: an unknown activation or a bad input width is refused,
    not computed wrongly."""
    lib = linear._amx_library()
    x, w, _ = _inputs(torch.bfloat16, shape=(4, 64), out_features=32)
    out = torch.empty(4, 32, dtype=torch.bfloat16)
    packed = linear._packed(w, ("amx", None))
    call = (x.data_ptr(), 64, 4, packed.data_ptr())
    assert lib.poolkit_linear(*call, 64, None, out.data_ptr(), 32, 64, 5, 0, 1, 1, 1, 1) == 3
    assert lib.poolkit_linear(*call, 48, None, out.data_ptr(), 32, 64, 0, 0, 1, 1, 1, 1) == 3
    assert lib.poolkit_linear(*call, 64, None, out.data_ptr(), 32, 64, 0, 0, 1, 1, 1, 1) == 0


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


def test_segment_pool_triton_matches_reference() -> None:
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
    result = run_triton_script(script)
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


def test_filler_sequences_leave_the_batch_and_its_rows_unchanged() -> None:
    from poolkit import PackedBatch

    batch = PackedBatch.from_sequences([[5, 6, 7], [8, 9]], token_type_ids=[[0, 1, 1], [0, 1]], pool_skip=[1, 0])
    padded = batch.with_filler(8)
    assert padded.seq_lens == [3, 2, 1, 1, 1] and padded.input_ids.tolist() == [5, 6, 7, 8, 9, 0, 0, 0]
    assert padded.token_type_ids.tolist() == [0, 1, 1, 0, 1, 0, 0, 0] and padded.pool_skip == [1, 0, 0, 0, 0]
    assert batch.with_filler(5) is batch and batch.with_filler(3) is batch
    assert PackedBatch.from_sequences([[1, 2]]).with_filler(4).token_type_ids is None


def _spy_forward(monkeypatch, arch) -> list:
    """Record the batches ``arch`` runs on, as (token count, sequence lengths)."""
    seen, forward = [], arch.forward

    def spy(batch):
        seen.append((batch.num_tokens, list(batch.seq_lens)))
        return forward(batch)

    monkeypatch.setattr(arch, "forward", spy)
    return seen


class _OneDNNFirst:
    """The oneDNN linear kernel ranked first on any CPU (on AVX2 it ranks below the reference)."""

    @hookimpl
    def poolkit_register_kernels(self, register):
        from poolkit.kernels.linear import row_bucket

        register("linear_act:onednn_first", Kernel(fn=linear_act_onednn, reference=linear_act, device="cpu",
                                                   priority=100, row_bucket=row_bucket))


@onednn
def test_the_engine_pads_batches_to_the_kernels_row_buckets(monkeypatch, tiny_encoders) -> None:
    # The oneDNN linear kernel asks for bucketed row counts (the soak's bounded memory); the
    # engine appends filler sequences once per batch, so no layer copies its input to pad it.
    import poolkit
    from poolkit import LLM
    from poolkit.kernels.linear import row_bucket
    from poolkit.plugins.testing import plugin_registered

    with plugin_registered(_OneDNNFirst(), "onednn-first"):
        assert poolkit.kernel_rows(1000, "cpu") == row_bucket(1000) == 1024 and poolkit.kernel_rows(1000, "meta") == 1000
        llm = LLM(str(tiny_encoders["bert"]), pooler_config={"pooling_type": "MEAN"}, device="cpu")
        texts = ["a short one", "and a somewhat longer sentence to pool", "three"]
        seen = _spy_forward(monkeypatch, llm.model.architecture)
        padded = llm.embed(texts)
        ((rows, lens),) = seen
        real = sum(len(o.prompt_token_ids) for o in padded)
        assert rows == row_bucket(real) > real and lens[len(texts):] == [1] * (rows - real)
        assert sorted(lens[: len(texts)]) == sorted(len(o.prompt_token_ids) for o in padded)

        monkeypatch.setattr(llm.model.architecture, "accepts_filler", False)
        plain = llm.embed(texts)
        assert seen[1][0] == real
    for a, b in zip(padded, plain):
        torch.testing.assert_close(torch.tensor(a.outputs.embedding), torch.tensor(b.outputs.embedding), atol=1e-6, rtol=1e-5)


def test_a_kernels_row_bucket_decides_the_rows_a_model_sees(monkeypatch, tiny_encoders) -> None:
    from poolkit import LLM, Kernel, kernel_rows
    from poolkit.contracts.hookspecs import hookimpl
    from poolkit.plugins.testing import plugin_registered

    calls = []

    def by_hundreds(x, weight, bias, act="none"):
        calls.append(x.reshape(-1, x.shape[-1]).shape[0])
        return linear_act(x, weight, bias, act)

    class Hundreds:
        @hookimpl
        def poolkit_register_kernels(self, register):
            register(
                "linear_act:by_hundreds",
                Kernel(fn=by_hundreds, reference=linear_act, priority=100, row_bucket=lambda n: -(-n // 100) * 100),
            )

    texts = ["a short one", "and a somewhat longer sentence to pool"]
    with plugin_registered(Hundreds(), "hundreds"):
        assert kernel_rows(1, "cpu") == 100 and kernel_rows(101, "cuda") == 200
        llm = LLM(str(tiny_encoders["bert"]), pooler_config={"pooling_type": "MEAN"})
        got = llm.embed(texts)
    assert calls and all(n == 100 for n in calls)  # every token-level linear saw the padded batch
    want = LLM(str(tiny_encoders["bert"]), pooler_config={"pooling_type": "MEAN"}).embed(texts)
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor(a.outputs.embedding), torch.tensor(b.outputs.embedding), atol=1e-5, rtol=1e-4)


def test_the_transformers_fallback_gets_no_filler(monkeypatch, tiny_encoders) -> None:
    from poolkit import LLM

    llm = LLM(str(tiny_encoders["bert"]), model_impl="transformers", pooler_config={"pooling_type": "MEAN"})
    assert llm.model.architecture.accepts_filler is False
    seen = _spy_forward(monkeypatch, llm.model.architecture)
    out = llm.embed(["a short one", "three"])
    assert seen == [(sum(len(o.prompt_token_ids) for o in out), sorted((len(o.prompt_token_ids) for o in out), reverse=True))]


# -- a plugin's segment_pool kernel above the built-ins (plugins/poolkit-topk-plugin) --------------


def test_the_topk_plugin_overrides_segment_pool_when_switched_on(monkeypatch, tiny_encoders) -> None:
    """plugins/poolkit-topk-plugin registers segment_pool:topk_cumsum above the built-ins, opt-in."""
    pytest.importorskip("poolkit_topk_plugin", reason="pip install ./plugins/poolkit-topk-plugin")
    import json

    from poolkit_topk_plugin.kernels import SWITCH, segment_pool_cumsum
    from typer.testing import CliRunner

    from poolkit import LLM
    from poolkit.entrypoints.cli import app
    from poolkit.plugins import get_manager
    from poolkit.plugins.lookup import kernel_table

    entry = registry("kernel").entry("segment_pool:topk_cumsum")
    builtin = {i.name for i in get_manager().plugin_infos() if i.builtin}
    priorities = [e.obj.priority for e in registry("kernel").entries() if e.name.startswith("segment_pool:") and e.plugin in builtin]
    assert entry.plugin == "topk" and entry.obj.fn is segment_pool_cumsum and entry.obj.priority > max(priorities)
    assert entry.obj.reference is segment_pool_reference and entry.obj.device == "cpu"

    monkeypatch.delenv(SWITCH, raising=False)
    assert select_kernel("segment_pool", "cpu") is not segment_pool_cumsum
    texts = ["a short one", "and a somewhat longer sentence to pool"]
    plain = [o.outputs.embedding for o in LLM(str(tiny_encoders["bert"]), pooler_config={"pooling_type": "MEAN"}).embed(texts)]

    monkeypatch.setenv(SWITCH, "1")
    assert select_kernel("segment_pool", "cpu") is segment_pool_cumsum
    assert select_kernel("segment_pool", "cuda") is not segment_pool_cumsum
    first = next(r for r in kernel_table(["cpu"]) if r["op"] == "segment_pool")
    assert (first["kernel"], first["registered_by"], first["available"], first["selected"]) == ("segment_pool:topk_cumsum", "topk", True, True)
    listed = {p["name"]: p for p in json.loads(CliRunner().invoke(app, ["plugins"]).stdout)}
    assert listed["topk"]["kernels"] == [
        {"kernel": "segment_pool:topk_cumsum", "device": "cpu", "priority": 20, "available": True, "selected_for": ["cpu"]}
    ]

    hidden = (torch.randn(sum(POOL_LENS), 48, generator=torch.Generator().manual_seed(5)) * 3).to(torch.bfloat16)
    cu = torch.tensor([0, *POOL_LENS]).cumsum(0)
    for mode in pooling.MODES:
        for normalize in (False, True):
            got = segment_pool_cumsum(hidden, cu, mode, normalize)
            assert got.dtype == torch.float32 and got.shape == (len(POOL_LENS), 48)
            torch.testing.assert_close(got, entry.obj.reference(hidden, cu, mode, normalize), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mode 'median'"):
        segment_pool_cumsum(hidden, cu, "median")
    overridden = [o.outputs.embedding for o in LLM(str(tiny_encoders["bert"]), pooler_config={"pooling_type": "MEAN"}).embed(texts)]
    torch.testing.assert_close(torch.tensor(overridden), torch.tensor(plain), atol=1e-6, rtol=1e-5)
