"""HTTP errors: the OpenAI/vLLM error body, the status of each library error, validation messages.

Every error the server sends has one shape, ``{"error": {"message", "type", "param", "code"}}``,
with a one-line message of at most 500 characters that names the served model, never a
directory, and never echoes large inputs. Requests TEI's routes answer get TEI's shape instead,
``{"error": "...", "error_type": "..."}``, with TEI's status codes (:func:`tei_status`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...contracts.errors import PoolkitError, short
from ..serving.errors import ApiError, ClientGone, clean_message, status_of, tei_status

logger = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    429: "RateLimitError",
    499: "ClientClosedRequestError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}
#: The ASGI scope key saying which API answers a request (``"tei"``: TEI's error shape).
API = "poolkit.api"


def error_body(status: int, message: str, param: str | None = None, scrub: Sequence[tuple[str, str]] = ()) -> bytes:
    """The JSON error body: paths replaced, whitespace collapsed, the message bounded."""
    error = {"message": clean_message(message, scrub), "type": _ERROR_TYPES.get(status, "Error"), "param": param, "code": status}
    return json.dumps({"error": error}, ensure_ascii=True).encode()


def tei_error_body(error_type: str, message: str, scrub: Sequence[tuple[str, str]] = ()) -> bytes:
    """TEI's JSON error body, ``{"error", "error_type"}``."""
    return json.dumps({"error": clean_message(message, scrub), "error_type": error_type}, ensure_ascii=True).encode()


def _rendered(error: ApiError, tei: bool, scrub: Sequence[tuple[str, str]] = ()) -> tuple[int, bytes]:
    """The status and body of ``error`` in the shape of the API answering it."""
    if not tei:
        return error.status, error_body(error.status, error.message, error.param, scrub)
    status, error_type = error.tei or tei_status(error.status)
    return status, tei_error_body(error_type, error.message, scrub)


async def send_error(send: Any, error: ApiError, scrub: Sequence[tuple[str, str]] = (), tei: bool = False) -> None:
    """Answer with ``error`` at the ASGI level (for the middleware, before any route runs)."""
    status, body = _rendered(error, tei, scrub)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_PARAM_HINTS = (
    ("matryoshka", "dimensions"),
    ("imensions", "dimensions"),
    ("truncate_prompt_tokens", "truncate_prompt_tokens"),
    ("is not supported by model", "task"),
    ("only supports", "task"),
    ("token id", "input"),
    ("image", "images"),
    ("top_k", "top_k"),
    ("threshold", "threshold"),
    ("instruction", "instruction"),
    ("max_tokens", "max_tokens"),
    ("prompt ", "input"),
)


def guess_param(message: str) -> str | None:
    """The request field a library error is about, from its wording (the library has no field names)."""
    return next((param for hint, param in _PARAM_HINTS if hint in message), None)


def _loc(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part in ("str", "int", "list", "dict")):
            continue  # a union member's tag, not a field
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_message(errors: Sequence[dict]) -> tuple[str, str | None]:
    """A schema failure as (message, param): at most 10 errors, each short; the input itself only as
    the short bad value of a choice (``literal_error``), as pydantic and vLLM show it."""
    parts: list[str] = []
    param = None
    for err in list(errors)[:10]:
        loc = list(err.get("loc", ()))
        if loc and loc[0] == "body":
            loc = loc[1:]
        kind = err.get("type", "")
        if kind == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "invalid JSON")
            return f"invalid JSON: {short(reason, 200)}", None
        if kind == "missing" and not loc:
            return "the request body is missing: send a JSON object", None
        if kind in ("model_attributes_type", "dict_type", "model_type") and not loc:
            return "the request body must be a JSON object", None
        where = _loc(loc)
        param = param or where or (err.get("ctx") or {}).get("param") or None
        msg = short(err.get("msg", "invalid value"), 200)
        if kind == "literal_error":  # vLLM's clients read pydantic's type and the (short) bad value
            msg += f" [type=literal_error, input_value={short(repr(err.get('input')), 40)}]"
        parts.append(f"{where}: {msg}" if where else msg)
    extra = len(errors) - 10
    message = "; ".join(dict.fromkeys(parts)) + (f"; and {extra} more errors" if extra > 0 else "")
    return message or "invalid request", param


def _response(request: Request, status: int, message: str, param: str | None = None, headers: dict | None = None,
              tei: tuple[int, str] | None = None) -> Response:
    scrub = request.app.state.poolkit.scrub
    error = ApiError(status, message, param, headers, tei)
    status, body = _rendered(error, request.scope.get(API) == "tei", scrub)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return _response(request, exc.status, exc.message, exc.param, exc.headers, exc.tei)


async def _client_gone(request: Request, exc: ClientGone) -> Response:
    return _response(request, 499, "the client closed the request")


async def _poolkit_error(request: Request, exc: PoolkitError) -> Response:
    status = status_of(exc)
    if status == 429:
        request.app.state.poolkit.metrics.rejected.inc()
    if status >= 500:
        logger.error("%s on %s: %s", type(exc).__name__, request.url.path, exc)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    message = str(exc) or type(exc).__name__
    param = getattr(exc, "param", None) or (guess_param(message) if status == 400 else None)
    return _response(request, status, message, param, headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    message, param = validation_message(exc.errors())
    return _response(request, 400, message, param, tei=(422, "Validation"))


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return _response(request, exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))


#: The answer to each error a route raises, most specific type first.
ERROR_HANDLERS: tuple[tuple[type[Exception], Callable[[Request, Any], Awaitable[Response]]], ...] = (
    (ApiError, _api_error),
    (ClientGone, _client_gone),
    (PoolkitError, _poolkit_error),
    (RequestValidationError, _validation_error),
    (StarletteHTTPException, _http_error),
)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error a route raises with the error body (the app's state must be set)."""
    for kind, handler in ERROR_HANDLERS:
        app.add_exception_handler(kind, handler)


async def error_response(request: Request, exc: Exception) -> Response | None:
    """The answer :data:`ERROR_HANDLERS` give ``exc`` (the fast lane's errors), ``None`` for an
    error they do not know (a bug)."""
    for kind, handler in ERROR_HANDLERS:
        if isinstance(exc, kind):
            return await handler(request, exc)
    return None
