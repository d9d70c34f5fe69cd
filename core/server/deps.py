"""FastAPI dependencies of the routes: the application's state and its loaded model.

Routes take the application's :class:`~poolkit.server.state.ServerState` (``State``) and the
loaded :class:`poolkit.LLM` (``Model``) as dependencies, read from ``request.app.state.poolkit``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from .errors import ApiError
from .state import ServerState


async def server_state(request: Request) -> ServerState:
    """The state of the application serving ``request``.

    The dependencies are coroutines: FastAPI runs a plain function dependency on a worker thread,
    two thread hand-offs per request for two attribute reads.
    """
    return request.app.state.poolkit


async def loaded_llm(st: ServerState = Depends(server_state)) -> Any:
    """The loaded :class:`poolkit.LLM`; a 503 while it loads.

    The middleware admits inference requests only once the model is loaded; this guards the
    other routes (``/v1/models``).
    """
    if st.llm is None:
        raise ApiError(503, "the model is loading; retry shortly", headers={"Retry-After": "5"})
    return st.llm


State = Annotated[ServerState, Depends(server_state)]
Model = Annotated[Any, Depends(loaded_llm)]
