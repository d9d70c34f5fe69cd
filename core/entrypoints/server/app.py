"""The application factory, background model loading, and running it with uvicorn."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence

from fastapi import FastAPI

from ...contracts.errors import InvalidRequest, MissingDependency
from ...inputs.media import MediaPolicy
from ...lora.request import LoRARequest
from ..serving.state import MiB, ModelOptions, ModelState, ServerLimits, ServerState
from ..serving.warmup import warm_up
from .deployment import Cors, PathPrefix, Tls
from .endpoints import Endpoint
from .errors import install_error_handlers
from .front import front_protocol
from .guard import Guard, StrictRoute
from .lane import Lane
from .openapi import install_openapi
from .routes import ENDPOINTS, INFERENCE_ROUTES
from .tracing import Traced, Tracing, check_endpoint

if TYPE_CHECKING:
    from ...api.llm import LLM

logger = logging.getLogger(__name__)


def create_app(
    llm: LLM,
    *,
    served_model_name: str | Sequence[str | None] | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    chat_template: str | None = None,
    score_template: str | None = None,
    cache_size: int = 0,
    cache_max_bytes: int = 256 * MiB,
    auto_truncate: bool = False,
    default_prompt_name: str | None = None,
    allowed_media_domains: Sequence[str] | None = None,
    otlp_traces_endpoint: str | None = None,
    lora_modules: Sequence[LoRARequest] | None = None,
    grpc_port: int | None = None,
    grpc_host: str = "127.0.0.1",
    cors: Cors | None = None,
    root_path: str = "",
    tls: Tls | None = None,
    warmup: bool = False,
) -> FastAPI:
    """The FastAPI application serving ``llm``, or several models.

    Args:
        llm: a loaded :class:`poolkit.LLM`, or a callable returning one: it is then loaded in a
            background thread at startup, and the server answers 503 until it is ready. A list of
            them serves several models, loaded one after another; requests choose one by name.
        served_model_name: the name requests must use in ``model`` (default: the model's name);
            a list of names, one per model, for several.
        api_key: when set, every inference route and ``/v1/models`` need
            ``Authorization: Bearer <api_key>``; ``/health``, ``/metrics`` and the docs stay open.
        limits: the server's limits (:class:`ServerLimits`); each model keeps its own batch and
            queue budgets of these sizes.
        chat_template: the chat template (Jinja text) that ``messages`` requests are rendered
            with, instead of the tokenizer's (vLLM's ``--chat-template``). Like vLLM, a model whose
            scorer takes a score template (``LLM.scorer.takes_template``, cross-encoders) also
            scores with it, unless ``score_template`` is given.
        score_template: the score template (Jinja text) of ``/score`` and ``/rerank`` for a model
            whose scorer takes one.
        cache_size: entries of each model's embedding cache (:mod:`poolkit.entrypoints.serving.cache`); 0: none.
        cache_max_bytes: bytes each model's cache may hold (results, token ids and inputs).
        auto_truncate: TEI's routes truncate inputs that are too long unless a request says
            ``truncate: false`` (TEI's ``--auto-truncate``); otherwise they refuse them.
        default_prompt_name: the prompt of the model's sentence-transformers config that TEI's
            routes use when a request names none (TEI's ``--default-prompt-name``).
        allowed_media_domains: hosts whose ``http(s)`` image URLs requests may name (vLLM's
            ``--allowed-media-domains``); they are fetched with a size cap and a deadline. By
            default none: images come as ``data:`` URIs (:mod:`poolkit.inputs.media`).
        otlp_traces_endpoint: the OTLP collector URL each inference request's spans are exported
            to (vLLM's ``--otlp-traces-endpoint``, :mod:`poolkit.entrypoints.server.tracing`); by
            default none: no tracing, and OpenTelemetry is not imported.
        lora_modules: LoRA adapters served under their names (vLLM's ``--lora-modules``), each on the
            model its ``base_model_name`` names (default: the first), which must be loaded with
            ``enable_lora``; a request whose ``model`` names one runs with it (docs/lora.md).
        grpc_port: also serve TEI's gRPC API (:mod:`poolkit.entrypoints.grpc`) on this port of
            ``grpc_host`` while the application runs (0: a free port, then in the state's
            ``grpc_port``); by default none. Needs the ``grpc`` extra.
        cors: the cross-origin policy for browser clients (:class:`~.deployment.Cors`); by default none.
        root_path: the path prefix a proxy serves the application under (vLLM's ``--root-path``,
            :class:`~.deployment.PathPrefix`): routes answer with or without it.
        tls: the server's certificate and key (:class:`~.deployment.Tls`); here for the gRPC port,
            which then speaks TLS too (:func:`run` gives them to uvicorn for HTTPS).
        warmup: run each model once at its largest batch of its longest inputs before it takes
            requests (:mod:`poolkit.entrypoints.serving.warmup`; ``/health`` answers 503 until then),
            and log the rate and the peak memory; a model given loaded is warmed up here.

    Example:
        >>> from fastapi.testclient import TestClient
        >>> with TestClient(create_app(LLM(), served_model_name="minilm")) as client:
        ...     client.post("/v1/embeddings", json={"model": "minilm", "input": "hi"}).json()["data"][0]["index"]
        0
    """
    llms = list(llm) if isinstance(llm, (list, tuple)) else [llm]
    names = list(served_model_name) if isinstance(served_model_name, (list, tuple)) else [served_model_name] * len(llms)
    if not llms or len(names) != len(llms):
        raise InvalidRequest(f"{len(names)} served model names for {len(llms)} models: give one name per model")
    given = [n for n in names if n is not None]
    if len(set(given)) != len(given):
        raise InvalidRequest(f"served model names must differ: {', '.join(given)}")
    options = ModelOptions(
        chat_template, score_template, cache_size, cache_max_bytes, auto_truncate, default_prompt_name
    )
    st = ServerState(api_key, limits or ServerLimits(), MediaPolicy.of(allowed_media_domains))
    if otlp_traces_endpoint is not None:  # before any model is added: its metrics note traced requests
        st.tracing = Tracing(otlp_traces_endpoint)
    loaders: list[tuple[ModelState, Callable[[], Any]]] = []
    for one, name in zip(llms, names):
        model = st.add_model(name, options)
        if callable(one) and not hasattr(one, "model"):
            loaders.append((model, one))
        else:
            model.attach(_warmed(one, name) if warmup else one)
    _check_names(st)
    for lora in lora_modules or ():
        adapter = st.add_adapter(lora)
        if adapter.base.llm is not None:  # attached already: the adapter is read and checked now
            adapter.check()
    loading = [False]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if loaders and not loading[0]:
            loading[0] = True
            threading.Thread(target=_load, args=(st, loaders, warmup), name="poolkit-load", daemon=True).start()
        if st.drained:  # started again after a shutdown (tests, embedding servers): fresh batchers
            for model in st.models:
                if model.llm is not None:
                    model.batcher = model.new_batcher()
            st.drained = st.draining = False
        st.started()
        if grpc_port is not None:
            from ..grpc.server import start

            credentials = tls.grpc_credentials() if tls is not None else None
            st.grpc_server, st.grpc_port = await start(st, grpc_host, grpc_port, credentials)
        yield
        st.draining = True
        if st.grpc_server is not None:  # new calls are refused; those in flight finish first
            await st.grpc_server.stop(st.limits.shutdown_timeout)
            st.grpc_server = None
        if st.before_drain is not None:  # the API processes in front of this one end first
            await asyncio.to_thread(st.before_drain)
        batchers = [m.batcher for m in st.models if m.batcher is not None]
        if batchers:
            st.drained = True
            for batcher in batchers:
                done = await asyncio.to_thread(batcher.drain, st.limits.shutdown_timeout)
                if not done:
                    logger.warning("shutdown: queued work did not finish within %.0f s", st.limits.shutdown_timeout)
        if st.tracing is not None:  # the last requests' spans
            await asyncio.to_thread(st.tracing.flush)

    app = FastAPI(
        title="poolkit",
        description="Pooling models (embeddings, rerankers, classifiers, token models) over HTTP: "
        "OpenAI, vLLM, Cohere and Text Embeddings Inference endpoints.",
        version=_version(),
        lifespan=lifespan,
    )
    app.router.route_class = StrictRoute
    app.state.poolkit = st
    app.add_middleware(Guard, state=st)
    if st.tracing is not None:  # around the guard: traces what it refuses too
        app.add_middleware(Traced, state=st, paths=INFERENCE_ROUTES)
    if cors is not None:  # around the guard: a preflight needs no key, and refusals carry CORS headers
        cors.install(app)
    if root_path:  # outermost: every layer sees the route's path
        app.add_middleware(PathPrefix, root_path=root_path)
    install_error_handlers(app)
    _mount(app, ENDPOINTS)
    st.endpoints = {(endpoint.method, endpoint.path): endpoint for endpoint in ENDPOINTS}
    st.lane = Lane(ENDPOINTS)
    install_openapi(app, st)
    return app


def _check_names(st: ServerState) -> None:
    """Refuse two loaded models served under one name (names come from the models themselves)."""
    names = [m.served for m in st.models if m.served is not None]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidRequest(f"two models would be served as '{twice[0]}': give each a --served-model-name")


def _mount(app: FastAPI, endpoints: Sequence[Endpoint]) -> None:
    """Add a path operation to ``app`` for each of ``endpoints``, in their order: each a
    :class:`~poolkit.entrypoints.server.guard.StrictRoute` named after its function."""
    for endpoint in endpoints:
        app.router.add_api_route(
            endpoint.path,
            endpoint.function,
            methods=[endpoint.method],
            name=endpoint.function.__name__,
            summary=endpoint.summary,
            openapi_extra=endpoint.openapi_extra,
            route_class_override=StrictRoute,
        )


def _version() -> str:
    from ... import __version__

    return __version__


def _warmed(llm: LLM, name: str | None) -> LLM:
    """``llm`` after its warm-up, logged."""
    done = warm_up(llm)
    if done is not None:
        logger.info(done.line(name or str(llm.model.name)))
    return llm


def _load(st: ServerState, loaders: list[tuple[ModelState, Callable[[], Any]]], warmup: bool = False) -> None:
    """Load the models one after another (each warmed up before it is attached, with ``warmup``);
    the first that fails stops the server."""
    for model, loader in loaders:
        try:
            llm = loader()
            model.attach(_warmed(llm, model.served) if warmup else llm)
            _check_names(st)
            logger.info("model loaded; serving it as '%s'", model.served)
        except BaseException as exc:  # noqa: BLE001 - reported by run() once the server stops
            logger.error("the model failed to load or warm up: %s", exc)
            model.load_error = exc
            st.request_exit()
            return


def run(
    llm: LLM,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    access_log: bool = False,
    api_server_count: int = 1,
    tls: Tls | None = None,
    **options: Any,
) -> None:
    """Serve ``llm`` (an :class:`LLM` or a callable loading one, or a list of them) with uvicorn
    until SIGTERM/SIGINT; ``options`` are :func:`create_app`'s.

    On SIGTERM the server stops accepting connections, answers 503 to new requests on open ones,
    lets in-flight requests finish and drains the batchers (each bounded by
    ``limits.shutdown_timeout``), then returns, so the process exits 0. ``api_server_count``
    above 1 loads the models first and serves them from that many processes, one of them running
    the models (:mod:`poolkit.entrypoints.server.processes`). ``tls``: serve HTTPS (and gRPC over
    TLS) with these files (:class:`~.deployment.Tls`).

    Raises:
        MissingDependency: uvicorn is not installed.
        PoolkitError: a model failed to load (re-raised once the server has stopped).
    """
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingDependency("the HTTP server needs FastAPI and uvicorn: pip install 'poolkit[serve]'") from None
    limits = options.pop("limits", None) or ServerLimits()
    if options.get("otlp_traces_endpoint") is not None:  # refused before any model loads
        options["otlp_traces_endpoint"] = check_endpoint(options["otlp_traces_endpoint"])
    serving = dict(log_level=log_level, access_log=access_log, **(tls.uvicorn() if tls is not None else {}))
    if api_server_count != 1:
        from .processes import serve_processes

        if options.get("grpc_port") is not None:
            raise InvalidRequest("--grpc-port is served by the process that runs the models; leave --api-server-count at 1")

        many = isinstance(llm, (list, tuple))
        loaders = [m if callable(m) and not hasattr(m, "model") else (lambda m=m: m) for m in (llm if many else [llm])]
        serve_processes(
            loaders, api_server_count,
            lambda llms, front: create_app(llms if many else llms[0], limits=limits, **({**options, "warmup": False} if front else options)),
            lambda app, sock: _serve(app, limits, sockets=[sock], **serving),
            host=host, port=port, shutdown_timeout=limits.shutdown_timeout,
        )
        return
    _serve(create_app(llm, limits=limits, grpc_host=host, tls=tls, **options), limits, host=host, port=port, **serving)


def _serve(app: FastAPI, limits: ServerLimits, *, sockets: list[Any] | None = None, **config: Any) -> None:
    """Run ``app`` with uvicorn until SIGTERM/SIGINT, on ``sockets`` or ``host`` and ``port``."""
    import uvicorn

    st: ServerState = app.state.poolkit
    uvicorn_config = uvicorn.Config(
        app,
        http=front_protocol(app),
        log_config=None,
        timeout_graceful_shutdown=max(1, int(round(limits.shutdown_timeout))),
        server_header=False,
        lifespan="on",
        **config,
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Drain instead of re-raising the signal once stopped (uvicorn's default), so SIGTERM exits 0.
            if st.begin_draining() and st.on_exit_signal is not None:
                st.on_exit_signal()
            if self.should_exit and sig == signal.SIGINT:  # a second Ctrl-C forces the exit
                self.force_exit = True
            self.should_exit = True

    server = _Server(uvicorn_config)
    st.request_exit = lambda: setattr(server, "should_exit", True)
    server.run(sockets=sockets)
    if st.load_error is not None:
        raise st.load_error
