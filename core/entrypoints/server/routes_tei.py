"""Text Embeddings Inference routes: ``/embed``, ``/embed_all``, ``/embed_sparse``, ``/predict``,
``/rerank``, ``/similarity``, ``/tokenize``, ``/decode``, ``/info``, the root ``POST /`` and
``GET /`` (TEI's health alias).

Hugging Face's TEI clients (``huggingface_hub.InferenceClient``, the RAG frameworks' TEI
integrations) work unchanged: TEI's request fields, response shapes, status codes and error body
``{"error": "...", "error_type": "..."}`` (:mod:`poolkit.entrypoints.server.errors`). ``/rerank`` and
``/tokenize`` are vLLM's paths too: the guard sends a body with TEI's fields (``texts``,
``inputs``) here, anything else to vLLM's routes (each TEI route's ``shares``,
:class:`~poolkit.entrypoints.server.endpoints.Shared`).

Empty inputs are refused as TEI does (``core/src/tokenization.rs``): an input with nothing in it
(a text, token ids, a pair whose two sides are empty) is a 413 ``Validation``, an empty list a
route checks itself (``texts``, ``inputs.sentences``, a ``/tokenize`` batch) a 400 ``Empty``; a
pair with one empty side (a retrieval pipeline's empty chunk) is scored.

Where TEI refuses what poolkit can do, poolkit does it: ``/rerank`` ranks with any model that
can score (an embedding model by cosine similarity, as vLLM's ``/rerank``), and the root route
takes a ``sentence_similarity`` body on an embedding model. Errors for too-long inputs carry
poolkit's message with TEI's status and type.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Optional, Union

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ... import __version__
from ...contracts.errors import InputTooLong, InvalidRequest
from ...contracts.io import Prompt
from ...contracts.params import PoolingParams
from ...contracts.tasks import ROLES
from ...inputs.chat import checked_text
from ...runtime.estimates import tokens_of_text
from ..protocol import POSITIVE, TEXT, TOKEN_IDS, PoolFactor, list_of, schema
from .compute_times import ComputeTimes, characters
from .deps import Model, State, check_serving, loaded_llm
from .endpoints import TEI, Endpoints, Shared
from .errors import ApiError, validation_message
from .inputs import check_model, check_token_ids, pooling_params, served_model
from .scoring import has_scorer, score_pairs
from .state import ModelState
from .tei_answers import ANSWERS
from .tei_answers import answer as _answer
from .wire import dump, dump_arrays, respond
from .work import check_tokens, run_task, until_done

if TYPE_CHECKING:
    from ...api.llm import LLM

#: TEI's error body and statuses (also in ``/openapi.json``, :mod:`poolkit.entrypoints.server.openapi`,
#: where the paths TEI shares with vLLM describe both APIs' bodies).
ENDPOINTS = Endpoints(api=TEI)

#: The task each route runs (TEI's model types in poolkit's task names).
EMBED, TOKEN_EMBED, SPARSE_EMBED, CLASSIFY = "embed", "token_embed", "sparse_embed", "classify"
#: TEI's error types for what its routes refuse before running anything.
EMPTY, VALIDATION, BACKEND = (400, "Empty"), (413, "Validation"), (424, "Backend")
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


# -- shared checks ---------------------------------------------------------------------------------


def _needs(llm: LLM, task: str, message: str) -> None:
    """TEI's 424 for a model of the wrong type for the route."""
    if task not in llm.supported_tasks:
        raise ApiError(424, message, tei=BACKEND)


def _batch(st: ModelState, n: int, batched: bool) -> None:
    """TEI's batch-size rule (``--max-client-batch-size``, poolkit's ``--max-inputs-per-request``)."""
    if batched and n > st.limits.max_inputs_per_request:
        raise batch_too_large(st, n)


def _empty_list(what: str) -> ApiError:
    """TEI's 400 ``Empty``: a list the route checks itself before anything runs has no items."""
    return ApiError(400, f"`{what}` cannot be empty", param=what, tei=EMPTY)


def _empty_input(what: str = "inputs") -> ApiError:
    """TEI's tokenizer's refusal of an input with nothing in it: a 413 ``Validation``."""
    return ApiError(413, f"Input validation error: `{what}` cannot be empty", param=what, tei=VALIDATION)


def _items(st: ModelState, inputs: Any) -> tuple[list[Any], bool]:
    """The prompts of an ``inputs`` field (a text, token ids, or a batch of them) and whether it was a batch."""
    if isinstance(inputs, str) or all(isinstance(i, int) for i in inputs):  # TEI reads [] as no token ids
        items, batched = [inputs], False
    else:
        items, batched = list(inputs), True
    _batch(st, len(items), batched)
    prompts: list[Any] = []
    for item in items:
        if not item:
            raise _empty_input()
        if isinstance(item, str):
            checked_text(item, "inputs")
            prompts.append(item)
        else:
            check_token_ids(st, item, "inputs")
            prompts.append({"prompt_token_ids": list(item)})
    return prompts, batched


def _truncation(st: ModelState, truncate: bool | None, direction: str) -> dict[str, Any]:
    """TEI's ``truncate`` (default ``--auto-truncate``) as pooling parameters: to the model's limit."""
    if truncate if truncate is not None else st.options.auto_truncate:
        return {"truncate_prompt_tokens": -1, "truncation_side": direction}
    return {}


def _activation(llm: LLM, task: str, wanted: bool) -> bool | None:
    """``use_activation`` for what a TEI request asks (``normalize``, ``raw_scores``): ``None`` when
    that is the model's default, so that equal requests of every route share cache entries."""
    default = llm.task(task).settings(llm.model).get("use_activation")
    return None if default is not None and default.value == wanted else wanted


def _prompt_name(st: ModelState, name: str | None) -> str | None:
    return name if name is not None else st.options.default_prompt_name


class Rows(NamedTuple):
    """What a TEI route computed: one result row per input, and the prompt tokens they took."""

    rows: list[torch.Tensor]
    tokens: int


@contextlib.contextmanager
def _tei_lengths() -> Any:
    """An input over the model's length, without ``truncate``, refused in TEI's words (its
    ``core/src/tokenization.rs``) instead of vLLM's."""
    try:
        yield
    except InputTooLong as exc:
        raise ApiError(
            413, f"Input validation error: `inputs` must have less than {exc.limit} tokens. Given: {exc.given}",
            param="inputs", tei=VALIDATION,
        ) from None


async def _rows(request: Request, st: ModelState, llm: LLM, task: str, prompts: list[Any], params: PoolingParams,
                prompt_name: str | None = None, input_type: str | None = None) -> Rows:
    with _tei_lengths():
        _, results = await run_task(request, st, llm, task, prompts, params, prompt_name=prompt_name, input_type=input_type)
    rows = results.rows()
    if not all(bool(torch.isfinite(r).all()) for r in rows if r.is_floating_point()):
        raise ApiError(424, "the model produced a non-finite value (NaN or Infinity)", tei=BACKEND)
    return Rows(rows, results.num_tokens)


def _floats(rows: list[torch.Tensor]) -> list[np.ndarray]:
    """Result rows as float64 arrays, the numbers the Python API's lists of floats hold."""
    return [r.float().numpy().astype(np.float64) for r in rows]


async def _arrays(payload: Any, size: int, headers: dict[str, str]) -> Response:
    return await respond(lambda: payload, size, headers, serialise=dump_arrays)


def _computed(times: ComputeTimes, llm: LLM, inputs: Any, tokens: int) -> dict[str, str]:
    """TEI's ``x-compute-*`` headers of a request on ``inputs`` that took ``tokens``."""
    return times.headers(characters(inputs), tokens, llm.model.device.type)


# -- embeddings ------------------------------------------------------------------------------------


# The routes' work, each a function TEI's gRPC API (poolkit.entrypoints.grpc) calls with the same
# request bodies, so that both APIs check and compute alike; the routes write JSON of what they return.


async def embed_rows(body: EmbedRequest, request: Request, st: ModelState, llm: LLM) -> Rows:
    """``/embed``: the embeddings of the inputs.

    As TEI (``core/src/infer.rs``, ``embed_pooled``): a SPLADE model embeds its vocabulary-wide
    vector, unnormalized only (``normalize`` is refused); ``dimensions`` cuts any model's vectors
    (then normalized, where asked), a matryoshka model's or not, up to their width.
    """
    _needs(llm, EMBED, "Model is not an embedding model")
    splade = SPARSE_EMBED in llm.supported_tasks
    if body.normalize and splade:
        raise ApiError(424, "`normalize` is not available for SPLADE models", tei=BACKEND)
    prompts, _ = _items(st, body.inputs)
    dimensions = body.dimensions
    if dimensions is not None:
        if dimensions < 1:
            raise ApiError(413, "Input validation error: `dimensions` should be positive", param="dimensions", tei=VALIDATION)
        if st.embedding_size and dimensions > st.embedding_size:
            raise ApiError(413, "Input validation error: `dimensions` should be smaller than the maximum embedding dimension.",
                           param="dimensions", tei=VALIDATION)
    cut = dimensions is not None and (splade or not llm.model.is_matryoshka)  # cut here: the LLM refuses to (vLLM's rule)
    truncation = _truncation(st, body.truncate, body.truncation_direction)
    if splade:  # TEI pools a SPLADE model's embedding with its SPLADE pooling
        params = pooling_params(**truncation)
    else:
        params = pooling_params(
            dimensions=None if cut else dimensions, use_activation=False if cut else _activation(llm, EMBED, body.normalize), **truncation
        )
    rows, tokens = await _rows(request, st, llm, SPARSE_EMBED if splade else EMBED, prompts, params, _prompt_name(st, body.prompt_name))
    if cut:
        rows = [row[:dimensions] for row in rows]
        if body.normalize:
            rows = [torch.nn.functional.normalize(row.double(), dim=-1).to(row.dtype) for row in rows]
    return Rows(rows, tokens)


async def embed_all_rows(body: EmbedAllRequest, request: Request, st: ModelState, llm: LLM) -> Rows:
    """``/embed_all``: every token's vector of each input."""
    _needs(llm, TOKEN_EMBED, "Model is not an embedding model")
    prompts, _ = _items(st, body.inputs)
    params = pooling_params(
        use_activation=False, token_pool_factor=body.token_pool_factor, **_truncation(st, body.truncate, body.truncation_direction)
    )
    prompt_name = _prompt_name(st, body.prompt_name)
    # TEI names a model's prompts; "query" and "document" are a multi-vector model's retrieval sides
    # (its markers, lengths, query expansion) where it has sides or no prompt of that name: PyLate and
    # sentence-transformers 6 saves always carry prompts so named ("" or "[Q] ", the side's marker),
    # and PyLate encodes the side, as LLM.encode's input_type does.
    sides = prompt_name in ROLES and (prompt_name not in st.renderer.model.prompts or llm.task(TOKEN_EMBED).has_roles(llm.model))
    role = prompt_name if sides else None
    return await _rows(request, st, llm, TOKEN_EMBED, prompts, params, None if role else prompt_name, role)


async def sparse_rows(body: EmbedSparseRequest, request: Request, st: ModelState, llm: LLM) -> Rows:
    """``/embed_sparse``: each input's vocabulary-wide weights (dense rows; :func:`nonzero` reads them)."""
    _needs(llm, SPARSE_EMBED, "Model is not an embedding model with SPLADE pooling")
    prompts, _ = _items(st, body.inputs)
    params = pooling_params(**_truncation(st, body.truncate, body.truncation_direction))
    return await _rows(request, st, llm, SPARSE_EMBED, prompts, params, _prompt_name(st, body.prompt_name))


def nonzero(row: torch.Tensor) -> tuple[list[int], list[float]]:
    """A sparse row's non-zero weights: their indices, ascending, and values (TEI's ``SparseValue``s)."""
    index = torch.nonzero(row, as_tuple=True)[0]
    return index.tolist(), row[index].float().numpy().astype(np.float64).tolist()


@ENDPOINTS.post("/embed", "Embeddings (TEI).", task=EMBED, openapi_extra=_answer("/embed"))
async def embed(body: EmbedRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    with ComputeTimes() as times:
        rows, tokens = await embed_rows(body, request, st, llm)
    return await _arrays(_floats(rows), sum(r.numel() for r in rows), _computed(times, llm, body.inputs, tokens))


@ENDPOINTS.post("/embed_all", "Every token's vector (TEI).", task=TOKEN_EMBED, openapi_extra=_answer("/embed_all"))
async def embed_all(body: EmbedAllRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    with ComputeTimes() as times:
        rows, tokens = await embed_all_rows(body, request, st, llm)
    return await _arrays(_floats(rows), sum(r.numel() for r in rows), _computed(times, llm, body.inputs, tokens))


@ENDPOINTS.post(
    "/embed_sparse", "Sparse (SPLADE) vectors as index/value pairs (TEI).", task=SPARSE_EMBED, openapi_extra=_answer("/embed_sparse")
)
async def embed_sparse(body: EmbedSparseRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    with ComputeTimes() as times:
        rows, tokens = await sparse_rows(body, request, st, llm)

    def build() -> list:
        return [[{"index": i, "value": v} for i, v in zip(*nonzero(row))] for row in rows]

    return await respond(build, sum(r.numel() for r in rows), _computed(times, llm, body.inputs, tokens))


@ENDPOINTS.post(
    "/similarity", "Cosine similarity of sentences to a source sentence (TEI).", task=EMBED, openapi_extra=_answer("/similarity")
)
async def similarity(body: SimilarityRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    _needs(llm, EMBED, "Model is not an embedding model")
    given = body.parameters or SimilarityParameters()
    sentences = body.inputs.sentences
    if not sentences:
        raise _empty_list("inputs.sentences")
    _batch(st, len(sentences) + 1, True)
    texts = [body.inputs.source_sentence, *sentences]
    for text in texts:
        if not text:
            raise _empty_input()
        checked_text(text, "inputs")
    params = pooling_params(use_activation=False, **_truncation(st, given.truncate, given.truncation_direction))
    rows = (await _rows(request, st, llm, EMBED, texts, params, _prompt_name(st, given.prompt_name))).rows
    vectors = torch.stack([r.float() for r in rows])
    scores = torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:], dim=-1)
    return await respond(lambda: scores.double().tolist(), len(sentences))


# -- classification and reranking ------------------------------------------------------------------


def _predict_items(inputs: Any) -> tuple[list[Any], bool]:
    """TEI's ``/predict`` inputs: a text, ``[text]``, ``[text, pair]``, or a batch of those."""
    if isinstance(inputs, str):
        return [[inputs]], False
    if not inputs:
        inputs = [inputs]  # TEI reads [] as an input of length 0
    if all(isinstance(i, str) for i in inputs):
        items, batched = [inputs], False
    else:
        items, batched = list(inputs), True
    for item in items:
        if not 1 <= len(item) <= 2:
            raise ApiError(
                422,
                f"inputs: invalid length {len(item)}, expected a string, a pair of strings [string, string] or a batch "
                "of mixed strings and pairs [[string], [string, string], ...]",
                param="inputs", tei=(422, "Validation"),
            )
    return items, batched


async def predict_rows(body: PredictRequest, request: Request, st: ModelState, llm: LLM) -> tuple[Rows, bool]:
    """``/predict``: each input's class scores (:func:`predictions` ranks them), and whether the inputs were a batch."""
    _needs(llm, CLASSIFY, "Model is not a classifier model")
    items, batched = _predict_items(body.inputs)
    _batch(st, len(items), batched)
    prompts: list[Any] = []
    for item in items:
        if not any(item):  # TEI: a pair is empty when both sides are; one empty side is scored
            raise _empty_input()
        for text in item:
            if text:
                checked_text(text, "inputs")
        prompts.append(item[0] if len(item) == 1 else Prompt(text=item[0], text_pair=item[1]))
    params = pooling_params(
        use_activation=_activation(llm, CLASSIFY, not body.raw_scores), **_truncation(st, body.truncate, body.truncation_direction)
    )
    return await _rows(request, st, llm, CLASSIFY, prompts, params), batched


def predictions(row: torch.Tensor, id2label: dict[int, str]) -> list[tuple[float, str]]:
    """One input's ``(score, label)`` for every class, the highest score first (TEI's order)."""
    scores = row.reshape(-1).double().tolist()
    return [(scores[i], id2label.get(i, f"LABEL_{i}")) for i in sorted(range(len(scores)), key=lambda i: -scores[i])]


@ENDPOINTS.post("/predict", "Class scores of texts or text pairs (TEI).", task=CLASSIFY, openapi_extra=_answer("/predict"))
async def predict(body: PredictRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    with ComputeTimes() as times:
        (rows, tokens), batched = await predict_rows(body, request, st, llm)
    id2label = llm.model.id2label

    def build() -> list:
        out = [[{"score": score, "label": label} for score, label in predictions(row, id2label)] for row in rows]
        return out if batched else out[0]

    return await respond(build, sum(r.numel() for r in rows), _computed(times, llm, body.inputs, tokens))


@ENDPOINTS.post(
    "/tei/rerank", "Texts ranked by relevance to a query (TEI; reached as /rerank).", scoring=True,
    shares=Shared("/rerank", fields=("texts",), unless=("documents",)), openapi_extra=_answer("/tei/rerank"),
)
async def rerank(body: TeiRerankRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    with ComputeTimes() as times:
        ranks, tokens = await rerank_pairs(request, st, llm, [body.query], body.texts, body)
    computed = _computed(times, llm, [body.query] * len(body.texts) + list(body.texts), tokens)  # TEI: the query a pair
    return await respond(lambda: ranks, len(ranks), computed)


def check_pair(query: str, text: str, query_checked: bool = False) -> None:
    """Refuse a (query, text) pair TEI's rerank refuses: both sides empty, or a side that is not text."""
    if query and not query_checked:
        checked_text(query, "query")
    if text:
        checked_text(text, "texts")
    elif not query:  # TEI: a pair is empty when both sides are; one empty side is scored
        raise _empty_input()


def batch_too_large(st: ModelState, n: int) -> ApiError:
    """TEI's refusal of more inputs than ``--max-client-batch-size`` (poolkit's ``--max-inputs-per-request``)."""
    limit = st.limits.max_inputs_per_request
    return ApiError(413, f"batch size {n} > maximum allowed batch size {limit}", param="inputs", tei=VALIDATION)


async def rerank_pairs(
    request: Request, st: ModelState, llm: LLM, queries: list[str], texts: list[str], body: TeiRerankRequest
) -> tuple[list[dict[str, Any]], int]:
    """``/rerank``: ``texts`` ranked by their score against the query (one query, or one a text), the
    highest first, and the prompt tokens scored; ``body`` says the rest (``raw_scores``,
    ``return_text``, the truncation)."""
    if not texts:
        raise _empty_list("texts")
    if not has_scorer(llm):
        raise ApiError(424, "model is not a re-ranker model", tei=BACKEND)
    _batch(st, len(texts), True)
    for query in set(queries):
        if query:
            checked_text(query, "query")
    for query, text in zip(queries * len(texts) if len(queries) == 1 else queries, texts):
        check_pair(query, text, query_checked=True)
    params = pooling_params(use_activation=False if body.raw_scores else None, **_truncation(st, body.truncate, body.truncation_direction))
    with _tei_lengths():
        outputs = await score_pairs(request, st, llm, llm.pair(queries[0] if len(queries) == 1 else queries, texts), params, None)
    scores = [float(o.outputs.score) for o in outputs]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [{"index": i, **({"text": texts[i]} if body.return_text else {}), "score": scores[i]} for i in order]
    return ranks, sum(len(o.prompt_token_ids) for o in outputs)


# -- tokenizer -------------------------------------------------------------------------------------


def utf8_offsets(text: str) -> np.ndarray | None:
    """The UTF-8 byte offset of each character offset of ``text`` (``len(text) + 1`` of them), in
    one pass; ``None`` for ASCII text, whose offsets are the same. (Encoding each token's prefix
    instead made a long text's offsets quadratic in its length.)"""
    if text.isascii():
        return None
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    widths = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    return np.concatenate(([0], np.cumsum(widths)))



@ENDPOINTS.post(
    "/tei/tokenize", "Tokens with their text and offsets (TEI; reached as /tokenize).",
    shares=Shared("/tokenize", fields=("inputs",), unless=("prompt", "messages")), openapi_extra=_answer("/tei/tokenize"),
)
async def tokenize(body: TeiTokenizeRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    result = await tokens_of(body, request, st, llm)
    return await respond(lambda: result, sum(map(len, result)))


async def tokens_of(body: TeiTokenizeRequest, request: Request, st: ModelState, llm: LLM) -> list[list[dict[str, Any]]]:
    """``/tokenize``: each input's tokens, with their text and UTF-8 byte offsets (none for special tokens)."""
    texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
    if not texts:
        raise _empty_list("inputs")
    _batch(st, len(texts), not isinstance(body.inputs, str))
    for text in texts:
        if not text:
            raise _empty_input()
        checked_text(text, "inputs")
    try:  # what /embed prepends
        prefix = st.renderer.prefix(_prompt_name(st, body.prompt_name)) or ""
    except InvalidRequest as exc:
        raise ApiError(413, f"Input validation error: {exc}", param="prompt_name", tei=VALIDATION) from None
    tok = llm.get_tokenizer()
    tokens = sum(tokens_of_text(len(t)) for t in texts)
    check_tokens(st, tokens, "inputs")

    def run() -> list:
        out = []
        for text in texts:
            full = prefix + text  # what the tokenizer reads is lower case where the model wants it; the offsets are the text's
            enc = tok(llm.engine.tokenizer.texts([full])[0], add_special_tokens=body.add_special_tokens,
                      return_offsets_mapping=True, return_special_tokens_mask=True)
            offsets = utf8_offsets(full)
            tokens = []
            for token_id, special, (start, stop) in zip(enc["input_ids"], enc["special_tokens_mask"], enc["offset_mapping"]):
                if special:
                    tokens.append({"id": token_id, "text": tok.convert_ids_to_tokens(token_id), "special": True, "start": None, "stop": None})
                else:  # TEI's offsets count UTF-8 bytes
                    begin, end = (start, stop) if offsets is None else (int(offsets[start]), int(offsets[stop]))
                    tokens.append({"id": token_id, "text": full[start:stop], "special": False, "start": begin, "stop": end})
            out.append(tokens)
        return out

    return await until_done(request, st, st.batcher.call(run, tokens))


@ENDPOINTS.post("/decode", "The text of token ids (TEI).", openapi_extra=_answer("/decode"))
async def decode(body: DecodeRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    texts = await texts_of(body, request, st, llm)
    return await respond(lambda: texts, len(texts))


async def texts_of(body: DecodeRequest, request: Request, st: ModelState, llm: LLM) -> list[str]:
    """``/decode``: the text of each list of token ids."""
    ids = body.ids
    batched = bool(ids) and not all(isinstance(i, int) for i in ids)
    items = list(ids) if batched else [ids]
    _batch(st, len(items), batched)
    if any(not item for item in items):  # TEI reads [] as no ids, not as an empty batch
        raise _empty_input("input_ids")
    for item in items:
        check_token_ids(st, item, "ids")
    tok = llm.get_tokenizer()
    count = sum(map(len, items))
    check_tokens(st, count, "ids")
    return await until_done(
        request, st, st.batcher.call(lambda: [tok.decode(item, skip_special_tokens=body.skip_special_tokens) for item in items], count)
    )


# -- the model and the root route ------------------------------------------------------------------


@ENDPOINTS.get(
    "/info", "The served model and the server's limits (TEI).", protected=True, errors=(401, 404, 503), openapi_extra=_answer("/info")
)
async def info(request: Request, st: State, llm: Model) -> Response:
    name = request.headers.get("x-model")
    if name is not None:
        st = served_model(request.app.state.poolkit, name)
        llm = await loaded_llm(st)
    return Response(dump(info_of(st, llm)), media_type="application/json")


def model_kind(llm: LLM) -> str:
    """TEI's model type of ``llm``: ``"reranker"`` (a classifier of one label), ``"classifier"`` or ``"embedding"``."""
    if CLASSIFY in llm.supported_tasks and llm.model.id2label:
        return "reranker" if len(llm.model.id2label) == 1 else "classifier"
    return "embedding"


def info_of(st: ModelState, llm: LLM) -> dict[str, Any]:
    """``/info``: the served model and the server's limits, in TEI's fields."""
    model = llm.model
    tasks = llm.supported_tasks
    labels = {str(i): label for i, label in sorted(model.id2label.items())} if CLASSIFY in tasks else {}
    if labels:
        model_type: dict = {model_kind(llm): {"id2label": labels, "label2id": {label: int(i) for i, label in labels.items()}}}
    else:
        pooling = model.pooling_type(llm.task(EMBED)).value if EMBED in tasks and SPARSE_EMBED not in tasks else "splade"
        pooling = pooling[0] if isinstance(pooling, (tuple, list)) and pooling else pooling
        model_type = {"embedding": {"pooling": str(pooling).lower()}}
    limits = st.limits
    return {
        "model_id": st.served,
        "model_sha": None,
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "served_model_name": st.served,
        "model_type": model_type,
        "max_concurrent_requests": limits.max_concurrent_requests,
        "max_input_length": st.max_len,
        "max_batch_tokens": limits.max_batch_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": limits.max_inputs_per_request,
        "auto_truncate": st.options.auto_truncate,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }


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

