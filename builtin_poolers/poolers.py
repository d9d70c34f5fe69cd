"""The built-in pooling methods, over packed hidden states.

All sequence poolers honour ``batch.pool_mask`` (tokens a sentence-transformers config with
``include_prompt=false`` leaves out) and accumulate sums in fp32. Mean, max and mean-sqrt-len
pooling of whole sequences run through the device's ``segment_pool`` kernel.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.pooling import Pooler
from poolkit.plugins.lookup import kernel_for


def _kept(hidden: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Hidden rows that pooling uses, their sequence ids, and the mask that chose them."""
    mask = batch.pool_mask
    if mask is None:
        return hidden, batch.seq_ids, None
    return hidden[mask], batch.seq_ids[mask], mask


def _segment_sum(values: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int) -> torch.Tensor:
    out = torch.zeros(num_seqs, values.shape[-1], dtype=torch.float32, device=values.device)
    return out.index_add_(0, seq_ids, values.float())


def _counts(batch: PackedBatch, seq_ids: torch.Tensor) -> torch.Tensor:
    if batch.pool_mask is None:
        return batch.lens.float()
    counts = torch.bincount(seq_ids, minlength=batch.num_seqs).float()
    return counts.clamp(min=1.0)


class ClsPooler(Pooler):
    """The first token of each sequence (the first one after an excluded prompt)."""

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        index = batch.first_indices
        if batch.pool_skip is not None:
            skip = torch.tensor(batch.pool_skip, device=hidden.device)
            index = index + torch.where(batch.lens > skip, skip, 0)
        return hidden[index]


class LastPooler(Pooler):
    """The last token of each sequence."""

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return hidden[batch.last_indices]


class SegmentPooler(Pooler):
    """A reduction over each sequence's tokens (``mode`` of the ``segment_pool`` kernel, looked up
    once per pooler and device)."""

    mode: ClassVar[str]

    def pooled(self, hidden: torch.Tensor, batch: PackedBatch, normalize: bool = False) -> torch.Tensor:
        """``[B, H]`` fp32 pooled rows of whole sequences (no ``pool_mask``), L2-normalised on request."""
        return kernel_for(self, "segment_pool", hidden.device)(hidden, batch.cu_seqlens, self.mode, normalize)

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        if batch.pool_mask is None:
            return self.pooled(hidden, batch)
        return self.masked(hidden, batch)

    def masked(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """The pooled rows when ``batch.pool_mask`` leaves some tokens out."""
        raise NotImplementedError


class MeanPooler(SegmentPooler):
    """The mean of each sequence's token vectors."""

    mode = "mean"

    def masked(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        values, seq_ids, _ = _kept(hidden, batch)
        return _segment_sum(values, seq_ids, batch.num_seqs) / _counts(batch, seq_ids).unsqueeze(1)


class MeanSqrtLenPooler(SegmentPooler):
    """The sum of token vectors divided by the square root of the token count."""

    mode = "mean_sqrt_len"

    def masked(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        values, seq_ids, _ = _kept(hidden, batch)
        return _segment_sum(values, seq_ids, batch.num_seqs) / _counts(batch, seq_ids).sqrt().unsqueeze(1)


class WeightedMeanPooler(Pooler):
    """Mean weighted by position (1, 2, 3, ...), as sentence-transformers' ``weightedmean``."""

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        values, seq_ids, mask = _kept(hidden, batch)
        positions = batch.positions if mask is None else batch.positions[mask]
        weights = (positions + 1).float().unsqueeze(1)
        total = _segment_sum(values.float() * weights, seq_ids, batch.num_seqs)
        norm = torch.zeros(batch.num_seqs, 1, device=hidden.device).index_add_(0, seq_ids, weights)
        return total / norm.clamp(min=1e-9)


class MaxPooler(SegmentPooler):
    """The element-wise maximum over each sequence's token vectors."""

    mode = "max"

    def masked(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        values, seq_ids, _ = _kept(hidden, batch)
        out = torch.full((batch.num_seqs, hidden.shape[-1]), float("-inf"), dtype=hidden.dtype, device=hidden.device)
        index = seq_ids.unsqueeze(1).expand(-1, hidden.shape[-1])
        return out.scatter_reduce_(0, index, values, reduce="amax")


class AllPooler(Pooler):
    """Every token vector of each sequence (token granularity)."""

    granularity = "token"

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> list[torch.Tensor]:
        return batch.split(hidden)


class StepPooler(AllPooler):
    """Every token, for process reward models: the token head keeps the step-tag rows.

    Which rows (``step_tag_id``) and columns (``returned_token_ids``) are kept is a per-request
    parameter, applied by the ``token_classify`` head.
    """


@hookimpl
def poolkit_register_poolers(register):
    register("CLS", ClsPooler)
    register("LAST", LastPooler)
    register("MEAN", MeanPooler)
    register("MEAN_SQRT_LEN", MeanSqrtLenPooler)
    register("WEIGHTEDMEAN", WeightedMeanPooler)
    register("MAX", MaxPooler)
    register("ALL", AllPooler)
    register("STEP", StepPooler)
