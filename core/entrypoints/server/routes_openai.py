"""OpenAI routes: ``POST /v1/embeddings`` and ``GET /v1/models``."""

from __future__ import annotations

import time
from typing import Optional

from fastapi import Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field, StrictStr

from ...contracts.errors import PoolkitError
from ...plugins import registry
from ..protocol import (
    ActivationFields,
    BaseRequest,
    ChatFields,
    EncodingFields,
    Positive,
    PromptInput,
    SideFields,
    TokenizationFields,
    one_of,
)
from ..serving.inputs import check_model, run_inputs
from ..serving.state import AdapterState, ModelState
from .deps import Model, State
from .endpoints import Endpoints
from .wire import encode_tensor, json_response, list_response, number_bytes

ENDPOINTS = Endpoints()


class EmbeddingRequest(BaseRequest, TokenizationFields, ChatFields, EncodingFields, ActivationFields, SideFields):
    """``POST /v1/embeddings`` (OpenAI)."""

    model_config = ConfigDict(json_schema_extra=one_of("input", "messages"))

    input: Optional[PromptInput] = None
    dimensions: Optional[Positive] = None
    task: Optional[StrictStr] = Field(
        None,
        description="Jina's API: the task the inputs are embedded for, a prompt name of the model's "
        "sentence-transformers config (jina-embeddings-v3: retrieval.query, retrieval.passage, separation, "
        "classification, text-matching, each with its own adapter).",
    )


@ENDPOINTS.get("/v1/models", "The served models (OpenAI).", protected=True, errors=(401, 500, 503))
async def models(request: Request, llm: Model) -> Response:
    created = int(time.time())
    server = request.app.state.poolkit
    entries = [_model_entry(m, created) for m in server.models if m.llm is not None]
    for adapter in server.adapters.values():  # vLLM's cards of LoRA adapters: the adapter, its parent model
        if adapter.llm is not None:
            entries.append({**_model_entry(adapter, created), "root": adapter.served, "parent": adapter.base.served})
    return json_response({"object": "list", "data": entries})


def _model_entry(st: ModelState | AdapterState, created: int) -> dict:
    llm = st.llm
    try:
        score_type = llm.scorer.name
    except PoolkitError:
        score_type = None
    entry = {
        "id": st.served,
        "object": "model",
        "created": created,
        "owned_by": "poolkit",
        "max_model_len": st.max_len,
        "tasks": list(llm.supported_tasks),
        "score_type": score_type,
    }
    if st.embedding_size:
        entry["embedding_size"] = st.embedding_size
    return entry


@ENDPOINTS.post("/v1/embeddings", "Embeddings (OpenAI).", task="embed", tensors=True)
async def embeddings(body: EmbeddingRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    # Jina's task names a prompt; a pooling task's name there is vLLM's PoolingRequest field (say from
    # /invocations, which reads an 'input' body as an embeddings request), which vLLM ignores here
    task = body.task if body.task is not None and body.task not in registry("task").names() else None
    _, results = await run_inputs(request, st, llm, body, "embed", number_bytes(body), prompt_name=task)
    return await list_response(
        request, body, "embd", st.served, results,
        lambda i, t: {"index": i, "object": "embedding", "embedding": encode_tensor(t, body)}, arrays=True,
    )
