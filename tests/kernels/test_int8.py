"""quantization="int8": the linear_int8 kernels against their reference, the calibration against the
float model and sentence-transformers on the same weights, every native family, and the refusals."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from int8_kernels import ONE_PASS, int8_family, int8_weights
from tiny_models import CORPUS, build_qwen
from tolerances import U32
from typer.testing import CliRunner

from poolkit import LLM, InvalidRequest, ModelLoadError, PackedBatch
from poolkit.contracts.kernel import hadamard_rows
from poolkit.kernels import int8
from poolkit.kernels.linear import ACTIVATIONS
from poolkit.plugins.lookup import kernel_for, kernel_reference, select_kernel

ONEDNN = pytest.mark.skipif(not int8._onednn_int8_available(), reason="torch without oneDNN's int8 linear")


@pytest.fixture(scope="module", autouse=True)
def _int8_on_every_cpu():
    """These tests quantize on any CPU: where the kernel would decline it (no VNNI: slower than
    float), its arithmetic is still what they test. test_int8_declines_a_cpu_without_an_int8_dot
    tests the declining."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8.linear_int8_onednn, "declines", lambda: None)
        yield


def _bound(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, inv_smooth) -> torch.Tensor:
    """How far two float32 evaluations of the same integer products, rescaled, can be apart: the
    products are exact, their sums and the rescale round within (k + 4) u of the absolute terms."""
    levels, step, zero = int8.quantize_rows(x.reshape(-1, x.shape[-1]), inv_smooth)
    terms = ((levels + zero).double() @ q.double().abs().t()) * step.double() * scale.double()
    if bias is not None:
        terms = terms + bias.double().abs()
    return (2 * (x.shape[-1] + 4) * U32 * terms + 1e-30).reshape(*x.shape[:-1], q.shape[0])


@ONEDNN
@pytest.mark.parametrize("rows,k,n", [(1, 32, 16), (37, 384, 1152), (300, 1536, 384)])
@pytest.mark.parametrize("act", ["none", "gelu"])
@pytest.mark.parametrize("compiled", [True, False], ids=["c-passes", "torch-passes"])
def test_the_onednn_kernel_sums_the_same_integers_as_the_reference(rows, k, n, act, compiled, monkeypatch):
    if compiled and int8._library() is None:
        pytest.skip("no C compiler: int8.c is not built")
    if not compiled:  # a machine without a compiler: torch's passes around the same matmul
        monkeypatch.setattr(int8, "_library", lambda: None)
    q, scale, bias = int8_weights(n, k, int8.linear_int8_onednn.weight_levels, seed=k)
    x = torch.randn(rows, k) * torch.linspace(0.1, 30, k)  # channels of very different ranges
    x[:, 3] = x[:, 3].abs() + 5  # a one-sided channel
    inv_smooth = torch.rand(k) + 0.5
    want = int8.linear_int8(x, q, scale, bias, "none", inv_smooth)
    got = int8.linear_int8_onednn(x, q, scale, bias, "none", inv_smooth)
    bound = _bound(x, q, scale, bias, inv_smooth)
    assert ((got.double() - want.double()).abs() <= bound).all(), (got - want).abs().max()
    if act != "none":  # the activation comes after the same values
        torch.testing.assert_close(
            int8.linear_int8_onednn(x, q, scale, bias, act, inv_smooth), ACTIVATIONS[act](got), atol=1e-5, rtol=1e-5
        )


@ONEDNN
@pytest.mark.parametrize("compiled", [True, False], ids=["c-passes", "torch-passes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_float_channels_are_added_in_the_rescale(compiled, dtype, monkeypatch):
    """The float channels' products (``outliers``, ``outlier_weight``) come in the kernel's rescale
    pass, before the activation: the integer part as without them, plus their float32 products."""
    if compiled and int8._library() is None:
        pytest.skip("no C compiler: int8.c is not built")
    if not compiled:
        monkeypatch.setattr(int8, "_library", lambda: None)
    q, scale, bias = int8_weights(96, 128, int8.linear_int8_onednn.weight_levels, seed=3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(45, 128, generator=g).to(dtype)
    outliers = torch.tensor([2, 40, 77])
    outlier_weight = torch.randn(3, 96, generator=g)
    inv_smooth = torch.ones(128)
    inv_smooth[outliers] = 0
    without = int8.linear_int8_onednn(x, q, scale, bias, "none", inv_smooth).float()
    want = without + x[:, outliers].float() @ outlier_weight
    for act in ("none", "gelu"):
        got = int8.linear_int8_onednn(x, q, scale, bias, act, inv_smooth, outliers, outlier_weight)
        reference = int8.linear_int8(x, q, scale, bias, act, inv_smooth, outliers, outlier_weight)
        assert got.dtype == dtype
        tolerance = {"atol": 1e-4, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.01}
        torch.testing.assert_close(got.float(), ACTIVATIONS[act](want).to(dtype).float(), **tolerance)
        torch.testing.assert_close(got.float(), reference.float(), **tolerance)


@ONEDNN
@pytest.mark.parametrize("act", ["none", "gelu", "gelu_tanh", "relu", "silu"])
def test_a_bf16_layer_is_rescaled_activated_and_narrowed_in_one_pass(act, monkeypatch):
    """A bf16 model's int8 layer: the rescale, the float channels, the activation and the bf16
    narrowing in one compiled pass (int8.c's rescale_rows_bf16), within one bf16 rounding of the
    three passes it replaces (float32 rescale, torch's activation, the cast)."""
    q, scale, bias = int8_weights(96, 256, int8.linear_int8_onednn.weight_levels, seed=5)
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(40, 256, generator=g) * 3).bfloat16()
    outliers = torch.tensor([7, 100])
    inv_smooth = torch.rand(256, generator=g) + 0.5
    inv_smooth[outliers] = 0
    outlier_weight = torch.randn(2, 96, generator=g)
    args = (x, q, scale, bias, act, inv_smooth, outliers, outlier_weight)
    passes = []
    one_pass = int8.rescale_bf16
    monkeypatch.setattr(int8, "rescale_bf16", lambda *a: passes.append(one_pass(*a)) or passes[-1])
    one = int8.linear_int8_onednn(*args)
    if passes[-1] is None:
        pytest.skip("no AVX512-BF16 build of int8.c here: the three passes run")
    monkeypatch.setattr(int8, "rescale_bf16", lambda *a: None)
    three = int8.linear_int8_onednn(*args)
    assert one.dtype == three.dtype == torch.bfloat16
    bound = three.float().abs() * 2.0**-7 + 1e-6  # one bf16 step (the two round values near a tie apart)
    assert ((one.float() - three.float()).abs() <= bound).all(), (one.float() - three.float()).abs().max()


@pytest.mark.parametrize("kind", ONE_PASS)
@pytest.mark.parametrize("rows,k,n", [(1, 64, 32), (37, 384, 1152), (300, 1536, 384), (600, 1536, 1152)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [0, 3, 12])  # VNNI: up to 8 channels' weights held in registers, more read each row
def test_the_one_pass_kernels_sum_the_same_integers_as_the_reference(kind, rows, k, n, dtype, channels, monkeypatch):
    """The whole layer in one pass (AMX-INT8 tiles, or VNNI's vector registers): the same levels (the
    rounding is the compiled pass's), the same integer sums (its zero points come off in integers,
    exactly, where the reference's float32 sums round), the float channels' products (AMX: on bf16
    tiles as two bf16 halves of each value and weight, within 2^-16 of each product; VNNI: float32
    FMAs); the 1,536 x 1,152 weight (over 1.5 MiB) goes in chunks of 512 rows, and the rows split
    over two threads both ways (by rows, by columns)."""
    fn = getattr(int8, f"linear_int8_{kind}")
    q, scale, bias = int8_weights(n, k, fn.weight_levels, seed=k + n)
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, k, generator=g) * torch.linspace(0.1, 30, k)).to(dtype)
    inv_smooth = torch.rand(k, generator=g) + 0.5
    outliers = torch.tensor([3, 40, 63, 0, 5, 9, 14, 20, 27, 33, 51, 58][:channels]) if channels else None
    outlier_weight = torch.randn(channels, n, generator=g) if channels else None
    if channels:
        inv_smooth[outliers] = 0
        x[:, outliers] *= 100  # outliers: large, as the channels kept in float are
    want = int8.linear_int8(x.float(), q, scale, bias, "none", inv_smooth, outliers, outlier_weight)
    bound = _bound(x.float(), q, scale, bias, inv_smooth)
    if channels:  # three bf16 products per channel, each within 3 * 2^-18 of x w, summed in float32
        bound = bound + (2.0**-16 + 2 * (3 * channels + 2) * U32) * (x[:, outliers].float().abs() @ outlier_weight.abs())
    if dtype == torch.bfloat16:  # then one rounding to bf16
        bound = bound + want.abs() * 2.0**-8
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        got = fn(x, q, scale, bias, "none", inv_smooth, outliers, outlier_weight)
        assert got.dtype == dtype and got.shape == (rows, n)
        assert ((got.double() - want.double()).abs() <= bound).all(), (got.double() - want.double()).abs().max()


@pytest.mark.parametrize("kind", ONE_PASS)
@pytest.mark.parametrize("k", [512, 576])
def test_the_one_pass_kernels_take_the_zero_point_off_exactly(kind, k):
    """Each row's zero point comes off its integer sums exactly: up to 512 inputs with one float32 FMA
    (every sum, zero * sum and their difference is a whole number below 2^24), beyond in integers.
    Rows whose sums sit at that edge (levels at 0 under a zero point near 255, levels at 255 over a
    zero point of 0 or of 23) against full-range weights: the output is the exact sum times the column's
    scale, then the row's step, as two float32 roundings give it, bit for bit."""
    fn = getattr(int8, f"linear_int8_{kind}")
    levels = fn.weight_levels
    g = torch.Generator().manual_seed(k)
    q = torch.randint(-levels, levels + 1, (64, k), generator=g, dtype=torch.int8)
    q[:16], q[16:24] = levels, -levels
    q[:16, 1:17] -= torch.ones(16, 16, dtype=torch.int8).tril()  # sums of every parity
    scale = torch.rand(64, generator=g) / 100 + 1e-3
    x = torch.randn(4, k, generator=g)
    x[1], x[1, 0] = -1000.0, 1.0  # every level 0 but one, under a zero point of 255 (or 254)
    x[2], x[2, 0] = 1000.0, -1e-3  # every level 255 over a zero point of 0
    x[3], x[3, 0] = 1000.0, -100.0  # sums past 2^24 (beyond 512 inputs) under a zero point of 23
    lv, step, zero = int8.quantize_rows(x)
    exact = (lv.to(torch.int64) - zero.to(torch.int64)) @ q.to(torch.int64).t()
    assert exact.abs().max() > 2**23  # at the edge
    got = fn(x, q, scale)
    assert torch.equal(got, exact.float() * scale * step)


@pytest.mark.parametrize("kind", ONE_PASS)
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu", "silu"])
def test_the_one_pass_kernels_apply_the_activation_in_their_epilogue(kind, act):
    """The activation comes after the same values, in float32, then one rounding to the output's dtype."""
    fn = getattr(int8, f"linear_int8_{kind}")
    q, scale, bias = int8_weights(64, 128, fn.weight_levels, seed=9)
    x = torch.randn(50, 128, generator=torch.Generator().manual_seed(9)) * 8
    plain = fn(x, q, scale, bias, "none")
    torch.testing.assert_close(fn(x, q, scale, bias, act), ACTIVATIONS[act](plain), atol=1e-5, rtol=1e-5)
    low = fn(x.bfloat16(), q, scale, bias, act).float()
    want = ACTIVATIONS[act](fn(x.bfloat16(), q, scale, bias, "none", ).float())
    assert ((low - want).abs() <= want.abs() * 2.0**-7 + 1e-2).all()  # within the plain layer's bf16 step


@pytest.mark.parametrize("kind", ONE_PASS)
def test_the_one_pass_kernels_hand_other_shapes_to_onednn(kind):
    """Widths that are not multiples of 64 inputs or 32 outputs, an activation its epilogue lacks:
    the oneDNN kernel's answer; and the CPU selects the AMX-INT8 kernel where it has AMX, the VNNI
    one where it has VNNI alone."""
    fn = getattr(int8, f"linear_int8_{kind}")
    q, scale, bias = int8_weights(48, 96, fn.weight_levels, seed=2)
    x = torch.randn(3, 96)
    torch.testing.assert_close(fn(x, q, scale, bias), int8.linear_int8_onednn(x, q, scale, bias))
    q, scale, bias = int8_weights(64, 64, 127, seed=2)
    x = torch.randn(3, 64)
    torch.testing.assert_close(fn(x, q, scale, bias, "tanh"), int8.linear_int8_onednn(x, q, scale, bias, "tanh"))
    best = int8.linear_int8_amx if int8._amx_library() is not None else int8.linear_int8_vnni
    assert select_kernel("linear_int8", "cpu") is best


@pytest.mark.skipif(int8._library() is None, reason="no C compiler: int8.c is not built")
def test_the_compiled_erf_gelu_is_exact_on_both_tails():
    """simd.h's erf GELU (the int8 and AMX epilogues') within one bf16 rounding of float64's, from
    -40 to 40: past x = -12.87 it is 0 (the true value is below 5e-37 there), computed without the
    subnormal products that made such inputs ten times slower."""
    y = torch.cat([torch.linspace(-40, 40, 4096), torch.tensor([float("inf")] * 16)]).reshape(-1, 16)
    ones = torch.ones(y.shape[0], 1)
    got = int8.rescale_bf16(y.clone(), ones, torch.zeros_like(ones), torch.zeros(16), None, None, "gelu")
    if got is None:
        pytest.skip("no AVX512-BF16 build of int8.c here")
    x = y[:-1].double()
    exact = x * torch.special.erfc(-x / 2**0.5) / 2  # not 1 + erf, which cancels on the left tail
    assert ((got[:-1].double() - exact).abs() <= exact.abs() * 2.0**-8 * 1.01 + 3e-36).all()
    assert (got[-1] == float("inf")).all()


@pytest.mark.parametrize("kind", ONE_PASS)
def test_the_compiled_erf_gelu_in_float32_is_exact_on_both_tails(kind):
    """A float32 layer's GELU (the one-pass kernels' epilogue, simd.h's table) within 1e-5 of
    float64's relative to itself, from -14 to 14 (past -12.87 it is 0, the true value below 5e-37);
    NaN and -inf give NaN (x times Phi(x), as torch's), +inf gives +inf (its limit)."""
    fn = getattr(int8, f"linear_int8_{kind}")
    q, scale, _ = int8_weights(32, 64, fn.weight_levels, seed=4)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(4))
    bias = torch.linspace(-14, 14, 32)  # the outputs spread over both tails
    plain = fn(x, q, scale, bias, "none").double()
    exact = plain * torch.special.erfc(-plain / 2**0.5) / 2  # not 1 + erf, which cancels on the left tail
    got = fn(x, q, scale, bias, "gelu").double()
    assert plain.min() < -13 and plain.max() > 13
    assert ((got - exact).abs() <= exact.abs() * 1e-5 + 5e-37).all(), ((got - exact).abs() / exact.abs()).max()
    special = torch.tensor([float("nan"), float("-inf"), float("inf"), -0.0])
    y = torch.cat([special, torch.zeros(12)]).reshape(1, 16)
    ones = torch.ones(1, 1)
    got = int8.rescale_bf16(y, ones, torch.zeros_like(ones), torch.zeros(16), None, None, "gelu")
    if got is not None:
        assert got[0, :2].isnan().all() and got[0, 2] == float("inf") and got[0, 3] == 0


def test_the_erf_gelu_table_is_its_fit():
    """simd.h's erf GELU table is what its comment says it is: per interval of |x|, the degree-4
    least-squares fit of log2 Phi(-|x|) on 96 Chebyshev nodes, and 2^f's degree-5 fit on 64, to
    float32's rounding of the coefficients; and the fit is within 3.2e-7 of the logarithm."""
    numpy = pytest.importorskip("numpy")
    header = (Path(int8.__file__).with_name("simd.h")).read_text()
    table = re.search(r"GELU_LOG2_TAIL\[5\]\[16\][^=]*=\s*\{(.*?)\};", header, re.S).group(1)
    rows = [[float(v.rstrip("f")) for v in row.replace("\n", " ").split(",") if v.strip()] for row in re.findall(r"\{([^{}]*)\}", table)]
    exp2 = [float(v.strip().rstrip("f")) for v in re.search(r"GELU_EXP2\[6\] = \{([^}]*)\}", header).group(1).split(",")]
    per_step = float(re.search(r"#define GELU_PER_STEP ([0-9.]+)f", header).group(1))
    cut = float(re.search(r"#define GELU_CUT ([0-9.]+)f", header).group(1))
    step = cut / 15.49
    assert per_step == pytest.approx(1 / step, rel=1e-7)
    chebyshev = numpy.cos(numpy.pi * (numpy.arange(96) + 0.5) / 96) / 2
    for i in range(16):
        log2_tail = [math.log2(math.erfc((i + s) * step / 2**0.5) / 2) for s in chebyshev]
        fit = numpy.polynomial.polynomial.polyfit(chebyshev, log2_tail, 4)
        assert [row[i] for row in rows] == pytest.approx(fit, rel=2e-7, abs=1e-12)
        grid = numpy.linspace(0 if i == 0 else -0.5, min(0.5, cut / step - i), 501)  # |x| from 0 to the cut
        truth = [math.log2(math.erfc((i + s) * step / 2**0.5) / 2) for s in grid]
        assert abs(numpy.polynomial.polynomial.polyval(grid, [row[i] for row in rows]) - truth).max() * math.log(2) < 3.2e-7
    chebyshev = numpy.cos(numpy.pi * (numpy.arange(64) + 0.5) / 64) / 2
    assert exp2 == pytest.approx(numpy.polynomial.polynomial.polyfit(chebyshev, 2.0**chebyshev, 5), rel=2e-7)


@ONEDNN
def test_the_onednn_kernel_keeps_the_input_shape_and_dtype():
    q, scale, bias = int8_weights(24, 64, int8.linear_int8_onednn.weight_levels, seed=1)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    got = int8.linear_int8_onednn(x, q, scale, bias)
    assert got.shape == (2, 5, 24) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got, int8.linear_int8(x, q, scale, bias))


def test_rows_round_to_256_levels_of_their_own_range():
    x = torch.tensor([[-1.0, 0.0, 3.0, 0.5], [0.0, 0.0, 0.0, 0.0], [2.0, 4.0, 1.0, 8.0]])
    levels, step, zero = int8.quantize_rows(x)
    assert levels.min() >= 0 and levels.max() <= 255 and torch.equal(levels, levels.round())
    assert ((levels - zero) * step - x).abs().max() <= step.max() / 2 + 1e-6
    assert torch.equal(((levels - zero) * step)[1], x[1])  # zeros stay zeros
    assert zero[2].item() == 0 and levels[2].max().item() == 255  # a positive row spends every level above 0


@pytest.mark.skipif(int8._library() is None, reason="no C compiler: int8.c is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothed", [False, True])
def test_the_compiled_rounding_gives_the_references_levels(dtype, smoothed):
    g = torch.Generator().manual_seed(3)
    wide = (torch.randn(70, 400, generator=g) * torch.linspace(0.01, 40, 400)).to(dtype)
    wide[5] = 0  # a row of zeros
    wide[6] = wide[6].abs() + 1  # one-sided rows, both ways
    wide[7] = -wide[7].abs() - 1
    wide[8, 9] = float(2**-126) / 4  # a subnormal alone in its row
    wide[8, :9], wide[8, 10:] = 0, 0
    rows = wide[:, :384]  # rows apart by more than their width, as a strided view
    inv_smooth = torch.rand(384, generator=g) + 0.5 if smoothed else None
    want, step, zero = int8.quantize_rows(rows, inv_smooth)
    q, got_step, got_zero = int8.round_rows(rows, inv_smooth, 80)
    assert q.shape == (80, 384) and q.dtype == torch.uint8 and not q[70:].any()  # the padding rows are zeros
    assert torch.equal(q[:70].float(), want) and torch.equal(got_step, step) and torch.equal(got_zero, zero)


def test_hadamard_rows_is_an_orthogonal_rotation_of_each_block():
    x = torch.randn(5, 192, generator=torch.Generator().manual_seed(4))
    for block in (16, 64):
        rotated = hadamard_rows(x, block)
        torch.testing.assert_close(hadamard_rows(rotated, block), x, atol=1e-5, rtol=1e-5)  # its own inverse
        torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
        first = hadamard_rows(torch.eye(block), block)  # Sylvester's order, normalized
        assert torch.equal(first[0], torch.full((block,), block**-0.5)) and torch.equal(first, first.t())
        torch.testing.assert_close(rotated[:, :block], x[:, :block] @ first)  # block by block
    w = torch.randn(7, 192, generator=torch.Generator().manual_seed(5))  # W x = (W H)(H x)
    torch.testing.assert_close(hadamard_rows(x, 64) @ hadamard_rows(w, 64).t(), x @ w.t(), atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(int8._library() is None, reason="no C compiler: int8.c is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [16, 64, 512])
def test_the_compiled_rounding_rotates_rows_as_the_reference(dtype, block):
    """With a rotation the compiled pass transforms each smoothed row by butterflies (blocks of 64 in
    registers), the reference by a matmul: float32 sums in two orders, so a value at a tie may round
    to the next level, no further; the steps agree to float32's rounding."""
    g = torch.Generator().manual_seed(block)
    x = (torch.randn(60, 1536, generator=g) * torch.linspace(0.1, 5, 1536)).to(dtype)
    x[:, 7] *= 40  # an outlier the rotation spreads over its block
    x[5] = 0
    inv_smooth = torch.rand(1536, generator=g) + 0.5
    want, step, zero = int8.quantize_rows(x, inv_smooth, 255, block)
    q, got_step, got_zero = int8.round_rows(x, inv_smooth, 64, block)
    apart = (q[:60].float() - want).abs()
    assert apart.max() <= 1 and (apart > 0).float().mean() < 1e-3 and not q[60:].any()
    torch.testing.assert_close(got_step, step, rtol=1e-5, atol=0)
    assert (got_zero - zero).abs().max() <= 1
    assert torch.equal(q[5].float(), want[5])  # a row of zeros stays zeros
    with pytest.raises(ValueError, match="cannot round rows of 1536 with rotation 48"):
        int8.round_rows(x, inv_smooth, 64, 48)


@pytest.mark.parametrize("kernel", [pytest.param("onednn", marks=ONEDNN), *ONE_PASS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernels_rotate_the_rows_as_the_reference(kernel, dtype):
    """A rotated layer (weight rows times H once, the kernel's input rows times H) gives the
    reference's output within the sums' float32 rounding and, where a value rounded to the next
    level, one level's product; and it computes the unrotated layer within the rounding's error."""
    fn = getattr(int8, f"linear_int8_{kernel}")
    g = torch.Generator().manual_seed(8)
    weight = torch.randn(96, 384, generator=g)
    x = (torch.randn(70, 384, generator=g) * torch.linspace(0.1, 3, 384)).to(dtype)
    x[:, 9] *= 50
    rotated = hadamard_rows(weight, 64)
    levels = fn.weight_levels  # 63 where oneDNN's sums are saturating int16 (no VNNI)
    scale = rotated.abs().amax(1) / levels
    q = torch.round(rotated / scale[:, None]).to(torch.int8)
    bias = torch.randn(96, generator=g)
    want = int8.linear_int8(x, q, scale, bias, "none", None, None, None, 64).double()
    got = fn(x, q, scale, bias, "none", None, None, None, 64).double()
    _, step, _ = int8.quantize_rows(x, None, 255, 64)
    one_level = 2 * step.double() * scale.double() * levels  # two values a level off, at most, in a row
    bound = _bound(hadamard_rows(x.float(), 64), q, scale, bias, None) + one_level
    if dtype == torch.bfloat16:
        bound = bound + want.abs() * 2.0**-8
    assert ((got - want).abs() <= bound).all(), (got - want).abs().max()
    exact = torch.nn.functional.linear(x.float(), weight, bias).double()
    assert torch.nn.functional.cosine_similarity(got, exact).min() > 0.999


def test_float_channels_widen_no_tokens_range():
    """A layer's largest input channels stay in float: a huge value there leaves the others' levels as
    they were, and the layer's output is the int8 part plus those channels' exact products."""
    from poolkit.builtin_models.blocks.quantize import _rounded

    g = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    x = torch.randn(9, 64, generator=g)
    x[:, 7] *= 1000  # an outlier channel
    input_max = x.abs().amax(0)
    levels = select_kernel("linear_int8", "cpu").weight_levels  # the kernel layer(x) runs
    layer = _rounded(weight, bias, input_max, 0.5, levels, outliers=torch.tensor([7]))
    assert layer.inv_smooth[7] == 0 and not layer.qweight[:, 7].any()
    int8_part = int8.linear_int8(x, layer.qweight, layer.scale, bias, "none", layer.inv_smooth)
    calm = x.clone()
    calm[:, 7] = 0
    torch.testing.assert_close(int8_part, int8.linear_int8(calm, layer.qweight, layer.scale, bias, "none", layer.inv_smooth))
    torch.testing.assert_close(layer(x), int8_part + x[:, 7:8] @ weight[:, 7:8].t())
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, weight, bias), rtol=0.02, atol=0.05)
    assert "float_channels=1" in repr(layer)


def test_the_reference_is_the_kernel_any_device_gets():
    assert kernel_reference("linear_int8") is int8.linear_int8
    assert select_kernel("linear_int8", "meta") is int8.linear_int8


@ONEDNN
def test_weight_levels_follow_the_cpu():
    assert int8.linear_int8_onednn.weight_levels == (127 if int8.has_int8_dot() else 63)


# -- a model ------------------------------------------------------------------------------------

HELD_OUT = [
    "A quiet street lined with old oak trees.",
    "How do vaccines train the immune system?",
    "The quarterly report shows a small loss.",
    "Which programming language should a beginner learn first?",
    "She painted the fence bright yellow last summer.",
    "Rain is expected in the north by the weekend.",
    "The function raises KeyError when the name is missing.",
    "Two cats sleep on a sunny windowsill.",
] + CORPUS


@pytest.fixture(scope="module")
def minilm_int8(minilm_dir):
    return LLM(str(minilm_dir), dtype="float32", quantization="int8")


def test_minilm_int8_stays_within_its_budget_of_sentence_transformers(minilm_int8, minilm_st):
    want = torch.from_numpy(minilm_st.encode(HELD_OUT, convert_to_numpy=True))
    got = torch.tensor([o.outputs.embedding for o in minilm_int8.embed(HELD_OUT)])
    report = minilm_int8.model.quantization
    assert report["int8_layers"], report
    assert report["min_cosine"] >= report["budget"] == 0.9995
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 0.999
    modules = {name: m for name, m in minilm_int8.model.architecture.named_modules() if type(m).__name__ == "Int8Linear"}
    assert set(modules) == set(report["int8_layers"])
    assert report["rotated_layers"] and {n for n, m in modules.items() if m.rotation == 64} == set(report["rotated_layers"])
    # the attention's products in integers where this CPU's int8 attention kernel runs float32 (VNNI)
    integer = select_kernel("varlen_attention_int8", "cpu")
    assert report["int8_attention"] is (torch.float32 in getattr(integer, "dtypes", ()))
    asked = select_kernel("varlen_attention_int8" if report["int8_attention"] else "varlen_attention", "cpu")
    assert kernel_for(minilm_int8.model.architecture, "varlen_attention", "cpu") is asked


def test_minilm_int8_holds_its_cosine_on_long_documents(minilm_int8, minilm_st):
    """Documents cut at the model's 256 tokens (the calibration texts are sentences): without the
    rotation every-layer int8 fell to 0.9987 here. Where the kernel takes weights of 63 levels (no
    VNNI: such a CPU declines int8 unless a test makes it run), each weight's rounding error is
    127/63 times as large and the cosine's shortfall, quadratic in the error, at most its square."""
    from poolkit.entrypoints.bench.corpus import make_corpus

    documents = make_corpus(16, 600, 0.05, seed=12)
    want = torch.from_numpy(minilm_st.encode(documents, convert_to_numpy=True))
    got = torch.tensor([o.outputs.embedding for o in minilm_int8.embed(documents, tokenization_kwargs={"truncate_prompt_tokens": -1})])
    shortfall = 1e-3 * (127 / minilm_int8.model.quantization["weight_levels"]) ** 2
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 1 - shortfall


@ONEDNN
def test_splade_int8_stays_within_its_budget_of_sparse_encoder(splade_dir):
    """The real SPLADE-tiny (the decoder presets' weights are random and carry none of a trained
    model's outliers, so the budget is checked on real weights): calibrated on the encoder's hidden
    states, its int8 layers keep the budget there, and the sparse vectors that the MLM head and
    max-pooling make of them stay near sentence-transformers' SparseEncoder in fp32 on held-out
    texts, with the same strongest terms."""
    from sentence_transformers import SparseEncoder

    quantized = LLM(str(splade_dir), dtype="float32", quantization="int8", hf_overrides={"architectures": ["BertSpladeSparseEmbeddingModel"]})
    report = quantized.model.quantization
    assert report["int8_layers"] and report["min_cosine"] >= report["budget"] == 0.9995
    want = SparseEncoder(str(splade_dir), device="cpu").encode(HELD_OUT, convert_to_tensor=True).to_dense().float()
    got = torch.stack([torch.tensor(o.outputs.embedding) for o in quantized.embed(HELD_OUT)])
    shortfall = 1e-3 * (127 / report["weight_levels"]) ** 2  # as on long documents: 63-level weights, without VNNI
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 1 - shortfall  # 0.9996 here
    for row_got, row_want in zip(got, want):  # a near tie among the five may swap one
        assert len(set(row_got.topk(5).indices.tolist()) & set(row_want.topk(5).indices.tolist())) >= 4


def test_the_bench_counts_the_int8_layers_flops(minilm_int8, minilm):
    """``poolkit bench``'s "% of peak" counts an int8 layer's multiply-adds as a float one's."""
    from poolkit.entrypoints.bench import model_flops

    assert model_flops(minilm_int8.model, [10, 30]) == model_flops(minilm.model, [10, 30])


def test_a_calibration_file_is_read_and_a_bad_one_refused(minilm_dir, tmp_path):
    texts = tmp_path / "calibration.txt"
    texts.write_text("\n".join(HELD_OUT) + "\n\n")
    llm = LLM(str(minilm_dir), dtype="float32", quantization="int8", calibration=str(texts))
    assert llm.model.quantization["min_cosine"] >= 0.9995
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InvalidRequest, match="has no text"):
        LLM(str(minilm_dir), quantization="int8", calibration=str(empty))
    with pytest.raises(InvalidRequest, match="cannot read the calibration file"):
        LLM(str(minilm_dir), quantization="int8", calibration=str(tmp_path / "missing.txt"))


def test_a_looser_budget_runs_the_plain_layers_within_it(minilm_dir, minilm_st, minilm_int8):
    """``quantization_budget=0.99`` (OpenVINO's int8 export keeps less on these texts): every layer
    plain, without float channels or the rotation (the fastest int8 layer), meets it, so that runs;
    the default budget of 0.9995 keeps both where the plain layers miss it."""
    loose = LLM(str(minilm_dir), dtype="float32", quantization="int8", quantization_budget=0.99)
    report = loose.model.quantization
    assert report["budget"] == 0.99 and report["min_cosine"] >= 0.99
    assert len(report["int8_layers"]) == 24 and not report["float_layers"]
    assert report["rotated_layers"] == [] and report["float_channel_layers"] == []
    layers = [m for m in loose.model.architecture.modules() if type(m).__name__ == "Int8Linear"]
    assert len(layers) == 24 and all(m.rotation == 0 and m.outliers is None for m in layers)
    default = minilm_int8.model.quantization
    assert default["budget"] == 0.9995 and default["rotated_layers"] and default["float_channel_layers"]
    want = torch.from_numpy(minilm_st.encode(HELD_OUT, convert_to_numpy=True))
    got = torch.tensor([o.outputs.embedding for o in loose.embed(HELD_OUT)])
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 0.99


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2])
def test_a_budget_outside_the_cosines_is_refused(value, minilm_dir):
    with pytest.raises(InvalidRequest, match=f"quantization_budget is a cosine similarity between 0 and 1 \\(exclusive\\), got {value}"):
        LLM(str(minilm_dir), quantization="int8", quantization_budget=value)


def test_int8_declines_a_cpu_without_an_int8_dot(minilm_dir, monkeypatch, caplog):
    """Without VNNI or AMX-INT8 (or with oneDNN capped below VNNI) int8 is slower than float32:
    the model stays in float, a warning and ``poolkit info`` say why."""
    monkeypatch.setattr(int8.linear_int8_onednn, "declines", int8.declines)
    monkeypatch.setattr(int8, "has_int8_dot", lambda: False)
    monkeypatch.setattr(int8, "_amx_library", lambda: None)  # AMX-INT8 comes with VNNI: a CPU without has neither
    monkeypatch.setattr(int8, "_vnni_library", lambda: None)
    assert select_kernel("linear_int8", "cpu") is int8.linear_int8_onednn
    with caplog.at_level("WARNING"):
        llm = LLM(str(minilm_dir), dtype="float32", quantization="int8", device="cpu")  # a CPU's decision, on any suite device
    report = llm.model.quantization
    assert report["declined"] == int8.declines() and "no int8 dot product" in report["declined"]
    assert not report["int8_layers"] and report["float_layers"]
    assert "quantization 'int8' declined: this CPU has no int8 dot product" in caplog.text
    assert not any(type(m).__name__ == "Int8Linear" for m in llm.model.architecture.modules())
    assert llm.model.describe()["quantization"]["declined"] == report["declined"]
    monkeypatch.setattr(int8, "has_int8_dot", lambda: True)
    assert int8.declines() is None


def test_a_onednn_isa_cap_below_vnni_means_no_int8_dot(monkeypatch):
    int8.has_int8_dot.cache_clear()
    try:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
        assert not int8.has_int8_dot()
    finally:
        int8.has_int8_dot.cache_clear()


@pytest.mark.parametrize("value", ["fp8", "awq", 8])
def test_other_quantizations_are_refused(value):
    with pytest.raises(InvalidRequest, match=f"quantization '{value}' is not supported; poolkit supports int8"):
        LLM("unused", quantization=value)


def test_the_transformers_fallback_refuses_int8(tiny_encoders):
    with pytest.raises(ModelLoadError, match="quantization 'int8' is not supported by .*natively"):
        LLM(str(tiny_encoders["bert"]), model_impl="transformers", quantization="int8")


@pytest.mark.parametrize("kind", ["bert", "roberta", "modernbert", "qwen3", "llama", "mpnet", "clip"])
def test_every_native_family_runs_int8_within_the_budget(kind, tmp_path):
    path = int8_family(kind, tmp_path / kind)
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(CORPUS))
    full = LLM(str(path), dtype="float32")
    quantized = LLM(str(path), dtype="float32", quantization="int8", calibration=str(calibration))
    report = quantized.model.quantization
    assert report["int8_layers"] or report["float_layers"]
    assert report["min_cosine"] >= report["budget"]
    want = torch.tensor([o.outputs.embedding for o in full.embed(CORPUS)])
    got = torch.tensor([o.outputs.embedding for o in quantized.embed(CORPUS)])
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 0.999


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["bert", "qwen3", "mpnet"])
def test_calibration_takes_the_attention_in_integers_where_it_keeps_the_budget(kind, dtype, tmp_path):
    """``_integer_attention``: tried only where the int8 attention kernel runs the stream's dtype in
    integers, kept where some call ran so (a causal Qwen3's with heads of 16, not MPNet's, whose calls
    with a position bias and heads of 8 it hands to the float kernel) and the model meets the budget
    with it, else the model's attention as it was."""
    from poolkit.builtin_models.blocks import quantize

    path = build_qwen(tmp_path / kind, "qwen3", head_dim=16) if kind == "qwen3" else int8_family(kind, tmp_path / kind)
    model = LLM(str(path), dtype=dtype).model.architecture
    batches = [PackedBatch.from_sequences([list(range(5, 45)), list(range(7, 20)), [9, 10, 11]])]
    exact, integer = select_kernel("varlen_attention", "cpu"), select_kernel("varlen_attention_int8", "cpu")
    with torch.inference_mode():  # as calibration runs (the kernels hand calls that need gradients back)
        reference = [quantize._summary(model, b) for b in batches]
        assert quantize._integer_attention(model, batches, reference, 1.0) is None  # rounded products never reach 1.0
        assert kernel_for(model, "varlen_attention", "cpu") is exact
        kept = quantize._integer_attention(model, batches, reference, 0.99)
    if dtype in getattr(integer, "dtypes", ()) and kind != "mpnet":
        assert kept is not None and 0.99 <= kept < 1.0
        assert all(kernel_for(m, "varlen_attention", "cpu") is integer for m in model.modules())
    else:
        assert kept is None and all(kernel_for(m, "varlen_attention", "cpu") is exact for m in model.modules())


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_an_int8_gated_layer_in_bf16_takes_the_gated_linear_int8_op(kind, tmp_path):
    """A SwiGLU model in bf16 and int8: its gate_up layers' act(gate) * up is the gated_linear_int8
    op's selected kernel (the one-pass layer where it builds), within the budget of the bf16 model."""
    path = int8_family(kind, tmp_path / kind)
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(CORPUS))
    full = LLM(str(path), dtype="bfloat16")
    quantized = LLM(str(path), dtype="bfloat16", quantization="int8", calibration=str(calibration))
    want = torch.tensor([o.outputs.embedding for o in full.embed(CORPUS)])
    got = torch.tensor([o.outputs.embedding for o in quantized.embed(CORPUS)])
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 0.999
    key = ("gated_linear_int8", torch.device("cpu"))
    gated = [m for m in quantized.model.architecture.modules() if key in m.__dict__.get("_kernels", {})]
    assert gated, "no int8 gate_up layer ran the gated_linear_int8 op"
    assert all(m._kernels[key] is select_kernel("gated_linear_int8", "cpu") for m in gated)
    # the same kind as the plain layers' kernel (whose weight_levels the weights were rounded to)
    kind_of_linear = select_kernel("linear_int8", "cpu").__name__.removeprefix("linear_int8")
    assert select_kernel("gated_linear_int8", "cpu").__name__ == "gated_linear_int8" + kind_of_linear


def test_the_cli_takes_quantization_and_info_shows_it(minilm_dir, tmp_path):
    from poolkit.entrypoints.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["info", str(minilm_dir), "--quantization", "int8"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)["quantization"]
    assert report["method"] == "int8" and report["int8_layers"]
    bad = runner.invoke(app, ["embed", "hello", "-m", str(minilm_dir), "--quantization", "fp8"])
    assert bad.exit_code == 1 and "Error: --quantization 'fp8' is not supported; poolkit supports int8" in bad.output
    loose = runner.invoke(app, ["info", str(minilm_dir), "--quantization", "int8", "--quantization-budget", "0.99"])
    assert loose.exit_code == 0, loose.output
    assert json.loads(loose.output)["quantization"]["budget"] == 0.99
    bad = runner.invoke(app, ["embed", "hello", "-m", str(minilm_dir), "--quantization", "int8", "--quantization-budget", "2"])
    assert bad.exit_code == 1
    assert "Error: --quantization-budget is a cosine similarity between 0 and 1 (exclusive), got 2.0" in bad.output
