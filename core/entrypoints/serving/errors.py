"""The errors of a request's work, whatever door it came in by: :class:`ApiError` (a status, a
one-line message and the field at fault), the status of each library error, TEI's error types.
Each door writes them in its own shape: HTTP's error bodies (:mod:`poolkit.entrypoints.server.errors`),
gRPC's status codes (:func:`poolkit.entrypoints.grpc.service.grpc_status`)."""

from __future__ import annotations

import re
from typing import Sequence

from ...contracts.errors import MissingDependency, ModelLoadError, PluginError, PoolkitError
from ...runtime.batching import QueueFull, ShuttingDown

#: TEI's ``error_type`` of each status it sends (``router/src/lib.rs``: ``ErrorType``).
_TEI_TYPES = {400: "Empty", 413: "Validation", 422: "Tokenizer", 424: "Backend", 429: "Overloaded", 503: "Unhealthy"}
#: The status TEI gives the errors poolkit words with another one: a request TEI's rules refuse is
#: a validation error (413) there, a body that does not deserialise a 422.
_TEI_STATUS = {400: 413}
_MAX_MESSAGE = 500
_MAX_MESSAGE = 500
_PATH = re.compile(r"(?<![\w:/.])(?:/[\w.@+-]+){3,}/?")


class ApiError(Exception):
    """An HTTP error with the OpenAI/vLLM error body.

    Args:
        status: the HTTP status (repeated as ``code`` in the body).
        message: one line for the client.
        param: the request field at fault, if one is.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
        tei: the status and ``error_type`` TEI's routes answer with instead, when they differ from
            :func:`tei_status`'s (``(400, "empty")`` for TEI's empty batch).
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        tei: tuple[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.tei = tei


class ClientGone(Exception):
    """The client disconnected before its response was ready (logged as 499)."""


def tei_status(status: int) -> tuple[int, str]:
    """The status and ``error_type`` TEI answers an error of ``status`` with."""
    status = _TEI_STATUS.get(status, status)
    return status, _TEI_TYPES.get(status, "Validation" if 400 <= status < 500 else "Backend")


def clean_message(message: str, scrub: Sequence[tuple[str, str]]) -> str:
    """Paths replaced, whitespace collapsed, the message bounded."""
    for old, new in scrub:
        if old:
            message = message.replace(old, new)
    message = " ".join(_PATH.sub("<path>", message).split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return message


def status_of(exc: PoolkitError) -> int:
    """The HTTP status of a library error: a client's mistake is 400, overload 429, draining 503."""
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, ShuttingDown):
        return 503
    if isinstance(exc, MissingDependency):
        return 501
    if isinstance(exc, (ModelLoadError, PluginError)):
        return 500
    return getattr(exc, "status", 400)
