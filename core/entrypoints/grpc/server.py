"""Starting TEI's gRPC API beside the HTTP server, on its event loop, and stopping it with it.

The HTTP application starts it when it starts (``create_app(grpc_port=...)``, ``poolkit serve
--grpc-port``) and stops it before draining its batchers: on SIGTERM new calls get ``Unavailable``
and the calls in flight finish within ``--shutdown-timeout``. Beside TEI's five services it serves
the standard health service (``grpc.health.v1.Health``, as TEI: ``""``, ``tei.v1.Info`` and
``tei.v1.Tokenize`` serving, ``tei.v1.Embed``, ``tei.v1.Predict`` and ``tei.v1.Rerank`` where the
default model does that work) and, where grpcio-reflection is installed, server reflection; those
two need no API key, as in TEI.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator

from ...contracts.errors import InvalidRequest, MissingDependency
from .guard import CallGuard
from .service import TeiService, serving
from .stubs import NEEDS, tei

if TYPE_CHECKING:
    import grpc

    from ..serving.state import ServerState

#: How often a health ``Watch`` looks at the server's state for a change to send.
WATCH_INTERVAL = 0.25
#: TEI's services, as the health and reflection services name them.
SERVICES = ("tei.v1.Info", "tei.v1.Embed", "tei.v1.Predict", "tei.v1.Rerank", "tei.v1.Tokenize")


def _health() -> tuple[Any, Any]:
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        raise MissingDependency(NEEDS) from None
    return health_pb2, health_pb2_grpc


def _health_servicer(state: ServerState) -> Any:
    """The health service, answered from the server's state when asked (so that it follows the
    models' loading and the shutdown without being told)."""
    health_pb2, health_pb2_grpc = _health()
    statuses = {True: health_pb2.HealthCheckResponse.SERVING, False: health_pb2.HealthCheckResponse.NOT_SERVING,
                None: health_pb2.HealthCheckResponse.SERVICE_UNKNOWN}

    class Health(health_pb2_grpc.HealthServicer):
        async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            import grpc

            status = serving(state, request.service)
            if status is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, "service not registered")
            return health_pb2.HealthCheckResponse(status=statuses[status])

        async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            last = None
            while True:
                status = statuses[serving(state, request.service)]
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                await asyncio.sleep(WATCH_INTERVAL)

    return Health(), health_pb2_grpc


async def start(state: ServerState, host: str, port: int, credentials: Any = None) -> tuple[grpc.aio.Server, int]:
    """Serve TEI's gRPC API for ``state``'s models on ``host:port`` (0: a free port), on the
    running event loop; the server and the port it listens on. With ``credentials`` (gRPC's server
    credentials of the HTTP server's ``--ssl-*`` files), over TLS as HTTPS is.

    Raises:
        MissingDependency: the ``grpc`` extra is not installed.
        InvalidRequest: the port cannot be listened on.
    """
    import grpc

    pb, services = tei()
    limits = state.limits
    server = grpc.aio.server(interceptors=[CallGuard(state)], options=[
        ("grpc.max_receive_message_length", limits.max_body_bytes),  # a message is at most an HTTP body
        ("grpc.max_send_message_length", limits.max_response_bytes),
        ("grpc.so_reuseport", 0),  # a port in use is an error, as for the HTTP server
    ])
    service = TeiService(state, pb)
    for name in ("Info", "Embed", "Predict", "Rerank", "Tokenize"):
        getattr(services, f"add_{name}Servicer_to_server")(service, server)
    health, health_pb2_grpc = _health_servicer(state)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        from grpc_reflection.v1alpha import reflection
    except ImportError:  # reflection is for tools (grpcurl); clients need none
        pass
    else:
        reflection.enable_server_reflection((*SERVICES, "grpc.health.v1.Health", reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise InvalidRequest(f"--grpc-port {port}: cannot listen on {address} (is the port in use?)")
    await server.start()
    return server, bound
