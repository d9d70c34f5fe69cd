"""Operations routes: ``GET /health`` (readiness) and ``GET /metrics`` (Prometheus). No key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .errors import ApiError
from .guard import StrictRoute
from .metrics import CONTENT_TYPE
from .wire import json_response

router = APIRouter(route_class=StrictRoute)


@router.get("/health", summary="200 when every model is loaded and the server takes requests; 503 otherwise.")
async def health(request: Request) -> Response:
    st = request.app.state.poolkit
    if st.load_error is not None:
        raise ApiError(503, "the model failed to load")
    if not st.ready:
        raise ApiError(503, "the model is loading", headers={"Retry-After": "5"})
    if st.draining:
        raise ApiError(503, "the server is shutting down")
    return json_response({"status": "ok"})


@router.get("/metrics", summary="Prometheus metrics (text exposition format).")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.poolkit.metrics.exposition(), media_type=CONTENT_TYPE)
