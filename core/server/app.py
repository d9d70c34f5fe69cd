"""The application factory, background model loading, and running it with uvicorn."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, FastAPI

from ..errors import MissingDependency
from . import routes_cohere, routes_openai, routes_ops, routes_vllm
from .errors import error_body, install_error_handlers
from .guard import INFERENCE_ROUTES, Guard, StrictRoute
from .lane import Lane
from .openapi import install_openapi
from .state import ServerLimits, ServerState

logger = logging.getLogger(__name__)

#: The routers every application mounts, one module per protocol.
ROUTERS = (routes_ops.router, routes_openai.router, routes_vllm.router, routes_cohere.router)


def create_app(
    llm: Any,
    *,
    served_model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    chat_template: str | None = None,
    score_template: str | None = None,
) -> FastAPI:
    """The FastAPI application serving ``llm``.

    Args:
        llm: a loaded :class:`poolkit.LLM`, or a callable returning one: it is then loaded in a
            background thread at startup, and the server answers 503 until it is ready.
        served_model_name: the name requests must use in ``model`` (default: the model's name).
        api_key: when set, every inference route and ``/v1/models`` need
            ``Authorization: Bearer <api_key>``; ``/health``, ``/metrics`` and the docs stay open.
        limits: the server's limits (:class:`ServerLimits`).
        chat_template: the chat template (Jinja text) that ``messages`` requests are rendered
            with, instead of the tokenizer's (vLLM's ``--chat-template``). Like vLLM, a model whose
            scorer takes a score template (``LLM.scorer.takes_template``, cross-encoders) also
            scores with it, unless ``score_template`` is given.
        score_template: the score template (Jinja text) of ``/score`` and ``/rerank`` for a model
            whose scorer takes one.

    Example:
        >>> from fastapi.testclient import TestClient
        >>> with TestClient(create_app(LLM(), served_model_name="minilm")) as client:
        ...     client.post("/v1/embeddings", json={"model": "minilm", "input": "hi"}).json()["data"][0]["index"]
        0
    """
    st = ServerState(served_model_name, api_key, limits or ServerLimits(), chat_template, score_template)
    loader = llm if callable(llm) and not hasattr(llm, "model") else None
    if loader is None:
        st.attach(llm)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if loader is not None and not st.loading:
            st.loading = True
            threading.Thread(target=_load, args=(st, loader), name="poolkit-load", daemon=True).start()
        if st.drained:  # started again after a shutdown (tests, embedding servers): a fresh batcher
            st.batcher = st.new_batcher()
            st.drained = st.draining = False
        st.started()
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
    app.router.route_class = StrictRoute
    app.state.poolkit = st
    app.add_middleware(Guard, state=st)
    install_error_handlers(app)
    for router in ROUTERS:
        _mount(app, router)
    st.lane = Lane(app.routes, INFERENCE_ROUTES)
    install_openapi(app, st)
    return app


def _mount(app: FastAPI, router: APIRouter) -> None:
    """Add the path operations of ``router`` to ``app`` itself.

    Unlike ``include_router``, which recent FastAPI versions keep as one nested entry, this
    leaves every path operation in ``app.routes``, where tools and tests list them.
    """
    for route in router.routes:
        app.router.add_api_route(
            route.path,
            route.endpoint,
            methods=sorted(route.methods),
            name=route.name,
            summary=route.summary,
            openapi_extra=route.openapi_extra,
            route_class_override=type(route),
        )


def _version() -> str:
    from .. import __version__

    return __version__


def _load(st: ServerState, loader: Callable[[], Any]) -> None:
    try:
        st.attach(loader())
        logger.info("model loaded; serving it as '%s'", st.served)
    except BaseException as exc:  # noqa: BLE001 - reported by run() once the server stops
        logger.error("the model failed to load: %s", exc)
        st.load_error = exc
        st.request_exit()


class OneSendPerTurn:
    """A transport whose writes of one event-loop turn leave in one ``send``.

    uvicorn writes a response's head and its body separately: two system calls, and two TCP
    segments the client reads one after the other, for every small response. Writes made in the
    same turn of the loop (a route's ``send`` of the start and of the body) are joined here and
    handed to the real transport at the end of the turn; closing hands over what is pending first.
    Everything else is the real transport's.
    """

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Hand the pending writes to the real transport, as one."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def json_protocol(limits: ServerLimits) -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11, as its ``auto`` picks), with the
    server's JSON error body on what uvicorn answers by itself, and a deadline for request headers.

    A request uvicorn cannot parse (``Content-Length: abc``, a bad request line) gets a JSON 400
    instead of plain text. A client that has not sent a request's complete headers within
    ``limits.header_timeout`` seconds of connecting, or of the first byte of its next request on a
    keep-alive connection, gets a JSON 408 and is disconnected: uvicorn has no such deadline, so a
    client sending a byte now and then (slowloris) would hold its connection for ever. An idle
    keep-alive connection stays uvicorn's ``timeout_keep_alive`` business; the body has its own limits.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base

        h11: Any = None
    except ImportError:
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    timeout = limits.header_timeout

    class JSONProtocol(base):  # type: ignore[valid-type, misc]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(OneSendPerTurn(transport, self.loop))  # type: ignore[arg-type]
            self._start_header_clock()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_clock()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._close_with(400, b"Bad Request", error_body(400, f"{msg.rstrip('.')}: the request is not valid HTTP"))

        def _start_header_clock(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout, self._headers_too_slow)

        def _stop_header_clock(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:  # a pipelined request: answer in order
                self._start_header_clock()
                return
            client = "%s:%d" % self.client if self.client else "a client"
            logger.info("%s sent no complete request headers within %g s: 408, connection closed", client, timeout)
            self._close_with(408, b"Request Timeout", error_body(408, f"the request headers did not arrive within {timeout:g} s"))

        def _close_with(self, status: int, reason: bytes, body: bytes) -> None:
            head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            self.transport.write(head % (status, reason, len(body)) + body)
            self.transport.close()

    if h11 is None:

        class HttpToolsJSONProtocol(JSONProtocol):
            def on_message_begin(self) -> None:
                super().on_message_begin()
                self._start_header_clock()

            def on_headers_complete(self) -> None:
                self._stop_header_clock()
                super().on_headers_complete()

        return HttpToolsJSONProtocol

    class H11JSONProtocol(JSONProtocol):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._time_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._time_headers()

        def _time_headers(self) -> None:
            """Run the clock while part of a request's head waits in h11's buffer, stop it once h11 has the head."""
            if self.conn.their_state is not h11.IDLE:
                self._stop_header_clock()
            elif self.conn.trailing_data[0] and not self.transport.is_closing():
                self._start_header_clock()

    return H11JSONProtocol


def run(
    llm: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    chat_template: str | None = None,
    score_template: str | None = None,
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
    app = create_app(
        llm,
        served_model_name=served_model_name,
        api_key=api_key,
        limits=limits,
        chat_template=chat_template,
        score_template=score_template,
    )
    st: ServerState = app.state.poolkit
    config = uvicorn.Config(
        app,
        http=json_protocol(limits),
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
            if not st.draining:  # answer what is still waiting just before uvicorn closes its connections
                st.shutdown_deadline(limits.shutdown_timeout - min(1.0, 0.2 * limits.shutdown_timeout))
            st.draining = True
            if self.should_exit and sig == signal.SIGINT:  # a second Ctrl-C forces the exit
                self.force_exit = True
            self.should_exit = True

    server = _Server(config)
    st.request_exit = lambda: setattr(server, "should_exit", True)
    server.run()
    if st.load_error is not None:
        raise st.load_error
