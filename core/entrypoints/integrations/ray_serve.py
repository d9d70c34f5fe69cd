"""Ray Serve: the poolkit server as a deployment of N replicas, each replica one engine.

Each replica builds, in its own process, the application ``poolkit serve`` runs — every route, one
model or several, the same limits — from the same load settings, and Ray Serve's HTTP proxy spreads
the requests over the replicas, replaces a replica that dies and scales their number when an
autoscaling configuration says so. A replica takes a GPU where the cluster has GPUs, ``num_cpus``
otherwise. The single-process ``poolkit serve`` stays the default; this is for traffic that
outgrows one process or one host.

Example:
    >>> from ray import serve
    >>> from poolkit import EngineArgs
    >>> from poolkit.entrypoints.integrations.ray_serve import build_application
    >>> serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    >>> serve.run(build_application(EngineArgs(model="BAAI/bge-base-en-v1.5"), num_replicas=4), route_prefix="/")

On a Ray cluster, ``poolkit serve MODEL --ray-serve --num-replicas 4 --ray-address auto`` does the
same from a shell (``docs/server.md``).
"""

from __future__ import annotations

from typing import Any, Sequence

from ...config.settings import EngineArgs
from ...contracts.errors import InvalidRequest, MissingDependency

#: The name of the deployment and of its application.
NAME = "poolkit"


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

    from ..server import create_app

    llms = [LLM.from_args(EngineArgs(**one)) for one in settings]
    return create_app(llms if len(llms) > 1 else llms[0], **options)


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
    deployment: dict[str, Any] = {"name": name, "ray_actor_options": actor}
    if autoscaling_config is not None:
        deployment["autoscaling_config"] = dict(autoscaling_config)
    else:
        deployment["num_replicas"] = num_replicas
    if max_ongoing_requests is not None:
        deployment["max_ongoing_requests"] = max_ongoing_requests
    settings = [a.model_dump() for a in many]

    def build() -> Any:  # a function (not a partial): Ray Serve calls it on each replica for the app
        return replica_app(settings, options)

    replica = type("PoolkitReplica", (), {"__doc__": "One replica: a poolkit server over its own engine."})
    return serve.deployment(serve.ingress(build)(replica), **deployment).bind()


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
    and the deployment (:func:`build_application`'s keywords); with ``blocking`` serve until
    interrupted. Returns the deployment's handle."""
    import ray

    serve = _serve()
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, ignore_reinit_error=True)
    application = build_application(args, **kwargs)  # after ray.init: the cluster's GPUs are known
    serve.start(http_options={"host": host, "port": port})
    return serve.run(application, name=kwargs.get("name", NAME), route_prefix="/", blocking=blocking)
