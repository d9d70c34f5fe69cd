"""The elementwise kernel ops (rms_norm, residual_norm, rotary): the references against
transformers' own code, the compiled C kernels against the references and the float64 result;
the compiled activations of the oneDNN linear kernels; and the compiler's cache and refusals."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from poolkit.kernels import compiler, elementwise
from poolkit.kernels.elementwise import residual_norm, residual_norm_c, rms_norm, rms_norm_c, rotary, rotary_c
from poolkit.kernels.linear import ACTIVATIONS

needs_c = pytest.mark.skipif(elementwise._library() is None, reason="no C compiler: the compiled kernels are off")
BF16_ULP = 2.0**-7  # relative spacing of bf16 values


def _rand(*shape: int, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale + shift


def _within_rounding(ours: torch.Tensor, reference: torch.Tensor, exact: torch.Tensor) -> None:
    """``ours`` is at least as close to ``exact`` as the reference, up to one bf16 rounding of each value."""
    ours, reference, exact = ours.double(), reference.double(), exact.double()
    slack = exact.abs() * BF16_ULP + 1e-6
    assert ((ours - exact).abs() <= (reference - exact).abs() + slack).all()
    assert (ours - reference).abs().max() <= (2 * slack).max()


# -- the references are transformers' arithmetic -----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [False, True])
def test_rms_norm_reference_is_transformers_rmsnorm(dtype: torch.dtype, offset: bool) -> None:
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    theirs = (GemmaRMSNorm(64, eps=1e-6) if offset else LlamaRMSNorm(64, eps=1e-6)).to(dtype)
    with torch.no_grad():
        theirs.weight.copy_(_rand(64, seed=1) * 0.3)
    x, residual = _rand(5, 64).to(dtype), _rand(5, 64, seed=2).to(dtype)
    with torch.no_grad():
        total, out = rms_norm(x, theirs.weight, 1e-6, offset, residual)
        assert torch.equal(total, x + residual)
        assert torch.equal(out, theirs(x + residual))
        assert rms_norm(x, theirs.weight, 1e-6, offset)[0] is x


def test_residual_norm_reference_is_a_wide_layer_norm() -> None:
    x, residual = _rand(6, 48).bfloat16(), _rand(6, 48, seed=1)
    norm = torch.nn.LayerNorm(48).bfloat16()
    wide, low = residual_norm(x, residual, norm.weight, norm.bias, 1e-5)
    expected = F.layer_norm(x.float() + residual, (48,), norm.weight.float(), norm.bias.float(), 1e-5)
    assert wide.dtype == torch.float32 and torch.equal(wide, expected) and torch.equal(low, expected.bfloat16())
    w32 = torch.ones(48)
    wide, low = residual_norm(x.float(), None, w32, None, 1e-5, rms=True)
    assert low is wide and torch.allclose(wide, x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_reference_is_transformers_apply_rotary_pos_emb(dtype: torch.dtype) -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    T, H, D = 7, 3, 16
    q, k = _rand(T, H, D).to(dtype), _rand(T, H, D, seed=1).to(dtype)
    angles = torch.arange(T).float()[:, None] * 1e-2 ** (torch.arange(0, D, 2).float() / D)
    angles = torch.cat((angles, angles), -1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    # transformers takes [batch, heads, T, D] with cos [batch, T, D]
    tq, tk = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    assert torch.equal(rotary(q, cos, sin), tq[0].transpose(0, 1))
    assert torch.equal(rotary(k, cos, sin), tk[0].transpose(0, 1))
    # a partial rotation leaves the other dimensions alone
    part = rotary(q, cos[:, :8].contiguous(), sin[:, :8].contiguous())
    assert torch.equal(part[..., 8:], q[..., 8:])


# -- the compiled kernels ----------------------------------------------------------------------


#: Row widths: a multiple of 16 (the AVX512-BF16 fast paths, where the CPU has them) and not.
WIDTHS = [96, 100]


@needs_c
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("offset", [False, True])
@pytest.mark.parametrize("residual_dtype", [None, torch.bfloat16, torch.float32])
def test_rms_norm_c_is_as_close_to_exact_as_the_reference(offset: bool, residual_dtype: torch.dtype | None, n: int) -> None:
    """A float32 ``residual`` is a decoder's float32 residual stream: the sum stays float32, the norm is bf16."""
    x = _rand(37, n, scale=3.0, shift=0.5).bfloat16()
    residual = None if residual_dtype is None else _rand(37, n, seed=1).to(residual_dtype)
    weight = (_rand(n, seed=2) * 0.2 + (0.0 if offset else 1.0)).bfloat16()
    total, out = rms_norm_c(x, weight, 1e-6, offset, residual)
    ref_total, ref_out = rms_norm(x, weight, 1e-6, offset, residual)
    assert total.dtype == ref_total.dtype == (residual_dtype or torch.bfloat16)
    assert torch.equal(total, ref_total) and out.dtype == ref_out.dtype == torch.bfloat16
    _, exact = rms_norm(ref_total.double(), weight.double(), 1e-6, offset)
    _within_rounding(out, ref_out, exact)


@needs_c
def test_rms_norm_c_reads_query_heads_in_place() -> None:
    """Qwen3's q/k norm: per-head norms of a strided view into the fused qkv output."""
    qkv = _rand(11, 4 * 32 + 2 * 2 * 32).bfloat16()
    q = qkv[:, : 4 * 32].view(11, 4, 32)
    k = qkv[:, 4 * 32 : 6 * 32].view(11, 2, 32)
    weight = (_rand(32, seed=3) * 0.1 + 1).bfloat16()
    for heads in (q, k):
        assert not heads.is_contiguous()
        _within_rounding(rms_norm_c(heads, weight, 1e-6)[1], rms_norm(heads, weight, 1e-6)[1],
                         rms_norm(heads.double(), weight.double(), 1e-6)[1])


@needs_c
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_residual_norm_c_is_as_close_to_exact_as_the_reference(rms: bool, bias: bool, n: int) -> None:
    x, residual = _rand(29, n, scale=2.0).bfloat16(), _rand(29, n, seed=1, shift=3.0)
    weight, b = (_rand(n, seed=2) * 0.1 + 1).bfloat16(), (_rand(n, seed=3) * 0.1).bfloat16()
    b = b if bias else None
    for res in (residual, None):
        wide, low = residual_norm_c(x, res, weight, b, 1e-5, rms)
        ref_wide, ref_low = residual_norm(x, res, weight, b, 1e-5, rms)
        exact, _ = residual_norm(x.double(), None if res is None else res.double(), weight.double(),
                                 None if b is None else b.double(), 1e-5, rms)
        assert wide.dtype == torch.float32 and low.dtype == torch.bfloat16
        assert (wide.double() - exact).abs().max() <= (ref_wide.double() - exact).abs().max() + 1e-5
        assert torch.equal(low, wide.bfloat16())
        _within_rounding(low, ref_low, exact)


@needs_c
def test_rotary_c_rotates_strided_heads_and_partial_dimensions() -> None:
    """GTE / NomicBERT rotate q and k as one [T, 2, heads, d] view of the fused qkv output."""
    T, H, D = 13, 3, 64
    qkv = _rand(T, 3, H, D, scale=2.0).bfloat16()
    angles = _rand(T, D // 2, seed=5) * 10
    for r in (D, D // 2, 20):  # halves of 32, 16 (the fast path's multiples of 16) and 10
        a = torch.cat((angles[:, : r // 2], angles[:, : r // 2]), -1)
        cos, sin = a.cos().bfloat16(), a.sin().bfloat16()
        qk = qkv[:, :2]
        out = rotary_c(qk, cos, sin)
        assert out.shape == qk.shape and out.is_contiguous()
        exact = rotary(qk.double(), cos.double(), sin.double())
        _within_rounding(out, rotary(qk, cos, sin), exact)
        assert torch.equal(out[..., r:], qk[..., r:])


@needs_c
def test_split_over_threads_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    x, residual = _rand(300, 1024).bfloat16(), _rand(300, 1024, seed=1).bfloat16()
    weight = (_rand(1024, seed=2) * 0.1 + 1).bfloat16()
    cos, sin = _rand(300, 64, seed=3).bfloat16(), _rand(300, 64, seed=4).bfloat16()
    heads = x.view(300, 16, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (rms_norm_c(x, weight, 1e-6, False, residual), residual_norm_c(x, residual.float(), weight, None, 1e-5),
               rotary_c(heads, cos, sin))
        torch.set_num_threads(3)
        monkeypatch.setattr(elementwise, "_PARALLEL_ELEMENTS", 1)
        many = (rms_norm_c(x, weight, 1e-6, False, residual), residual_norm_c(x, residual.float(), weight, None, 1e-5),
                rotary_c(heads, cos, sin))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(torch.utils._pytree.tree_leaves(one), torch.utils._pytree.tree_leaves(many)):
        assert torch.equal(a, b)


@needs_c
def test_a_forked_child_runs_the_kernels_without_its_parents_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels split calls over OpenMP's threads; a forked child's copy of OpenMP still counts
    the parent's, which it does not have, so there they run on the child's own thread."""
    x = _rand(64, 512).bfloat16()
    weight = torch.ones(512).bfloat16()
    monkeypatch.setattr(elementwise, "_PARALLEL_ELEMENTS", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = rms_norm_c(x, weight, 1e-6)[1]  # the parent's OpenMP pool now has a thread
        pid = os.fork()
        if pid == 0:  # the child would wait forever on the parent's threads: an alarm ends it
            signal.alarm(30)
            os._exit(0 if torch.equal(rms_norm_c(x, weight, 1e-6)[1], expected) else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        torch.set_num_threads(threads)
    assert os.waitstatus_to_exitcode(status) == 0


@needs_c
def test_calls_the_c_kernels_do_not_take_go_to_the_reference() -> None:
    x32 = _rand(4, 16)
    w32 = torch.ones(16)
    cos, sin = torch.ones(4, 16), torch.zeros(4, 16)
    # all float32: torch's own arithmetic, to the last bit
    assert torch.equal(rms_norm_c(x32, w32, 1e-6)[1], rms_norm(x32, w32, 1e-6)[1])
    assert torch.equal(residual_norm_c(x32, x32, w32, None, 1e-5)[0], residual_norm(x32, x32, w32, None, 1e-5)[0])
    # fp16, fp64, a transposed last dimension, a 3-D cos, gradients
    for x in (x32.half(), x32.double()):
        assert torch.equal(rms_norm_c(x, w32.to(x.dtype), 1e-6)[1], rms_norm(x, w32.to(x.dtype), 1e-6)[1])
    xt = _rand(16, 4).bfloat16().t()
    assert torch.equal(rms_norm_c(xt, w32.bfloat16(), 1e-6)[1], rms_norm(xt, w32.bfloat16(), 1e-6)[1])
    heads = _rand(4, 2, 16).bfloat16()
    assert torch.equal(rotary_c(heads, cos[:, None].bfloat16(), sin[:, None].bfloat16()),
                       rotary(heads, cos[:, None].bfloat16(), sin[:, None].bfloat16()))
    leaf = _rand(4, 16).bfloat16().requires_grad_()
    rms_norm_c(leaf, w32.bfloat16(), 1e-6)[1].float().sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


# -- activations of the oneDNN linear kernels ---------------------------------------------------

needs_activation = pytest.mark.skipif(not elementwise._has_activation(), reason="no AVX512-BF16 build")


def _exact_activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """``act`` in float64, the tanh GELU written as ``x * sigmoid(2u)`` so that its tail does not cancel."""
    x = x.double()
    if act == "gelu_tanh":
        return x * torch.sigmoid(2 * 0.7978845608028654 * (x + 0.044715 * x**3))
    return F.silu(x)


@needs_activation
@pytest.mark.parametrize("act", sorted(elementwise.C_ACTIVATIONS))
def test_activation_c_is_exact_up_to_one_bf16_rounding(act: str) -> None:
    """Both tails included: torch's own float32 tanh GELU cancels below about -4 (``1 + tanh``), this does not."""
    x = torch.cat([_rand(60, 16, scale=4.0).flatten(), torch.linspace(-40, 40, 1024)]).bfloat16().reshape(-1, 64)
    exact = _exact_activation(x, act)
    got = elementwise.activation_c(x.clone(), act)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    # half a bf16 ulp of rounding, a little float32 arithmetic; results below float32's normal range may flush to 0
    assert ((got.double() - exact).abs() <= exact.abs() * (BF16_ULP / 2) * 1.01 + 1e-37).all()
    if act == "silu":  # torch's float32 arithmetic is accurate here: the same bits
        assert torch.equal(got, ACTIVATIONS[act](x.float()).bfloat16())


@needs_activation
def test_activation_c_keeps_nan_and_infinities() -> None:
    special = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0] * 4).bfloat16().reshape(1, 16)
    for act in elementwise.C_ACTIVATIONS:
        got = elementwise.activation_c(special.clone(), act)[0, :4].float().tolist()
        want = ACTIVATIONS[act](special[0, :4].float()).tolist()  # torch's: nan, inf, nan (-inf * 0), 0
        assert str(got) == str(want), act


@needs_activation
@pytest.mark.parametrize("gate_first", [True, False])
def test_activation_c_gates_one_half_by_the_other(gate_first: bool) -> None:
    both = _rand(37, 96, scale=3.0).bfloat16()
    gate, up = (both[:, :48], both[:, 48:]) if gate_first else (both[:, 48:], both[:, :48])
    for act in elementwise.C_ACTIVATIONS:
        got = elementwise.activation_c(both, act, gate_first)
        assert got.shape == (37, 48) and got.is_contiguous()
        exact = _exact_activation(gate, act) * up.double()
        assert ((got.double() - exact).abs() <= exact.abs() * (BF16_ULP / 2) * 1.01 + 1e-37).all(), act
    assert torch.equal(both, _rand(37, 96, scale=3.0).bfloat16())  # its input untouched


@needs_activation
def test_activation_c_splits_over_threads_with_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    both = _rand(300, 512, scale=3.0).bfloat16()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [elementwise.activation_c(both, "gelu_tanh", True), elementwise.activation_c(both.clone(), "silu")]
        torch.set_num_threads(3)
        monkeypatch.setattr(elementwise, "_PARALLEL_ELEMENTS", 1)
        many = [elementwise.activation_c(both, "gelu_tanh", True), elementwise.activation_c(both.clone(), "silu")]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many))


@needs_activation
def test_the_onednn_linear_kernels_take_the_compiled_activation_in_bf16() -> None:
    """A plain matmul then the compiled pass, where the width allows it (a multiple of 16); the
    post-ops elsewhere, at the same accuracy."""
    from poolkit.kernels import linear

    if torch.bfloat16 not in linear._onednn_dtypes():
        pytest.skip("oneDNN has no bf16 on this CPU")
    x = _rand(21, 64).bfloat16()
    assert elementwise.activation_c_runs(torch.bfloat16, 32, "gelu_tanh")
    assert not elementwise.activation_c_runs(torch.bfloat16, 40, "silu")
    assert not elementwise.activation_c_runs(torch.float32, 32, "silu")
    assert not elementwise.activation_c_runs(torch.bfloat16, 32, "gelu")  # oneDNN's post-op is the faster
    with torch.inference_mode():
        for inner in (32, 40):
            w = (_rand(2 * inner, 64, seed=1) / 8).bfloat16()
            plain = linear.linear_act_onednn(x, w, None)
            gated = linear.gated_linear_onednn(x, w, None, "gelu_tanh", gate_first=False)
            single = linear.linear_act_onednn(x, w, None, "silu")
            if inner == 32:
                assert torch.equal(gated, elementwise.activation_c(plain.clone(), "gelu_tanh", gate_first=False))
                assert torch.equal(single, elementwise.activation_c(plain.clone(), "silu"))
            exact = linear.gated_linear(x.double(), w.double(), None, "gelu_tanh", gate_first=False)
            assert ((gated.double() - exact).norm() / exact.norm()) < 0.01


@pytest.mark.parametrize("gate_first", [True, False])
def test_the_gated_activation_op_is_the_product_of_a_wide_output(gate_first: bool) -> None:
    """``gated_activation`` (an int8 gated layer's act(gate) * up): the compiled kernel on bf16 where it
    builds, within one bf16 rounding of float64 and as close as the reference (which rounds twice, in bf16); float32,
    ``tanh`` and a width the pass cannot take go to the reference, whose bits they keep."""
    from poolkit.kernels import linear
    from poolkit.plugins.lookup import select_kernel

    fn = select_kernel("gated_activation", "cpu")
    assert fn is (linear.gated_activation_c if elementwise._has_activation() else linear.gated_activation)
    both = _rand(2, 37, 96, scale=3.0).bfloat16()
    gate, up = (both[..., :48], both[..., 48:]) if gate_first else (both[..., 48:], both[..., :48])
    with torch.inference_mode():
        for act in ("silu", "gelu_tanh"):
            got = linear.gated_activation_c(both, act, gate_first)
            assert got.shape == (2, 37, 48) and got.dtype == torch.bfloat16
            exact = _exact_activation(gate, act) * up.double()
            _within_rounding(got, linear.gated_activation(both, act, gate_first), exact)
            if elementwise._has_activation():
                assert ((got.double() - exact).abs() <= exact.abs() * (BF16_ULP / 2) * 1.01 + 1e-37).all(), act
        for args in ((both.float(), "silu"), (both, "tanh"), (both[..., :80], "silu")):
            assert torch.equal(linear.gated_activation_c(*args, gate_first), linear.gated_activation(*args, gate_first))


def test_the_c_kernels_are_selected_on_the_cpu_when_they_build() -> None:
    import poolkit

    from poolkit.kernels import fused

    rows = {(r["op"], r["for_device"]): r for r in poolkit.kernel_table() if r["selected"]}
    for op in ("rms_norm", "residual_norm", "rotary"):  # on CUDA: the Triton kernels where a GPU runs them
        assert rows[(op, "cuda")]["kernel"] == f"{op}:{'triton' if fused.triton_available() else 'torch'}"
        assert rows[(op, "cpu")]["kernel"] == (f"{op}:c" if elementwise._library() is not None else f"{op}:torch")


# -- the compiler ------------------------------------------------------------------------------

_ADD = "int add(int a, int b) { return a + b; }\n"


def test_load_c_library_builds_once_and_caches_by_content(tmp_path, monkeypatch) -> None:
    if compiler.find_compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.delenv("POOLKIT_C_KERNELS", raising=False)  # tests/kernels/test_cpu_tiers.py runs this file with them off
    monkeypatch.setenv("POOLKIT_KERNEL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "adder.c"
    source.write_text(_ADD)
    lib = compiler.load_c_library.__wrapped__(source)
    assert lib is not None and lib.add(2, 3) == 5
    built = list((tmp_path / "cache").glob("adder-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert compiler.load_c_library.__wrapped__(source).add(1, 1) == 2
    assert built[0].stat().st_mtime_ns == stamp  # not rebuilt
    source.write_text(_ADD.replace("a + b", "a - b"))
    assert compiler.load_c_library.__wrapped__(source).add(5, 3) == 2
    assert len(list((tmp_path / "cache").glob("adder-*.so"))) == 2
    assert not list((tmp_path / "cache").glob("*.so.tmp*")) and len(list((tmp_path / "cache").iterdir())) == 2
    # a header beside the source is part of it: changing the header rebuilds
    (tmp_path / "op.h").write_text("#define OP -\n")
    source.write_text('#include "op.h"\n' + _ADD.replace("a + b", "a OP b"))
    assert compiler.load_c_library.__wrapped__(source).add(5, 3) == 2
    (tmp_path / "op.h").write_text("#define OP *\n")
    assert compiler.load_c_library.__wrapped__(source).add(5, 3) == 15
    assert len(list((tmp_path / "cache").glob("adder-*.so"))) == 4


def test_cpu_arch_builds_for_an_older_cpu(tmp_path, monkeypatch) -> None:
    """POOLKIT_CPU_ARCH builds for another -march (its own cache entry); one the compiler does not
    know falls back to the portable build, as a compiler without -march=native does."""
    if compiler.find_compiler() is None or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 CPU levels, with a C compiler")
    monkeypatch.delenv("POOLKIT_C_KERNELS", raising=False)
    monkeypatch.setenv("POOLKIT_KERNEL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "arch.c"
    source.write_text("int avx512(void) {\n#ifdef __AVX512F__\nreturn 1;\n#else\nreturn 0;\n#endif\n}\n")
    for arch, libraries in (("x86-64-v3", 1), ("x86-64", 2), ("no-such-cpu", 3)):
        monkeypatch.setenv("POOLKIT_CPU_ARCH", arch)
        assert compiler.arch_flags() == (f"-march={arch}",)
        lib = compiler.load_c_library.__wrapped__(source)
        assert lib is not None and lib.avx512() == 0  # none of these has AVX-512
        assert len(list((tmp_path / "cache").glob("arch-*.so"))) == libraries
    monkeypatch.delenv("POOLKIT_CPU_ARCH")
    assert compiler.arch_flags() == ("-march=native",)


def test_a_source_that_does_not_compile_turns_the_kernels_off(tmp_path, monkeypatch, caplog) -> None:
    if compiler.find_compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.delenv("POOLKIT_C_KERNELS", raising=False)
    monkeypatch.setenv("POOLKIT_KERNEL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "broken.c"
    source.write_text("int add(int a, int b) { return a + ; }\n")
    with caplog.at_level("INFO", logger="poolkit.kernels.compiler"):
        assert compiler.load_c_library.__wrapped__(source) is None
    assert "compiled CPU kernels are off" in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written library left behind
    # a missing source (a broken install) or a cache that cannot be written: off as well
    assert compiler.load_c_library.__wrapped__(tmp_path / "missing.c") is None
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("POOLKIT_KERNEL_CACHE", str(tmp_path / "file" / "cache"))
    source.write_text(_ADD)
    assert compiler.load_c_library.__wrapped__(source) is None


def test_switched_off_or_without_a_compiler_the_references_run(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import poolkit
        from poolkit.kernels import elementwise
        rows = [r for r in poolkit.kernel_table(["cpu"]) if r["op"] == "rms_norm"]
        print(elementwise._library() is None, [r["kernel"] for r in rows if r["selected"]])
        """
    )
    base = {k: v for k, v in os.environ.items() if k not in ("CC", "POOLKIT_C_KERNELS")}
    base["POOLKIT_KERNEL_CACHE"] = str(tmp_path / "cache")
    for extra in ({"POOLKIT_C_KERNELS": "0"}, {"CC": "/nonexistent/cc", "PATH": str(tmp_path)}):
        done = subprocess.run([sys.executable, "-c", script], env={**base, **extra}, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "True ['rms_norm:torch']", (extra, done.stdout, done.stderr)
    assert not (tmp_path / "cache").exists()
