"""Jina route: ``POST /v1/multi-vector`` (Jina's hosted multi-vector API, for jina-colbert-v2 and any
model with token vectors).

As Jina's API answers it: ``input`` (texts, or ``{"text": ...}`` objects), ``input_type``
(``"document"`` unless ``"query"``: the model's retrieval side), ``dimensions`` (the model's
Matryoshka widths, jina-colbert-v2's 128 / 96 / 64) and ``embedding_type`` (``float``, ``base64``
(a string a token, little-endian float32), ``binary`` / ``ubinary`` (signs packed 8 to a byte),
``int8`` / ``uint8``, or a list of them, answered as an object keyed by type). Each input's
``embeddings`` are its token vectors, a row a token. ``token_pool_factor`` is poolkit's: the
vectors pooled as on ``/pooling``.
"""

from __future__ import annotations

from typing import Annotated, Any, List, Literal, Optional, Union

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ...inputs.chat import checked_text
from ..encodings import token_rows
from ..protocol import TEXT, BaseRequest, PoolFactor, Positive, schema
from ..serving.errors import ApiError
from ..serving.inputs import check_count, check_dimensions, check_model, pooling_params
from ..serving.work import run_task
from .deps import Model, State
from .endpoints import Endpoints
from .wire import check_finite, request_id, respond, types_bytes

ENDPOINTS = Endpoints()
#: The task the route serves: every token's vector.
TOKEN_EMBED = "token_embed"

EmbeddingType = Literal["float", "base64", "binary", "ubinary", "int8", "uint8"]


Text = Annotated[StrictStr, schema(TEXT)]


class JinaText(BaseModel):
    """An input as Jina's ``TextDoc``: ``{"text": ...}``."""

    model_config = ConfigDict(extra="forbid")

    text: Text


class MultiVectorRequest(BaseRequest):
    """``POST /v1/multi-vector`` (Jina)."""

    input: Union[Text, JinaText, Annotated[List[Union[Text, JinaText]], Field(min_length=1)]]
    input_type: Literal["query", "document"] = Field(
        "document", description="The retrieval side the texts are encoded in (Jina's default: document)."
    )
    embedding_type: Union[EmbeddingType, Annotated[List[EmbeddingType], Field(json_schema_extra={"minItems": 1})]] = Field(
        "float", description="float, base64, binary, ubinary, int8 or uint8, or a list of them (then keyed by type)."
    )
    dimensions: Optional[Positive] = Field(None, description="A Matryoshka width of the model (jina-colbert-v2: 128, 96, 64).")
    token_pool_factor: Optional[PoolFactor] = Field(
        None, description="poolkit: pool each input's token vectors into about 1 / factor as many (as on /pooling); at least 1."
    )


def _texts(st: Any, value: Any) -> list[str]:
    """The request's texts, checked: a string, ``{"text"}``, or a list of them."""
    items = value if isinstance(value, list) else [value]
    check_count(st, len(items), "input")
    texts = []
    for i, item in enumerate(items):
        text = item.text if isinstance(item, JinaText) else item
        checked_text(text, f"input[{i}]" if isinstance(value, list) else "input")
        texts.append(text)
    return texts


@ENDPOINTS.post("/v1/multi-vector", "Token vectors (Jina's multi-vector API).", task=TOKEN_EMBED)
async def multi_vector(body: MultiVectorRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    if TOKEN_EMBED not in llm.supported_tasks:
        raise ApiError(400, f"model '{st.served}' has no token vectors (it serves {', '.join(llm.supported_tasks)})", param="model")
    types = list(dict.fromkeys([body.embedding_type] if isinstance(body.embedding_type, str) else body.embedding_type))
    if not types:
        raise ApiError(400, "embedding_type must not be empty", param="embedding_type")
    check_dimensions(st, body.dimensions, "dimensions")
    texts = _texts(st, body.input)
    params = pooling_params(dimensions=body.dimensions, token_pool_factor=body.token_pool_factor).with_salt(body.cache_salt)
    width = llm.task(TOKEN_EMBED).result_width(llm.model) if body.dimensions is None else body.dimensions
    if width and width % 8 and {"binary", "ubinary"} & set(types):
        raise ApiError(400, f"Embedding dimension must be a multiple of 8 for binary embedding types, but got {width}.",
                       param="embedding_type")
    # Jina's default side is "document": a model without sides encodes its texts as they are then.
    side = body.input_type if "input_type" in body.model_fields_set or llm.task(TOKEN_EMBED).has_roles(llm.model) else None
    # Each type asked for is written: the response-bytes limit counts them all.
    _, results = await run_task(request, st, llm, TOKEN_EMBED, texts, params, number_bytes=types_bytes(types, width), side=side)
    rid, tokens = request_id(request, "mv"), results.num_tokens

    def build() -> dict:
        check_finite(results)
        data = []
        for i, (matrix, _) in enumerate(results):
            encoded = {kind: token_rows(matrix, kind) for kind in types}
            embeddings = encoded[types[0]] if isinstance(body.embedding_type, str) else encoded
            data.append({"object": "embeddings", "index": i, "embeddings": embeddings})
        return {"id": rid, "object": "list", "model": st.served, "data": data, "usage": {"total_tokens": tokens}}

    return await respond(build, sum(int(m.numel()) for m, _ in results) * len(types))
