"""The HTTP server: OpenAI, vLLM and Cohere pooling endpoints over one loaded model.

``poolkit serve MODEL`` runs :func:`run`; :func:`create_app` builds the FastAPI application for
tests and embedding in other ASGI servers. Every task the model supports is served at once: the
route (or the ``task`` field of ``/pooling``) chooses it per request.

Requests pass, in order: the API key (401), readiness and admission (503 while loading or
draining, 429 with ``Retry-After`` when too many requests are in flight), the content type
(415), the body size (413, checked on ``Content-Length`` and while the body streams in), strict
JSON parsing and the request schema (400), then the shape checks of the route (404 for another
model's name, 400 for an empty string, too many inputs, ...) and the model's own checks through
the :class:`poolkit.LLM` (400). Only then is the work queued on the dynamic batcher, whose worker
thread tokenizes and runs the model: the event loop parses and validates, nothing more. A client
that goes away cancels its queued work.

Modules: :mod:`.app` (the factory, loading, :func:`run`), :mod:`.guard` (the middleware and
strict JSON), :mod:`.errors` (the error body and handlers), :mod:`.metrics` (Prometheus),
:mod:`.state` (what routes share), :mod:`.deps` (the routes' dependencies), :mod:`.inputs`
(shape checks), :mod:`.work` (running work on the batcher), :mod:`.scoring` (what the Scoring
API's routes share), :mod:`.wire` (response formats), and one route module per protocol, each
declaring its endpoints (:mod:`.endpoints`: one record per endpoint) beside their functions and
request models: :mod:`.routes_openai`, :mod:`.routes_vllm`, :mod:`.routes_sagemaker`
(``/invocations``), :mod:`.routes_cohere`, :mod:`.routes_tei`, :mod:`.routes_ops` (``/health``,
``/metrics``); :mod:`.routes` gathers them.

Needs the ``serve`` extra: ``pip install 'poolkit[serve]'``.
"""

from __future__ import annotations

from ...contracts.errors import MissingDependency

try:
    import fastapi  # noqa: F401
    import orjson  # noqa: F401
    import prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the CLI test with the extra missing
    raise MissingDependency(
        "the HTTP server needs FastAPI, uvicorn, orjson and prometheus-client: pip install 'poolkit[serve]'"
    ) from exc

from ..serving.errors import ApiError  # noqa: E402
from ..serving.state import ServerLimits  # noqa: E402
from .app import create_app, run  # noqa: E402
from .guard import INFERENCE_ROUTES, strict_json  # noqa: E402

__all__ = ["INFERENCE_ROUTES", "ApiError", "ServerLimits", "create_app", "run", "strict_json"]
