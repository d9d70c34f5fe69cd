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
from .errors import install_error_handlers
from .guard import INFERENCE_ROUTES, Guard, StrictRoute
from .front import front_protocol
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
        http=front_protocol(app),
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
