"""vLLM routes: ``/pooling`` (any task), ``/classify``, ``/score`` and ``/rerank`` (Jina / Cohere),
``/tokenize`` and ``/detokenize``, with their request models. (SageMaker's ``/invocations``, which
vLLM serves too, is :mod:`~poolkit.entrypoints.server.routes_sagemaker`.)"""

from __future__ import annotations

import time
from typing import Annotated, Any, Dict, List, Optional, Union

import torch
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, WrapValidator
from pydantic_core import PydanticCustomError

from ...contracts.scoring import RESERVED_TEMPLATE_KWARGS as RESERVED_SCORE_KWARGS
from ..protocol import (
    CONVERSATION,
    SCORE_PAIRS,
    TEXT,
    TEXT_DOCUMENT,
    ActivationFields,
    BaseRequest,
    ChatFields,
    EncodingFields,
    PoolFactor,
    Positive,
    PromptInput,
    SideFields,
    Text,
    TokenizationFields,
    given,
    list_of,
    one_of,
    schema,
)
from ..serving import pooling as pool
from ..serving import scoring, tokens
from ..serving.call import Call
from ..serving.inputs import check_model, run_inputs
from ..serving.work import JSON_NUMBER_BYTES
from .deps import Model, State
from .endpoints import Endpoints
from .wire import check_finite, encode_tensor, jsonable, list_response, number_bytes, request_id, respond, usage

ENDPOINTS = Endpoints()


# -- requests --------------------------------------------------------------------------------------


def _check_score_side(value: Any, handler: Any) -> Any:
    """``str | list[str]``, vLLM's multimodal ``{"content": [parts]}``, or a list of strings and such inputs."""
    def one(v: Any) -> bool:
        return isinstance(v, str) or (isinstance(v, dict) and ("content" in v or "type" in v))

    if isinstance(value, str) or (isinstance(value, dict) and "content" in value) or (isinstance(value, list) and all(map(one, value))):
        return value
    raise PydanticCustomError(
        "score_input", "must be a string, a list of strings, or {'content': [text and image_url parts]} (or a list of those)"
    )


def _documents_with_media(value: Any, handler: Any) -> Any:
    """Rerank documents with images (vLLM's multimodal score input, ``{"content": [parts]}``, checked
    by the route) beside strings and ``{"text": ...}``; any other value is validated as text documents."""
    items = value if isinstance(value, list) else [value]
    if not any(isinstance(v, dict) and "content" in v for v in items):
        return handler(value)
    if all(isinstance(v, str) or (isinstance(v, dict) and (isinstance(v.get("content"), list) or isinstance(v.get("text"), str))) for v in items):
        return value
    raise PydanticCustomError("rerank_documents", "must be strings, {'text': ...} or {'content': [text and image_url parts]}")


#: A content part of a multimodal input: a text, or an image as a data URI (remote URLs only
#: where the server allows their host).
CONTENT_PART = {
    "oneOf": [
        {"type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"}, "text": TEXT}},
        {
            "type": "object",
            "required": ["type", "image_url"],
            "properties": {
                "type": {"const": "image_url"},
                "image_url": {
                    "anyOf": [
                        {"type": "string", "pattern": "^data:"},
                        {"type": "object", "required": ["url"], "properties": {"url": {"type": "string", "pattern": "^data:"}}},
                    ]
                },
            },
        },
    ]
}
#: vLLM's ``ScoreMultiModalParam``: content parts, each one input (text or ``image_url``).
MULTIMODAL_CONTENT = {"type": "object", "required": ["content"], "properties": {"content": list_of(CONTENT_PART)}}

ScoreInput = Annotated[
    Union[StrictStr, Dict[str, Any], List[Union[StrictStr, Dict[str, Any]]]],
    WrapValidator(_check_score_side),
    schema({"anyOf": [TEXT, list_of(TEXT), MULTIMODAL_CONTENT, list_of({"anyOf": [TEXT, MULTIMODAL_CONTENT]})]}),
]


class ClassificationRequest(BaseRequest, TokenizationFields, ChatFields, ActivationFields):
    """``POST /classify``."""

    model_config = ConfigDict(json_schema_extra=one_of("input", "messages"))

    input: Optional[PromptInput] = None


class PoolingRequest(BaseRequest, TokenizationFields, ChatFields, EncodingFields, ActivationFields, SideFields):
    """``POST /pooling``: any task (``task``), or ``data`` for the IO processor plugin task."""

    model_config = ConfigDict(json_schema_extra=one_of("input", "messages", "data"))

    input: Optional[PromptInput] = None
    data: Optional[Any] = Field(None, description="Input of the IO processor plugin (task 'plugin').")
    task: Optional[StrictStr] = None
    dimensions: Optional[Positive] = None
    step_tag_id: Optional[StrictInt] = Field(None, ge=0, lt=2**31)
    returned_token_ids: Optional[List[Annotated[StrictInt, Field(ge=0, lt=2**31)]]] = None
    top_k: Optional[Positive] = Field(None, description="sparse_embed: keep the K strongest weights.")
    threshold: Optional[Union[StrictFloat, StrictInt]] = Field(None, description="sparse_embed: drop weights below this.")
    return_tokens: StrictBool = False
    token_pool_factor: Optional[PoolFactor] = Field(
        None,
        description="token_embed: pool each input's token vectors into about 1 / factor as many (hierarchical "
        "clustering, as sentence-transformers' HierarchicalTokenPooling); at least 1.",
    )


class _ScoreLimits(BaseModel):
    max_tokens_per_query: Optional[Positive] = Field(
        None, description="Cut each query to its first N tokens before scoring (vLLM)."
    )
    max_tokens_per_doc: Optional[Positive] = Field(
        None, description="Cut each document to its first N tokens before scoring (vLLM, Cohere)."
    )


class _ScoreTemplate(BaseModel):
    chat_template_kwargs: Annotated[
        Optional[Dict[str, Any]],
        schema({"anyOf": [{"type": "object", "propertyNames": {"not": {"enum": sorted(RESERVED_SCORE_KWARGS)}}}, {"type": "null"}]}),
    ] = Field(
        None,
        description="Variables for the score template (vLLM); for a sentence-transformers CrossEncoder export also "
        "'prompt' (its prompt text, '' for none), 'prompt_name' (one of its saved prompts) and 'restore_suffix' "
        "(false: a truncated render keeps its cut instead of getting the template's closing tokens back).",
    )


class ScoreRequest(BaseRequest, TokenizationFields, ActivationFields, _ScoreLimits, _ScoreTemplate):
    """``POST /score``, ``/v1/score``: one pair of sides, 1:1, 1:N or N:N."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                one_of("text_1", "data_1", "queries"),
                one_of("text_2", "data_2", "documents", "items"),
                {"anyOf": [given(*pair) for pair in SCORE_PAIRS]},
            ]
        }
    )

    text_1: Optional[ScoreInput] = None
    text_2: Optional[ScoreInput] = None
    data_1: Optional[ScoreInput] = None
    data_2: Optional[ScoreInput] = None
    queries: Optional[ScoreInput] = None
    documents: Optional[ScoreInput] = None
    items: Optional[ScoreInput] = None
    instruction: Optional[StrictStr] = None


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: Text


class RerankRequest(BaseRequest, TokenizationFields, ActivationFields, _ScoreLimits, _ScoreTemplate):
    """``POST /rerank``, ``/v1/rerank``, ``/v2/rerank`` (Jina / Cohere)."""

    query: Text
    documents: Annotated[
        Union[StrictStr, List[Union[StrictStr, RerankDocument]]],
        WrapValidator(_documents_with_media),
        schema({"anyOf": [TEXT, MULTIMODAL_CONTENT, list_of({"anyOf": [TEXT, TEXT_DOCUMENT, MULTIMODAL_CONTENT]})]}),
    ] = Field(
        description="The documents, or one document as a string (vLLM); a document with images is "
        "{'content': [parts]} (vLLM's multimodal score input), for a model that embeds each side."
    )
    top_n: Annotated[StrictInt, schema({"type": "integer", "minimum": 0})] = Field(0, description="Keep the best N (0: all).")
    return_documents: StrictBool = True
    instruction: Optional[StrictStr] = None


class TokenizeRequest(BaseRequest):
    """``POST /tokenize`` (vLLM): ``prompt``, or chat ``messages`` rendered with the chat template."""

    model_config = ConfigDict(json_schema_extra=one_of("prompt", "messages"))

    prompt: Optional[Text] = None
    messages: Annotated[Optional[List[Dict[str, Any]]], schema({"anyOf": [CONVERSATION, {"type": "null"}]})] = None
    add_special_tokens: Optional[StrictBool] = Field(
        None, description="Add the tokenizer's special tokens: default true for 'prompt', false for 'messages'."
    )
    add_generation_prompt: Optional[StrictBool] = Field(
        None, description="messages: add the generation prompt (default true, false with continue_final_message)."
    )
    continue_final_message: StrictBool = False
    return_token_strs: Optional[StrictBool] = Field(False, description="Also return the token strings.")


class DetokenizeRequest(BaseRequest):
    """``POST /detokenize`` (vLLM): token ids back to text."""

    tokens: List[Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]]


# -- pooling and classification --------------------------------------------------------------------


@ENDPOINTS.post("/classify", "Class probabilities (vLLM).", task="classify")
async def classify(body: ClassificationRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    _, results = await run_inputs(request, st, llm, body, "classify")
    rid, created = request_id(request, "classify"), int(time.time())
    tokens = sum(len(ids) for _, ids in results)
    id2label = llm.model.id2label

    def build() -> dict:
        check_finite(results)
        data = []
        for i, (t, _) in enumerate(results):
            probs = t.reshape(-1).tolist()
            label = id2label.get(int(t.reshape(-1).argmax())) if probs else None
            data.append({"index": i, "object": "classification", "label": label, "probs": probs, "num_classes": len(probs)})
        return {"id": rid, "object": "list", "created": created, "model": st.served, "data": data, "usage": usage(tokens)}

    return await respond(build, sum(t.numel() for t, _ in results))


@ENDPOINTS.post("/pooling", "Any pooling task (vLLM): 'task' chooses it per request; 'data' for the plugin task.", tensors=True)
async def pooling(body: PoolingRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    req = pool.Pooling.of(body)
    task, name, options = pool.plan(req, llm)
    if task is None:
        result, size = await pool.run_plugin(req, name, Call.of(request), st, llm)
        rid, created = request_id(request, "pool"), int(time.time())
        return await respond(
            lambda: {"id": rid, "object": "list", "created": created, "model": st.served, "data": jsonable(result)}, size
        )
    _, results = await run_inputs(
        request, st, llm, body, task.name, number_bytes(body) if task.tensor_output else JSON_NUMBER_BYTES,
        step_tag_id=body.step_tag_id, returned_token_ids=body.returned_token_ids,
        token_pool_factor=body.token_pool_factor,
    )

    def item(i: int, t: torch.Tensor) -> dict:
        if body.encoding_format == "float":
            return {"index": i, "object": "pooling", "data": task.render(t, llm.model, options)}
        return {"index": i, "object": "pooling", "data": encode_tensor(t, body), "shape": list(t.shape)}

    return await list_response(request, body, "pool", st.served, results, item)


# -- scoring ---------------------------------------------------------------------------------------


async def score(body: ScoreRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    scores, tokens = await scoring.score(scoring.Score.of(body), Call.of(request), st, llm)
    rid, created = request_id(request, "score"), int(time.time())
    data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
    return await respond(
        lambda: {"id": rid, "object": "list", "created": created, "model": st.served, "data": data, "usage": usage(tokens)},
        len(data),
    )


async def rerank(body: RerankRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    order, scores, docs, tokens = await scoring.rerank(scoring.Rerank.of(body), Call.of(request), st, llm)
    results = []
    for i in order:
        result: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if body.return_documents:
            result["document"] = {"text": docs[i]} if isinstance(docs[i], str) else {"multi_modal": docs[i]}
        results.append(result)
    rid = request_id(request, "rerank")
    return await respond(
        lambda: {"id": rid, "model": st.served, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results},
        len(results),
    )


#: The paths of the Scoring API, mounted for every model; one without a scorer answers 404.
SCORE_PATHS = ("/score", "/v1/score")
RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")

for _path in SCORE_PATHS:
    ENDPOINTS.post(_path, "Scores of pairs, 1:1, 1:N or N:N (vLLM); a side may hold images ({'content': [image_url parts]}).", scoring=True)(score)
for _path in RERANK_PATHS:
    ENDPOINTS.post(_path, "Documents ranked by relevance to a query (Jina / Cohere).", scoring=True)(rerank)


# -- tokenization ----------------------------------------------------------------------------------


@ENDPOINTS.post("/tokenize", "Token ids of a prompt or of chat messages (vLLM).")
async def tokenize(body: TokenizeRequest, request: Request, st: State, llm: Model) -> Response:
    """vLLM's ``/tokenize``: the ids the model's tokenizer makes of ``prompt`` (special tokens by
    default), or of ``messages`` rendered with the chat template (none added by default)."""
    check_model(st, body.model)
    ids, strs = await tokens.tokenize(tokens.Tokenize.of(body), Call.of(request), st)
    return await respond(
        lambda: {"count": len(ids), "max_model_len": st.max_len, "tokens": ids, "token_strs": strs}, len(ids)
    )


@ENDPOINTS.post("/detokenize", "The text of token ids (vLLM).")
async def detokenize(body: DetokenizeRequest, request: Request, st: State, llm: Model) -> Response:
    """vLLM's ``/detokenize``: ``tokens`` decoded by the model's tokenizer into ``prompt``."""
    check_model(st, body.model)
    text = await tokens.detokenize(tokens.Detokenize.of(body), Call.of(request), st)
    return await respond(lambda: {"prompt": text}, 1)
