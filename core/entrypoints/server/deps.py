"""FastAPI dependencies of the routes: the served model a request chose, and its loaded LLM (and
the server's readiness, which ``/health`` reports).

The middleware (:class:`~poolkit.entrypoints.server.guard.Guard`) picks the model a request names and leaves
its :class:`~poolkit.entrypoints.serving.state.ModelState` in the request's scope; routes take it (``State``)
and its loaded :class:`poolkit.LLM` (``Model``) as dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from ..serving.errors import ApiError
from ..serving.state import ModelState

if TYPE_CHECKING:
    from ..serving.state import ServerState

#: The ASGI scope key of the :class:`~poolkit.entrypoints.serving.state.ModelState` the guard chose.
CHOSEN_MODEL = "poolkit.model"


async def server_state(request: Request) -> ModelState:
    """The served model a request chose (the first when it names none).

    The dependencies are coroutines: FastAPI runs a plain function dependency on a worker thread,
    two thread hand-offs per request for two attribute reads.
    """
    chosen = request.scope.get(CHOSEN_MODEL)
    return chosen if chosen is not None else request.app.state.poolkit.first


async def loaded_llm(st: ModelState = Depends(server_state)) -> Any:
    """The loaded :class:`poolkit.LLM`; a 503 while it loads.

    The middleware admits inference requests only once the model is loaded; this guards the
    other routes.
    """
    if st.llm is None:
        raise ApiError(503, "the model is loading; retry shortly", headers={"Retry-After": "5"})
    return st.llm


def check_serving(server: "ServerState") -> None:
    """The 503 of a server that takes no requests (``/health``, and TEI's ``GET /`` in TEI's
    shape): a model failed to load or is loading, or the server is shutting down."""
    if server.load_error is not None:
        raise ApiError(503, "the model failed to load")
    if not server.ready:
        raise ApiError(503, "the model is loading", headers={"Retry-After": "5"})
    if server.draining:
        raise ApiError(503, "the server is shutting down")


State = Annotated[ModelState, Depends(server_state)]
Model = Annotated[Any, Depends(loaded_llm)]
