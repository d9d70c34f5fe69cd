"""The Scoring API's work: the model's scorer, scoring pairs, and vLLM's ``/score`` and ``/rerank``.

vLLM's ``/score`` and ``/rerank`` and TEI's ``/rerank`` score the pairs ``LLM.pair`` makes of a
request the same way (:func:`score_pairs`). vLLM's routes (:mod:`poolkit.entrypoints.server.routes_vllm`,
which Jina's and Cohere's clients call too) parse their JSON into the requests here (:class:`Score`,
:class:`Rerank`), call :func:`score` or :func:`rerank` with the
:class:`~poolkit.entrypoints.serving.call.Call` and the served model, and write what they return;
TEI's rerank keeps its own checks (:mod:`poolkit.entrypoints.serving.tei`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

from ...contracts.errors import InvalidRequest, UnknownName
from ...contracts.params import PoolingParams
from ...contracts.scoring import check_template_kwargs
from ...inputs.chat import checked_text
from ...inputs.pairs import SIDE_LIMITS, has_media, score_side
from ...inputs.request import PoolRequest
from ..protocol import SCORE_PAIRS
from .call import Call
from .errors import ApiError
from .inputs import check_count, pooling_params
from .state import ModelState
from .work import check_tokens, check_truncation, until_done

if TYPE_CHECKING:
    from starlette.requests import Request

    from ...api.llm import LLM


def scorer_of(llm: LLM) -> Any:
    """The model's scorer (``LLM.scorer``); a 404 with the LLM's reason when the model cannot score.

    vLLM mounts ``/score`` and ``/rerank`` only for a model with a Scoring API (an embedding
    model, late interaction, or a classifier with one label): for any other model they are not
    found. The ``LLM`` says why (``Scoring API is only enabled for num_labels == 1.``).
    """
    try:
        return llm.scorer
    except (InvalidRequest, UnknownName) as exc:
        raise ApiError(404, str(exc)) from None


def has_scorer(llm: LLM) -> bool:
    """Whether the model has a Scoring API (``/score``, ``/rerank``)."""
    try:
        llm.scorer
    except (InvalidRequest, UnknownName):
        return False
    return True


async def score_pairs(
    call: Call | Request, st: ModelState, llm: LLM, pairs: tuple[list[str], list[str]], params: PoolingParams, instruction: str | None
) -> list[Any]:
    """Score the sides ``LLM.pair`` made of a request with ``LLM.score``, on the worker thread.

    The model's scorer decides whether a score template applies (``--score-template``, else
    ``--chat-template``, as in vLLM).
    """
    first, second = pairs
    scorer = scorer_of(llm)
    tokens = llm.estimate_pair_tokens(first, second)
    check_tokens(st, tokens)
    template = st.score_template_for(scorer)
    outputs = await until_done(
        call, st, st.batcher.call(lambda: llm.score(first, second, params, chat_template=template, instruction=instruction, lora_request=st.lora), tokens)
    )
    st.metrics.answered(len(outputs), sum(len(o.prompt_token_ids) for o in outputs))
    return outputs


# -- vLLM's Scoring API: its requests, whatever their wire ------------------------------------------


def _sent(body: Any, name: str) -> bool:
    """Whether a body carried the field ``name`` itself, not its default (a pydantic model's
    ``model_fields_set``; a body that does not say sent nothing)."""
    return name in getattr(body, "model_fields_set", ())


@dataclasses.dataclass(frozen=True)
class _Scoring:
    """How a ``/score`` or ``/rerank`` request scores its pairs (vLLM's fields)."""

    use_activation: bool | None = None
    truncate_prompt_tokens: int | None = None
    #: ``truncate_prompt_tokens`` was sent, if only as ``null``: that turns off the truncation a
    #: CrossEncoder export applies by default (vLLM).
    truncation_sent: bool = False
    truncation_side: str | None = None
    max_tokens_per_query: int | None = None
    max_tokens_per_doc: int | None = None
    #: The score template's variables (vLLM's ``chat_template_kwargs``).
    chat_template_kwargs: dict[str, Any] | None = None
    instruction: str | None = None
    cache_salt: str | None = None

    @classmethod
    def _fields_of(cls, body: Any) -> dict[str, Any]:
        fields = {f.name: getattr(body, f.name) for f in dataclasses.fields(cls) if f.name != "truncation_sent"}
        return {**fields, "truncation_sent": _sent(body, "truncate_prompt_tokens")}

    @classmethod
    def of(cls, body: Any) -> Any:
        """The request of a body with the same fields (an HTTP route's parsed JSON)."""
        return cls(**cls._fields_of(body))


@dataclasses.dataclass(frozen=True)
class Score(_Scoring):
    """``/score``: one pair of sides, 1:1, 1:N or N:N, under one of vLLM's names for them
    (``text_1`` and ``text_2``, ``data_1`` and ``data_2``, ``queries`` and ``documents`` or ``items``).
    A side is a text, a list of texts, or vLLM's multimodal input ``{"content": [parts]}`` (or a list
    of texts and such inputs)."""

    text_1: Any = None
    text_2: Any = None
    data_1: Any = None
    data_2: Any = None
    queries: Any = None
    documents: Any = None
    items: Any = None


@dataclasses.dataclass(frozen=True)
class Rerank(_Scoring):
    """``/rerank``: ``documents`` ranked by relevance to ``query``, the best ``top_n`` (0: all)."""

    query: str = ""
    #: Each a text, or vLLM's multimodal input ``{"content": [parts]}``.
    documents: list[Any] = dataclasses.field(default_factory=list)
    top_n: int = 0

    @classmethod
    def of(cls, body: Any) -> Any:
        """The request of a body with the same fields; its ``documents`` may be one document, and a
        document ``{"text": ...}`` (a mapping, or an object with ``text``: Jina's and Cohere's)."""
        fields = {**cls._fields_of(body), "documents": [_document(d) for d in _listed(body.documents)]}
        return cls(**fields)


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _document(doc: Any) -> Any:
    """A rerank document as a text, or a multimodal input ``{"content": [parts]}`` as it is."""
    if isinstance(doc, dict):
        return doc if "content" in doc else doc["text"]
    return doc if isinstance(doc, str) else doc.text


# -- vLLM's Scoring API: the work -------------------------------------------------------------------


def _texts(value: Any, what: str, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ApiError(400, f"At least one {what} element must be given", param=where)
    for i, text in enumerate(items):
        checked_text(text, f"{where}[{i}]" if not isinstance(value, str) else where)
    return items


async def _side(st: ModelState, llm: LLM, value: Any, what: str, where: str) -> list[Any]:
    """One side of a score request: texts, or inputs with images (vLLM's multimodal score input,
    :func:`poolkit.inputs.pairs.score_side`) whose images are data URIs, or remote URLs the server may
    fetch (``--allowed-media-domains``); never files."""
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return _texts(value, what, where)
    try:
        items = score_side(value, what)
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), param=where) from None
    check_count(st, len(items), where)
    renderer = st.renderer
    assert renderer is not None  # set when the model loads, before any request
    if has_media(items) and not renderer.reads.images:
        raise ApiError(400, f"MultiModalParam is not supported for {llm.model.architecture_name}", param=where)
    out: list[Any] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            checked_text(item, at)
            out.append(item)
            continue
        if any(not isinstance(image, str) for image in item.images):
            raise ApiError(400, f"{at}: an image_url part takes {{'url': 'data:image/...;base64,...'}}", param=at)
        out.append(item)
    # the images fetched under the media policy, at most the model's limit of them an input
    return (await renderer.accept(PoolRequest(out, where=where))).inputs


def _params(llm: LLM, req: _Scoring) -> PoolingParams:
    """The pooling parameters of a score or rerank request; its score options ride in
    ``extra_kwargs``, as in vLLM."""
    check_truncation(llm, req.truncate_prompt_tokens)
    extra: dict[str, Any] = {k: v for k in SIDE_LIMITS if (v := getattr(req, k)) is not None}
    for name, limit in extra.items():
        try:
            llm.check_score_limit(name, limit)
        except InvalidRequest as exc:
            raise ApiError(400, str(exc), param=name) from None
    if req.chat_template_kwargs is not None:
        try:
            check_template_kwargs(req.chat_template_kwargs)
        except InvalidRequest as exc:
            raise ApiError(400, str(exc), param="chat_template_kwargs") from None
        extra["chat_template_kwargs"] = req.chat_template_kwargs
    params = pooling_params(
        use_activation=req.use_activation,
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        truncation_side=req.truncation_side,
        extra_kwargs=extra or None,
    ).with_salt(req.cache_salt)
    if req.truncate_prompt_tokens is None and req.truncation_sent:
        params = params.model_copy(update={"truncate_prompt_tokens": None})
    return params


class Scores(NamedTuple):
    """What ``/score`` computed: a score a pair, in the pairs' order, and the prompt tokens scored."""

    scores: list[Any]
    tokens: int


async def score(req: Score, call: Call, st: ModelState, llm: LLM) -> Scores:
    """``/score``: the scores of the pairs of the request's two sides."""
    scorer_of(llm)
    firsts = [(n, v) for n, v in (("text_1", req.text_1), ("data_1", req.data_1), ("queries", req.queries)) if v is not None]
    seconds = [
        (n, v)
        for n, v in (("text_2", req.text_2), ("data_2", req.data_2), ("documents", req.documents), ("items", req.items))
        if v is not None
    ]
    if len(firsts) != 1 or len(seconds) != 1 or (firsts[0][0], seconds[0][0]) not in SCORE_PAIRS:
        raise ApiError(400, "send one pair of inputs: text_1 and text_2 (or data_1 and data_2, or queries and documents)", param="text_1")
    (name_1, value_1), (name_2, value_2) = firsts[0], seconds[0]
    first = await _side(st, llm, value_1, "text", name_1)
    second = await _side(st, llm, value_2, "text_pair", name_2)
    try:
        pairs = llm.pair(first, second)
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), param=name_2) from None
    check_count(st, len(first) + len(second) if len(first) > 1 else len(second), name_2)
    outputs = await score_pairs(call, st, llm, pairs, _params(llm, req), req.instruction)
    return Scores([o.outputs.score for o in outputs], sum(len(o.prompt_token_ids) for o in outputs))


class Ranked(NamedTuple):
    """What ``/rerank`` computed: the documents' indices, the most relevant first (the best
    ``top_n``), each document's score and the documents by index, and the prompt tokens scored."""

    order: list[int]
    scores: list[Any]
    documents: list[Any]
    tokens: int


async def rerank(req: Rerank, call: Call, st: ModelState, llm: LLM) -> Ranked:
    """``/rerank``: the documents ranked by their score against the query."""
    scorer_of(llm)
    checked_text(req.query, "query")
    if req.top_n < 0:
        raise ApiError(400, f"top_n must be 0 (all) or a positive number, got {req.top_n}", param="top_n")
    docs = req.documents
    if not docs:
        raise ApiError(400, "At least one document element must be given", param="documents")
    check_count(st, len(docs), "documents")
    inputs = await _side(st, llm, docs, "document", "documents")  # texts, or inputs with images
    params = _params(llm, req)
    try:
        pairs = llm.pair(req.query, inputs)
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), param="documents") from None
    outputs = await score_pairs(call, st, llm, pairs, params, req.instruction)
    scores = [o.outputs.score for o in outputs]
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    if 0 < req.top_n < len(order):
        order = order[: req.top_n]
    return Ranked(order, scores, docs, sum(len(o.prompt_token_ids) for o in outputs))
