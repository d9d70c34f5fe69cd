"""Cohere route: ``POST /v2/embed`` (Embed v2: texts, data-URI images, float/binary/ubinary/base64).

The route parses Cohere's JSON and writes its answer; the work, from the checks of the inputs to
the billed tokens, is :func:`poolkit.entrypoints.serving.cohere.embed`'s.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, List, Literal, Optional, Union

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ...inputs.request import PoolRequest
from ..encodings import binary, cohere_base64, ubinary
from ..protocol import TEXT, BaseRequest, Positive, list_of, one_of, schema
from ..serving import cohere
from ..serving.call import Call
from ..serving.inputs import check_model
from ..serving.state import ModelState
from .deps import Model, State
from .endpoints import Endpoints
from .wire import check_finite, request_id, respond, types_bytes

ENDPOINTS = Endpoints()

_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "float": lambda t: t.tolist(),
    "binary": binary,
    "ubinary": ubinary,
    "base64": cohere_base64,
}

# -- the request -----------------------------------------------------------------------------------


class CohereImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: Annotated[StrictStr, schema({"type": "string", "pattern": "^data:"})]


class CohereContent(BaseModel):
    """One part of a Cohere input: ``{"type": "text", "text": ...}``, ``{"type": "image_url", "image_url": ...}``
    or, for a model that reads videos, ``{"type": "video_url", "video_url": ...}`` (poolkit's, as vLLM's chat part)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "oneOf": [
                {"required": ["type", "text"], "properties": {"type": {"const": "text"}, "text": TEXT}},
                {"required": ["type", "image_url"], "properties": {"type": {"const": "image_url"}, "image_url": {"not": {"type": "null"}}}},
                {"required": ["type", "video_url"], "properties": {"type": {"const": "video_url"}, "video_url": {"not": {"type": "null"}}}},
            ]
        },
    )

    type: Literal["text", "image_url", "video_url"]
    text: Optional[StrictStr] = None
    image_url: Optional[Union[CohereImageUrl, Annotated[StrictStr, schema({"type": "string", "pattern": "^data:"})]]] = None
    video_url: Optional[Union[CohereImageUrl, Annotated[StrictStr, schema({"type": "string", "pattern": "^data:"})]]] = None


class CohereInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: Annotated[List[CohereContent], Field(json_schema_extra={"minItems": 1})] = Field(
        description="One text or image_url part; a vision-language model also takes text and images together."
    )


class CohereEmbedRequest(BaseRequest):
    """``POST /v2/embed`` (Cohere Embed v2)."""

    model_config = ConfigDict(json_schema_extra=one_of("texts", "images", "inputs"))

    texts: Optional[Annotated[List[StrictStr], schema(list_of(TEXT))]] = None
    images: Optional[Annotated[List[StrictStr], schema(list_of({"type": "string", "pattern": "^data:"}))]] = Field(
        None, description="Images as data:image/...;base64 URIs."
    )
    inputs: Optional[Annotated[List[CohereInput], Field(json_schema_extra={"minItems": 1})]] = None
    input_type: Optional[StrictStr] = None
    embedding_types: Annotated[
        List[Literal["float", "binary", "ubinary", "base64"]],
        schema(list_of({"enum": ["float", "binary", "ubinary", "base64"]})),
    ] = ["float"]
    output_dimension: Optional[Positive] = None
    truncate: Literal["NONE", "START", "END"] = "END"
    max_tokens: Optional[Positive] = None


def _describe(doc: dict[str, Any], st: ModelState) -> None:
    """The loaded model's ``input_type`` values in ``/openapi.json`` (none: the field takes only null)."""
    fields = doc["components"]["schemas"].get(CohereEmbedRequest.__name__, {}).get("properties", {})
    if "input_type" in fields:
        known = st.renderer.reads.prompt_names
        fields["input_type"] = {"anyOf": [{"enum": known}, {"type": "null"}]} if known else {"type": "null"}


#: Cohere's retrieval ``input_type`` values, and the prompt names that say the same in a
#: sentence-transformers config, in order of preference.
COHERE_SIDES = {"search_query": ("query",), "search_document": ("document", "passage", "corpus")}


# -- the route -------------------------------------------------------------------------------------


@ENDPOINTS.post("/v2/embed", "Embeddings (Cohere Embed v2): float, binary, ubinary, base64.", task="embed", describe=_describe)
async def cohere_embed(body: CohereEmbedRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    side = PoolRequest(input_type=body.input_type, input_aliases=COHERE_SIDES.get(body.input_type or "", ()))
    results, types, input_tokens, images = await cohere.embed(cohere.Embed.of(body, side), Call.of(request), st, llm, types_bytes)
    rid = request_id(request, "embd")

    def build() -> dict:
        check_finite(results)
        embeddings = {kind: [_ENCODERS[kind](t) for t, _ in results] for kind in types}
        # vLLM's rule: a request with an image bills every token as an image token.
        billed = {"input_tokens": 0, "image_tokens": input_tokens} if images else {"input_tokens": input_tokens, "image_tokens": 0}
        out: dict[str, Any] = {"id": rid, "embeddings": embeddings}
        if body.texts is not None:
            out["texts"] = body.texts
        out["meta"] = {"api_version": {"version": "2"}, "billed_units": billed, "tokens": {"input_tokens": input_tokens}}
        out["response_type"] = "embeddings_by_type"
        return out

    return await respond(build, sum(t.numel() for t, _ in results) * len(types))
