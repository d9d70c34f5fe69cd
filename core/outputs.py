"""Output objects, shaped like vLLM's so code written for vLLM reads them unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


@dataclass
class PoolingOutput:
    """The raw result of a pooling task: a tensor (``[H]`` or ``[n_tokens, H]``)."""

    data: torch.Tensor


@dataclass
class EmbeddingOutput:
    """One embedding vector."""

    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class ScoringOutput:
    """One similarity or relevance score."""

    score: float


@dataclass
class PoolingRequestOutput(Generic[T]):
    """The result for one input: its id, its output object and its token ids."""

    request_id: str
    outputs: T
    prompt_token_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    finished: bool = True


class EmbeddingRequestOutput(PoolingRequestOutput[EmbeddingOutput]):
    """A request output whose ``outputs.embedding`` is a list of floats."""

    @classmethod
    def from_base(cls, base: PoolingRequestOutput[PoolingOutput]) -> "EmbeddingRequestOutput":
        data = base.outputs.data
        if data.ndim != 1:
            raise ValueError(f"an embedding must be one-dimensional, got shape {tuple(data.shape)}")
        return cls(base.request_id, EmbeddingOutput(data.tolist()), base.prompt_token_ids)


class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    """A request output whose ``outputs.score`` is a float."""
