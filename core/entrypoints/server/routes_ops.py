"""Operations routes: ``GET /health`` (readiness) and ``GET /metrics`` (Prometheus). No key needed."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from ..serving.metrics import CONTENT_TYPE
from .deps import check_serving
from .endpoints import Endpoints
from .wire import json_response

ENDPOINTS = Endpoints()

_HEALTHY = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}


@ENDPOINTS.get(
    "/health", "200 when every model is loaded and the server takes requests; 503 otherwise.", errors=(503,),
    answer={"description": "Successful Response", "content": {"application/json": {"schema": _HEALTHY}}},
)
async def health(request: Request) -> Response:
    check_serving(request.app.state.poolkit)
    return json_response({"status": "ok"})


@ENDPOINTS.get(
    "/metrics", "Prometheus metrics (text exposition format).",
    answer={"description": "Prometheus metrics, text exposition format 0.0.4.", "content": {"text/plain": {"schema": {"type": "string"}}}},
)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.poolkit.metrics.exposition(), media_type=CONTENT_TYPE)
