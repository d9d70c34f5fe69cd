"""One API call around its run, shared by :class:`~poolkit.api.llm.LLM` and :class:`~poolkit.api.async_llm.AsyncLLM`.

A call builds its request record, passes the renderer's door (:meth:`LLM.render`), runs, and makes
the run's results into vLLM's output objects. The two classes differ in the run only (the engine at
once, or the batcher awaited), so what comes before and after it lives here, once: the task
``encode`` runs, each method's outputs, and ``rerank``'s checks and ranking.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import torch

from ..contracts.errors import InvalidRequest
from ..contracts.model import ModelInfo, Tokenizer
from ..contracts.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    RerankResult,
    ScoringRequestOutput,
    late_chunking_output,
)
from ..contracts.sparse import SparseEmbeddingRequestOutput
from ..inputs.pairs import score_side
from ..inputs.request import Rendered
from ..runtime.columns import Results

if TYPE_CHECKING:
    from ..runtime.engine import Engine

logger = logging.getLogger(__name__)


class Tasks(Protocol):
    """What :func:`encode_task` reads of the :class:`~poolkit.api.llm.LLM` (which imports this module)."""

    @property
    def model(self) -> ModelInfo: ...

    @property
    def default_task(self) -> str | None: ...

    @property
    def plugin_task(self) -> str | None: ...


def encode_task(llm: Tasks, prompts: Any, pooling_task: str | None, caller: str = "LLM") -> str:
    """The task ``encode`` runs: ``pooling_task``, or the model's default task with vLLM's warning.

    Raises:
        InvalidRequest: no task given and the model supports none, or a ``{"data": ...}`` prompt
            (an IO processor plugin's) for a task other than the plugin's.
    """
    if pooling_task is None:
        pooling_task = llm.default_task
        if pooling_task is None:
            raise InvalidRequest(f"model '{llm.model.name}' supports no pooling task; pass pooling_task")
        logger.warning(
            "%s.encode() without pooling_task runs the model's default task '%s'; set pooling_task "
            "(or call the task's own method) to choose", caller, pooling_task,
        )
    plugin = llm.plugin_task
    if pooling_task != plugin and isinstance(prompts, dict) and "data" in prompts:
        raise InvalidRequest(f"The 'data' field is only supported for the '{plugin}' pooling task.")
    return pooling_task


def pooling_outputs(request_ids: Sequence[str], results: Results, rendered: Rendered, engine: Engine) -> list[PoolingRequestOutput[PoolingOutput]]:
    """``encode``'s outputs: each input's tensor in ``outputs.data``, and its late chunks' spans
    where its parameters asked for late chunking."""
    outputs = [
        PoolingRequestOutput(rid, PoolingOutput(data), ids, num_cached_tokens=cached, truncated=cut)
        for rid, data, ids, cut, cached in zip(
            request_ids, results.rows(), results.token_ids, results.truncated.tolist(), results.cached.tolist()
        )
    ]
    if late_chunked(rendered):
        for prompt, p, out in zip(rendered.prompts, rendered.params, outputs):
            if p.late_chunking_params is not None:
                spans = engine.char_spans(prompt, out.prompt_token_ids)
                out.late_chunking = late_chunking_output(len(out.prompt_token_ids), p.late_chunking_params.chunk_size, spans)
    return outputs


def late_chunked(rendered: Rendered) -> bool:
    """Whether a prompt of ``rendered`` asks for late chunking, whose spans :func:`pooling_outputs`
    reads with the tokenizer."""
    return any(p.late_chunking_params is not None for p in rendered.params)


def embedding_outputs(request_ids: Sequence[str], results: Results) -> list[EmbeddingRequestOutput]:
    """``embed``'s outputs: one embedding per input, read from one tensor of rows where the results are one."""
    if isinstance(results.data, torch.Tensor):  # one tensor of rows: the floats read in one call
        return EmbeddingRequestOutput.from_rows(
            request_ids, results.data, results.token_ids, results.truncated.tolist(), results.cached.tolist()
        )
    return [
        EmbeddingRequestOutput.from_base(PoolingRequestOutput(rid, PoolingOutput(data), ids, n, truncated=cut))
        for rid, data, ids, cut, n in zip(request_ids, results.data, results.token_ids, results.truncated.tolist(), results.cached.tolist())
    ]


def classification_outputs(
    outputs: Sequence[PoolingRequestOutput[PoolingOutput]], id2label: dict[int, str] | None
) -> list[ClassificationRequestOutput]:
    """``classify``'s outputs: each input's class probabilities, the top class named by the model's ``id2label``."""
    return [ClassificationRequestOutput.from_base(o, id2label) for o in outputs]


def sparse_outputs(
    outputs: Sequence[PoolingRequestOutput[PoolingOutput]], top_k: int | None, threshold: float | None, tokenizer: Tokenizer | None
) -> list[SparseEmbeddingRequestOutput]:
    """``sparse_embed``'s outputs: each dense ``[vocab]`` vector as its strongest weights, pruned to
    ``top_k`` and ``threshold``, with the vocabulary's tokens where a ``tokenizer`` is given."""
    return [SparseEmbeddingRequestOutput.from_base(o, top_k, threshold, tokenizer) for o in outputs]


def rerank_documents(query: Any, documents: Sequence[Any], top_n: int | None) -> list[Any]:
    """``rerank``'s documents as a score side (:func:`poolkit.inputs.pairs.score_side`), its query and ``top_n`` checked.

    Raises:
        InvalidRequest: a query that is neither a text nor an input with images, documents of
            another shape, or a ``top_n`` that is not a positive integer.
    """
    if not isinstance(query, str) and not (isinstance(query, dict) and "content" in query):
        raise InvalidRequest(f"query must be a string or an input with images ({{'content': [...]}}), got {type(query).__name__}")
    docs = score_side(documents, "document")
    if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
        raise InvalidRequest(f"top_n must be a positive integer, got {top_n!r}")
    return docs


def ranked(documents: Sequence[Any], scores: Sequence[ScoringRequestOutput], top_n: int | None) -> list[RerankResult]:
    """The documents by their scores, best first, each with its original index; the best ``top_n`` (default: all)."""
    results = sorted(
        (RerankResult(i, doc, s.outputs.score, s.truncated) for i, (doc, s) in enumerate(zip(documents, scores))),
        key=lambda r: -r.relevance_score,
    )
    return results[:top_n] if top_n else results
