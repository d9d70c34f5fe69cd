"""One record per endpoint: what the server knows of a route, declared once, beside its function.

A route module declares its endpoints with the :meth:`Endpoints.post` and :meth:`Endpoints.get`
decorators of its module-level ``ENDPOINTS``; :mod:`~poolkit.entrypoints.server.routes` gathers
them. Everything else reads the records: the application mounts them
(:func:`~poolkit.entrypoints.server.app.create_app`); the guard takes its route sets from them
(which routes run the model, which need the key, which answer in TEI's shape, the paths TEI
shares with vLLM); the fast lane takes the routes that ask for it (:mod:`.lane`), the HTTP front
the paths it reads (:mod:`.front`), ``/invocations`` the endpoints it passes bodies to, and
``/openapi.json`` their answers and which of them a loaded model serves (:mod:`.openapi`).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pydantic import BaseModel

from ..serving.scoring import has_scorer

if TYPE_CHECKING:
    from ...api.llm import LLM
    from ..serving.state import ModelState

#: The error shapes an endpoint answers with: OpenAI's ``{"error": {...}}`` (vLLM's and Cohere's
#: routes too) and Text Embeddings Inference's ``{"error", "error_type"}`` with TEI's statuses.
OPENAI, TEI = "openai", "tei"


@dataclasses.dataclass(frozen=True)
class Shared:
    """A path TEI's route shares with vLLM's: a body with one of TEI's ``fields`` and none of
    vLLM's (``unless``) goes to TEI's route; anything else, a body that does not parse included,
    stays vLLM's."""

    path: str
    fields: tuple[str, ...]
    unless: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One route: its path, method and function, and what the server does with it.

    Attributes:
        path: the route's path; method: its HTTP method (one per record).
        function: the route's coroutine. FastAPI calls it with its parameters as dependencies;
            the fast lane calls it as ``function(body, request, st, llm)``.
        summary: its summary in ``/openapi.json``.
        request: the request model of its body (the type of the function's ``body``); ``None``
            for a route that takes no body or picks a model by the body's shape (``/invocations``,
            TEI's ``POST /``).
        api: whose errors it answers with: :data:`OPENAI` or :data:`TEI`.
        inference: it runs the model (a ``POST``): the guard checks the key, the content type and
            the body's size, and admits it.
        protected: it needs the API key when the server has one.
        lane: the guard's fast lane answers it (:mod:`~poolkit.entrypoints.server.lane`); its
            function must take ``(body, request, st, llm)``, which the application checks when it
            is built.
        task: the task it runs: a model without it does not serve it (``/openapi.json`` leaves
            the route out; the route answers why).
        scoring: it needs the model's Scoring API (``LLM.scorer``), likewise.
        shares: for TEI's route on a path vLLM has too, that path and the fields that pick TEI's
            route, through which alone the route is reached.
        tensors: its 200 may carry raw tensors (``encoding_format`` ``bytes``).
        errors: the error statuses of a route that is not an inference route (an inference route
            has those of its API).
        answer: its 200 in ``/openapi.json``, instead of FastAPI's.
        openapi_extra: more of its operation in ``/openapi.json``, merged into FastAPI's (a body
            or an answer's schema FastAPI cannot derive).
        describe: puts the loaded model's bounds into ``/openapi.json`` (the operation, which
            may have been left out, or its request's schema): ``describe(document, model state)``.
    """

    path: str
    method: str
    function: Callable[..., Any]
    summary: str
    request: type[BaseModel] | None = None
    api: str = OPENAI
    inference: bool = False
    protected: bool = False
    lane: bool = False
    task: str | None = None
    scoring: bool = False
    shares: Shared | None = None
    tensors: bool = False
    errors: tuple[int, ...] = ()
    answer: dict[str, Any] | None = None
    openapi_extra: dict[str, Any] | None = None
    describe: Callable[[dict[str, Any], "ModelState"], None] | None = None

    def served_by(self, llm: LLM) -> bool:
        """Whether ``llm`` can run this endpoint: it has the endpoint's task and, where the
        endpoint scores, a Scoring API."""
        return (self.task is None or self.task in llm.supported_tasks) and (not self.scoring or has_scorer(llm))


class Endpoints:
    """A route module's endpoints, in the order they are declared.

    Example:
        >>> ENDPOINTS = Endpoints()
        >>> @ENDPOINTS.post("/v1/embeddings", "Embeddings (OpenAI).", task="embed")
        ... async def embeddings(body: EmbeddingRequest, request: Request, st: State, llm: Model) -> Response:
        ...     ...
    """

    def __init__(self, api: str = OPENAI) -> None:
        self.api = api
        self._declared: list[Endpoint] = []

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)

    def at(self, path: str, method: str = "POST") -> Endpoint:
        """The endpoint declared for ``method path``."""
        return next(e for e in self._declared if e.path == path and e.method == method)

    def post(
        self,
        path: str,
        summary: str,
        *,
        lane: bool = True,
        task: str | None = None,
        scoring: bool = False,
        shares: Shared | None = None,
        tensors: bool = False,
        answer: dict[str, Any] | None = None,
        openapi_extra: dict[str, Any] | None = None,
        describe: Callable[[dict[str, Any], "ModelState"], None] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare an inference route, ``POST path``: protected, admitted, its JSON body read by
        the guard, and answered by the fast lane unless ``lane`` is false."""
        return self._declare(
            path, "POST", summary, inference=True, protected=True, lane=lane, task=task, scoring=scoring,
            shares=shares, tensors=tensors, answer=answer, openapi_extra=openapi_extra, describe=describe,
        )

    def get(
        self,
        path: str,
        summary: str,
        *,
        protected: bool = False,
        errors: tuple[int, ...] = (),
        answer: dict[str, Any] | None = None,
        openapi_extra: dict[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare a ``GET path`` that runs no model: open unless ``protected``; ``errors``: the
        error statuses it answers with."""
        return self._declare(path, "GET", summary, protected=protected, errors=errors, answer=answer, openapi_extra=openapi_extra)

    def _declare(self, path: str, method: str, summary: str, **facts: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def declare(function: Callable[..., Any]) -> Callable[..., Any]:
            record = Endpoint(path, method, function, summary, request_model(function), self.api, **facts)
            self._declared.append(record)
            return function

        return declare


def request_model(function: Callable[..., Any]) -> type[BaseModel] | None:
    """The request model a route function takes as ``body``, if it takes one."""
    if "body" not in inspect.signature(function).parameters:
        return None
    model = typing.get_type_hints(function).get("body")
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None
