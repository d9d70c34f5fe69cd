"""The gated_linear_int8 op: an int8 gated feed-forward's gate and up projections and their
act(gate) * up in one pass, against the same kernels' own layer and torch's product."""

from __future__ import annotations

import pytest
import torch
from int8_kernels import ONE_PASS, int8_weights

from poolkit.kernels import int8, linear
from poolkit.plugins.lookup import kernel_reference


@pytest.mark.parametrize("kind", ONE_PASS)
@pytest.mark.parametrize("rows,k,inner", [(37, 128, 96), (600, 1024, 1024)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gate_first", [True, False])
@pytest.mark.parametrize("act,channels,rotation", [("silu", 0, 0), ("silu", 3, 64), ("gelu", 12, 0)])
def test_the_one_pass_gated_kernels_write_the_product_of_their_own_layer(kind, rows, k, inner, dtype, gate_first, act,
                                                                          channels, rotation, monkeypatch):
    """The fused kernel reads each block's 16 gate columns beside the 16 up columns they multiply
    from the plain layer's packed weight and writes act(gate) * up from its epilogue: the same integer
    sums, scales, bias and float channels as the kernel's own plain layer in float32, whose halves
    torch then multiplies; one rounding to the output's dtype. A column read from the wrong half or
    block would pair the wrong features.
    The 1,024 x 2,048 weight (over 1.5 MiB) goes in chunks of 512 rows, over one and two threads."""
    fused, plain = getattr(int8, f"gated_linear_int8_{kind}"), getattr(int8, f"linear_int8_{kind}")
    q, scale, bias = int8_weights(2 * inner, k, fused.weight_levels, seed=k + inner)
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, k, generator=g) * 3).to(dtype)
    inv_smooth = torch.rand(k, generator=g) + 0.5
    outliers = torch.randperm(k, generator=g)[:channels] if channels else None
    outlier_weight = torch.randn(channels, 2 * inner, generator=g) if channels else None
    if channels:
        inv_smooth[outliers] = 0
    args = (q, scale, bias, act, inv_smooth, outliers, outlier_weight, rotation)
    wide = plain(x.float(), q, scale, bias, "none", inv_smooth, outliers, outlier_weight, rotation)
    want = linear.gated_activation(wide, act, gate_first)
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        got = fused(x, *args, gate_first=gate_first)
        assert got.dtype == dtype and got.shape == (rows, inner)
        # the activation's own float32 evaluation (C's against torch's), then bf16's one rounding
        step = 2.0**-8 if dtype == torch.bfloat16 else 0.0
        bound = want.abs() * (step + 1e-5) + 1e-5 * (wide.abs().amax() + 1)
        assert ((got.float() - want).abs() <= bound).all(), (got.float() - want).abs().max()


@pytest.mark.parametrize("kind", ONE_PASS)
def test_the_gated_kernels_hand_other_calls_to_onednn_and_the_gated_activation(kind):
    """An inner width that is not a multiple of 16 (or an activation the epilogue lacks) goes to
    oneDNN's layer in the input's dtype and the gated_activation op's compiled pass: what an int8
    gated layer computed before the fused kernel."""
    fused = getattr(int8, f"gated_linear_int8_{kind}")
    q, scale, bias = int8_weights(48, 64, fused.weight_levels, seed=6)
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(6)).bfloat16()
    for act in ("silu", "tanh"):
        got = fused(x, q, scale, bias, act, gate_first=False)
        two_passes = linear.gated_activation_c(int8.linear_int8_onednn(x, q, scale, bias), act, False)
        assert torch.equal(got, two_passes)
        assert torch.equal(int8.gated_linear_int8_onednn(x, q, scale, bias, act, gate_first=False), two_passes)


def test_the_gated_reference_is_the_float32_layer_then_the_product():
    """The reference computes the layer in float32, then act(gate) * up, and rounds once."""
    assert kernel_reference("gated_linear_int8") is int8.gated_linear_int8
    q, scale, bias = int8_weights(64, 64, 127, seed=8)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(8)).bfloat16()
    wide = int8.linear_int8(x.float(), q, scale, bias)
    got = int8.gated_linear_int8(x, q, scale, bias, "gelu_tanh", gate_first=False)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, linear.gated_activation(wide, "gelu_tanh", False).bfloat16())
