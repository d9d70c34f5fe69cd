"""An example IO processor plugin: top-k documents for a query by embedding similarity.

poolkit loads it through the ``topk`` entry point of the ``poolkit.plugins`` group; the
processor is selected with ``LLM(..., io_processor_plugin="topk_retrieval")`` and used by
``LLM.encode({"data": ...}, pooling_task="plugin")``. It also overrides a built-in kernel
(:mod:`poolkit_topk_plugin.kernels`, opt-in).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from poolkit import InvalidRequest, IOProcessor, PoolingParams, Prompt, hookimpl

from .kernels import poolkit_register_kernels  # noqa: F401  (the kernel override's hook)

__all__ = ["TopKRetrieval"]


class TopKRetrieval(IOProcessor):
    """``{"query": str, "documents": [str, ...], "k": int}`` in; the ``k`` best documents out."""

    def parse_data(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise InvalidRequest("topk_retrieval data must be an object with 'query', 'documents' and 'k'")
        query, documents, k = data.get("query"), data.get("documents"), data.get("k", 3)
        if not isinstance(query, str):
            raise InvalidRequest("topk_retrieval: 'query' must be a string")
        if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
            raise InvalidRequest("topk_retrieval: 'documents' must be a non-empty list of strings")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InvalidRequest("topk_retrieval: 'k' must be a positive integer")
        return {"query": query, "documents": documents, "k": k}

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        return [Prompt(text=data["query"])] + [Prompt(text=d) for d in data["documents"]]

    def merge_pooling_params(self, params: PoolingParams | None, task: str) -> PoolingParams:
        return (params or PoolingParams()).model_copy(update={"task": "embed"})

    def post_process(self, outputs: Sequence[Any], request_id: str | None = None, data: Any = None) -> list[dict]:
        query, *docs = (o.outputs.data.float() for o in outputs)
        scores = torch.nn.functional.cosine_similarity(torch.stack(docs), query.unsqueeze(0), dim=-1)
        best = torch.topk(scores, min(data["k"], len(docs)))
        return [
            {"index": int(i), "document": data["documents"][int(i)], "score": float(s)}
            for s, i in zip(best.values, best.indices)
        ]


@hookimpl
def poolkit_register_io_processors(register):
    register("topk_retrieval", TopKRetrieval)
