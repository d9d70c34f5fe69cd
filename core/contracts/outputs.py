"""Output objects, shaped like vLLM's so code written for vLLM reads them unchanged."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Generic, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass
class PoolingOutput:
    """The raw result of a pooling task: a tensor (``[H]`` or ``[n_tokens, H]``)."""

    data: torch.Tensor


class EmbeddingOutput:
    """One embedding vector: ``embedding``, a list of floats.

    The outputs of ``LLM.embed`` are made from the run's one ``[N, H]`` result and read their
    floats from its row on first access, so the call hands back ``N`` outputs without making ``N``
    lists of floats first; ``embedding`` reads, compares, prints and pickles as a plain list.
    """

    __slots__ = ("_embedding", "_rows", "_index")

    def __init__(self, embedding: list[float]) -> None:
        self._embedding: list[float] | None = embedding
        self._rows: Any = None
        self._index = 0

    @classmethod
    def of_rows(cls, rows: Any) -> list["EmbeddingOutput"]:
        """One output per row of ``rows`` (a 2-D NumPy array or tensor), each read when first asked."""
        return list(map(_RowEmbedding, itertools.repeat(rows, len(rows)), range(len(rows))))

    @property
    def embedding(self) -> list[float]:
        if self._embedding is None:
            self._embedding = self._rows[self._index].tolist()
            self._rows = None
        return self._embedding

    @embedding.setter
    def embedding(self, value: list[float]) -> None:
        self._embedding, self._rows = value, None

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmbeddingOutput) and self.embedding == other.embedding

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it stands for

    def __repr__(self) -> str:
        return f"EmbeddingOutput(embedding={self.embedding!r})"

    def __reduce__(self) -> tuple:
        return EmbeddingOutput, (self.embedding,)


class _RowEmbedding(EmbeddingOutput):
    """An :class:`EmbeddingOutput` that reads row ``index`` of ``rows`` when first asked."""

    __slots__ = ()

    def __init__(self, rows: Any, index: int) -> None:
        self._embedding = None
        self._rows = rows
        self._index = index


@dataclass
class ClassificationOutput:
    """The classifier's outputs, one per class, and the top label.

    ``probs`` keeps vLLM's name (its ``ClassificationOutput.probs``, the server's ``probs``) for
    compatibility, and holds the logits after the activation in force: probabilities with the
    default (softmax, or sigmoid for one output), raw logits with ``use_activation=False``, the
    identity of a regression model, and whatever a custom ``activation_fn`` returns, which need
    not lie in 0..1 nor sum to 1. ``poolkit info`` shows the activation of each task.
    """

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
class LateChunk:
    """What one late chunk covers: ``token_range`` (start, end) of the prompt's tokens, and
    ``char_range`` (start, end) of its text, ``None`` when the tokens cover no text (special
    tokens, token-id prompts)."""

    token_range: tuple[int, int]
    char_range: tuple[int, int] | None = None


@dataclass
class LateChunkingOutput:
    """The chunks of a late-chunked ``token_embed`` output, one per output row."""

    input_tokens: int
    chunks: list[LateChunk] = field(default_factory=list)


def late_chunking_output(
    input_tokens: int, chunk_size: int, spans: list[tuple[int, int] | None] | None
) -> LateChunkingOutput:
    """The chunks of ``input_tokens`` tokens cut every ``chunk_size``, with the character range
    each covers when the tokens' character ``spans`` are known."""
    chunks = []
    for start in range(0, input_tokens, chunk_size):
        end = min(start + chunk_size, input_tokens)
        covered = [s for s in (spans[start:end] if spans is not None else []) if s is not None]
        char_range = (min(a for a, _ in covered), max(b for _, b in covered)) if covered else None
        chunks.append(LateChunk((start, end), char_range))
    return LateChunkingOutput(input_tokens, chunks)


@dataclass
class PoolingRequestOutput(Generic[T]):
    """The result for one input: its id, its output object and its token ids.

    ``late_chunking`` describes the chunks of a late-chunked request (``None`` otherwise).
    ``truncated`` (poolkit's, not vLLM's) says whether the input was cut to a truncation limit,
    so a caller counts cut inputs from the results themselves.
    """

    request_id: str
    outputs: T
    prompt_token_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    finished: bool = True
    late_chunking: LateChunkingOutput | None = None
    truncated: bool = False


class EmbeddingRequestOutput(PoolingRequestOutput[EmbeddingOutput]):
    """A request output whose ``outputs.embedding`` is a list of floats."""

    @classmethod
    def from_base(cls, base: PoolingRequestOutput[PoolingOutput]) -> "EmbeddingRequestOutput":
        data = base.outputs.data
        if data.ndim != 1:
            raise ValueError(f"an embedding must be one-dimensional, got shape {tuple(data.shape)}")
        return cls(base.request_id, EmbeddingOutput(data.tolist()), base.prompt_token_ids, base.num_cached_tokens,
                   truncated=base.truncated)

    @classmethod
    def from_rows(
        cls, request_ids: Sequence[str], data: torch.Tensor, token_ids: Sequence[list[int]], truncated: Sequence[bool],
        cached: Sequence[int],
    ) -> list["EmbeddingRequestOutput"]:
        """One output per row of a ``[N, H]`` tensor of embeddings, each reading its floats from
        its row when first asked (:class:`EmbeddingOutput`)."""
        if data.ndim != 2:
            raise ValueError(f"an embedding must be one-dimensional, got shape {tuple(data.shape[1:])}")
        rows = data.numpy() if data.dtype in (torch.float32, torch.float64, torch.float16) else data
        return [
            cls(rid, vector, ids, n, truncated=cut)
            for rid, vector, ids, cut, n in zip(request_ids, EmbeddingOutput.of_rows(rows), token_ids, truncated, cached)
        ]


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
        return cls(base.request_id, ClassificationOutput(data.tolist(), label), base.prompt_token_ids, base.num_cached_tokens,
                   truncated=base.truncated)


class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    """A request output whose ``outputs.score`` is a float."""


@dataclass
class RerankResult:
    """One document of a rerank: its position in the input, its text and its score."""

    index: int
    document: str
    relevance_score: float
    #: Whether the (query, document) input was cut to a truncation limit (poolkit's, not vLLM's).
    truncated: bool = False
