"""The CUDA kernels of the elementwise ops (``poolkit.kernels.fused``: residual_norm, rms_norm,
rotary, gated_linear in Triton) against their torch references and the float64 result, in
Triton's interpreter on the CPU (compiled on the GPU when the suite runs there), and the native
families that use them giving the same outputs.

float32 calls equal the reference to float32 rounding. In bf16 the kernels compute in float32
and round once where the reference may round twice, so they are held to the reference's own
distance from the float64 result plus one bf16 step of each value. Triton's interpreter rounds
float32 to bf16 by truncation (the GPU to nearest), a whole step where the GPU costs half: there
the allowance is two steps. Where a kernel's rounded sum feeds its norm, the norm is checked
against the reference's norm of that same sum.
"""

from __future__ import annotations

import textwrap

import pytest
from suite_device import run_triton_script

pytest.importorskip("triton")

COMMON = textwrap.dedent(
    """
    import torch
    from poolkit.kernels import fused
    from poolkit.kernels.elementwise import residual_norm, rms_norm, rotary
    from poolkit.kernels.linear import ACTIVATIONS, gated_linear

    BF16_ULP = 2.0 ** -7
    # Rounding to nearest costs half a step, truncation (the interpreter's) a whole one: with two
    # roundings in a kernel (rms_norm's normed value and its product by the weight), two steps.
    STEPS = 2 if fused.interpreting() else 1

    def rand(*shape, seed=0, scale=1.0, shift=0.0):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(*shape, generator=g) * scale + shift

    def within_rounding(ours, reference, exact, what):
        # at least as close to exact as the reference, up to one bf16 rounding of each value
        ours, reference, exact = ours.double(), reference.double(), exact.double()
        slack = exact.abs() * BF16_ULP * STEPS + 1e-6
        assert ((ours - exact).abs() <= (reference - exact).abs() + slack).all(), what
        assert (ours - reference).abs().max() <= (2 * slack).max(), what

    def close32(ours, reference, what):
        assert ours.dtype == reference.dtype and ours.shape == reference.shape, what
        torch.testing.assert_close(ours, reference, atol=2e-6, rtol=2e-6, msg=what)
    """
)


def assert_script_passes(body: str, wrap_on: str | None = None) -> None:
    """Run a check script (its own asserts) on the suite's device; it must end with its "ok"."""
    result = run_triton_script(COMMON + textwrap.dedent(body) + '\nprint("ok")\n', wrap_on=wrap_on)
    assert result.returncode == 0 and result.stdout.rstrip().endswith("ok"), result.stderr[-3000:]


def test_rms_norm_triton_with_and_without_residual_on_strided_heads() -> None:
    """Qwen3's q/k norms read per-head rows in place from the packed qkv projection; a pre-norm
    layer's residual add comes back as ``total`` beside the norm."""
    assert_script_passes(
        """
        qkv = rand(11, 4 * 32 + 2 * 2 * 32, scale=3.0, shift=0.5)
        for dtype in (torch.float32, torch.bfloat16):
            q = qkv.to(dtype)[:, : 4 * 32].view(11, 4, 32)
            flat = rand(11, 96, seed=4, scale=3.0).to(dtype)
            for x in (q, flat):
                n = x.shape[-1]
                for offset in (False, True):
                    weight = (rand(n, seed=2) * 0.2 + (0.0 if offset else 1.0)).to(dtype)
                    # a float32 residual stream beside a bf16 sublayer's output: the sum stays float32
                    for residual in (None, rand(*x.shape, seed=1).to(dtype), rand(*x.shape, seed=1)):
                        what = f"{dtype} {tuple(x.shape)} offset={offset} residual={None if residual is None else residual.dtype}"
                        total, out = fused.rms_norm_triton(x, weight, 1e-6, offset, residual)
                        ref_total, ref_out = rms_norm(x, weight, 1e-6, offset, residual)
                        assert out.dtype == ref_out.dtype == x.dtype and out.shape == x.shape, what
                        assert total.dtype == ref_total.dtype, what
                        if residual is None:
                            assert total is x, what
                        if residual is not None and residual.dtype != dtype:
                            close32(total, ref_total, what)
                            within_rounding(out, ref_out, rms_norm(ref_total.double(), weight.double(), 1e-6, offset)[1], what)
                            continue
                        if dtype == torch.float32:
                            close32(total, ref_total, what)
                            close32(out, ref_out, what)
                            continue
                        within_rounding(total, ref_total, ref_total.double() if residual is None
                                        else x.double() + residual.double(), what)
                        # the norm of the kernel's own sum
                        exact = rms_norm(total.double(), weight.double(), 1e-6, offset)[1]
                        within_rounding(out, rms_norm(total, weight, 1e-6, offset)[1], exact, what)
        """
    )


def test_residual_norm_triton_writes_the_wide_stream_and_its_low_copy() -> None:
    """A post-norm encoder's ``LayerNorm(x + residual)`` (or RMSNorm) with the float32 residual
    stream and the bf16 copy for the next matmul, from one pass."""
    assert_script_passes(
        """
        for n in (48, 384, 1000):
            x, residual = rand(29, n, scale=2.0), rand(29, n, seed=1, shift=3.0)
            for dtype in (torch.float32, torch.bfloat16):
                weight, bias = (rand(n, seed=2) * 0.1 + 1).to(dtype), (rand(n, seed=3) * 0.1).to(dtype)
                for rms in (False, True):
                    b = None if rms else bias
                    for res in (residual, None):  # the stream is float32; an embeddings' norm has none
                        what = f"n={n} {dtype} rms={rms} residual={res is not None}"
                        xs = x.to(dtype)
                        wide, low = fused.residual_norm_triton(xs, res, weight, b, 1e-5, rms)
                        ref_wide, ref_low = residual_norm(xs, res, weight, b, 1e-5, rms)
                        assert wide.dtype == torch.float32 and low.dtype == dtype, what
                        close32(wide, ref_wide, what)
                        if dtype == torch.float32:
                            assert low is wide, what
                        else:
                            exact = residual_norm(xs.double(), None if res is None else res.double(), weight.double(),
                                                  None if b is None else b.double(), 1e-5, rms)[0]
                            within_rounding(low, ref_low, exact, what)
        """
    )


@pytest.mark.parametrize("wrap_on", [None, "cpu"])
def test_rotary_triton_rotates_heads_in_place_views_and_partial_dimensions(wrap_on: str | None) -> None:
    """q and k as strided ``[T, H, d]`` views of the packed projection (or both as one
    ``[T, 2, H, d]`` view); all or part of each head rotated (the rest copied through); a layout
    whose rows of a token are not equally spaced goes to the reference. ``wrap_on="cpu"`` runs the
    same check through the GPU suite's wrapper (arguments moved as views of their storages, in-place
    writes and returned arguments brought back), so the wrapper's own code runs without a GPU."""
    assert_script_passes(
        wrap_on=wrap_on,
        body="""
        T, H, D = 13, 3, 64
        for dtype in (torch.float32, torch.bfloat16):
            qkv = rand(T, 3 * H * D, scale=2.0).to(dtype)
            q = qkv[:, : H * D].view(T, H, D)
            assert not q.is_contiguous()
            angles = rand(T, D // 2, seed=5) * 10
            for r in (D, D // 2, 20):
                a = torch.cat((angles[:, : r // 2], angles[:, : r // 2]), -1)
                cos, sin = a.cos().to(dtype), a.sin().to(dtype)
                what = f"{dtype} r={r}"
                out = fused.rotary_triton(q, cos, sin)
                assert out.shape == q.shape and out.is_contiguous() and out.dtype == dtype, what
                assert torch.equal(out[..., r:], q[..., r:]), what
                if dtype == torch.float32:
                    close32(out, rotary(q, cos, sin), what)
                else:
                    within_rounding(out, rotary(q, cos, sin), rotary(q.double(), cos.double(), sin.double()), what)
            # GTE / NomicBERT rotate q and k together, a [T, 2, H, d] view: one run of rows a token
            qk = qkv[:, : 2 * H * D].view(T, 2, H, D)
            out = fused.rotary_triton(qk, cos, sin)
            if dtype == torch.float32:
                close32(out, rotary(qk, cos, sin), "q and k")
            else:
                within_rounding(out, rotary(qk, cos, sin), rotary(qk.double(), cos.double(), sin.double()), "q and k")
            # q and v (every other third of qkv): a token's rows are not equally spaced, the reference's answer
            qv = qkv.view(T, 3, H, D)[:, ::2]
            assert torch.equal(fused.rotary_triton(qv, cos, sin), rotary(qv, cos, sin))
        """
    )


def test_gated_linear_triton_every_activation_either_half_first() -> None:
    assert_script_passes(
        """
        for dtype in (torch.float32, torch.bfloat16):
            x = rand(2, 5, 32).to(dtype)
            weight, bias = (rand(80, 32, seed=1) / 6).to(dtype), rand(80, seed=2).to(dtype)
            for act in ACTIVATIONS:
                for gate_first in (True, False):
                    for b in (bias, None):
                        what = f"{dtype} {act} gate_first={gate_first} bias={b is not None}"
                        out = fused.gated_linear_triton(x, weight, b, act, gate_first)
                        ref = gated_linear(x, weight, b, act, gate_first)
                        assert out.shape == ref.shape == (2, 5, 40) and out.dtype == dtype, what
                        if dtype == torch.float32:
                            close32(out, ref, what)
                        else:
                            # from the same bf16 matmul output: one rounding of act(gate) * up
                            wide = torch.nn.functional.linear(x, weight, b).double()
                            first, second = wide.chunk(2, dim=-1)
                            gate, up = (first, second) if gate_first else (second, first)
                            within_rounding(out, ref, ACTIVATIONS[act](gate) * up, what)
        """
    )


def test_the_kernels_hand_what_they_do_not_take_to_the_reference() -> None:
    """Autograd and float64 are the reference's."""
    assert_script_passes(
        """
        x = rand(4, 16)
        w = torch.ones(16)
        x64 = x.double()
        assert torch.equal(fused.rms_norm_triton(x64, w.double(), 1e-6)[1], rms_norm(x64, w.double(), 1e-6)[1])
        g = x.clone().requires_grad_()
        total, out = fused.rms_norm_triton(g, w, 1e-6)
        out.sum().backward()  # the reference's graph
        assert g.grad is not None
        w64 = rand(8, 16, seed=1).double()
        assert torch.equal(fused.gated_linear_triton(x64, w64, None, "silu"), gated_linear(x64, w64, None, "silu"))
        """
    )


def test_qwen3_and_bert_forward_through_the_triton_kernels(tmp_path) -> None:
    """Every native family reaches these ops through the kernel registry: with the CUDA choice
    made for the CPU (the interpreter), a tiny Qwen3 (q/k norms, rotary, SwiGLU, pre-norm residual
    adds) and a tiny BERT (post-norm residual LayerNorms) embed as with the references. The models
    stay on the CPU on a GPU machine too: there the kernels' wrappers carry their tensors over."""
    from tiny_models import build_encoder, build_qwen

    qwen = build_qwen(tmp_path / "qwen3", "qwen3")
    bert = build_encoder(tmp_path / "bert", "bert")
    assert_script_passes(
        f"""
        import poolkit
        from poolkit.plugins import lookup

        texts = ["a short text", "and a somewhat longer one, to pack two sequences of other lengths"]
        expected = {{}}
        for name, path in (("qwen3", {str(qwen)!r}), ("bert", {str(bert)!r})):
            expected[name] = torch.tensor([o.outputs.embedding for o in poolkit.LLM(path, dtype="float32", device="cpu").embed(texts)])

        TRITON = {{"rms_norm": fused.rms_norm_triton, "residual_norm": fused.residual_norm_triton,
                   "rotary": fused.rotary_triton, "gated_linear": fused.gated_linear_triton}}
        chosen = lookup.select_kernel
        used = set()
        def select(op, device):
            if op in TRITON:
                used.add(op)
                return TRITON[op]
            return chosen(op, device)
        lookup.select_kernel = select

        for name, path in (("qwen3", {str(qwen)!r}), ("bert", {str(bert)!r})):
            got = torch.tensor([o.outputs.embedding for o in poolkit.LLM(path, dtype="float32", device="cpu").embed(texts)])
            torch.testing.assert_close(got, expected[name], atol=1e-5, rtol=1e-5, msg=name)
        assert used == set(TRITON), used
        """
    )
