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
from typing import Any, Callable, Iterable

import pydantic

from .endpoints import Endpoint
from .errors import error_response
from .guard import PARSED, StrictJSONRequest, strict_json

#: The parameters of a route the lane can call: its request model, the request, the state, the model.
LANE_PARAMETERS = ("body", "request", "st", "llm")


class Lane:
    """The routes the lane answers: the endpoints of ``endpoints`` that ask for it (``lane``).

    Raises:
        TypeError: an endpoint asks for the lane but is not an inference ``POST`` whose function
            takes ``(body: <a pydantic model>, request, st, llm)``, as the lane calls it. Checked
            when the application is built, so that no route leaves the lane unseen.
    """

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.routes: dict[str, tuple[type[pydantic.BaseModel], Callable]] = {}
        for endpoint in endpoints:
            if not endpoint.lane:
                continue
            takes = tuple(inspect.signature(endpoint.function).parameters)
            if not endpoint.inference or endpoint.method != "POST" or takes != LANE_PARAMETERS or endpoint.request is None:
                raise TypeError(
                    f"endpoint {endpoint.method} {endpoint.path} asks for the fast lane, which calls an inference POST "
                    f"as {endpoint.function.__name__}(body: <request model>, request, st, llm); it takes ({', '.join(takes)})"
                    f"{'' if endpoint.request is not None else ' and no request model'}: give it those, or declare it with lane=False"
                )
            self.routes[endpoint.path] = (endpoint.request, endpoint.function)

    async def answer(self, st: Any, scope: dict, receive: Any, send: Any, body: bytes) -> bool:
        """Answer the request if it is the lane's (``True``); ``False`` leaves it to the application.

        ``st`` is the :class:`~poolkit.entrypoints.serving.state.ModelState` the request chose; ``receive`` is
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
