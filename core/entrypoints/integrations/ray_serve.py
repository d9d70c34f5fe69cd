"""Ray Serve: the poolkit server as a deployment of N replicas, each replica one engine.

Each replica builds, in its own process, the application ``poolkit serve`` runs — every route, one
model or several, the same limits — from the same load settings, and Ray Serve's HTTP proxy spreads
the requests over the replicas, replaces a replica that dies and scales their number when an
autoscaling configuration says so. A replica takes a GPU where the cluster has GPUs, ``num_cpus``
otherwise. The single-process ``poolkit serve`` stays the default; this is for traffic that
outgrows one process or one host.

Ray Serve's proxy routes a request only to a replica that has finished loading, so ``GET /health``
is answered by a small deployment of its own (:func:`health_application`), which says 503 at once
while no replica is ready instead of waiting behind the load; where ``poolkit serve`` starts Ray, the
proxy sends TEI's ``GET /`` there too (:mod:`.ray_proxy`).

Example:
    >>> from ray import serve
    >>> from poolkit import EngineArgs
    >>> from poolkit.entrypoints.integrations.ray_serve import build_application, health_application
    >>> serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    >>> serve.run(health_application(), name="poolkit-health", route_prefix="/health")
    >>> serve.run(build_application(EngineArgs(model="BAAI/bge-base-en-v1.5"), num_replicas=4), name="poolkit", route_prefix="/")

On a Ray cluster, ``poolkit serve MODEL --ray-serve --num-replicas 4 --ray-address auto`` does the
same from a shell (``docs/server.md``), and on SIGTERM or Ctrl-C drains the replicas and deletes
both applications, leaving the cluster running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ...contracts.errors import InvalidRequest, MissingDependency, PoolkitError
from .ray_proxy import CALLBACK, ROOT_HEADER

if TYPE_CHECKING:  # the health replica imports this module: no torch there
    from ...config.settings import EngineArgs

logger = logging.getLogger("poolkit.entrypoints.server")

#: The name of the deployment and of its application.
NAME = "poolkit"
#: What the health application's name adds to the server's.
HEALTH = "-health"
#: ``/health``'s answers while no replica is ready (the single-process server's words).
LOADING, FAILED, STOPPING = "the model is loading", "the model failed to load", "the server is shutting down"


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError:
        raise MissingDependency("Ray Serve is not installed: pip install 'poolkit[ray]' (ray[serve])") from None
    return serve


def replica_app(settings: Sequence[dict[str, Any]], options: dict[str, Any]) -> Any:
    """What each replica runs: its models loaded from ``settings`` (``EngineArgs`` as dicts), and the
    server application over them (:func:`poolkit.entrypoints.server.create_app` with ``options``)."""
    from poolkit import LLM

    from ...config.settings import EngineArgs
    from ..server import create_app

    llms = [LLM.from_args(EngineArgs(**one)) for one in settings]
    return create_app(llms if len(llms) > 1 else llms[0], **options)


class PoolkitReplica:
    """One replica: a poolkit server over its own engine (the ASGI application is Serve's ``app``)."""

    async def poolkit_drain(self, wait_s: float) -> int:
        """Stop taking requests (503 from now on, ``/health`` included; those still waiting for
        their work when ``--shutdown-timeout`` is about to run out answer 503 too), then wait up to
        ``wait_s`` seconds for the requests in flight; returns how many are left."""
        st = self.app.state.poolkit  # type: ignore[attr-defined]  # the ASGI app serve.ingress built
        st.begin_draining()  # as the single-process server does
        end = time.monotonic() + wait_s
        while (st.in_flight or st.receiving) and time.monotonic() < end:  # bodies arriving are drained too
            await asyncio.sleep(0.05)
        return st.in_flight + st.receiving


def build_application(
    args: EngineArgs | Sequence[EngineArgs],
    *,
    num_replicas: int | str = 2,
    autoscaling_config: dict[str, Any] | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    max_ongoing_requests: int | None = None,
    name: str = NAME,
    **options: Any,
) -> Any:
    """A Ray Serve application of the poolkit server: ``num_replicas`` replicas, each loading the
    model(s) of ``args`` and answering every route as ``poolkit serve`` does.

    A replica that is stopped (the application deleted, scaled down) finishes its requests in
    flight first, for up to the limits' ``shutdown_timeout`` (Serve's ``graceful_shutdown_timeout_s``).
    Serve the :func:`health_application` beside it for a ``/health`` that answers while replicas load.

    Args:
        args: the load settings of one model, or of several (a list: one server over them all).
        num_replicas: replicas to run, or ``"auto"`` (Ray Serve's autoscaling default).
        autoscaling_config: Ray Serve's autoscaling settings (``min_replicas``, ``max_replicas``,
            ``target_ongoing_requests``, ...), passed through; it replaces ``num_replicas``.
        num_cpus: CPUs each replica reserves (default 1 without GPUs).
        num_gpus: GPUs each replica reserves (default: 1 when the cluster has GPUs and the settings
            do not put the model on the CPU, else 0).
        max_ongoing_requests: requests a replica takes at once before the proxy queues them (Ray
            Serve's default when ``None``); the server's own limits apply inside each replica.
        name: the deployment's name.
        **options: the server's options (:func:`poolkit.entrypoints.server.create_app`'s keywords:
            ``served_model_name``, ``api_key``, ``limits``, ``chat_template``, ``cache_size``, ...).

    Raises:
        MissingDependency: Ray Serve is not installed.
        InvalidRequest: a setting that cannot make a deployment.
    """
    from ...config.settings import EngineArgs
    from ..server import ServerLimits

    serve = _serve()
    many = [args] if isinstance(args, EngineArgs) else list(args)
    if not many:
        raise InvalidRequest("a Ray Serve deployment needs the settings of at least one model")
    if autoscaling_config is None and not (num_replicas == "auto" or (isinstance(num_replicas, int) and num_replicas >= 1)):
        raise InvalidRequest(f"num_replicas must be a positive number of replicas or 'auto', got {num_replicas!r}")
    gpus = _gpus(many) if num_gpus is None else num_gpus
    actor: dict[str, Any] = {"num_gpus": gpus} if gpus else {}
    if num_cpus is not None or not gpus:
        actor["num_cpus"] = 1 if num_cpus is None else num_cpus
    limits = options.get("limits") or ServerLimits()
    deployment: dict[str, Any] = {"name": name, "ray_actor_options": actor, "graceful_shutdown_timeout_s": limits.shutdown_timeout}
    if autoscaling_config is not None:
        deployment["autoscaling_config"] = dict(autoscaling_config)
    else:
        deployment["num_replicas"] = num_replicas
    if max_ongoing_requests is not None:
        deployment["max_ongoing_requests"] = max_ongoing_requests
    settings = [a.model_dump() for a in many]

    def build() -> Any:  # a function (not a partial): Ray Serve calls it on each replica for the app
        return replica_app(settings, options)

    return serve.deployment(serve.ingress(build)(PoolkitReplica), **deployment).bind()


class Health:
    """``GET /health`` of the server deployed as ``app_name``, answered without a replica of it:
    200 once one of its replicas runs, else a JSON 503 at once (loading, failed, shutting down).
    TEI's ``GET /``, which the proxy sends here (:mod:`.ray_proxy`), gets that path's answers: an
    empty 200, TEI's error body on 503."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.draining = False

    def poolkit_drain(self) -> None:
        """The server is shutting down: 503 from now on."""
        self.draining = True

    def unready(self) -> str | None:
        """Why no replica of the server takes requests, or ``None`` when one does (Serve's status)."""
        if self.draining:
            return STOPPING
        app = _serve().status().applications.get(self.app_name)
        if app is None:  # not deployed yet (this application goes first)
            return LOADING
        deployment = app.deployments.get(self.app_name)
        if deployment is not None and deployment.replica_states.get("RUNNING", 0) > 0:
            return None
        return {"DEPLOY_FAILED": FAILED, "DELETING": STOPPING}.get(app.status, LOADING)  # str enums

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import Response

        if request.method != "GET":  # as the server's own /health
            return Response(_error(405, "Method Not Allowed"), 405, {"Allow": "GET"}, media_type="application/json")
        why = await asyncio.to_thread(self.unready)
        alias = ROOT_HEADER.decode() in request.headers  # TEI's GET /, sent here by the proxy (ray_proxy)
        if why is None:
            return Response(status_code=200) if alias else Response(b'{"status":"ok"}', media_type="application/json")
        body = json.dumps({"error": why, "error_type": "Unhealthy"}).encode() if alias else _error(503, why)
        return Response(body, 503, {"Retry-After": "5"} if why == LOADING else None, media_type="application/json")


def _error(status: int, message: str) -> bytes:
    """The server's JSON error body (``poolkit.entrypoints.server.errors.error_body``, whose module
    would bring torch into this small replica)."""
    kind = {405: "MethodNotAllowedError", 503: "ServiceUnavailableError"}[status]
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


def health_application(name: str = NAME) -> Any:
    """A Ray Serve application answering ``/health`` for the server deployed as ``name``: one
    replica, no CPU reserved; serve it at ``route_prefix="/health"`` beside :func:`build_application`'s."""
    serve = _serve()
    options = {"name": name + HEALTH, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0}}
    return serve.deployment(Health, **options).bind(name)


class RayClusterError(PoolkitError, ConnectionError):
    """The Ray cluster at ``--ray-address`` (or ``RAY_ADDRESS``) could not be joined."""


#: Marks of Ray's refusal by a cluster with token authentication, in the errors ``ray.init`` chains.
_AUTH_REFUSED = ("InvalidAuthToken", "AuthenticationError", "Token authentication is enabled")
#: Where Ray reads a cluster's token from (Ray's token-authentication guide).
_TOKEN = "give the cluster's token in RAY_AUTH_TOKEN (or in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token)"


def _join(ray: Any, address: str) -> None:
    """``ray.init(address=address)``; its failure becomes one line that names the address and the way out.

    A cluster with token authentication answers only a client in ``RAY_AUTH_MODE=token`` that sends
    its token, and Ray's client turns that mode on by itself only for ``"auto"``, never for an
    address given (Ray 2.60): it retries, then says only that it failed to connect.

    Raises:
        RayClusterError: Ray could not join the cluster at ``address``.
    """
    try:
        ray.init(address=address, include_dashboard=False)
    except Exception as exc:  # noqa: BLE001 - Ray's ConnectionError (from a RuntimeError), AuthenticationError, ...
        told, seen = [], exc
        while seen is not None and len(told) < 8:
            told.append(f"{type(seen).__name__}: {seen}")
            seen = seen.__cause__ or seen.__context__
        if any(mark in text for text in told for mark in _AUTH_REFUSED):
            mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
            way_out = _TOKEN if mode else f"set RAY_AUTH_MODE=token (Ray sets it by itself only for 'auto') and {_TOKEN}"
            raise RayClusterError(f"could not join the Ray cluster at '{address}': it asks for its authentication token; {way_out}") from exc
        lines = str(exc).strip().splitlines()
        raise RayClusterError(
            f"could not join the Ray cluster at '{address}' ({lines[0] if lines else type(exc).__name__}); check the address, "
            f"and for a cluster with token authentication set RAY_AUTH_MODE=token and {_TOKEN}"
        ) from exc


def _gpus(many: Sequence[EngineArgs]) -> float:
    """1 when the Ray cluster has GPUs and no setting puts its model on the CPU, else 0."""
    import ray

    if any(str(a.device or "").startswith("cpu") for a in many):
        return 0
    return 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0


def run(
    args: EngineArgs | Sequence[EngineArgs],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray_address: str | None = None,
    blocking: bool = True,
    **kwargs: Any,
) -> Any:
    """Start Ray (or join the cluster at ``ray_address``), Ray Serve's HTTP proxy on ``host:port``,
    the health application and the deployment (:func:`build_application`'s keywords).

    With ``blocking``, serve until SIGTERM or SIGINT (Ctrl-C), then shut down as ``poolkit serve``
    does: ``/health`` and every replica answer 503 to new requests while those in flight finish
    (bounded by the limits' ``shutdown_timeout``), both applications are deleted, and Ray Serve and
    Ray stop where this call started them; a cluster it joined keeps running (and its Serve, unless
    this call started it and nothing else is deployed on it). A second Ctrl-C stops at once.
    Without ``blocking``, returns the deployment's handle and leaves the rest to the caller.
    """
    import ray

    serve = _serve()
    name = kwargs.get("name", NAME)
    connected = owns_ray = False
    if not ray.is_initialized():
        address = ray_address or os.environ.get("RAY_ADDRESS") or "local"  # "local": a Ray of its own
        if address == "local":
            # the proxy of the Serve this Ray starts answers GET / from /health (ray_proxy); a callback of the user's wins
            os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", CALLBACK)
            ray.init(address=address, include_dashboard=False)
        else:
            _join(ray, address)
        connected, owns_ray = True, address == "local"
    before = serve.status()  # empty where no Serve runs yet
    serve_was_running = bool(before.proxies or before.applications)
    application = build_application(args, **kwargs)  # after ray.init: the cluster's GPUs are known
    serve.start(http_options={"host": host, "port": port})
    if not blocking:
        serve.run(health_application(name), name=name + HEALTH, route_prefix="/health")
        return serve.run(application, name=name, route_prefix="/")
    from ..server import ServerLimits

    timeout = (kwargs.get("limits") or ServerLimits()).shutdown_timeout
    with _ExitSignals() as signals:
        try:
            with signals.interruptible():
                serve.run(health_application(name), name=name + HEALTH, route_prefix="/health")
                serve.run(application, name=name, route_prefix="/")
                logger.info("the server is ready")
            while not signals.received.wait(0.5):  # a timed wait: the signal handler runs meanwhile
                pass
        except _Stopped:
            pass
        finally:
            logger.info("shutting down: draining the replicas")
            try:
                _shut_down(name, timeout, stop_serve=owns_ray or not serve_was_running)
            finally:
                if connected:  # a Ray this call started stops; a cluster it joined only loses this driver
                    ray.shutdown()
    return None


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived while the applications were being deployed (a model loading)."""


class _ExitSignals:
    """SIGTERM and SIGINT while :func:`run` serves (in the main thread; Ray's own SIGTERM handler
    would exit the process at once): the first starts the shutdown, and interrupts the deployment
    if it is still loading; a second Ctrl-C raises ``KeyboardInterrupt``."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self._deploying = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_ExitSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """The part a signal interrupts (deploying: a model may load for minutes) instead of
        letting it finish first."""
        if self.received.is_set():
            raise _Stopped
        self._deploying = True
        try:
            yield
        finally:
            self._deploying = False

    def _handle(self, sig: int, frame: Any) -> None:
        if self.received.is_set():
            if sig == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received.set()
        if self._deploying:
            raise _Stopped


def _shut_down(name: str, timeout: float, stop_serve: bool) -> None:
    """Drain the replicas of ``name`` (503 to new requests, those in flight answered, at most
    ``timeout`` seconds), then stop Ray Serve if ``stop_serve`` and nothing else is deployed on it,
    else delete the two applications."""
    serve = _serve()
    try:
        serve.get_app_handle(name + HEALTH).poolkit_drain.remote().result(timeout_s=10)
    except Exception as exc:  # noqa: BLE001 - not deployed, or gone: nothing to tell
        logger.debug("shutdown: the health replica did not answer: %s", exc)
    _drain(name, time.monotonic() + timeout)
    ours = {name, name + HEALTH}
    if stop_serve and set(serve.status().applications) <= ours:
        serve.shutdown()  # deletes both applications too
        return
    for app in sorted(ours):
        try:
            serve.delete(app)
        except Exception as exc:  # noqa: BLE001 - Serve kills a replica it could not stop in time
            logger.warning("shutdown: deleting the application '%s': %s", app, exc)


def _drain(name: str, deadline: float) -> None:
    """Tell every replica of ``name`` to drain, until none has a request in flight or ``deadline``
    passes. (A Ray Serve without ``broadcast`` drains each replica as it deletes it instead:
    ``graceful_shutdown_timeout_s``.)"""
    handle = _serve().get_deployment_handle(name, app_name=name)
    if not hasattr(handle, "broadcast"):
        return
    while True:
        wait = min(2.0, max(0.0, deadline - time.monotonic()))
        try:
            in_flight = handle.broadcast("poolkit_drain", wait).results(timeout_s=wait + 10)
        except Exception as exc:  # noqa: BLE001 - no replica running (still loading, or failed)
            logger.debug("shutdown: no replica to drain: %s", exc)
            return
        if not any(in_flight):
            return
        if time.monotonic() >= deadline:
            logger.warning("shutdown: %d requests did not finish within the shutdown timeout", sum(in_flight))
            return
