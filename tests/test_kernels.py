"""Kernels against their torch references (the Triton ones run under TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch

from poolkit.kernel import select_kernel
from poolkit.kernels import linear
from poolkit.kernels.linear import ACTIVATIONS, linear_act, linear_act_onednn

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
