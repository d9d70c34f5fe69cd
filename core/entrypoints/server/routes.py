"""Every endpoint of the server, gathered from the route modules, and the route sets read from them.

Each route module declares its endpoints beside their functions (its ``ENDPOINTS``,
:class:`~poolkit.entrypoints.server.endpoints.Endpoints`); nothing else lists routes. The sets
below are what the guard, the HTTP front and the tracing middleware look a request's path up in.
"""

from __future__ import annotations

from . import routes_cohere, routes_jina, routes_lora, routes_openai, routes_ops, routes_sagemaker, routes_tei, routes_vllm
from .endpoints import TEI, Endpoint

#: The route modules, one per protocol, in the order their endpoints are mounted.
MODULES = (routes_ops, routes_openai, routes_vllm, routes_lora, routes_sagemaker, routes_cohere, routes_jina, routes_tei)
#: Every endpoint, in the order mounted.
ENDPOINTS: tuple[Endpoint, ...] = tuple(endpoint for module in MODULES for endpoint in module.ENDPOINTS)

#: Paths TEI shares with vLLM, and the paths of TEI's routes for them: the body's fields decide.
#: A body with one of TEI's fields and none of vLLM's goes to TEI's route (``path -> (alias, TEI's
#: fields, vLLM's fields)``); anything else, a body that does not parse included, stays vLLM's.
SHARED_ROUTES = {e.shares.path: (e.path, e.shares.fields, e.shares.unless) for e in ENDPOINTS if e.shares is not None}
#: The paths of TEI's routes on shared paths: reached only through the path they share.
TEI_ALIASES = frozenset(alias for alias, _, _ in SHARED_ROUTES.values())
#: The paths a request names (TEI's routes on shared paths are reached through those paths).
_NAMED = tuple(e for e in ENDPOINTS if e.path not in TEI_ALIASES)
#: Routes that run the model: they need the API key, admission and a JSON body.
INFERENCE_ROUTES = frozenset(e.path for e in _NAMED if e.inference)
#: Text Embeddings Inference's paths: errors on them have TEI's shape (``{"error", "error_type"}``).
TEI_ROUTES = frozenset(e.path for e in _NAMED if e.api == TEI)
#: Paths that need the API key when the server has one ...
PROTECTED_ROUTES = frozenset(e.path for e in _NAMED if e.protected)
#: ... except for these methods of them (TEI's health alias ``GET /``; ``HEAD`` as its ``GET``).
OPEN_METHODS = frozenset(
    (e.path, method) for e in _NAMED if not e.protected and e.path in PROTECTED_ROUTES
    for method in ((e.method, "HEAD") if e.method == "GET" else (e.method,))
)
#: The ``route`` label values of the request metrics; any other path counts as ``other``.
ROUTE_LABELS = frozenset(e.path for e in _NAMED)
