"""Text Embeddings Inference routes: ``/embed``, ``/embed_all``, ``/embed_sparse``, ``/predict``,
``/rerank``, ``/similarity``, ``/tokenize``, ``/decode``, ``/info``, the root ``POST /`` and
``GET /`` (TEI's health alias).

Hugging Face's TEI clients (``huggingface_hub.InferenceClient``, the RAG frameworks' TEI
integrations) work unchanged: TEI's request fields, response shapes, status codes and error body
``{"error": "...", "error_type": "..."}`` (:mod:`poolkit.entrypoints.server.errors`). ``/rerank`` and
``/tokenize`` are vLLM's paths too: the guard sends a body with TEI's fields (``texts``,
``inputs``) here, anything else to vLLM's routes (each TEI route's ``shares``,
:class:`~poolkit.entrypoints.server.endpoints.Shared`).

The routes parse TEI's JSON and write TEI's answers; the work, with TEI's checks (its rules for
empty inputs, batch sizes, model types), is :mod:`poolkit.entrypoints.serving.tei`, which TEI's
gRPC API calls too.

Where TEI refuses what poolkit can do, poolkit does it: ``/rerank`` ranks with any model that
can score (an embedding model by cosine similarity, as vLLM's ``/rerank``), and the root route
takes a ``sentence_similarity`` body on an embedding model. Errors for too-long inputs carry
poolkit's message with TEI's status and type.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Awaitable, Callable, Literal, Optional, Union

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ...inputs.chat import checked_text
from ..protocol import POSITIVE, TEXT, TOKEN_IDS, PoolFactor, list_of, schema
from ..serving import tei
from ..serving.call import Call
from ..serving.compute_times import ComputeTimes, characters
from ..serving.door import served_model
from ..serving.errors import ApiError
from ..serving.inputs import check_model, pooling_params
from ..serving.state import ModelState
from ..serving.tei import CLASSIFY, EMBED, SPARSE_EMBED, TOKEN_EMBED
from .deps import Model, State, check_serving, loaded_llm
from .endpoints import TEI, Endpoints, Shared
from .errors import validation_message
from .tei_answers import ANSWERS
from .tei_answers import answer as _answer
from .wire import dump, dump_arrays, respond

if TYPE_CHECKING:
    from ...api.llm import LLM

#: TEI's error body and statuses (also in ``/openapi.json``, :mod:`poolkit.entrypoints.server.openapi`,
#: where the paths TEI shares with vLLM describe both APIs' bodies).
ENDPOINTS = Endpoints(api=TEI)

#: Text for a side of a pair, which may be empty when the other side is not (TEI's rule).
SIDE = {"type": "string"}


# -- requests --------------------------------------------------------------------------------------


class _Tei(BaseModel):
    """TEI's request bodies ignore unknown fields and take each field's own type only (TEI's
    serde does not read ``"yes"`` as a boolean nor ``true`` or ``101.0`` as a token id); ``model``
    names a served model (poolkit's)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)
    model: str | None = Field(None, description="poolkit: the served model to use (default: the first).")


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


#: ``Left`` or ``Right`` in any case (TEI's clients send ``Left``/``Right``, others ``left``).
Direction = Annotated[
    Literal["left", "right"], BeforeValidator(_lower),
    schema({"type": "string", "pattern": "^([Ll][Ee][Ff][Tt]|[Rr][Ii][Gg][Hh][Tt])$"}),
]
#: A text, token ids, or a batch of them.
Inputs = Annotated[
    Union[str, list[int], list[Union[str, list[int]]]],
    schema({"anyOf": [TEXT, TOKEN_IDS, list_of({"anyOf": [TEXT, TOKEN_IDS]})]}),
]
Text = Annotated[str, schema(TEXT)]
Texts = Annotated[list[str], schema(list_of(TEXT))]
#: TEI's ``/predict`` inputs: a text, ``[text]`` or a pair ``[text, text]`` whose sides are not
#: both empty, or a batch of those.
_ONE_OR_TWO = {"anyOf": [
    {"type": "array", "minItems": 1, "maxItems": 1, "items": TEXT},
    {"type": "array", "minItems": 2, "maxItems": 2, "items": SIDE, "not": {"items": {"const": ""}}},
]}
PredictInputs = Annotated[Union[str, list[str], list[list[str]]], schema({"anyOf": [TEXT, _ONE_OR_TWO, list_of(_ONE_OR_TWO)]})]
PromptName = Annotated[Optional[str], Field(None, description="A prompt of the model's sentence-transformers config.")]


class _Truncation(_Tei):
    truncate: bool | None = Field(None, description="Truncate inputs longer than the model's limit (default: --auto-truncate).")
    truncation_direction: Direction = "right"


class EmbedRequest(_Truncation):
    inputs: Inputs
    normalize: bool = True
    prompt_name: PromptName = None
    dimensions: Optional[Annotated[int, schema(POSITIVE)]] = None


class EmbedSparseRequest(_Truncation):
    inputs: Inputs
    prompt_name: PromptName = None


class EmbedAllRequest(EmbedSparseRequest):
    token_pool_factor: Optional[PoolFactor] = Field(
        None, description="poolkit: pool each input's token vectors into about 1 / factor as many (as on /pooling); at least 1."
    )


class PredictRequest(_Truncation):
    inputs: PredictInputs
    raw_scores: bool = False


class TeiRerankRequest(_Truncation):
    """Either the query or a text of a pair may be empty, not both (TEI's rule)."""

    model_config = ConfigDict(json_schema_extra={"not": {
        "required": ["query", "texts"], "properties": {"query": {"const": ""}, "texts": {"contains": {"const": ""}}},
    }})
    query: Annotated[str, schema(SIDE)]
    texts: Annotated[list[str], schema(list_of(SIDE))]
    raw_scores: bool = False
    return_text: bool = False


class SimilarityInput(BaseModel):
    model_config = ConfigDict(strict=True)
    source_sentence: Text
    sentences: Texts


class SimilarityParameters(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    truncate: bool | None = None
    truncation_direction: Direction = "right"
    prompt_name: PromptName = None


class SimilarityRequest(_Tei):
    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class TeiTokenizeRequest(_Tei):
    inputs: Annotated[Union[str, list[str]], schema({"anyOf": [TEXT, list_of(TEXT)]})]
    add_special_tokens: bool = True
    prompt_name: PromptName = None


class DecodeRequest(_Tei):
    ids: Annotated[Union[list[int], list[list[int]]], schema({"anyOf": [TOKEN_IDS, list_of(TOKEN_IDS)]})]
    skip_special_tokens: bool = True


#: The routes TEI's root route can answer as (see :func:`root_paths`).
ROOT_PATHS = ("/embed", "/embed_sparse", "/predict", "/tei/rerank", "/similarity")
#: The fields of a rerank body: on a reranker's root route, a body with both reranks, any other
#: body with ``inputs`` predicts.
RERANK_FIELDS = ("query", "texts")


# -- answers -------------------------------------------------------------------------------------


def _floats(rows: list[torch.Tensor]) -> list[np.ndarray]:
    """Result rows as float64 arrays, the numbers the Python API's lists of floats hold."""
    return [r.float().numpy().astype(np.float64) for r in rows]


async def _arrays(payload: Any, size: int, headers: dict[str, str]) -> Response:
    return await respond(lambda: payload, size, headers, serialise=dump_arrays)


def _computed(times: ComputeTimes, llm: LLM, inputs: Any, tokens: int) -> dict[str, str]:
    """TEI's ``x-compute-*`` headers of a request on ``inputs`` that took ``tokens``."""
    return times.headers(characters(inputs), tokens, llm.model.device.type)


# -- embeddings ------------------------------------------------------------------------------------


async def _vectors(rows_of: Callable[..., Awaitable[tei.Rows]], kind: type[tei.EmbedSparse], body: Any, request: Request, st: ModelState, llm: LLM) -> Response:
    """TEI's answer of float vectors: the rows ``rows_of`` computes for ``body`` as TEI's ``kind`` of request."""
    check_model(st, body.model)
    with ComputeTimes() as times:
        rows, tokens = await rows_of(kind.of(body), Call.of(request), st, llm)
    return await _arrays(_floats(rows), sum(r.numel() for r in rows), _computed(times, llm, body.inputs, tokens))


@ENDPOINTS.post("/embed", "Embeddings (TEI).", task=EMBED, openapi_extra=_answer("/embed"))
async def embed(body: EmbedRequest, request: Request, st: State, llm: Model) -> Response:
    return await _vectors(tei.embed_rows, tei.Embed, body, request, st, llm)


@ENDPOINTS.post("/embed_all", "Every token's vector (TEI).", task=TOKEN_EMBED, openapi_extra=_answer("/embed_all"))
async def embed_all(body: EmbedAllRequest, request: Request, st: State, llm: Model) -> Response:
    return await _vectors(tei.embed_all_rows, tei.EmbedAll, body, request, st, llm)


@ENDPOINTS.post(
    "/embed_sparse", "Sparse (SPLADE) vectors as index/value pairs (TEI).", task=SPARSE_EMBED, openapi_extra=_answer("/embed_sparse")
)
async def embed_sparse(body: EmbedSparseRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    with ComputeTimes() as times:
        rows, tokens = await tei.sparse_rows(tei.EmbedSparse.of(body), Call.of(request), st, llm)

    def build() -> list:
        return [[{"index": i, "value": v} for i, v in zip(*tei.nonzero(row))] for row in rows]

    return await respond(build, sum(r.numel() for r in rows), _computed(times, llm, body.inputs, tokens))


@ENDPOINTS.post(
    "/similarity", "Cosine similarity of sentences to a source sentence (TEI).", task=EMBED, openapi_extra=_answer("/similarity")
)
async def similarity(body: SimilarityRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    tei.needs(llm, tei.EMBED, "Model is not an embedding model")
    given = body.parameters or SimilarityParameters()
    sentences = body.inputs.sentences
    if not sentences:
        raise tei.empty_list("inputs.sentences")
    tei.check_batch(st, len(sentences) + 1, True)
    texts = [body.inputs.source_sentence, *sentences]
    for text in texts:
        if not text:
            raise tei.empty_input()
        checked_text(text, "inputs")
    params = pooling_params(use_activation=False, **tei.truncated(st, given.truncate, given.truncation_direction))
    rows = (await tei.rows_of(Call.of(request), st, llm, tei.EMBED, texts, params, tei.prompt_name_of(st, given.prompt_name))).rows
    vectors = torch.stack([r.float() for r in rows])
    scores = torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:], dim=-1)
    return await respond(lambda: scores.double().tolist(), len(sentences))


# -- classification and reranking ------------------------------------------------------------------


@ENDPOINTS.post("/predict", "Class scores of texts or text pairs (TEI).", task=CLASSIFY, openapi_extra=_answer("/predict"))
async def predict(body: PredictRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    with ComputeTimes() as times:
        (rows, tokens), batched = await tei.predict_rows(tei.Predict.of(body), Call.of(request), st, llm)
    id2label = llm.model.id2label

    def build() -> list:
        out = [[{"score": score, "label": label} for score, label in tei.predictions(row, id2label)] for row in rows]
        return out if batched else out[0]

    return await respond(build, sum(r.numel() for r in rows), _computed(times, llm, body.inputs, tokens))


@ENDPOINTS.post(
    "/tei/rerank", "Texts ranked by relevance to a query (TEI; reached as /rerank).", scoring=True,
    shares=Shared("/rerank", fields=("texts",), unless=("documents",)), openapi_extra=_answer("/tei/rerank"),
)
async def rerank(body: TeiRerankRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    with ComputeTimes() as times:
        ranks, tokens = await tei.rerank_pairs(Call.of(request), st, llm, [body.query], body.texts, tei.Rerank.of(body))
    computed = _computed(times, llm, [body.query] * len(body.texts) + list(body.texts), tokens)  # TEI: the query a pair
    return await respond(lambda: ranks, len(ranks), computed)


# -- tokenizer -------------------------------------------------------------------------------------


@ENDPOINTS.post(
    "/tei/tokenize", "Tokens with their text and offsets (TEI; reached as /tokenize).",
    shares=Shared("/tokenize", fields=("inputs",), unless=("prompt", "messages")), openapi_extra=_answer("/tei/tokenize"),
)
async def tokenize(body: TeiTokenizeRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    result = await tei.tokens_of(tei.Tokenize.of(body), Call.of(request), st, llm)
    return await respond(lambda: result, sum(map(len, result)))


@ENDPOINTS.post("/decode", "The text of token ids (TEI).", openapi_extra=_answer("/decode"))
async def decode(body: DecodeRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    texts = await tei.texts_of(tei.Decode.of(body), Call.of(request), st, llm)
    return await respond(lambda: texts, len(texts))


# -- the model and the root route ------------------------------------------------------------------


@ENDPOINTS.get(
    "/info", "The served model and the server's limits (TEI).", protected=True, errors=(401, 404, 503), openapi_extra=_answer("/info")
)
async def info(request: Request, st: State, llm: Model) -> Response:
    name = request.headers.get("x-model")
    if name is not None:
        st = served_model(request.app.state.poolkit, name)
        llm = await loaded_llm(st)
    return Response(dump(tei.info_of(st, llm)), media_type="application/json")


def root_paths(llm: LLM) -> list[str]:
    """The routes TEI's root route answers as for ``llm``, TEI's choice by model type first (its
    ``server.rs``: a reranker, a classifier of one label, reranks; another classifier predicts; an
    embedding model with SPLADE pooling embeds sparsely; any other embeds), then poolkit's
    additions: ``/predict`` for a body of its shape on a reranker, ``/similarity`` for one of its
    shape on a model that embeds."""
    tasks = llm.supported_tasks
    if CLASSIFY in tasks and (EMBED not in tasks or len(llm.model.id2label) > 1):
        return ["/tei/rerank", "/predict"] if len(llm.model.id2label) == 1 else ["/predict"]
    chosen = "/embed_sparse" if SPARSE_EMBED in tasks else "/embed"
    return [chosen, "/similarity"] if EMBED in tasks else [chosen]


def root_route(llm: LLM, payload: Any) -> str:
    """The route of :func:`root_paths` that answers ``payload`` on the root route."""
    chosen = root_paths(llm)[0]
    if not isinstance(payload, dict):
        return chosen
    inputs = payload.get("inputs")
    if isinstance(inputs, dict) and "source_sentence" in inputs:
        return "/similarity"
    if chosen == "/tei/rerank" and "inputs" in payload and not all(f in payload for f in RERANK_FIELDS):
        return "/predict"
    return chosen


#: The endpoints the root route can answer as, by path (:data:`ROOT_PATHS`).
_ROOT_ROUTES = {path: ENDPOINTS.at(path) for path in ROOT_PATHS}


def _describe_root(doc: dict[str, Any], st: ModelState) -> None:
    """The loaded model's root route in ``/openapi.json``: the bodies and answers of the routes it
    answers as for this model (:func:`root_paths`)."""
    root = doc["paths"].get("/", {}).get("post")
    if root is None:
        return
    chosen = root_paths(st.llm)
    bodies = [{"$ref": f"#/components/schemas/{_ROOT_ROUTES[path].request.__name__}"} for path in chosen]
    if chosen[0] == "/tei/rerank":  # a reranker predicts a body of /predict's shape without rerank's fields
        bodies[1] = {"allOf": [bodies[1], {"not": {"required": list(RERANK_FIELDS)}}]}
    root["requestBody"]["content"]["application/json"]["schema"] = {"anyOf": bodies}
    root["responses"]["200"]["content"]["application/json"]["schema"] = {"anyOf": [ANSWERS[path] for path in chosen]}


@ENDPOINTS.get(
    "/",
    "TEI's health alias (as /health): 200 with an empty body when the server takes requests, 503 otherwise.",
    errors=(503,), answer={"description": "The server takes requests."},
)
async def root_health(request: Request) -> Response:
    check_serving(request.app.state.poolkit)  # /health's 503s, in TEI's shape on this path
    return Response(status_code=200)


@ENDPOINTS.post(
    "/",
    "TEI's root route (huggingface_hub.InferenceClient): the model's type picks /rerank, /predict, /embed_sparse "
    "or /embed; a body of /predict's shape on a reranker predicts, a sentence_similarity body goes to /similarity.",
    lane=False,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "anyOf": [{"$ref": f"#/components/schemas/{_ROOT_ROUTES[path].request.__name__}"} for path in ROOT_PATHS]
        }}}},
        "responses": {"200": {"description": "Successful Response", "content": {"application/json": {"schema": {
            "anyOf": [ANSWERS[path] for path in ROOT_PATHS]
        }}}}},
    },
    describe=_describe_root,
)
async def root(request: Request, st: State, llm: Model) -> Response:
    """As TEI, the model decides: a reranker reranks, a classifier predicts, a SPLADE model embeds
    sparsely, any other embeds. poolkit also answers ``InferenceClient.text_classification`` on a
    reranker (a body with ``inputs`` and without ``query`` and ``texts``), which TEI refuses, and
    ``InferenceClient.sentence_similarity`` (a body whose ``inputs`` is an object with a
    ``source_sentence``), which TEI answers only when started with ``TASK=sentence-similarity``."""
    try:
        payload = await request.json()
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON: {exc.msg}", tei=(400, "Validation")) from None
    endpoint = _ROOT_ROUTES[root_route(llm, payload)]
    try:
        body = endpoint.request.model_validate(payload)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise ApiError(422, message, param, tei=(422, "Validation")) from None
    return await endpoint.function(body, request, st, llm)

