"""The fast lane: inference requests answered past FastAPI's routing, dependencies and middleware.

A one-text embedding request spent more of the event loop in FastAPI's layers (its middleware
stack, the router, solving the ``State`` and ``Model`` dependencies, validating the body) than in
the route itself, and the event loop is what bounds a server of small requests. The guard has
read and admitted the body already; for a route in the lane it parses the body as the route
would (:func:`~poolkit.entrypoints.server.guard.strict_json`, then the route's request model), calls the
route's own function, and answers what it raises with the application's own error handlers
(:data:`~poolkit.entrypoints.server.errors.ERROR_HANDLERS`). A body that does not parse or validate is
not the lane's: it goes the ordinary way, so every error reads exactly as FastAPI words it.
"""

from __future__ import annotations

import inspect
import json
import typing
from typing import Any, Callable

import pydantic
from fastapi.routing import APIRoute

from .errors import error_response
from .guard import PARSED, StrictJSONRequest, strict_json

#: The parameters of a route the lane can call: its request model, the request, the state, the model.
_LANE_PARAMETERS = ("body", "request", "st", "llm")


class Lane:
    """The routes of ``routes`` (FastAPI routes) whose function the lane can call itself.

    A route qualifies when it is a ``POST`` whose function takes exactly ``(body: <a pydantic
    model>, request, st, llm)``, as the inference routes do.
    """

    def __init__(self, routes: Any, paths: Any) -> None:
        self.routes: dict[str, tuple[type[pydantic.BaseModel], Callable]] = {}
        for route in routes:
            if not isinstance(route, APIRoute) or route.path not in paths or "POST" not in route.methods:
                continue
            if tuple(inspect.signature(route.endpoint).parameters) != _LANE_PARAMETERS:
                continue
            model = typing.get_type_hints(route.endpoint).get("body")
            if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
                self.routes[route.path] = (model, route.endpoint)

    async def answer(self, st: Any, scope: dict, receive: Any, send: Any, body: bytes) -> bool:
        """Answer the request if it is the lane's (``True``); ``False`` leaves it to the application.

        ``st`` is the :class:`~poolkit.entrypoints.server.state.ModelState` the request chose; ``receive`` is
        the client's, past the body the guard read.
        """
        taken = self.routes.get(scope["path"])
        if taken is None or st.llm is None:
            return False
        model, endpoint = taken
        try:
            given = scope.get(PARSED)
            parsed = model.model_validate(given[0] if given is not None else strict_json(body))
        except (json.JSONDecodeError, pydantic.ValidationError):
            return False  # FastAPI words the error
        request = StrictJSONRequest(scope, receive)
        try:
            response = await endpoint(parsed, request, st, st.llm)
        except Exception as exc:
            response = await error_response(request, exc)
            if response is None:
                raise
        await response(scope, receive, send)
        return True
