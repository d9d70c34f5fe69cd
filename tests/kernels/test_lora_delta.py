"""The compiled CPU ``lora_delta`` kernel (lora.c) against the products in float64, on the same factors."""

from __future__ import annotations

import pytest
import torch
from tolerances import U32

from poolkit.kernels import lora
from poolkit.plugins.lookup import select_kernel

COMPILED = pytest.mark.skipif(lora._library() is None, reason="no AVX-512 here (or no C compiler): lora.c does not run")
#: Runs as the engine gives them: one or two go to the reference (torch's matmuls in place), more to lora.c,
#: slots alternating, one-row runs, an empty run, rows in no run.
SEGMENTS = (
    [(0, 70, 1)], [(2, 19, 0), (19, 20, 2), (33, 70, 1)], [(0, 9, 1), (9, 30, 0), (30, 31, 1), (31, 70, 2)],
    [(5, 5, 2), (5, 13, 0), (13, 14, 2), (20, 61, 0)], [],
)


@COMPILED
@pytest.mark.parametrize("width,features,rank", [(64, 96, 16), (384, 1152, 48), (32, 16, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_cpu_kernel_adds_each_runs_products_in_place(width, features, rank, dtype, threads, monkeypatch):
    """Each run's rows gain ``(x A^T) B^T`` of their slot's factors within float32's summation error
    (in bf16 also one rounding of each output and, on the reference's path, of each rank's value);
    rows in no run are left to the bit; an input
    read through a row stride (a view of a wider tensor) is read in place."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    g = torch.Generator().manual_seed(width + rank)
    wide = torch.randn(70, width + 16, generator=g).to(dtype)
    x = wide[:, 8 : 8 + width]  # rows of stride width + 16
    base = torch.randn(70, features, generator=g).to(dtype)
    a = (torch.randn(3, rank, width, generator=g) / width**0.5).to(dtype)
    b = (torch.randn(3, features, rank, generator=g) / rank**0.5).to(dtype)
    for segments in SEGMENTS:
        got = lora.lora_delta_cpu(x, base.clone(), a, b, segments)
        want, terms, products = base.double().clone(), base.double().abs(), torch.zeros(70, features, dtype=torch.float64)
        for start, stop, slot in segments:
            xs, aa, bb = x[start:stop].double(), a[slot].double(), b[slot].double()
            want[start:stop] += (xs @ aa.T) @ bb.T
            products[start:stop] = (xs.abs() @ aa.abs().T) @ bb.abs().T
        bound = 2 * (width + rank + 2) * U32 * (terms + products)
        if dtype == torch.bfloat16:  # the output's one rounding; the reference also rounds the ranks' values to bf16
            bound = bound + (want.abs() + products) * 2.0**-8
        assert got.dtype == dtype
        assert ((got.double() - want).abs() <= bound).all(), (segments, (got.double() - want).abs().max())
        untouched = torch.ones(70, dtype=torch.bool)
        for start, stop, _ in segments:
            untouched[start:stop] = False
        assert torch.equal(got[untouched], base[untouched])


@COMPILED
def test_the_cpu_kernel_is_selected_and_hands_other_calls_to_the_reference():
    """The CPU selects it; widths that are not multiples of 16, mixed dtypes and columns of another
    stride get the reference's answer."""
    assert select_kernel("lora_delta", "cpu") is lora.lora_delta_cpu
    g = torch.Generator().manual_seed(1)
    segments = [(0, 4, 0), (4, 7, 1), (7, 9, 0)]
    for x, out, a, b in (
        (torch.randn(9, 24, generator=g), torch.randn(9, 32, generator=g), torch.randn(2, 4, 24, generator=g), torch.randn(2, 32, 4, generator=g)),
        (torch.randn(9, 32, generator=g), torch.randn(9, 32, generator=g).bfloat16(), torch.randn(2, 4, 32, generator=g), torch.randn(2, 32, 4, generator=g)),
        (torch.randn(32, 9, generator=g).T, torch.randn(9, 32, generator=g), torch.randn(2, 4, 32, generator=g), torch.randn(2, 32, 4, generator=g)),
    ):
        want = lora.lora_delta_reference(x, out.clone(), a, b, segments)
        torch.testing.assert_close(lora.lora_delta_cpu(x, out.clone(), a, b, segments), want)
