"""What the encoders' embeddings share: token-type embeddings, and the limit their position table sets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import InvalidRequest


def check_positions(batch: PackedBatch, max_positions: int) -> None:
    """Refuse a batch whose longest sequence has more tokens than the model has positions.

    Raises:
        InvalidRequest: naming both lengths.
    """
    if batch.max_len > max_positions:
        raise InvalidRequest(
            f"a sequence of {batch.max_len} tokens is longer than the model's {max_positions} positions; truncate the input"
        )


def add_token_types(x: torch.Tensor, batch: PackedBatch, table: nn.Embedding) -> torch.Tensor:
    """``x`` plus each token's type embedding from ``table``: type 0's for every token of a batch
    without type ids (BERT's default)."""
    if batch.token_type_ids is None:
        return x + table.weight[0]
    return x + F.embedding(batch.token_type_ids, table.weight)
