"""Operations routes: ``GET /health`` (readiness) and ``GET /metrics`` (Prometheus). No key needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from .deps import State
from .errors import ApiError
from .guard import StrictRoute
from .metrics import CONTENT_TYPE
from .wire import json_response

router = APIRouter(route_class=StrictRoute)


@router.get("/health", summary="200 when the model is loaded and the server takes requests; 503 otherwise.")
async def health(st: State) -> Response:
    if st.load_error is not None:
        raise ApiError(503, "the model failed to load")
    if not st.ready:
        raise ApiError(503, "the model is loading", headers={"Retry-After": "5"})
    if st.draining:
        raise ApiError(503, "the server is shutting down")
    return json_response({"status": "ok"})


@router.get("/metrics", summary="Prometheus metrics (text exposition format).")
async def metrics(st: State) -> Response:
    return Response(st.metrics.exposition(st.batcher), media_type=CONTENT_TYPE)
