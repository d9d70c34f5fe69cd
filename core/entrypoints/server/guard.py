"""What a request passes before any route sees it: the ASGI middleware and strict JSON.

:class:`Guard` checks, in an order that keeps refusals cheap, the API key (401), readiness and
readiness (503 while loading or draining), the content type (415), the body size (413, on
``Content-Length`` and while the body streams in, within ``--body-timeout``) and, once the body is
in, admission (429 when too many requests are in flight). Routes
built with :class:`StrictRoute` then parse the body with :func:`strict_json`. Which paths it
checks, and how, the endpoints' records say (:mod:`~poolkit.entrypoints.server.routes`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from ...contracts.errors import short
from ..serving.call import DISCONNECTED
from ..serving.door import bearer_matches, draining, served_model, unready
from ..serving.errors import ApiError
from .deps import CHOSEN_MODEL
from .errors import API, send_error
from .routes import (
    INFERENCE_ROUTES,
    OPEN_METHODS,
    PROTECTED_ROUTES,
    ROUTE_LABELS,
    SHARED_ROUTES,
    TEI_ALIASES,
    TEI_ROUTES,
)

if TYPE_CHECKING:
    from ..serving.state import ModelState, ServerState

logger = logging.getLogger(__name__)

#: The ASGI scope key of a body the guard parsed already (:meth:`StrictJSONRequest.json` reuses it).
PARSED = "poolkit.json"


# -- strict JSON -----------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {short(duplicate, 40)!r}")
    return obj


def strict_json(body: bytes) -> Any:
    """Parse a request body: UTF-8, no NaN/Infinity, no duplicate keys, bounded nesting.

    Raises:
        json.JSONDecodeError: with a short reason, for any of these (FastAPI turns it into a 400).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("the body is not valid UTF-8", "", exc.start) from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise json.JSONDecodeError(exc.msg, "", exc.pos) from None
    except RecursionError:
        raise json.JSONDecodeError("the JSON is nested too deeply", "", 0) from None
    except ValueError as exc:  # NaN, duplicate keys, integers beyond Python's digit limit
        raise json.JSONDecodeError(short(exc, 120), "", 0) from None


class StrictJSONRequest(Request):
    """A request whose :meth:`json` is :func:`strict_json`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            parsed = self.scope.get(PARSED)
            self._json = parsed[0] if parsed is not None else strict_json(await self.body())
        return self._json


class StrictRoute(APIRoute):
    """Routes whose JSON bodies are parsed by :func:`strict_json`."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return route_handler


def body_then(body: bytes, after: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    """An ASGI ``receive`` that hands over ``body`` (all of it, read already) once, then whatever ``after`` answers."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await after()

    return receive


# -- the middleware --------------------------------------------------------------------------------


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _parsed(body: bytes) -> tuple[Any] | None:
    """``(the body's JSON,)``, or ``None`` when it does not parse (the route then says why)."""
    try:
        return (strict_json(body),)
    except json.JSONDecodeError:
        return None


class Guard:
    """ASGI middleware: key, admission, content type and body size before anything is parsed.

    It also times every request for ``/metrics`` and turns an unexpected exception into a
    sanitised 500 with the error body.

    Args:
        app: the ASGI application it wraps.
        state: the application's :class:`~poolkit.entrypoints.serving.state.ServerState`.
    """

    def __init__(self, app: Any, state: "ServerState") -> None:
        self.app = app
        self.state = state
        state.guard = self

    def _authorized(self, scope: dict) -> bool:
        return bearer_matches(_header(scope, b"authorization"), self.state.key_digest)

    def _unauthorized(self, scope: dict, path: str) -> ApiError | None:
        """The 401 of a protected route without the key: checked before anything else, the model
        a request names included, so that nothing about the server answers a client without it."""
        if (
            path in PROTECTED_ROUTES
            and self.state.key_digest is not None
            and (path, scope["method"]) not in OPEN_METHODS  # TEI's health alias GET /, open as /health
            and not self._authorized(scope)
        ):
            return ApiError(
                401,
                "Unauthorized: send the API key as 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    def _check(self, scope: dict, path: str, method: str, model: "ModelState | None") -> ApiError | None:
        st = self.state
        if path not in INFERENCE_ROUTES or method != "POST":
            return None
        if model is not None and (error := unready(model)) is not None:
            return error
        if (error := draining(st)) is not None:
            return error
        if not _is_json(_header(scope, b"content-type")):
            return ApiError(415, "Unsupported Media Type: Only 'application/json' is allowed")
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return ApiError(400, "invalid Content-Length header")
            if int(length) > st.limits.max_body_bytes:
                return self._too_large()
        return None

    def _admit(self) -> ApiError | None:
        """The 429 of a server with ``--max-concurrent-requests`` requests in flight, for a request
        whose body is in: a slot counts work, not uploads (TEI takes its permit after the body too),
        so clients stalling their bodies hold no slot. A request whose headers came before a
        shutdown began is drained as one already admitted, its body arriving meanwhile. The slot is
        the server's one limit (:mod:`~poolkit.entrypoints.serving.admission`), shared with gRPC."""
        st = self.state
        if not st.admission.try_admit():
            return ApiError(
                429,
                f"the server is busy ({st.in_flight} requests in flight); retry later",
                headers={"Retry-After": "1"},
            )
        return None

    def _named(self, scope: dict) -> tuple[bool, "ModelState | ApiError | None"]:
        """The model a request names in its ``X-Model`` header: ``(True, model or 404)``; with
        one model and no header, ``(True, that model)``; ``(False, None)`` when the body decides."""
        st = self.state
        header = _header(scope, b"x-model")
        if header is not None:
            return True, self._model(header)
        if len(st.models) == 1 and not st.adapters:  # else the body's model may name one
            return True, st.first
        return False, None

    def _model(self, name: Any) -> "ModelState | ApiError":
        """The served model called ``name`` (the first when no name is given), or the 404 listing them."""
        if not isinstance(name, str):
            return self.state.first
        try:
            return served_model(self.state, name)
        except ApiError as error:
            return error

    def _fork(self, scope: dict, path: str, payload: Any) -> str:
        """The path a request on a path two APIs share goes to (:data:`SHARED_ROUTES`)."""
        alias, tei_fields, own_fields = SHARED_ROUTES[path]
        if isinstance(payload, dict) and any(f in payload for f in tei_fields) and not any(f in payload for f in own_fields):
            scope[API] = "tei"
            return alias
        return path

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is larger than the limit of {self.state.limits.max_body_bytes} bytes")

    async def _read_body(self, scope: dict, receive: Any) -> tuple[bytes | None, ApiError | None]:
        """The whole body, within ``--max-body-bytes`` and ``--body-timeout``: ``(None, None)`` when
        the client went away, ``(None, error)`` for a body too large or too slow (the 408 closes
        the connection: the rest of its body is never read)."""
        chunks, size = [], 0
        limits = self.state.limits
        # The HTTP front hands over whole bodies only (DISCONNECTED in the scope): no clock for those.
        deadline = None if DISCONNECTED in scope else asyncio.get_running_loop().time() + limits.body_timeout
        while True:
            if deadline is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
                except asyncio.TimeoutError:
                    return None, ApiError(
                        408, f"the request body did not arrive within {limits.body_timeout:g} s (--body-timeout)",
                        headers={"Connection": "close"},
                    )
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.state.limits.max_body_bytes:
                return None, self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        st = self.state
        path, method = scope["path"], scope["method"]
        route = path if path in ROUTE_LABELS else "other"
        start = time.perf_counter()
        status = [0]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        admitted = False
        if path in TEI_ALIASES:  # only through the path TEI shares
            path = scope["path"] = "/tei-unknown"
        if path in TEI_ROUTES:
            scope[API] = "tei"
        try:
            named, model = True, None
            error = self._unauthorized(scope, path)
            if error is None and path in INFERENCE_ROUTES and method == "POST":
                named, model = self._named(scope)
            if error is None:
                error = model if isinstance(model, ApiError) else self._check(scope, path, method, model)
            if error is None and path in INFERENCE_ROUTES and method == "POST":
                st.receiving += 1
                try:
                    body, error = await self._read_body(scope, receive)
                finally:
                    st.receiving -= 1
                if body is None and error is None:
                    status[0] = 499
                    return
                if error is None and (error := self._admit()) is None:
                    admitted = True
                if error is None and (not named or path in SHARED_ROUTES):
                    payload = _parsed(body)
                    if payload is not None:
                        scope[PARSED] = payload
                    value = payload[0] if payload is not None else None
                    if path in SHARED_ROUTES:
                        path = scope["path"] = self._fork(scope, path, value)
                    if not named:
                        chosen = self._model(value.get("model") if isinstance(value, dict) else None)
                        error = chosen if isinstance(chosen, ApiError) else unready(chosen)
                        model = None if isinstance(chosen, ApiError) else chosen
                if error is None:
                    scope[CHOSEN_MODEL] = model
                    if st.lane is not None and await st.lane.answer(model, scope, receive, send_wrapper, body):
                        return
                    receive = body_then(body, receive)
            if error is not None:
                await send_error(send_wrapper, error, tei=scope.get(API) == "tei")
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception:  # a bug: log it, answer a sanitised 500
            logger.exception("unhandled error on %s %s", method, route)
            if not status[0]:
                await send_error(send_wrapper, ApiError(500, "internal server error"), tei=scope.get(API) == "tei")
        finally:
            if admitted:
                st.admission.release()
            st.metrics.observe(route, status[0] or 500, time.perf_counter() - start)
