"""Norms through the kernel ops: RMSNorm (and Gemma's offset one) over the ``rms_norm`` op, which
also adds a pre-norm layer's residual, a post-norm layer's ``norm(x + residual)`` over the
``residual_norm`` op, LayerNorm in float32, and the float32 residual stream of a bf16 model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.plugins.lookup import kernel_for


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least fp32 (fp64 stays fp64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def fp32_layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm in at least fp32, whatever the weights' dtype: with bf16 weights the residual
    stream stays fp32 and only the matmuls run in bf16 (mixed precision)."""
    x = at_least_float32(x)
    return F.layer_norm(x, x.shape[-1:], norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps)


def post_norm(
    module: nn.Module, x: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(x + residual)`` of a post-norm layer through the ``residual_norm`` kernel op: the
    residual stream in at least fp32 and the same in the weights' dtype, the next matmul's input.

    Args:
        module: the module asking (its kernels are looked up once, :func:`~poolkit.plugins.lookup.kernel_for`).
        x: a sublayer's output; residual: the residual stream, or ``None`` (an embeddings' norm).
        norm: an ``nn.LayerNorm`` or an :class:`RMSNorm`.
    """
    op = kernel_for(module, "residual_norm", x.device)
    return op(x, residual, norm.weight, getattr(norm, "bias", None), norm.eps, not isinstance(norm, nn.LayerNorm))


def residual_stream(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a pre-norm model's residual stream: float32 when ``x`` is narrower.

    In bf16 each layer's residual add rounds the stream to 8 bits of mantissa, and 28 of them
    cost Qwen3-0.6B's embeddings most of their parity (least cosine to float32 0.99987; with a
    float32 stream 0.99992, the matmuls in bf16 alike). The stream's norms read it in float32
    anyway and write the sublayers' inputs in the model's dtype, so only the adds widen.
    """
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and scaled in the input's dtype, as transformers
    does; through the ``rms_norm`` kernel op, which also adds a pre-norm layer's residual
    (:meth:`add`) in the same pass."""

    #: Scale by ``1 + weight`` in float32 (Gemma's norms) instead of ``weight``.
    offset = False

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernel_for(self, "rms_norm", x.device)(x, self.weight, self.eps, self.offset)[1]

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x + residual, norm(x + residual))``: a pre-norm layer's residual add and its next norm."""
        return kernel_for(self, "rms_norm", x.device)(x, self.weight, self.eps, self.offset, residual)


class OffsetRMSNorm(RMSNorm):
    """Gemma's RMSNorm: scaled by ``1 + weight`` (weights stored centred on 0), computed and scaled
    in float32 and only then cast to the input's dtype, as transformers' ``GemmaRMSNorm`` does."""

    offset = True

    def __init__(self, size: int, eps: float) -> None:
        super().__init__(size, eps)
        nn.init.zeros_(self.weight)
