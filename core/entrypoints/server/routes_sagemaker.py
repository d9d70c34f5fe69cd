"""SageMaker's ``POST /invocations``, as vLLM serves it: the request's shape picks the endpoint.

The endpoints it passes bodies to are looked up among the application's own
(:attr:`~poolkit.entrypoints.serving.state.ServerState.endpoints`) by path: this module imports no
other protocol's routes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from ..protocol import SCORE_PAIRS, given
from ..serving.errors import ApiError
from ..serving.state import ModelState
from .deps import Model, State
from .endpoints import Endpoint, Endpoints
from .errors import validation_message

if TYPE_CHECKING:
    from ...api.llm import LLM

ENDPOINTS = Endpoints()


def _given(body: dict, *names: str) -> bool:
    return all(body.get(name) is not None for name in names)


def _prompted(body: dict) -> bool:
    return _given(body, "input") or _given(body, "messages")


class Invoked(NamedTuple):
    """An endpoint ``/invocations`` passes bodies to: its path, and the shape of the bodies it
    takes, as a test and as the same rule in JSON Schema."""

    path: str
    takes: Callable[[dict], bool]
    shape: dict[str, Any]


_PROMPTED = {"anyOf": [given("input"), given("messages")]}
#: The endpoints in vLLM's order of priority (``vllm/entrypoints/sagemaker/api_router.py``, with the
#: pooling types of ``vllm/entrypoints/pooling/factories.py``): ``/v1/embeddings`` (``input`` or
#: ``messages``), ``/classify`` (the same shape), ``/rerank`` (``query`` and ``documents``),
#: ``/score`` (a pair of sides), ``/pooling`` (``input``, ``messages`` or ``data``).
INVOKED = (
    Invoked("/v1/embeddings", _prompted, _PROMPTED),
    Invoked("/classify", _prompted, _PROMPTED),
    Invoked("/rerank", lambda b: _given(b, "query", "documents"), given("query", "documents")),
    Invoked("/score", lambda b: any(_given(b, *pair) for pair in SCORE_PAIRS), {"anyOf": [given(*pair) for pair in SCORE_PAIRS]}),
    Invoked("/pooling", lambda b: _prompted(b) or _given(b, "data"), {"anyOf": [given("input"), given("messages"), given("data")]}),
)


def invocation_types(llm: LLM, endpoints: Mapping[tuple[str, str], Endpoint]) -> list[tuple[Endpoint, Invoked]]:
    """The endpoints ``/invocations`` passes bodies to for ``llm``, in vLLM's order of priority
    (:data:`INVOKED`): those the model serves (:meth:`Endpoint.served_by`: its tasks and its
    scorer decide), and one that runs no single task (``/pooling``) when it has any task.

    ``endpoints``: the application's, by ``(method, path)``.
    """
    tasks = set(llm.supported_tasks)
    types = []
    for invoked in INVOKED:
        endpoint = endpoints[("POST", invoked.path)]
        if endpoint.served_by(llm) and (endpoint.task is not None or endpoint.scoring or tasks):
            types.append((endpoint, invoked))
    return types


def _name(endpoint: Endpoint) -> str:
    """The name of the endpoint's request type (its schema in ``/openapi.json``)."""
    return endpoint.request.__name__ if endpoint.request is not None else endpoint.path


_INVOCATION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": f"#/components/schemas/{name}"}
                        for name in ("EmbeddingRequest", "ClassificationRequest", "RerankRequest", "ScoreRequest", "PoolingRequest")
                    ]
                }
            }
        },
    }
}


def _describe(doc: dict[str, Any], st: ModelState) -> None:
    """The loaded model's ``/invocations`` body: each request type it takes, for bodies of its shape
    that no earlier type takes (the first type whose shape a body has and whose schema it meets
    answers it)."""
    operation = doc["paths"].get("/invocations", {}).get("post")
    if operation is None:
        return
    branches, earlier = [], []
    for endpoint, invoked in invocation_types(st.llm, st.server.endpoints):
        taken = {"allOf": [{"$ref": f"#/components/schemas/{_name(endpoint)}"}, invoked.shape]}
        branches.append({"allOf": [taken, {"not": {"anyOf": list(earlier)}}]} if earlier else taken)
        earlier.append(taken)
    operation["requestBody"]["content"]["application/json"]["schema"] = {"anyOf": branches}


@ENDPOINTS.post(
    "/invocations",
    "SageMaker: the request's shape picks the endpoint (vLLM's dispatch).",
    lane=False, tensors=True, openapi_extra=_INVOCATION_BODY, describe=_describe,
)
async def invocations(request: Request, st: State, llm: Model) -> Response:
    """The body goes to the first endpoint of :func:`invocation_types` whose shape it has and whose
    request model it validates as; that endpoint answers as on its own path (same checks, limits
    and errors). A body whose shape matches but whose fields do not validate gets the first such
    endpoint's validation message; a body no endpoint takes, vLLM's ``Cannot find suitable
    handler for request. Expected one of: [...]``.
    """
    try:
        payload = await request.json()
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON: {exc.msg}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    types = invocation_types(llm, st.server.endpoints)
    first_error: ValidationError | None = None
    for endpoint, invoked in types:
        if not invoked.takes(payload) or endpoint.request is None:
            continue
        try:
            body = endpoint.request.model_validate(payload)
        except ValidationError as exc:
            first_error = first_error or exc
            continue
        return await endpoint.function(body, request, st, llm)
    if first_error is not None:
        message, param = validation_message(first_error.errors())
        raise ApiError(400, message, param)
    names = [_name(endpoint) for endpoint, _ in types]
    raise ApiError(400, f"Cannot find suitable handler for request. Expected one of: {names}")
