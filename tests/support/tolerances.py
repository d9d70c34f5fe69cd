"""Tolerances that follow from the arithmetic, not from one CPU.

BLAS libraries pick their kernels, blocking and summation order by the CPU's instruction set and
by the shape of each call, so two fp32 results of the same products may differ in their last
bits. How far is bounded: a recursive sum of K rounded products is within (K + 1)·u·Σ|terms| of
the exact value in any order, blocked or not (Higham, *Accuracy and Stability of Numerical
Algorithms*, §3.1), so two orders differ by at most twice that. Tests that compare two fp32
paths use these bounds instead of a constant that one CPU happened to meet.
"""

from __future__ import annotations

import torch

#: fp32's unit roundoff.
U32 = 2.0**-24


def order_bound(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """How far two fp32 summation orders of ``x @ w.T (+ bias)`` can be apart, elementwise."""
    terms = x.double().abs() @ w.double().abs().T
    if bias is not None:
        terms = terms + bias.double().abs()
    return 2 * (x.shape[-1] + 2) * U32 * terms


def assert_within_order_bound(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor) -> None:
    """``got`` and ``want`` differ by no more than ``bound`` anywhere."""
    excess = (got.double() - want.double()).abs() - bound
    worst = int(excess.argmax())
    assert excess.max() <= 0, f"differs by {excess.flatten()[worst] + bound.flatten()[worst]:.3g} > bound {bound.flatten()[worst]:.3g}"


#: The steepest slope of the activations (GELU's, about 1.129): how far an input's move carries.
ACT_SLOPE = 1.13

#: How far oneDNN's fp32 activations may be from the exact function, relative to the result: the
#: thresholds of oneDNN's own eltwise tests (benchdnn's ``eltwise.cpp``), 4e-5 for the ones it
#: approximates (tanh, the tanh GELU, swish) and 4e-6 for the rest. Which approximation runs
#: depends on the CPU: one machine meets ~1 ulp, another was seen 4.8e-5 off on a tanh near -1.
ONEDNN_ACT_ERROR = {"none": 0.0, "relu": 0.0, "gelu": 4e-6, "sigmoid": 4e-6, "gelu_tanh": 4e-5, "silu": 4e-5, "tanh": 4e-5}


def _activation_error(act: str, z: torch.Tensor) -> torch.Tensor:
    """:data:`ONEDNN_ACT_ERROR` of ``act`` at the exact inputs ``z``: relative above 1e-5 in magnitude,
    absolute below (as benchdnn measures it)."""
    from poolkit.kernels.linear import ACTIVATIONS

    return ONEDNN_ACT_ERROR[act] * ACTIVATIONS[act](z).abs().clamp(min=1e-5)


def linear_act_bound(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str = "none") -> torch.Tensor:
    """:func:`order_bound` carried through the activation ``act`` (a name of the linear kernels'
    activations), plus the reference activation's own rounding (it is computed as ``z·g(z)`` with
    ``g`` good to a few ulps, so within 16 ulps of ``|z|``) and oneDNN's (:data:`ONEDNN_ACT_ERROR`)."""
    z = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    return ACT_SLOPE * order_bound(x, w, b) + 16 * U32 * z.abs() + _activation_error(act, z)


def gated_linear_bound(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str, gate_first: bool = True) -> torch.Tensor:
    """The bound of ``act(gate) * up`` over the two halves of a linear layer: each factor's move
    times the other factor, and the product's own rounding."""
    from poolkit.kernels.linear import ACTIVATIONS

    z = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    moved = order_bound(x, w, b)
    (gate, up), (gate_moved, up_moved) = z.chunk(2, -1), moved.chunk(2, -1)
    if not gate_first:
        gate, up, gate_moved, up_moved = up, gate, up_moved, gate_moved
    activated = ACTIVATIONS[act](gate).abs()
    gate_error = ACT_SLOPE * gate_moved + 16 * U32 * gate.abs() + _activation_error(act, gate)
    return up.abs() * gate_error + activated * up_moved + 4 * U32 * activated * up.abs()


#: The issue's bf16 bar for vision-language models: cosine ≥ 0.9999 to the fp32 reference.
BF16_BAR = 1e-4


def cosine_errors(rows: list[torch.Tensor], want: list[torch.Tensor]) -> torch.Tensor:
    """``1 - cos`` of each row (a pooled vector, or each token's of a multi-vector output) to its reference."""
    return torch.cat([
        (1 - torch.nn.functional.cosine_similarity(torch.as_tensor(g).float().reshape(-1, w.shape[-1]), w.float().reshape(-1, w.shape[-1]), dim=-1))
        for g, w in zip(rows, want)
    ])


def assert_bf16_as_close_as_the_reference(ours: list, theirs: list, want: list, slack: float = 1.25) -> None:
    """poolkit's bf16 outputs (``ours``) against the fp32 reference (``want``): their mean cosine error
    within the bar of 0.9999, or, where transformers' own bf16 model (``theirs``) does not meet that bar
    itself, within ``slack`` times its mean error. Tiny random models amplify rounding far more than
    trained checkpoints do, so the reference's own bf16 error is the bound the arithmetic allows; the
    mean, not the worst row, since which row rounds worst is chance."""
    mine, reference = cosine_errors(ours, want).mean(), cosine_errors(theirs, want).mean()
    bound = max(BF16_BAR, slack * float(reference))
    assert mine <= bound, f"poolkit's bf16 mean cosine error {float(mine):.2e} > {bound:.2e} (transformers' own bf16: {float(reference):.2e})"
