"""What ``poolkit serve --ray-serve`` adds to Ray Serve's HTTP proxy: ``GET /`` answered by the
health application, as ``/health`` is.

Serve's proxy picks an application by the path's longest route prefix alone, so ``GET /`` (TEI's
health alias) would go to the server's application and wait there until a replica has loaded; the
single-process server answers it at once. The proxy runs the middlewares that the callback named by
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` returns (Ray Serve's hook for proxy middlewares, read
where the proxy starts): :func:`middlewares` gives :class:`RootHealth`, which sends ``GET /`` to
``/health`` marked as TEI's alias (:data:`ROOT_HEADER`), so the health replica answers it in the
shape ``GET /`` has (an empty 200, TEI's error body on 503). ``POST /`` (TEI's inference route) and
every other request pass unchanged.

This module imports nothing heavy: it is imported in Ray's proxy process.
"""

from __future__ import annotations

from typing import Any, Callable

#: Where the proxy finds :func:`middlewares` (the value of ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``).
CALLBACK = "poolkit.entrypoints.integrations.ray_proxy.middlewares"
#: The header that tells the health replica a request came as ``GET /``.
ROOT_HEADER = b"x-poolkit-health-alias"


class RootHealth:
    """ASGI middleware: ``GET /`` goes on as ``GET /health`` with :data:`ROOT_HEADER` set; a
    client's own :data:`ROOT_HEADER` is dropped from any request."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            alias = scope["method"] == "GET" and scope["path"] == "/"
            if alias or any(k.lower() == ROOT_HEADER for k, _ in scope["headers"]):
                headers = [(k, v) for k, v in scope["headers"] if k.lower() != ROOT_HEADER]
                scope = {**scope, "headers": headers + [(ROOT_HEADER, b"1")] * alias}
                if alias:
                    scope.update(path="/health", raw_path=b"/health")
        await self.app(scope, receive, send)


def middlewares() -> list[Any]:
    """The proxy's middlewares (Ray Serve calls this in the proxy process)."""
    from starlette.middleware import Middleware

    return [Middleware(RootHealth)]
