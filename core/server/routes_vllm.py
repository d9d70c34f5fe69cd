"""vLLM routes: ``/pooling`` (any task), ``/classify``, ``/score`` and ``/rerank`` (Jina / Cohere)."""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..config import PoolingParams
from ..errors import InvalidRequest
from ..protocol import ClassificationRequest, PoolingRequest, RerankDocument, RerankRequest, ScoreRequest
from ..lookup import option_owners
from ..tasks import stray_options
from .deps import Model, State
from .errors import ApiError, short
from .guard import StrictRoute
from .inputs import check_count, check_dimensions, check_model, check_text, pooling_params, prompts_of
from .state import ServerState
from .wire import check_finite, encode_tensor, jsonable, list_response, request_id, respond, usage
from .work import check_tokens, check_truncation, run_task, until_done

router = APIRouter(route_class=StrictRoute)


# -- pooling and classification --------------------------------------------------------------------


@router.post("/classify", summary="Class probabilities (vLLM).")
async def classify(body: ClassificationRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    params = pooling_params(
        use_activation=body.use_activation,
        truncate_prompt_tokens=body.truncate_prompt_tokens,
        truncation_side=body.truncation_side,
    )
    raw = await prompts_of(request, st, llm, body)
    _, results = await run_task(request, st, llm, "classify", raw, params)
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


@router.post("/pooling", summary="Any pooling task (vLLM): 'task' chooses it per request; 'data' for the plugin task.")
async def pooling(body: PoolingRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    plugin_task = llm.plugin_task
    name = body.task or (plugin_task if body.data is not None else llm.default_task)
    if body.data is not None or (name is not None and name == plugin_task):
        return await _plugin(request, st, llm, body, name)
    tasks = llm.supported_tasks
    if name not in tasks:
        raise ApiError(400, f"Unsupported task: {short(name, 40)!r} Supported tasks: {tuple(tasks)}", param="task")
    task = llm.task(name)
    options = {"top_k": body.top_k, "threshold": body.threshold, "return_tokens": body.return_tokens}
    if stray_options(task, options):
        owners = option_owners(options)
        where = f"task {' or '.join(repr(owner) for owner in owners)} only" if owners else "no task"
        raise ApiError(400, f"{_listed(list(options))} apply to {where}", param="task")
    options = {k: v for k, v in options.items() if v is not None}
    task.check_options(options)
    if not task.tensor_output and body.encoding_format != "float":
        raise ApiError(
            400, f"task '{task.name}' returns structured data, not tensors: use encoding_format 'float'", param="encoding_format"
        )
    check_dimensions(st, body.dimensions, "dimensions")
    params = pooling_params(
        dimensions=body.dimensions,
        use_activation=body.use_activation,
        truncate_prompt_tokens=body.truncate_prompt_tokens,
        truncation_side=body.truncation_side,
        step_tag_id=body.step_tag_id,
        returned_token_ids=body.returned_token_ids,
    )
    raw = await prompts_of(request, st, llm, body)
    _, results = await run_task(request, st, llm, task.name, raw, params)

    def item(i: int, t: torch.Tensor) -> dict:
        if body.encoding_format == "float":
            return {"index": i, "object": "pooling", "data": task.render(t, llm.model, options)}
        return {"index": i, "object": "pooling", "data": encode_tensor(t, body), "shape": list(t.shape)}

    return await list_response(request, body, "pool", st.served, results, item)


def _listed(names: list[str]) -> str:
    """``a, b and c``."""
    return f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]


async def _plugin(request: Request, st: ServerState, llm: Any, body: PoolingRequest, task: str | None) -> Response:
    """``/pooling`` with ``data``: the model's IO processor plugin makes prompts and its own result."""
    plugin_task = llm.plugin_task
    if task is None or task != plugin_task:
        raise ApiError(400, f"The 'data' field is only supported for the '{plugin_task}' pooling task.", param="data")
    if body.data is None:
        raise ApiError(400, f"task '{task}' takes its input in 'data'", param="data")
    size = len(json.dumps(body.data))
    check_tokens(st, size // 4, "data")
    data = body.data
    outputs = await until_done(request, st, st.batcher.call(lambda: llm.encode({"data": data}, pooling_task=task), max(1, size // 4)))
    rid, created = request_id(request, "pool"), int(time.time())
    result = outputs[0].outputs if outputs else None
    return await respond(
        lambda: {"id": rid, "object": "list", "created": created, "model": st.served, "data": jsonable(result)},
        size,
    )


# -- scoring ---------------------------------------------------------------------------------------


def _texts(value: Any, what: str, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ApiError(400, f"At least one {what} element must be given", param=where)
    for i, text in enumerate(items):
        check_text(text, f"{where}[{i}]" if not isinstance(value, str) else where)
    return items


def _score_params(llm: Any, body: Any) -> PoolingParams:
    check_truncation(llm, body.truncate_prompt_tokens)
    return pooling_params(
        use_activation=body.use_activation,
        truncate_prompt_tokens=body.truncate_prompt_tokens,
        truncation_side=body.truncation_side,
    )


async def _score(
    request: Request, st: ServerState, llm: Any, pairs: tuple[list[str], list[str]], params: PoolingParams, instruction: str | None
) -> list[Any]:
    """Score the sides ``LLM.pair`` made of a request with ``LLM.score``, on the worker thread.

    The model's scorer decides whether the server's score template (``--chat-template``) applies;
    a model that cannot score answers with its reason.
    """
    first, second = pairs
    scorer = llm.scorer
    tokens = llm.estimate_pair_tokens(first, second)
    check_tokens(st, tokens)
    template = st.chat_template if scorer.takes_template else None
    outputs = await until_done(
        request, st, st.batcher.call(lambda: llm.score(first, second, params, chat_template=template, instruction=instruction), tokens)
    )
    st.metrics.answered(len(outputs), sum(len(o.prompt_token_ids) for o in outputs))
    return outputs


async def score(body: ScoreRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    firsts = [(n, v) for n, v in (("text_1", body.text_1), ("data_1", body.data_1), ("queries", body.queries)) if v is not None]
    seconds = [
        (n, v)
        for n, v in (("text_2", body.text_2), ("data_2", body.data_2), ("documents", body.documents), ("items", body.items))
        if v is not None
    ]
    if len(firsts) != 1 or len(seconds) != 1:
        raise ApiError(400, "send one pair of inputs: text_1 and text_2 (or data_1 and data_2, or queries and documents)", param="text_1")
    (name_1, value_1), (name_2, value_2) = firsts[0], seconds[0]
    first = _texts(value_1, "text", name_1)
    second = _texts(value_2, "text_pair", name_2)
    try:
        pairs = llm.pair(first, second)
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), param=name_2) from None
    check_count(st, len(first) + len(second) if len(first) > 1 else len(second), name_2)
    outputs = await _score(request, st, llm, pairs, _score_params(llm, body), body.instruction)
    rid, created = request_id(request, "score"), int(time.time())
    tokens = sum(len(o.prompt_token_ids) for o in outputs)
    data = [{"index": i, "object": "score", "score": o.outputs.score} for i, o in enumerate(outputs)]
    return await respond(
        lambda: {"id": rid, "object": "list", "created": created, "model": st.served, "data": data, "usage": usage(tokens)},
        len(data),
    )


async def rerank(body: RerankRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    check_text(body.query, "query")
    if body.top_n < 0:
        raise ApiError(400, f"top_n must be 0 (all) or a positive number, got {body.top_n}", param="top_n")
    docs = [d.text if isinstance(d, RerankDocument) else d for d in body.documents]
    if not docs:
        raise ApiError(400, "At least one document element must be given", param="documents")
    check_count(st, len(docs), "documents")
    for i, doc in enumerate(docs):
        check_text(doc, f"documents[{i}]")
    outputs = await _score(request, st, llm, llm.pair(body.query, docs), _score_params(llm, body), body.instruction)
    order = sorted(range(len(docs)), key=lambda i: -outputs[i].outputs.score)
    if 0 < body.top_n < len(order):
        order = order[: body.top_n]
    results = []
    for i in order:
        result: dict[str, Any] = {"index": i, "relevance_score": outputs[i].outputs.score}
        if body.return_documents:
            result["document"] = {"text": docs[i]}
        results.append(result)
    tokens = sum(len(o.prompt_token_ids) for o in outputs)
    rid = request_id(request, "rerank")
    return await respond(
        lambda: {"id": rid, "model": st.served, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results},
        len(results),
    )


for _path in ("/score", "/v1/score"):
    router.post(_path, summary="Scores of text pairs, 1:1, 1:N or N:N (vLLM).")(score)
for _path in ("/rerank", "/v1/rerank", "/v2/rerank"):
    router.post(_path, summary="Documents ranked by relevance to a query (Jina / Cohere).")(rerank)
