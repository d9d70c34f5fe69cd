"""OpenTelemetry traces of the server's requests, exported over OTLP: ``--otlp-traces-endpoint URL``.

Off by default; then no code of this module runs on a request and OpenTelemetry is never
imported. With an endpoint (vLLM's option, or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), each
inference request (a ``POST`` of an inference route) is one span of kind ``SERVER`` named for its
method and route (``POST /v1/embeddings``), a child of the caller's span when the request carries
a W3C ``traceparent`` header, with a child span per phase of its work:

- ``queue``: waiting for the batcher;
- ``tokenize``: the merged batch it was taken in being tokenized;
- ``run``: the model running that batch (with the tokenizing, for work that tokenizes as it
  runs: images, chunked inputs, scoring calls);
- ``respond``: from the results to the response sent.

A request whose work comes in parts (a chat template rendered before the prompts run, the inputs
an embedding cache misses) has a ``queue`` and ``run`` span per part.

No span is built while a request is handled: the batcher stamps a traced request's work with
the times of its phases (:class:`~poolkit.runtime.batching.WorkTimes`), the model's metrics
(:class:`TracedMetrics`) note its inputs and prompt tokens on its :class:`RequestTrace`, and
once its response is sent the spans are built from these with their recorded times. The SDK's
batch processor exports them from its own thread: no request waits for the collector, and a
collector that is down or slow loses spans, never requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from typing import Any, Collection
from urllib.parse import urlsplit

from ...contracts.errors import InvalidRequest, MissingDependency
from ...runtime.batching import TIMED_WORK, WorkTimes
from ..serving.metrics import ModelMetrics

logger = logging.getLogger(__name__)

#: The OTLP transports the exporter speaks (``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``); the first is the default.
PROTOCOLS = ("http/protobuf", "grpc")
#: The path OTLP/HTTP collectors take traces on, given to an endpoint URL without a path.
TRACES_PATH = "/v1/traces"
#: Seconds the server waits for its last spans to reach the collector when it stops.
FLUSH_TIMEOUT = 5.0
#: The trace of the request being handled, while tracing is on.
REQUEST_TRACE: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar("poolkit_request_trace", default=None)


def protocol() -> str:
    """The OTLP transport to export with: ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else
    ``OTEL_EXPORTER_OTLP_PROTOCOL``, else OTLP/HTTP with protobuf.

    Raises:
        InvalidRequest: a transport the exporter does not speak.
    """
    value = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    chosen = (value or PROTOCOLS[0]).strip().lower()
    if chosen not in PROTOCOLS:
        raise InvalidRequest(f"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got '{value}'")
    return chosen


def check_endpoint(url: str) -> str:
    """The endpoint traces go to, checked before any model loads: an ``http(s)`` URL (one without
    a path gets OTLP's :data:`TRACES_PATH`); over gRPC, the URL as given.

    Raises:
        InvalidRequest: not such a URL, or an unknown transport.
        MissingDependency: OpenTelemetry's SDK or its exporter is not installed.
    """
    chosen = protocol()
    _exporter(chosen)
    text = str(url).strip()
    if chosen == "grpc":
        if not text:
            raise InvalidRequest("--otlp-traces-endpoint must name the collector, got ''")
        return text
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"--otlp-traces-endpoint must be an http:// or https:// URL, got '{url}'")
    if parts.path in ("", "/"):
        text = parts._replace(path=TRACES_PATH).geturl()
    return text


def _exporter(chosen: str) -> Any:
    """The OTLP span exporter class of a transport.

    Raises:
        MissingDependency: it, or OpenTelemetry's SDK, is not installed.
    """
    try:
        import opentelemetry.sdk.trace  # noqa: F401

        if chosen != "grpc":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter
    except ImportError:
        raise MissingDependency("--otlp-traces-endpoint needs OpenTelemetry: pip install 'poolkit[otel]'") from None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise MissingDependency(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc needs OpenTelemetry's gRPC exporter: "
            "pip install opentelemetry-exporter-otlp-proto-grpc"
        ) from None
    return OTLPSpanExporter


class RequestTrace:
    """What the spans of one request are built from, gathered while it is handled.

    Attributes:
        start, end: when the request reached the server and its response was sent (``time.time_ns()``).
        route: the request's path; ``carrier``: its ``traceparent`` and ``tracestate`` headers.
        request_id: its ``X-Request-Id`` header; ``status``: the response's status code.
        model: the served name of the model that answered it (none for a refusal before any work);
            ``inputs``, ``prompt_tokens``: what the model ran.
        works: the times of its work's phases, one entry per piece of work it queued.
    """

    __slots__ = ("start", "end", "route", "carrier", "request_id", "status", "model", "inputs", "prompt_tokens", "works")

    def __init__(self, scope: dict) -> None:
        self.start = time.time_ns()
        self.end = 0
        self.route: str = scope["path"]
        self.carrier: dict[str, str] = {}
        self.request_id: str | None = None
        for key, value in scope.get("headers", ()):
            key = key.lower()
            if key in (b"traceparent", b"tracestate"):
                self.carrier[key.decode("latin-1")] = value.decode("latin-1")
            elif key == b"x-request-id":
                self.request_id = value.decode("latin-1")
        self.status = 0
        self.model: str | None = None
        self.inputs = 0
        self.prompt_tokens = 0
        self.works: list[WorkTimes] = []


class TracedMetrics(ModelMetrics):
    """A model's metrics when the server traces: what a request ran is noted on its trace too
    (the model's metrics are these only then, so that nothing is looked up otherwise)."""

    def answered(self, inputs: int, prompt_tokens: int) -> None:
        super().answered(inputs, prompt_tokens)
        request = REQUEST_TRACE.get()
        if request is not None:
            request.inputs += inputs
            request.prompt_tokens += prompt_tokens


class Tracing:
    """A tracer provider exporting to one OTLP endpoint, and the spans of answered requests.

    Its own provider, never the process's global one, so that two applications in one process
    (tests, an embedding server) export each to its own endpoint. The resource is
    ``service.name=poolkit`` unless ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` say
    otherwise; the batch processor honours the SDK's ``OTEL_BSP_*`` settings and the exporter its
    ``OTEL_EXPORTER_OTLP_TRACES_*`` ones (headers, timeout, certificates, compression).

    Args:
        endpoint: the collector's URL (see :func:`check_endpoint`).

    Raises:
        InvalidRequest: a bad URL or transport.
        MissingDependency: OpenTelemetry is not installed.
    """

    #: The model metrics of a traced server (:class:`~poolkit.entrypoints.serving.state.ModelState`
    #: makes its own from here, so that the state module need not import this one).
    metrics = TracedMetrics

    def __init__(self, endpoint: str) -> None:
        self.endpoint = check_endpoint(endpoint)
        exporter = _exporter(protocol())
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from ... import __version__

        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "poolkit"}))
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter(endpoint=self.endpoint)))
        self._tracer = self.provider.get_tracer("poolkit", __version__)
        self._extract = TraceContextTextMapPropagator().extract
        self._in_context = trace.set_span_in_context
        self._server = trace.SpanKind.SERVER
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._failed = False

    def record(self, request: RequestTrace) -> None:
        """Build and hand the spans of an answered request to the exporter; a failure is logged once, never raised."""
        try:
            self._record(request)
        except Exception:  # noqa: BLE001 - tracing never fails a request
            if not self._failed:
                self._failed = True
                logger.warning("could not build a request's trace spans", exc_info=True)

    def _record(self, request: RequestTrace) -> None:
        end = request.end or time.time_ns()
        status = request.status or 499  # the client went away before an answer (as /metrics counts it)
        attributes = {
            "http.request.method": "POST",
            "http.route": request.route,
            "http.response.status_code": status,
            "gen_ai.response.model": request.model,
            "gen_ai.request.id": request.request_id,
            "gen_ai.usage.prompt_tokens": request.prompt_tokens,
            "poolkit.inputs": request.inputs,
            "poolkit.task": next((w.task for w in request.works if w.task is not None), None),
        }
        parent = self._extract(request.carrier) if request.carrier else None
        span = self._tracer.start_span(
            f"POST {request.route}", context=parent, kind=self._server, start_time=request.start,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        if not span.is_recording():  # not sampled (OTEL_TRACES_SAMPLER): neither are its phases
            return
        within = self._in_context(span)
        queued = ran = 0
        for work in request.works:
            taken = work.taken or end
            self._child("queue", within, work.queued, taken)
            queued += taken - work.queued
            if not work.taken:
                continue
            if work.tokenized:
                self._child("tokenize", within, work.taken, work.tokenized, {"poolkit.batch.inputs": work.batch_inputs})
            details = {"poolkit.inputs": work.inputs, "poolkit.batch.inputs": work.batch_inputs}
            self._child("run", within, work.tokenized or work.taken, work.ran or end, {k: v for k, v in details.items() if v})
            ran = max(ran, work.ran)
        if ran:
            self._child("respond", within, ran, end)
        if request.works:
            span.set_attribute("gen_ai.latency.time_in_queue", queued / 1e9)
        if status >= 500:
            span.set_status(self._error)
        span.end(end_time=end)

    def _child(self, name: str, within: Any, start: int, end: int, attributes: dict | None = None) -> None:
        self._tracer.start_span(name, context=within, start_time=start, attributes=attributes).end(end_time=max(start, end))

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Send the spans not sent yet, waiting at most ``timeout`` seconds; whether all went."""
        return self.provider.force_flush(int(timeout * 1000))

    def shutdown(self) -> None:
        """Send what is left and stop the exporter's thread (the provider also does so at exit)."""
        self.provider.shutdown()


class Traced:
    """ASGI middleware around the :class:`~poolkit.entrypoints.server.guard.Guard`: gathers the
    :class:`RequestTrace` of each inference request and records it once the response is sent.

    Built after the guard it wraps, it takes the guard's place as the entry the HTTP front hands
    its requests to (:attr:`ServerState.guard <poolkit.entrypoints.serving.state.ServerState>`).

    Args:
        app: the ASGI application it wraps (the guard).
        state: the application's :class:`~poolkit.entrypoints.serving.state.ServerState` (its ``tracing`` set).
        paths: the paths whose ``POST`` requests are traced.
    """

    def __init__(self, app: Any, state: Any, paths: Collection[str]) -> None:
        from .deps import CHOSEN_MODEL

        self.app = app
        self.tracing: Tracing = state.tracing
        self.paths = frozenset(paths)
        self._chosen = CHOSEN_MODEL
        state.guard = self

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        request = RequestTrace(scope)

        async def traced_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                request.status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                request.end = time.time_ns()

        works = TIMED_WORK.set(request.works)
        current = REQUEST_TRACE.set(request)
        try:
            await self.app(scope, receive, traced_send)
        finally:
            REQUEST_TRACE.reset(current)
            TIMED_WORK.reset(works)
            model = scope.get(self._chosen)
            if model is not None and (request.works or not 400 <= request.status < 500):
                request.model = model.served  # not for a refusal before any work: it may name another
            request.end = request.end or time.time_ns()
            # after this turn of the loop, whose end is when the front's answer leaves
            asyncio.get_running_loop().call_soon(self.tracing.record, request)
