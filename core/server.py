"""The HTTP server: OpenAI, vLLM and Cohere pooling endpoints over one loaded model.

``poolkit serve MODEL`` runs :func:`run`; :func:`create_app` builds the FastAPI application for
tests and embedding in other ASGI servers. Every task the model supports is served at once: the
route (or the ``task`` field of ``/pooling``) chooses it per request.

Requests pass, in order: the API key (401), readiness and admission (503 while loading or
draining, 429 with ``Retry-After`` when too many requests are in flight), the content type
(415), the body size (413, checked on ``Content-Length`` and while the body streams in), strict
JSON parsing and the request schema (400), then the model-dependent checks (404 for another
model's name, 400 for everything else a client can get wrong). Only then is the work queued on
the dynamic batcher, whose worker thread tokenizes and runs the model: the event loop parses and
validates, nothing more. A client that goes away cancels its queued work.

Needs the ``serve`` extra: ``pip install 'poolkit[serve]'``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
import secrets
import signal
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Awaitable, Callable, Sequence

import numpy as np
import torch

from .batching import Batcher, QueueFull, ShuttingDown, estimate_cost
from .config import PoolingParams
from .encodings import binary, cohere_base64, tensor_base64, tensor_bytes, ubinary
from .errors import InvalidRequest, MissingDependency, ModelLoadError, PluginError, PoolkitError
from .io import Prompt
from .protocol import (
    ClassificationRequest,
    CohereEmbedRequest,
    EmbeddingRequest,
    PoolingRequest,
    RerankDocument,
    RerankRequest,
    ScoreRequest,
)

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from fastapi.routing import APIRoute
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised by the CLI test with the extra missing
    raise MissingDependency("the HTTP server needs FastAPI and uvicorn: pip install 'poolkit[serve]'") from exc

logger = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclasses.dataclass
class ServerLimits:
    """The server's limits; each has a CLI option (``poolkit serve --help``).

    Attributes:
        max_inputs_per_request: inputs (texts, token-id lists, images, documents) in one request.
        max_request_tokens: tokens in one request, estimated before tokenizing (about four
            characters a token, each input capped at its truncation limit).
        max_body_bytes: bytes of a request body.
        max_concurrent_requests: requests being handled at once; more get 429.
        max_batch_tokens: estimated tokens the batcher merges into one engine call.
        max_queue_tokens: estimated tokens allowed to wait; more get 429.
        shutdown_timeout: seconds to finish in-flight requests and queued work on SIGTERM.
    """

    max_inputs_per_request: int = 2048
    max_request_tokens: int = 300_000
    max_body_bytes: int = 16 * MiB
    max_concurrent_requests: int = 512
    max_batch_tokens: int = 16384
    max_queue_tokens: int = 1_000_000
    shutdown_timeout: float = 30.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise InvalidRequest(f"server limit {field.name} must be positive, got {getattr(self, field.name)!r}")


# -- errors ----------------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    429: "RateLimitError",
    499: "ClientClosedRequestError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}
_MAX_MESSAGE = 500
_PATH = re.compile(r"(?<![\w:/.])(?:/[\w.@+-]+){3,}/?")


class ApiError(Exception):
    """An HTTP error with the OpenAI/vLLM error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


def _short(value: Any, width: int = 80) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _error_body(status: int, message: str, param: str | None = None, scrub: Sequence[tuple[str, str]] = ()) -> bytes:
    for old, new in scrub:
        if old:
            message = message.replace(old, new)
    message = " ".join(_PATH.sub("<path>", message).split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    error = {"message": message, "type": _ERROR_TYPES.get(status, "Error"), "param": param, "code": status}
    return json.dumps({"error": error}, ensure_ascii=True).encode()


async def _send_error(send: Any, error: ApiError, scrub: Sequence[tuple[str, str]] = ()) -> None:
    body = _error_body(error.status, error.message, error.param, scrub)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- metrics ---------------------------------------------------------------------------------------


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = list(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        lines, total = [], 0
        for bound, n in zip(self.buckets, self.counts):
            total += n
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {total}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{suffix} {self.sum:.6f}")
        lines.append(f"{name}_count{suffix} {self.count}")
        return lines


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class _Metrics:
    """Prometheus counters, gauges and histograms, rendered as the text exposition format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.prompt_tokens = 0
        self.inputs = 0
        self.rejected = 0
        self.disconnected = 0
        self.batch_sizes = _Histogram(_BATCH_BUCKETS)
        self.queue_wait = _Histogram(_LATENCY_BUCKETS)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests[route, status] = self.requests.get((route, status), 0) + 1
        self.latency.setdefault(route, _Histogram(_LATENCY_BUCKETS)).observe(seconds)

    def fold(self, batcher: Batcher | None) -> None:
        """Move the batcher's per-batch samples into histograms (so its lists stay short)."""
        if batcher is None:
            return
        stats = batcher.stats
        for samples, histogram in ((stats.batch_sizes, self.batch_sizes), (stats.queue_seconds, self.queue_wait)):
            n = len(samples)
            for value in samples[:n]:
                histogram.observe(value)
            del samples[:n]

    def render(self, state: "_State") -> str:
        batcher = state.batcher
        self.fold(batcher)
        stats = batcher.stats if batcher is not None else None
        out = [
            "# HELP poolkit_requests_total HTTP requests by route and status code.",
            "# TYPE poolkit_requests_total counter",
        ]
        for (route, status), n in sorted(self.requests.items()):
            out.append(f'poolkit_requests_total{{route="{route}",status="{status}"}} {n}')
        out += [
            "# HELP poolkit_request_duration_seconds Time from the request's arrival to its response.",
            "# TYPE poolkit_request_duration_seconds histogram",
        ]
        for route, histogram in sorted(self.latency.items()):
            out += histogram.render("poolkit_request_duration_seconds", f'route="{route}"')
        scalar = [
            ("poolkit_prompt_tokens_total", "counter", "Prompt tokens of answered requests.", self.prompt_tokens),
            ("poolkit_inputs_total", "counter", "Inputs of answered requests.", self.inputs),
            ("poolkit_requests_rejected_total", "counter", "Requests refused with 429 (overload).", self.rejected),
            ("poolkit_client_disconnects_total", "counter", "Requests whose client went away first.", self.disconnected),
            (
                "poolkit_requests_cancelled_total",
                "counter",
                "Queued work dropped before it ran because its client went away.",
                stats.cancelled if stats else 0,
            ),
            ("poolkit_batches_total", "counter", "Engine calls made by the batcher.", stats.batches if stats else 0),
            ("poolkit_batch_tokens_total", "counter", "Tokens run by the batcher.", stats.tokens if stats else 0),
            ("poolkit_requests_in_flight", "gauge", "Requests being handled.", state.in_flight),
            ("poolkit_queue_depth", "gauge", "Requests waiting for the model.", batcher.queue_depth if batcher else 0),
            ("poolkit_model_ready", "gauge", "1 when the model is loaded and the server takes requests.", int(state.accepting)),
        ]
        for name, kind, help_text, value in scalar:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        out += [
            "# HELP poolkit_batch_size Inputs per engine call.",
            "# TYPE poolkit_batch_size histogram",
            *self.batch_sizes.render("poolkit_batch_size"),
            "# HELP poolkit_queue_wait_seconds Time requests waited for the model.",
            "# TYPE poolkit_queue_wait_seconds histogram",
            *self.queue_wait.render("poolkit_queue_wait_seconds"),
        ]
        return "\n".join(out) + "\n"


# -- state -----------------------------------------------------------------------------------------

#: Routes that run the model: they need the API key, admission and a JSON body.
INFERENCE_ROUTES = frozenset(
    {
        "/v1/embeddings",
        "/pooling",
        "/classify",
        "/score",
        "/v1/score",
        "/rerank",
        "/v1/rerank",
        "/v2/rerank",
        "/v2/embed",
    }
)
_PROTECTED_ROUTES = INFERENCE_ROUTES | {"/v1/models"}
_ROUTE_LABELS = _PROTECTED_ROUTES | {"/health", "/metrics"}
_DEFAULT_TASKS = ("embed", "classify", "token_embed", "token_classify", "sparse_embed")


class _State:
    """What the routes share: the model, the batcher, the limits and the counters."""

    def __init__(self, served_model_name: str | None, api_key: str | None, limits: ServerLimits, chat_template: str | None) -> None:
        self.served = served_model_name
        self.key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self.limits = limits
        self.chat_template = chat_template
        self.metrics = _Metrics()
        self.llm: Any = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.draining = False
        self.load_error: BaseException | None = None
        self.loading = False
        self.drained = False
        self.in_flight = 0
        self.request_exit: Callable[[], None] = lambda: None
        self.scrub: list[tuple[str, str]] = []

    @property
    def accepting(self) -> bool:
        return self.ready and not self.draining

    def attach(self, llm: Any) -> None:
        """Take a loaded model: derive what the routes check, start the batcher."""
        model = llm.model
        self.tasks = list(llm.supported_tasks)
        self.max_len = model.max_model_len.value
        self.vocab = getattr(model.hf_config, "vocab_size", None)
        try:
            self.embedding_size = int(model.embedding_size)
        except Exception:  # noqa: BLE001 - a model without a vector size
            self.embedding_size = None
        try:
            self.score_type = llm.score_type
        except PoolkitError:
            self.score_type = None
        self.default_task = next((t for t in _DEFAULT_TASKS if t in self.tasks), self.tasks[0] if self.tasks else None)
        self.id2label = model.id2label
        self.prompts = model.prompts
        self.task_instructions = dict(getattr(model.hf_config, "task_instructions", None) or {})
        if self.served is None:
            self.served = model.name
        # Error messages name the served model, never the directory it was read from.
        self.scrub = sorted({(str(model.name), self.served), (str(model.path), self.served)}, key=lambda p: -len(p[0]))
        self.llm = llm
        self.batcher = Batcher(llm, self.limits.max_batch_tokens, self.limits.max_queue_tokens)
        self.ready = True


# -- request plumbing --------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {_short(duplicate, 40)!r}")
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
        raise json.JSONDecodeError(_short(exc, 120), "", 0) from None


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json


class _StrictRoute(APIRoute):
    """Routes whose JSON bodies are parsed by :func:`strict_json`."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return route_handler


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


class _Guard:
    """ASGI middleware: key, admission, content type and body size before anything is parsed.

    It also times every request for ``/metrics`` and turns an unexpected exception into a
    sanitised 500 with the error body.
    """

    def __init__(self, app: Any, state: _State) -> None:
        self.app = app
        self.state = state

    def _authorized(self, scope: dict) -> bool:
        given = _header(scope, b"authorization") or ""
        scheme, _, token = given.partition(" ")
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        return scheme.lower() == "bearer" and secrets.compare_digest(digest, self.state.key_digest)

    def _check(self, scope: dict, path: str, method: str) -> ApiError | None:
        st = self.state
        if path in _PROTECTED_ROUTES and st.key_digest is not None and not self._authorized(scope):
            return ApiError(
                401,
                "Unauthorized: send the API key as 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if path not in INFERENCE_ROUTES or method != "POST":
            return None
        if st.load_error is not None:
            return ApiError(503, "the model failed to load")
        if not st.ready:
            return ApiError(503, "the model is loading; retry shortly", headers={"Retry-After": "5"})
        if st.draining:
            return ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})
        if st.in_flight >= st.limits.max_concurrent_requests:
            st.metrics.rejected += 1
            return ApiError(
                429,
                f"the server is busy ({st.in_flight} requests in flight); retry later",
                headers={"Retry-After": "1"},
            )
        if not _is_json(_header(scope, b"content-type")):
            return ApiError(415, "Unsupported Media Type: Only 'application/json' is allowed")
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return ApiError(400, "invalid Content-Length header")
            if int(length) > st.limits.max_body_bytes:
                return self._too_large()
        return None

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is larger than the limit of {self.state.limits.max_body_bytes} bytes")

    async def _read_body(self, receive: Any) -> tuple[bytes | None, ApiError | None]:
        chunks, size = [], 0
        while True:
            message = await receive()
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
        route = path if path in _ROUTE_LABELS else "other"
        start = time.perf_counter()
        status = [0]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        admitted = False
        try:
            error = self._check(scope, path, method)
            if error is None and path in INFERENCE_ROUTES and method == "POST":
                st.in_flight += 1
                admitted = True
                body, error = await self._read_body(receive)
                if body is None and error is None:
                    status[0] = 499
                    return
                if error is None:
                    receive = _replay(body, receive)
            if error is not None:
                await _send_error(send_wrapper, error)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception:  # a bug: log it, answer a sanitised 500
            logger.exception("unhandled error on %s %s", method, route)
            if not status[0]:
                await _send_error(send_wrapper, ApiError(500, "internal server error"))
        finally:
            if admitted:
                st.in_flight -= 1
                st.metrics.fold(st.batcher)
            st.metrics.observe(route, status[0] or 500, time.perf_counter() - start)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.01)


class _ClientGone(Exception):
    pass


async def _run(request: Request, st: _State, awaitable: Awaitable[Any]) -> Any:
    """Await work for a request; if the client disconnects first, cancel it (dropping queued work)."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        watcher.cancel()
        raise
    if work.done():
        watcher.cancel()
        return work.result()
    work.cancel()
    st.metrics.disconnected += 1
    raise _ClientGone()


def _dump(payload: Any) -> bytes:
    try:
        return json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except ValueError:
        raise ApiError(500, "the model produced a non-finite value (NaN or Infinity); no result was returned") from None


async def _respond(build: Callable[[], Any], size: int, headers: dict[str, str] | None = None) -> Response:
    """Build and serialise a JSON response; large ones off the event loop."""

    def render() -> bytes:
        return _dump(build())

    body = await asyncio.to_thread(render) if size > 32768 else render()
    return Response(body, media_type="application/json", headers=headers)


def _check_finite(results: Sequence[tuple[torch.Tensor, list[int]]]) -> None:
    for tensor, _ in results:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ApiError(500, "the model produced a non-finite value (NaN or Infinity); no result was returned")


def _request_id(request: Request, prefix: str) -> str:
    given = request.headers.get("x-request-id")
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return f"{prefix}-{given}"
    return f"{prefix}-{uuid.uuid4().hex}"


def _usage(tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": None}


# -- input checks ----------------------------------------------------------------------------------


def _check_model(st: _State, name: str | None) -> None:
    if name is not None and name != st.served:
        raise ApiError(404, f"The model `{_short(name)}` does not exist.", param="model")


def _check_text(text: str, where: str) -> None:
    if not text:
        raise ApiError(400, f"{where} must not be an empty string", param=where)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, f"{where} contains invalid Unicode (a lone surrogate)", param=where) from None


def _check_count(st: _State, n: int, where: str) -> None:
    if n == 0:
        raise ApiError(400, f"{where} must not be empty", param=where)
    if n > st.limits.max_inputs_per_request:
        raise ApiError(
            400, f"too many inputs: {n} > {st.limits.max_inputs_per_request} per request (--max-inputs-per-request)", param=where
        )


def _prompt_items(st: _State, value: Any, where: str = "input") -> list[Any]:
    """The prompts of an ``input`` field, checked: strings or ``{"prompt_token_ids": [...]}``."""
    if value is None:
        raise ApiError(400, f"{where} is required", param=where)
    if isinstance(value, str):
        items: list[Any] = [value]
    elif value and all(isinstance(v, int) for v in value):
        items = [value]
    else:
        items = list(value)
    _check_count(st, len(items), where)
    prompts = []
    for i, item in enumerate(items):
        name = f"{where}[{i}]" if len(items) > 1 or not isinstance(value, str) else where
        if isinstance(item, str):
            _check_text(item, name)
            prompts.append(item)
            continue
        if not item:
            raise ApiError(400, f"{name} is an empty list of token ids", param=name)
        bad = next((t for t in item if t < 0 or (st.vocab is not None and t >= st.vocab)), None)
        if bad is not None:
            vocab = f" (0..{st.vocab - 1})" if st.vocab is not None else ""
            raise ApiError(400, f"{name}: token id {_short(bad, 24)} is out of vocabulary{vocab}", param=name)
        prompts.append({"prompt_token_ids": item})
    return prompts


def _check_truncation(st: _State, truncate: int | None) -> None:
    if truncate is not None and st.max_len is not None and truncate > st.max_len:
        raise ApiError(
            400,
            f"truncate_prompt_tokens value ({truncate}) is greater than max_model_len ({st.max_len}). "
            "Please, select a smaller truncation size.",
            param="truncate_prompt_tokens",
        )


def _estimated_tokens(st: _State, prompts: Sequence[Prompt], params: Sequence[PoolingParams]) -> int:
    total = 0
    for prompt, p in zip(prompts, params):
        n = estimate_cost(prompt)
        limit = p.truncate_prompt_tokens if p.truncate_prompt_tokens and p.truncate_prompt_tokens > 0 else st.max_len
        total += min(n, limit) if limit else n
    return total


def _check_tokens(st: _State, tokens: int, where: str = "input") -> None:
    if tokens > st.limits.max_request_tokens:
        raise ApiError(
            400,
            f"the request has about {tokens} tokens (estimated), more than the limit of "
            f"{st.limits.max_request_tokens} per request (--max-request-tokens); send fewer or shorter inputs",
            param=where,
        )


def _params(**fields: Any) -> PoolingParams:
    return PoolingParams(**{k: v for k, v in fields.items() if v is not None})


# -- the application -------------------------------------------------------------------------------


def create_app(
    llm: Any,
    *,
    served_model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    chat_template: str | None = None,
) -> FastAPI:
    """The FastAPI application serving ``llm``.

    Args:
        llm: a loaded :class:`poolkit.LLM`, or a callable returning one: it is then loaded in a
            background thread at startup, and the server answers 503 until it is ready.
        served_model_name: the name requests must use in ``model`` (default: the model's name).
        api_key: when set, every inference route and ``/v1/models`` need
            ``Authorization: Bearer <api_key>``; ``/health``, ``/metrics`` and the docs stay open.
        limits: the server's limits (:class:`ServerLimits`).
        chat_template: a score template for cross-encoder ``/score`` and ``/rerank`` requests.

    Example:
        >>> from fastapi.testclient import TestClient
        >>> with TestClient(create_app(LLM(), served_model_name="minilm")) as client:
        ...     client.post("/v1/embeddings", json={"model": "minilm", "input": "hi"}).json()["data"][0]["index"]
        0
    """
    st = _State(served_model_name, api_key, limits or ServerLimits(), chat_template)
    loader = llm if callable(llm) and not hasattr(llm, "model") else None
    if loader is None:
        st.attach(llm)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if loader is not None and not st.loading:
            st.loading = True
            threading.Thread(target=_load, args=(st, loader), name="poolkit-load", daemon=True).start()
        if st.drained:  # started again after a shutdown (tests, embedding servers): a fresh batcher
            st.batcher = Batcher(st.llm, st.limits.max_batch_tokens, st.limits.max_queue_tokens)
            st.drained = st.draining = False
        yield
        st.draining = True
        if st.batcher is not None:
            st.drained = True
            done = await asyncio.to_thread(st.batcher.drain, st.limits.shutdown_timeout)
            if not done:
                logger.warning("shutdown: queued work did not finish within %.0f s", st.limits.shutdown_timeout)

    app = FastAPI(
        title="poolkit",
        description="Pooling models (embeddings, rerankers, classifiers, token models) over HTTP: "
        "OpenAI, vLLM and Cohere endpoints.",
        version=_version(),
        lifespan=lifespan,
    )
    app.router.route_class = _StrictRoute
    app.state.poolkit = st
    app.add_middleware(_Guard, state=st)
    _install_error_handlers(app, st)
    _add_routes(app, st)
    return app


def _version() -> str:
    from . import __version__

    return __version__


def _load(st: _State, loader: Callable[[], Any]) -> None:
    try:
        st.attach(loader())
        logger.info("model loaded; serving it as '%s'", st.served)
    except BaseException as exc:  # noqa: BLE001 - reported by run() once the server stops
        logger.error("the model failed to load: %s", exc)
        st.load_error = exc
        st.request_exit()


def _status_of(exc: PoolkitError) -> int:
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, ShuttingDown):
        return 503
    if isinstance(exc, MissingDependency):
        return 501
    if isinstance(exc, (ModelLoadError, PluginError)):
        return 500
    return 400


def _install_error_handlers(app: FastAPI, st: _State) -> None:
    def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> Response:
        return Response(_error_body(status, message, param, st.scrub), status_code=status, media_type="application/json", headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(_ClientGone)
    async def client_gone(request: Request, exc: _ClientGone) -> Response:
        return error_response(499, "the client closed the request")

    @app.exception_handler(PoolkitError)
    async def poolkit_error(request: Request, exc: PoolkitError) -> Response:
        status = _status_of(exc)
        if status == 429:
            st.metrics.rejected += 1
        if status >= 500:
            logger.error("%s on %s: %s", type(exc).__name__, request.url.path, exc)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        message = str(exc) or type(exc).__name__
        return error_response(status, message, _guess_param(message) if status == 400 else None, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        message, param = _validation_message(exc.errors())
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))


_PARAM_HINTS = (
    ("matryoshka", "dimensions"),
    ("imensions", "dimensions"),
    ("truncate_prompt_tokens", "truncate_prompt_tokens"),
    ("prompt_name", "input_type"),
    ("does not support task", "task"),
    ("only supports", "task"),
    ("token id", "input"),
    ("image", "images"),
    ("top_k", "top_k"),
    ("threshold", "threshold"),
    ("instruction", "instruction"),
    ("max_tokens", "max_tokens"),
    ("prompt ", "input"),
)


def _guess_param(message: str) -> str | None:
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


def _validation_message(errors: Sequence[dict]) -> tuple[str, str | None]:
    """At most 10 errors, each short; never the offending input itself."""
    parts: list[str] = []
    param = None
    for err in list(errors)[:10]:
        loc = list(err.get("loc", ()))
        if loc and loc[0] == "body":
            loc = loc[1:]
        kind = err.get("type", "")
        if kind == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "invalid JSON")
            return f"invalid JSON: {_short(reason, 200)}", None
        if kind == "missing" and not loc:
            return "the request body is missing: send a JSON object", None
        if kind in ("model_attributes_type", "dict_type", "model_type") and not loc:
            return "the request body must be a JSON object", None
        where = _loc(loc)
        param = param or where or None
        msg = _short(err.get("msg", "invalid value"), 200)
        parts.append(f"{where}: {msg}" if where else msg)
    extra = len(errors) - 10
    message = "; ".join(dict.fromkeys(parts)) + (f"; and {extra} more errors" if extra > 0 else "")
    return message or "invalid request", param


def _add_routes(app: FastAPI, st: _State) -> None:
    def need_llm() -> Any:
        if st.llm is None:  # routes are reached only when ready; this guards direct calls
            raise ApiError(503, "the model is loading; retry shortly", headers={"Retry-After": "5"})
        return st.llm

    @app.get("/health", summary="200 when the model is loaded and the server takes requests; 503 otherwise.")
    async def health() -> Response:
        if st.load_error is not None:
            raise ApiError(503, "the model failed to load")
        if not st.ready:
            raise ApiError(503, "the model is loading", headers={"Retry-After": "5"})
        if st.draining:
            raise ApiError(503, "the server is shutting down")
        return Response(_dump({"status": "ok"}), media_type="application/json")

    @app.get("/metrics", summary="Prometheus metrics (text exposition format).")
    async def metrics() -> Response:
        return Response(st.metrics.render(st), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", summary="The served model (OpenAI).")
    async def models() -> Response:
        need_llm()
        entry = {
            "id": st.served,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "poolkit",
            "max_model_len": st.max_len,
            "tasks": st.tasks,
            "score_type": st.score_type,
        }
        if st.embedding_size:
            entry["embedding_size"] = st.embedding_size
        return Response(_dump({"object": "list", "data": [entry]}), media_type="application/json")

    # -- embeddings and pooling -----------------------------------------------------------------

    async def chat_prompt(request: Request, body: Any) -> list[Any]:
        llm = need_llm()
        tok = llm.get_tokenizer()
        if not getattr(tok, "chat_template", None):
            raise ApiError(400, f"model '{st.served}' has no chat template: send 'input' instead of 'messages'", param="messages")
        if body.add_generation_prompt and body.continue_final_message:
            raise ApiError(
                400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.", param="messages"
            )
        messages = body.messages
        _check_count(st, len(messages), "messages")
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ApiError(400, f"messages[{i}] needs a string 'role'", param=f"messages[{i}].role")
            content = message.get("content")
            if isinstance(content, str):
                if content:
                    _check_text(content, f"messages[{i}].content")
            elif not isinstance(content, list):
                raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}].content")
        add_special = bool(body.add_special_tokens)
        size = sum(len(json.dumps(m)) for m in messages)

        def render() -> list[int]:
            try:
                text = tok.apply_chat_template(
                    messages,
                    tokenize=False,
                    add_generation_prompt=body.add_generation_prompt,
                    continue_final_message=body.continue_final_message,
                )
            except Exception as exc:  # jinja2 errors, bad message shapes
                raise InvalidRequest(f"cannot apply the chat template: {_short(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)}") from None
            return tok(text, add_special_tokens=add_special)["input_ids"]

        ids = await _run(request, st, st.batcher.call(render, max(1, size // 4)))
        if not ids:
            raise ApiError(400, "the rendered chat has no tokens", param="messages")
        return [{"prompt_token_ids": ids}]

    async def prompts_of(request: Request, body: Any) -> list[Any]:
        if body.messages is not None:
            if body.input is not None:
                raise ApiError(400, "send either 'input' or 'messages', not both", param="messages")
            return await chat_prompt(request, body)
        if body.add_special_tokens is False:
            raise ApiError(400, "add_special_tokens=false is supported with 'messages' only", param="add_special_tokens")
        return _prompt_items(st, body.input)

    async def run_task(
        request: Request, task_name: str, raw: list[Any], params: PoolingParams, prompt_name: str | None = None
    ) -> tuple[Any, list[tuple[torch.Tensor, list[int]]]]:
        llm = need_llm()
        _check_truncation(st, params.truncate_prompt_tokens)
        task, prompts, checked = llm.prepare(raw, params, pooling_task=task_name, prompt_name=prompt_name)
        _check_tokens(st, _estimated_tokens(st, prompts, checked))
        results = await _run(request, st, st.batcher.submit(task.name, prompts, checked))
        st.metrics.inputs += len(results)
        st.metrics.prompt_tokens += sum(len(ids) for _, ids in results)
        return task, results

    def encoded_response(
        request: Request,
        body: Any,
        prefix: str,
        results: list[tuple[torch.Tensor, list[int]]],
        item: Callable[[int, torch.Tensor, Any], dict],
    ) -> Awaitable[Response]:
        request_id = _request_id(request, prefix)
        created = int(time.time())
        tokens = sum(len(ids) for _, ids in results)
        size = sum(t.numel() for t, _ in results)
        if body.encoding_format in ("bytes", "bytes_only"):
            return _bytes_response(request_id, created, st.served, body, results, tokens)

        def build() -> dict:
            _check_finite(results)
            return {
                "id": request_id,
                "object": "list",
                "created": created,
                "model": st.served,
                "data": [item(i, t, body) for i, (t, _) in enumerate(results)],
                "usage": _usage(tokens),
            }

        return _respond(build, size)

    def vector(t: torch.Tensor, body: Any) -> Any:
        return t.tolist() if body.encoding_format == "float" else tensor_base64(t, body.embed_dtype, body.endianness)

    @app.post("/v1/embeddings", summary="Embeddings (OpenAI).")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        _check_model(st, body.model)
        _check_dimensions(st, body.dimensions, "dimensions")
        params = _params(
            dimensions=body.dimensions,
            use_activation=body.use_activation,
            truncate_prompt_tokens=body.truncate_prompt_tokens,
            truncation_side=body.truncation_side,
        )
        raw = await prompts_of(request, body)
        _, results = await run_task(request, "embed", raw, params)
        return await encoded_response(
            request, body, "embd", results, lambda i, t, b: {"index": i, "object": "embedding", "embedding": vector(t, b)}
        )

    @app.post("/classify", summary="Class probabilities (vLLM).")
    async def classify(body: ClassificationRequest, request: Request) -> Response:
        _check_model(st, body.model)
        params = _params(
            use_activation=body.use_activation,
            truncate_prompt_tokens=body.truncate_prompt_tokens,
            truncation_side=body.truncation_side,
        )
        raw = await prompts_of(request, body)
        _, results = await run_task(request, "classify", raw, params)
        request_id, created = _request_id(request, "classify"), int(time.time())
        tokens = sum(len(ids) for _, ids in results)

        def build() -> dict:
            _check_finite(results)
            data = []
            for i, (t, _) in enumerate(results):
                probs = t.reshape(-1).tolist()
                label = st.id2label.get(int(t.reshape(-1).argmax())) if probs else None
                data.append({"index": i, "object": "classification", "label": label, "probs": probs, "num_classes": len(probs)})
            return {"id": request_id, "object": "list", "created": created, "model": st.served, "data": data, "usage": _usage(tokens)}

        return await _respond(build, sum(t.numel() for t, _ in results))

    @app.post("/pooling", summary="Any pooling task (vLLM): 'task' chooses it per request; 'data' for the plugin task.")
    async def pooling(body: PoolingRequest, request: Request) -> Response:
        _check_model(st, body.model)
        llm = need_llm()
        task = body.task or ("plugin" if body.data is not None else st.default_task)
        if body.data is not None or task == "plugin":
            return await plugin(request, body, task)
        if task not in st.tasks:
            raise ApiError(400, f"Unsupported task: {_short(task, 40)!r} Supported tasks: {tuple(st.tasks)}", param="task")
        sparse = task == "sparse_embed"
        if not sparse and (body.top_k is not None or body.threshold is not None or body.return_tokens):
            raise ApiError(400, "top_k, threshold and return_tokens apply to task 'sparse_embed' only", param="task")
        if sparse:
            from .sparse import check_pruning

            check_pruning(body.top_k, body.threshold)
            if body.encoding_format != "float":
                raise ApiError(400, "task 'sparse_embed' returns {indices, values}: use encoding_format 'float'", param="encoding_format")
        _check_dimensions(st, body.dimensions, "dimensions")
        params = _params(
            dimensions=body.dimensions,
            use_activation=body.use_activation,
            truncate_prompt_tokens=body.truncate_prompt_tokens,
            truncation_side=body.truncation_side,
            step_tag_id=body.step_tag_id,
            returned_token_ids=body.returned_token_ids,
        )
        raw = await prompts_of(request, body)
        _, results = await run_task(request, task, raw, params)
        tokenizer = llm.get_tokenizer() if body.return_tokens else None

        def item(i: int, t: torch.Tensor, b: Any) -> dict:
            if sparse:
                from .sparse import SparseEmbedding

                data = SparseEmbedding.from_dense(t, top_k=b.top_k, threshold=b.threshold, tokenizer=tokenizer).to_dict()
                return {"index": i, "object": "pooling", "data": data}
            if b.encoding_format == "float":
                return {"index": i, "object": "pooling", "data": t.tolist()}
            return {"index": i, "object": "pooling", "data": vector(t, b), "shape": list(t.shape)}

        return await encoded_response(request, body, "pool", results, item)

    async def plugin(request: Request, body: PoolingRequest, task: str) -> Response:
        llm = need_llm()
        if task != "plugin":
            raise ApiError(400, "The 'data' field is only supported for the 'plugin' pooling task.", param="data")
        if body.data is None:
            raise ApiError(400, "task 'plugin' takes its input in 'data'", param="data")
        size = len(json.dumps(body.data))
        _check_tokens(st, size // 4, "data")
        data = body.data
        outputs = await _run(request, st, st.batcher.call(lambda: llm.encode({"data": data}, pooling_task="plugin"), max(1, size // 4)))
        request_id, created = _request_id(request, "pool"), int(time.time())
        result = outputs[0].outputs if outputs else None
        return await _respond(
            lambda: {"id": request_id, "object": "list", "created": created, "model": st.served, "data": _jsonable(result)},
            size,
        )

    # -- scoring --------------------------------------------------------------------------------

    def texts_of(value: Any, what: str, where: str) -> list[str]:
        items = [value] if isinstance(value, str) else list(value)
        if not items:
            raise ApiError(400, f"At least one {what} element must be given", param=where)
        for i, text in enumerate(items):
            _check_text(text, f"{where}[{i}]" if not isinstance(value, str) else where)
        return items

    def score_params(body: Any) -> PoolingParams:
        _check_truncation(st, body.truncate_prompt_tokens)
        return _params(
            use_activation=body.use_activation,
            truncate_prompt_tokens=body.truncate_prompt_tokens,
            truncation_side=body.truncation_side,
        )

    def pair_tokens(first: list[str], second: list[str]) -> int:
        total = 0
        for a, b in zip(first * len(second) if len(first) == 1 else first, second):
            n = len(a) // 4 + len(b) // 4 + 3
            total += min(n, st.max_len) if st.max_len else n
        return total

    async def score_call(request: Request, first: list[str], second: list[str], params: PoolingParams, instruction: str | None) -> list[Any]:
        llm = need_llm()
        if st.score_type is None:
            llm.score_type  # raises the model's reason (InvalidRequest)
        tokens = pair_tokens(first, second)
        _check_tokens(st, tokens)
        template = st.chat_template if st.score_type == "cross-encoder" else None
        outputs = await _run(
            request,
            st,
            st.batcher.call(lambda: llm.score(first, second, params, chat_template=template, instruction=instruction), tokens),
        )
        st.metrics.inputs += len(outputs)
        st.metrics.prompt_tokens += sum(len(o.prompt_token_ids) for o in outputs)
        return outputs

    async def score(body: ScoreRequest, request: Request) -> Response:
        _check_model(st, body.model)
        firsts = [(n, v) for n, v in (("text_1", body.text_1), ("data_1", body.data_1), ("queries", body.queries)) if v is not None]
        seconds = [
            (n, v)
            for n, v in (("text_2", body.text_2), ("data_2", body.data_2), ("documents", body.documents), ("items", body.items))
            if v is not None
        ]
        if len(firsts) != 1 or len(seconds) != 1:
            raise ApiError(400, "send one pair of inputs: text_1 and text_2 (or data_1 and data_2, or queries and documents)", param="text_1")
        (name_1, value_1), (name_2, value_2) = firsts[0], seconds[0]
        first = texts_of(value_1, "text", name_1)
        second = texts_of(value_2, "text_pair", name_2)
        if len(first) != 1 and len(first) != len(second):
            raise ApiError(400, "Input lengths must be either 1:1, 1:N or N:N", param=name_2)
        _check_count(st, len(first) + len(second) if len(first) > 1 else len(second), name_2)
        outputs = await score_call(request, first, second, score_params(body), body.instruction)
        request_id, created = _request_id(request, "score"), int(time.time())
        tokens = sum(len(o.prompt_token_ids) for o in outputs)
        data = [{"index": i, "object": "score", "score": o.outputs.score} for i, o in enumerate(outputs)]
        return await _respond(
            lambda: {"id": request_id, "object": "list", "created": created, "model": st.served, "data": data, "usage": _usage(tokens)},
            len(data),
        )

    async def rerank(body: RerankRequest, request: Request) -> Response:
        _check_model(st, body.model)
        _check_text(body.query, "query")
        if body.top_n < 0:
            raise ApiError(400, f"top_n must be 0 (all) or a positive number, got {body.top_n}", param="top_n")
        docs = [d.text if isinstance(d, RerankDocument) else d for d in body.documents]
        if not docs:
            raise ApiError(400, "At least one document element must be given", param="documents")
        _check_count(st, len(docs), "documents")
        for i, doc in enumerate(docs):
            _check_text(doc, f"documents[{i}]")
        outputs = await score_call(request, [body.query], docs, score_params(body), body.instruction)
        order = sorted(range(len(docs)), key=lambda i: -outputs[i].outputs.score)
        if 0 < body.top_n < len(order):
            order = order[: body.top_n]
        results = []
        for i in order:
            result: dict[str, Any] = {"index": i, "relevance_score": outputs[i].outputs.score}
            if body.return_documents:
                result["document"] = {"text": docs[i]}
            results.append(result)
        tokens = sum(len(o.prompt_token_ids) for o in outputs)
        request_id = _request_id(request, "rerank")
        return await _respond(
            lambda: {
                "id": request_id,
                "model": st.served,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "results": results,
            },
            len(results),
        )

    for path in ("/score", "/v1/score"):
        app.post(path, summary="Scores of text pairs, 1:1, 1:N or N:N (vLLM).")(score)
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        app.post(path, summary="Documents ranked by relevance to a query (Jina / Cohere).")(rerank)

    # -- Cohere embed ---------------------------------------------------------------------------

    @app.post("/v2/embed", summary="Embeddings (Cohere Embed v2): float, binary, ubinary, base64.")
    async def cohere_embed(body: CohereEmbedRequest, request: Request) -> Response:
        _check_model(st, body.model)
        llm = need_llm()
        items = _cohere_items(st, body)
        prompt_name, prefix = _input_type(st, body.input_type)
        types = list(dict.fromkeys(body.embedding_types))
        if not types:
            raise ApiError(400, "embedding_types must not be empty", param="embedding_types")
        _check_dimensions(st, body.output_dimension, "output_dimension")
        width = body.output_dimension or st.embedding_size
        if width and width % 8 and ({"binary", "ubinary"} & set(types)):
            raise ApiError(
                400,
                f"Embedding dimension must be a multiple of 8 for binary embedding types, but got {width}.",
                param="embedding_types",
            )
        if body.max_tokens is not None and body.max_tokens < 1:
            raise ApiError(400, f"max_tokens must be a positive number, got {body.max_tokens}", param="max_tokens")
        truncate = None
        if body.truncate != "NONE":
            truncate = body.max_tokens or -1
            _check_truncation(st, truncate)
        params = _params(
            dimensions=body.output_dimension,
            truncate_prompt_tokens=truncate,
            truncation_side={"START": "left", "END": "right"}.get(body.truncate),
        )
        raw = [(prefix + value if prefix else value) if kind == "text" else "" for kind, value in items]
        task, prompts, checked = llm.prepare(raw, params, pooling_task="embed", prompt_name=prompt_name)
        images = [i for i, (kind, _) in enumerate(items) if kind == "image"]
        tokens = _estimated_tokens(st, prompts, checked)
        _check_tokens(st, tokens)
        if images or body.truncate == "NONE":
            untruncated = body.truncate == "NONE"
            work = _cohere_work(
                st, task, prompts, checked, [(i, items[i][1]) for i in images], untruncated, body.max_tokens if untruncated else None
            )
            results = await _run(request, st, st.batcher.call(work, tokens + 256 * len(images)))
        else:
            results = await _run(request, st, st.batcher.submit(task.name, prompts, checked))
        st.metrics.inputs += len(results)
        image_set = set(images)
        # An image runs as one sequence without text tokens: it is billed as one token.
        counts = [max(1, len(ids)) if i in image_set else len(ids) for i, (_, ids) in enumerate(results)]
        input_tokens = sum(counts)
        st.metrics.prompt_tokens += input_tokens
        request_id = _request_id(request, "embd")

        def build() -> dict:
            _check_finite(results)
            encoders = {"float": lambda t: t.tolist(), "binary": binary, "ubinary": ubinary, "base64": cohere_base64}
            embeddings = {kind: [encoders[kind](t) for t, _ in results] for kind in types}
            billed: dict[str, int] = {"input_tokens": input_tokens}
            if images:
                billed["image_tokens"] = sum(counts[i] for i in images)
            out: dict[str, Any] = {"id": request_id, "embeddings": embeddings}
            if body.texts is not None:
                out["texts"] = body.texts
            out["meta"] = {"api_version": {"version": "2"}, "billed_units": billed}
            out["response_type"] = "embeddings_by_type"
            return out

        return await _respond(build, sum(t.numel() for t, _ in results) * len(types))


def _check_dimensions(st: _State, dimensions: int | None, where: str) -> None:
    if dimensions is None:
        return
    if dimensions < 1:
        raise ApiError(400, "Dimensions must be greater than 0", param=where)
    if st.embedding_size and dimensions > st.embedding_size and st.llm is not None and st.llm.model.is_matryoshka:
        raise ApiError(
            400, f"{where} ({dimensions}) is larger than the model's embedding size ({st.embedding_size})", param=where
        )


def _cohere_items(st: _State, body: CohereEmbedRequest) -> list[tuple[str, str]]:
    given = [name for name in ("texts", "images", "inputs") if getattr(body, name) is not None]
    if not given:
        raise ApiError(400, "One of texts, images, or inputs must be provided", param="texts")
    if len(given) > 1:
        raise ApiError(400, f"send only one of texts, images or inputs, got {' and '.join(given)}", param=given[1])
    name = given[0]
    items: list[tuple[str, str]] = []
    if name == "texts":
        items = [("text", t) for t in body.texts]
    elif name == "images":
        items = [("image", u) for u in body.images]
    else:
        for i, entry in enumerate(body.inputs):
            if len(entry.content) != 1:
                raise ApiError(400, f"inputs[{i}] must have exactly one content part (text or image_url)", param=f"inputs[{i}].content")
            part = entry.content[0]
            if part.type == "text":
                if part.text is None:
                    raise ApiError(400, f"inputs[{i}]: a text part needs 'text'", param=f"inputs[{i}].content")
                items.append(("text", part.text))
            else:
                url = part.image_url.url if hasattr(part.image_url, "url") else part.image_url
                if url is None:
                    raise ApiError(400, f"inputs[{i}]: an image_url part needs 'image_url'", param=f"inputs[{i}].content")
                items.append(("image", url))
    _check_count(st, len(items), name)
    for i, (kind, value) in enumerate(items):
        where = f"{name}[{i}]"
        if kind == "text":
            _check_text(value, where)
        elif not value.startswith("data:"):
            raise ApiError(400, f"{where}: images must be data:image/...;base64 URIs (URLs and files are not fetched)", param=where)
    return items


def _input_type(st: _State, input_type: str | None) -> tuple[str | None, str | None]:
    """``input_type`` -> (a sentence-transformers prompt name, or a task-instruction prefix)."""
    if input_type is None:
        return None, None
    if input_type in st.prompts:
        return input_type, None
    if input_type in st.task_instructions:
        return None, str(st.task_instructions[input_type])
    known = sorted(set(st.prompts) | set(st.task_instructions))
    if not known:
        raise ApiError(
            400,
            f"Unsupported input_type {_short(input_type, 40)!r}. This model does not define any input_type task instructions.",
            param="input_type",
        )
    raise ApiError(
        400, f"Unsupported input_type {_short(input_type, 40)!r}. Supported values: {', '.join(known)}", param="input_type"
    )


def _cohere_work(
    st: _State,
    task: Any,
    prompts: list[Prompt],
    params: list[PoolingParams],
    images: list[tuple[int, str]],
    untruncated: bool,
    max_tokens: int | None,
) -> Callable[[], Any]:
    """Worker-thread work for ``/v2/embed``: decode images (never files), check untruncated lengths, run."""
    llm = st.llm

    def work() -> Any:
        if images:
            from .plugins import registry

            processor = registry("io_processor").get("image")
            decoded = processor.pre_process(
                {"prompts": [Prompt(extras={"image": uri}) for _, uri in images], "model": llm.model, "allow_local_files": False}
            )
            for (i, _), prompt in zip(images, decoded):
                prompts[i] = prompt
        if untruncated:
            _check_untruncated(st, prompts, max_tokens)
        return llm.engine.run(task, prompts, params)

    return work


def _check_untruncated(st: _State, prompts: Sequence[Prompt], max_tokens: int | None) -> None:
    """Cohere ``truncate=NONE``: an input longer than the model's limit (or ``max_tokens``) is an error."""
    model = st.llm.model
    tok = model.tokenizer
    for i, prompt in enumerate(prompts):
        if prompt.text is None:
            continue
        text = (prompt.prompt_prefix or "") + prompt.text
        if model.do_lower_case:
            text = text.lower()
        n = len(tok(text, add_special_tokens=True, verbose=False)["input_ids"])
        if max_tokens is not None and n > max_tokens:
            raise InvalidRequest(
                f"Input of {n} tokens exceeds max_tokens={max_tokens} with truncate=NONE. "
                "Set truncate to END or START to allow truncation."
            )
        if st.max_len is not None and n > st.max_len:
            raise InvalidRequest(
                f"This model's maximum context length is {st.max_len} tokens. However, input {i} has {n} tokens "
                "(truncate=NONE). Please reduce the length of the input, or set truncate to END or START."
            )


async def _bytes_response(
    request_id: str, created: int, served: str, body: Any, results: list[tuple[torch.Tensor, list[int]]], tokens: int
) -> Response:
    """``encoding_format`` ``bytes`` / ``bytes_only``: the raw tensors as the body (vLLM)."""

    def build() -> tuple[bytes, list[dict]]:
        _check_finite(results)
        chunks, meta, offset = [], [], 0
        for i, (t, _) in enumerate(results):
            raw = tensor_bytes(t, body.embed_dtype, body.endianness)
            meta.append({"index": i, "embed_dtype": body.embed_dtype, "endianness": body.endianness,
                         "start": offset, "end": offset + len(raw), "shape": list(t.shape)})
            chunks.append(raw)
            offset += len(raw)
        return b"".join(chunks), meta

    size = sum(t.numel() for t, _ in results)
    payload, meta = await asyncio.to_thread(build) if size > 32768 else build()
    headers = {}
    if body.encoding_format == "bytes":
        headers["metadata"] = json.dumps(
            {"id": request_id, "created": created, "model": served, "data": meta,
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
            separators=(",", ":"),
        )
    return Response(payload, media_type="application/octet-stream", headers=headers)


def _jsonable(obj: Any, depth: int = 0) -> Any:
    """A plugin's output as JSON-ready data (tensors and arrays as nested lists)."""
    if depth > 64:
        raise ApiError(500, "the IO processor's output is nested too deeply to return")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj)}
    if hasattr(obj, "model_dump"):
        return _jsonable(obj.model_dump(), depth + 1)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in obj]
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict(), depth + 1)
    return str(obj)


# -- running ---------------------------------------------------------------------------------------


def run(
    llm: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    chat_template: str | None = None,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve ``llm`` (an :class:`LLM` or a callable loading one) with uvicorn until SIGTERM/SIGINT.

    On SIGTERM the server stops accepting connections, answers 503 to new requests on open ones,
    lets in-flight requests finish and drains the batcher (each bounded by
    ``limits.shutdown_timeout``), then returns, so the process exits 0.

    Raises:
        MissingDependency: uvicorn is not installed.
        PoolkitError: the model failed to load (re-raised once the server has stopped).
    """
    try:
        import uvicorn
    except ImportError:
        raise MissingDependency("the HTTP server needs FastAPI and uvicorn: pip install 'poolkit[serve]'") from None
    limits = limits or ServerLimits()
    app = create_app(llm, served_model_name=served_model_name, api_key=api_key, limits=limits, chat_template=chat_template)
    st: _State = app.state.poolkit
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=max(1, int(round(limits.shutdown_timeout))),
        server_header=False,
        lifespan="on",
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Drain instead of re-raising the signal once stopped (uvicorn's default), so SIGTERM exits 0.
            st.draining = True
            if self.should_exit and sig == signal.SIGINT:  # a second Ctrl-C forces the exit
                self.force_exit = True
            self.should_exit = True

    server = _Server(config)
    st.request_exit = lambda: setattr(server, "should_exit", True)
    server.run()
    if st.load_error is not None:
        raise st.load_error
