"""Jina route: ``POST /v1/multi-vector`` (Jina's hosted multi-vector API, for jina-colbert-v2 and any
model with token vectors).

As Jina's API answers it: ``input`` (texts, or ``{"text": ...}`` objects), ``input_type``
(``"document"`` unless ``"query"``: the model's retrieval side), ``dimensions`` (the model's
Matryoshka widths, jina-colbert-v2's 128 / 96 / 64) and ``embedding_type`` (``float``, ``base64``
(a string a token, little-endian float32), ``binary`` / ``ubinary`` (signs packed 8 to a byte),
``int8`` / ``uint8``, or a list of them, answered as an object keyed by type). Each input's
``embeddings`` are its token vectors, a row a token. ``token_pool_factor`` is poolkit's: the
vectors pooled as on ``/pooling``.

The route parses Jina's JSON and writes Jina's answer; the work, with its checks, is
:mod:`poolkit.entrypoints.serving.jina`.
"""

from __future__ import annotations

from typing import Annotated, List, Literal, Optional, Union

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ..encodings import token_rows
from ..protocol import TEXT, BaseRequest, PoolFactor, Positive, schema
from ..serving import jina
from ..serving.call import Call
from ..serving.inputs import check_model
from ..serving.jina import TOKEN_EMBED
from .deps import Model, State
from .endpoints import Endpoints
from .wire import check_finite, request_id, respond, types_bytes

ENDPOINTS = Endpoints()

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


@ENDPOINTS.post("/v1/multi-vector", "Token vectors (Jina's multi-vector API).", task=TOKEN_EMBED)
async def multi_vector(body: MultiVectorRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    # Each type asked for is written: the response-bytes limit counts them all.
    side = body.input_type if "input_type" in body.model_fields_set else None  # Jina's default is "document"
    results, types = await jina.multi_vector(jina.MultiVector.of(body, side), Call.of(request), st, llm, types_bytes)
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
