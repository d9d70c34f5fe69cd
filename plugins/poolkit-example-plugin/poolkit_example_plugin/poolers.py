"""A sequence pooler and an activation, written against poolkit's Pooler contract."""

from __future__ import annotations

import torch

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.pooling import Pooler


class FirstLastAvgPooler(Pooler):
    """The mean of each sequence's first and last token vectors, in fp32.

    Tokens that pooling leaves out (an instruction prompt excluded by the model's
    sentence-transformers config) are skipped at the start, as the built-in ``CLS`` does.
    """

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        first = batch.first_indices
        if batch.pool_skip is not None:
            skip = torch.tensor(batch.pool_skip, device=hidden.device)
            first = first + torch.where(batch.lens > skip, skip, 0)
        return (hidden[first].float() + hidden[batch.last_indices].float()) / 2


def tanh(x: torch.Tensor) -> torch.Tensor:
    """Element-wise hyperbolic tangent: squashes scores into (-1, 1)."""
    return torch.tanh(x)
