"""FastAPI dependencies of the routes: the served model a request chose, and its loaded LLM.

The middleware (:class:`~poolkit.entrypoints.server.guard.Guard`) picks the model a request names and leaves
its :class:`~poolkit.entrypoints.server.state.ModelState` in the request's scope; routes take it (``State``)
and its loaded :class:`poolkit.LLM` (``Model``) as dependencies.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from .errors import ApiError
from .state import ModelState

#: The ASGI scope key of the :class:`~poolkit.entrypoints.server.state.ModelState` the guard chose.
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


State = Annotated[ModelState, Depends(server_state)]
Model = Annotated[Any, Depends(loaded_llm)]
