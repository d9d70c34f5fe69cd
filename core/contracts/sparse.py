"""Sparse embeddings (SPLADE): the non-zero vocabulary weights of a dense ``[vocab]`` vector.

A SPLADE model's ``sparse_embed`` (and ``embed``) result is a dense vector as wide as the
vocabulary with a few dozen non-zero entries. :class:`SparseEmbedding` keeps only those, strongest
first, optionally pruned to the ``top_k`` strongest or to those of at least ``threshold``, with
the vocabulary tokens they stand for: the ``{indices, values}`` shape sparse vector stores
(Qdrant, Elasticsearch, OpenSearch, Milvus) take.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import InvalidRequest
from .outputs import PoolingOutput, PoolingRequestOutput

if TYPE_CHECKING:
    from .model import Tokenizer


def check_pruning(top_k: Any = None, threshold: Any = None) -> None:
    """Validate ``top_k`` / ``threshold`` before any work is done.

    Raises:
        InvalidRequest: ``top_k`` is not a positive integer or ``threshold`` not a finite number.
    """
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise InvalidRequest(f"top_k must be a positive integer, got {top_k!r}")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold)
    ):
        raise InvalidRequest(f"threshold must be a finite number, got {threshold!r}")


@dataclass(frozen=True)
class SparseEmbedding:
    """Vocabulary ids and their weights, strongest first.

    Attributes:
        indices: vocabulary ids (token ids) with a non-zero weight.
        values: their weights, in the same order, descending.
        tokens: the vocabulary tokens of ``indices`` when a tokenizer was given, else ``None``.

    Example:
        >>> (out,) = llm.encode("The capital of France is Paris.", pooling_task="sparse_embed")
        >>> sparse = SparseEmbedding.from_dense(out.outputs.data, top_k=3, tokenizer=llm.get_tokenizer())
        >>> sparse.tokens
        ['capital', 'paris', 'france']
    """

    indices: list[int]
    values: list[float]
    tokens: list[str] | None = None

    @classmethod
    def from_dense(
        cls,
        vector: Any,
        top_k: int | None = None,
        threshold: float | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> "SparseEmbedding":
        """The non-zero entries of a dense vector, sorted by weight (descending, ties by id).

        Args:
            vector: a one-dimensional tensor, array or list (``[vocab]``).
            top_k: keep at most this many entries, the strongest.
            threshold: drop entries whose weight is below this.
            tokenizer: a Hugging Face tokenizer; fills ``tokens`` (``convert_ids_to_tokens``).

        Raises:
            InvalidRequest: the vector is not one-dimensional, or ``top_k`` / ``threshold`` is
                invalid.
        """
        check_pruning(top_k, threshold)
        dense = torch.as_tensor(vector).detach()
        if dense.ndim != 1:
            raise InvalidRequest(f"a sparse embedding is made from a one-dimensional vector, got shape {tuple(dense.shape)}")
        dense = dense.float().cpu()
        keep = dense != 0
        if threshold is not None:
            keep &= dense >= threshold
        indices = keep.nonzero().flatten()
        values = dense[indices]
        # Stable descending sort of values over ascending ids: ties stay in id order.
        order = torch.sort(values, descending=True, stable=True).indices
        if top_k is not None:
            order = order[: int(top_k)]
        ids = indices[order].tolist()
        tokens = list(tokenizer.convert_ids_to_tokens(ids)) if tokenizer is not None else None
        return cls(ids, values[order].tolist(), tokens)

    def __len__(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"indices": [...], "values": [...]}`` (plus ``"tokens"`` when known)."""
        out: dict[str, Any] = {"indices": list(self.indices), "values": list(self.values)}
        if self.tokens is not None:
            out["tokens"] = list(self.tokens)
        return out

    def to_token_weights(self) -> dict[str, float]:
        """``{token: weight}``; needs ``tokens`` (build with a tokenizer)."""
        if self.tokens is None:
            raise InvalidRequest("token weights need the tokens: build the SparseEmbedding with a tokenizer")
        return dict(zip(self.tokens, self.values))

    def to_dense(self, size: int) -> torch.Tensor:
        """The fp32 ``[size]`` vector back, zeros where no entry is kept."""
        dense = torch.zeros(size, dtype=torch.float32)
        if self.indices:
            dense[torch.tensor(self.indices)] = torch.tensor(self.values, dtype=torch.float32)
        return dense


class SparseEmbeddingRequestOutput(PoolingRequestOutput[SparseEmbedding]):
    """A request output whose ``outputs`` is a :class:`SparseEmbedding`."""

    @classmethod
    def from_base(
        cls,
        base: PoolingRequestOutput[PoolingOutput],
        top_k: int | None = None,
        threshold: float | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> "SparseEmbeddingRequestOutput":
        sparse = SparseEmbedding.from_dense(base.outputs.data, top_k=top_k, threshold=threshold, tokenizer=tokenizer)
        return cls(base.request_id, sparse, base.prompt_token_ids)

