"""What every door checks before a request's work, in one place: the API key, the model a request
names and whether it takes requests now. The HTTP guard (:class:`poolkit.entrypoints.server.guard.Guard`)
and the gRPC interceptor and service (:mod:`poolkit.entrypoints.grpc`) ask these, in that order:
the key before anything is read, the model before the work."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

from ...contracts.errors import short
from .errors import ApiError

if TYPE_CHECKING:
    from .state import ModelState, ServerState


def bearer_matches(authorization: str | None, key_digest: bytes) -> bool:
    """Whether an ``Authorization`` value (HTTP's header, gRPC's metadata) is ``Bearer <the API key>``
    (compared by digest, in constant time)."""
    scheme, _, token = (authorization or "").partition(" ")
    digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
    return scheme.lower() == "bearer" and secrets.compare_digest(digest, key_digest)


def served_model(server: ServerState, name: str) -> ModelState:
    """The served model or LoRA adapter called ``name``, resolved now (an adapter unloaded since is
    gone, one reloaded is its new weights); a 404 that lists the served models for any other name."""
    model = server.model(name)
    if model is None:
        raise ApiError(404, f"The model `{short(name)}` does not exist. Served models: {', '.join(server.served_names)}", param="model")
    return model


def unready(model: ModelState) -> ApiError | None:
    """The 503 of a model that is not taking requests (still loading, or failed to load)."""
    if model.load_error is not None:
        return ApiError(503, "the model failed to load")
    if not model.ready:
        return ApiError(503, "the model is loading; retry shortly", headers={"Retry-After": "5"})
    return None


def draining(server: ServerState) -> ApiError | None:
    """The 503 of a server that is shutting down, for a request that arrives after it began."""
    if server.draining:
        return ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})
    return None


def ready_model(server: ServerState, name: str | None, opening: bool = True) -> ModelState:
    """The model a call names (``None``: the first served), taking requests now. ``opening`` false
    for a later message of a stream open before a shutdown began: it is drained to its end.

    Raises:
        ApiError: the 404 of an unknown name, the 503 of a model not ready or of a server shutting down.
    """
    model = served_model(server, name) if name is not None else server.first
    error = unready(model) or (draining(server) if opening else None)
    if error is not None:
        raise error
    return model
