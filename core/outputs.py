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
class ClassificationOutput:
    """Class probabilities (or raw logits with ``use_activation=False``) and the top label."""

    probs: list[float]
    label: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.probs)


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


class ClassificationRequestOutput(PoolingRequestOutput[ClassificationOutput]):
    """A request output whose ``outputs.probs`` is a list of floats."""

    @classmethod
    def from_base(
        cls, base: PoolingRequestOutput[PoolingOutput], id2label: dict[int, str] | None = None
    ) -> "ClassificationRequestOutput":
        data = base.outputs.data
        if data.ndim != 1:
            raise ValueError(f"class probabilities must be one-dimensional, got shape {tuple(data.shape)}")
        label = (id2label or {}).get(int(data.argmax())) if data.numel() else None
        return cls(base.request_id, ClassificationOutput(data.tolist(), label), base.prompt_token_ids)


class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    """A request output whose ``outputs.score`` is a float."""


@dataclass
class RerankResult:
    """One document of a rerank: its position in the input, its text and its score."""

    index: int
    document: str
    relevance_score: float
