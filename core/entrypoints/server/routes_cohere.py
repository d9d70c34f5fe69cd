"""Cohere route: ``POST /v2/embed`` (Embed v2: texts, data-URI images, float/binary/ubinary/base64).

A dual encoder (CLIP, SigLIP) embeds each image alone (one content part per input); a
vision-language model (one whose renderer reads media) also takes inputs of text and
images together (:meth:`poolkit.inputs.Renderer.accept`).
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, List, Literal, Optional, Sequence, Union

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ...contracts.errors import InvalidRequest
from ...contracts.io import Prompt
from ...inputs.chat import checked_text
from ...inputs.media import check_image_url
from ...inputs.request import PoolRequest, Reads
from ..encodings import binary, cohere_base64, ubinary
from ..protocol import TEXT, BaseRequest, Positive, list_of, one_of, schema
from ..serving.errors import ApiError
from ..serving.inputs import check_count, check_dimensions, check_model, pooling_params, run_request
from ..serving.state import ModelState
from ..serving.work import check_response, check_truncation
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
    items = _items(st, body, st.renderer.reads)
    types = list(dict.fromkeys(body.embedding_types))
    if not types:
        raise ApiError(400, "embedding_types must not be empty", param="embedding_types")
    check_dimensions(st, body.output_dimension, "output_dimension")
    width = body.output_dimension or st.embedding_size
    if width and width % 8 and ({"binary", "ubinary"} & set(types)):
        raise ApiError(
            400,
            f"Embedding dimension must be a multiple of 8 for binary embedding types, but got {width}.",
            param="embedding_types",
        )
    if body.max_tokens is not None and body.max_tokens < 1:
        raise ApiError(400, f"max_tokens must be a positive number, got {body.max_tokens}", param="max_tokens")
    truncate = None
    if body.truncate != "NONE":
        truncate = body.max_tokens or -1
        check_truncation(llm, truncate)
    params = pooling_params(
        dimensions=body.output_dimension,
        truncate_prompt_tokens=truncate,
        truncation_side={"START": "left", "END": "right"}.get(body.truncate),
    ).with_salt(body.cache_salt)
    check_response(st, len(items) * (width or 0), types_bytes(types, width), estimated=True)
    images = [i for i, (kind, _) in enumerate(items) if kind in ("image", "media")]
    check = (lambda prompts: _check_untruncated(st, prompts, body.max_tokens)) if body.truncate == "NONE" else None
    # the input_type, its text before texts and media, and the rule for text and media together: the renderer's
    record = PoolRequest(
        [value if kind == "text" else _content(kind, value) for kind, value in items], task="embed", params=params,
        input_type=body.input_type, input_aliases=COHERE_SIDES.get(body.input_type or "", ()),
    )
    _, results = await run_request(request, st, llm, record, types_bytes(types, width), check)
    image_set = set(images)

    # An image runs as one sequence without text tokens: it is billed as one token.
    counts = [max(1, len(ids)) if i in image_set else len(ids) for i, (_, ids) in enumerate(results)]
    input_tokens = sum(counts)
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


def _content(kind: str, value: Any) -> list[dict[str, Any]]:
    """An image (a dual encoder's, alone) or an input of text and media as chat content parts, in order."""
    parts = value if kind == "media" else [("image", value)]
    return [{"type": "text", "text": v} if part == "text" else {"type": f"{part}_url", f"{part}_url": {"url": v}} for part, v in parts]


def _items(st: ModelState, body: CohereEmbedRequest, reads: Reads) -> list[tuple[str, Any]]:
    """The request's inputs as ``("text", text)`` / ``("image", data URI)``, checked; for a
    vision-language model (``reads.media``) every input with an image (or a video) is ``("media", parts)``,
    its ``("text", text)``, ``("image", url)`` and ``("video", url)`` parts in order."""
    given = [name for name in ("texts", "images", "inputs") if getattr(body, name) is not None]
    if not given:
        raise ApiError(400, "One of texts, images, or inputs must be provided", param="texts")
    if len(given) > 1:
        raise ApiError(400, f"send only one of texts, images or inputs, got {' and '.join(given)}", param=given[1])
    name = given[0]
    items: list[tuple[str, Any]] = []
    if name == "texts":
        items = [("text", t) for t in body.texts]
    elif name == "images":
        items = [("media", [("image", u)]) if reads.media else ("image", u) for u in body.images]
    elif reads.media:
        items = [_media_input(i, entry) for i, entry in enumerate(body.inputs)]
    else:
        for i, entry in enumerate(body.inputs):
            if len(entry.content) != 1:
                raise ApiError(
                    400,
                    f"inputs[{i}] must have exactly one content part: a text or an image_url (a model embeds "
                    "text-only or image-only inputs, not both)",
                    param=f"inputs[{i}].content",
                )
            part = entry.content[0]
            if part.type == "video_url":
                raise ApiError(400, f"inputs[{i}]: this model reads no videos; send a text or an image_url", param=f"inputs[{i}].content")
            if part.type == "text":
                if part.text is None:
                    raise ApiError(400, f"inputs[{i}]: a text part needs 'text'", param=f"inputs[{i}].content")
                items.append(("text", part.text))
            else:
                url = part.image_url.url if hasattr(part.image_url, "url") else part.image_url
                if url is None:
                    raise ApiError(400, f"inputs[{i}]: an image_url part needs 'image_url'", param=f"inputs[{i}].content")
                items.append(("image", url))
    check_count(st, len(items), name)
    for i, (kind, value) in enumerate(items):
        where = f"{name}[{i}]"
        if kind == "text":
            checked_text(value, where)
        elif kind == "image" and not value.startswith("data:"):
            raise ApiError(400, f"{where}: images must be data:image/...;base64 URIs (URLs and files are not fetched)", param=where)
        elif kind == "media":
            for part, v in value:
                if part == "text":
                    checked_text(v, f"{where}.content")
                elif part == "video" and not reads.videos:
                    raise ApiError(400, f"{where}: this model reads no videos; send text and image_url parts", param=f"{where}.content")
                else:
                    check_image_url(v, where, st.server.media)
    return items


def _media_input(index: int, entry: Any) -> tuple[str, Any]:
    """One Cohere input of a vision-language model: ``("text", text)`` for a single text part, else
    ``("media", parts)`` (any number of text and ``image_url`` parts, in order)."""
    parts: list[tuple[str, str]] = []
    for part in entry.content:
        if part.type == "text":
            if part.text is None:
                raise ApiError(400, f"inputs[{index}]: a text part needs 'text'", param=f"inputs[{index}].content")
            parts.append(("text", part.text))
        else:
            value = getattr(part, part.type)
            url = value.url if hasattr(value, "url") else value
            if url is None:
                raise ApiError(400, f"inputs[{index}]: an {part.type} part needs '{part.type}'", param=f"inputs[{index}].content")
            parts.append((part.type[: -len("_url")], url))
    if len(parts) == 1 and parts[0][0] == "text":
        return parts[0]
    return "media", parts


def _check_untruncated(st: ModelState, prompts: Sequence[Prompt], max_tokens: int | None) -> None:
    """``truncate=NONE``: an input longer than the model's limit (or ``max_tokens``) is an error."""
    for i, prompt in enumerate(prompts):
        if prompt.text is None:
            continue
        n = len(st.renderer.tokenize(prompt.text, prefix=prompt.prompt_prefix)["input_ids"])
        if max_tokens is not None and n > max_tokens:
            raise InvalidRequest(
                f"Input of {n} tokens exceeds max_tokens={max_tokens} with truncate=NONE. "
                "Set truncate to END or START to allow truncation."
            )
        if st.max_len is not None and n > st.max_len:
            raise InvalidRequest(
                f"This model's maximum context length is {st.max_len} tokens. However, input {i} has {n} tokens "
                "(truncate=NONE). Please reduce the length of the input, or set truncate to END or START."
            )
