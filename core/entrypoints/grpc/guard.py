"""What a gRPC call passes before any RPC reads it, as the HTTP guard does for a request.

:class:`CallGuard` is the server's interceptor. It checks the API key from the call's metadata
before a message of the call is read: a refused call is answered by a handler that takes its
messages as a stream and never asks for one, so a stranger's 15 MiB is neither received whole nor
parsed. The health and reflection services need no key (as in TEI).

It also decodes each message itself: bytes that are not the method's message (invalid UTF-8 in a
string, a cut wire) answer ``InvalidArgument`` in one line, instead of grpcio's ``Unknown`` with
the parser's exception and a traceback in the log.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import grpc

from ..serving.door import bearer_matches

if TYPE_CHECKING:
    from ..serving.state import ServerState

#: The services a call needs no key for: health checks and reflection (for tools such as grpcurl).
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: What a message that did not decode is, for the RPC it reaches (never a message of TEI's).
UNDECODABLE = object()


class Refused(Exception):
    """A call refused before any work: its gRPC code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _undecodable(method: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message of {method}")


def _tolerant(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if parse is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - the message's bytes, not the server, are at fault
            return UNDECODABLE

    return decode


def checked(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    """A stream's messages, ending with :class:`Refused` at the first that did not decode."""

    async def messages() -> AsyncIterator[Any]:
        async for message in requests:
            if message is UNDECODABLE:
                raise _undecodable(method)
            yield message

    return messages()


class CallGuard(grpc.aio.ServerInterceptor):
    """The key before any message, and messages decoded in one line (see the module).

    Args:
        state: the HTTP server's state (its key and metrics).
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        st = self.state
        if st.key_digest is not None:
            metadata = dict(details.invocation_metadata or ())
            if not bearer_matches(metadata.get("authorization"), st.key_digest):
                return self._refuse(method, grpc.StatusCode.UNAUTHENTICATED, "No valid auth token")
        return self._decoding(handler, method)

    def _refuse(self, method: str, code: grpc.StatusCode, message: str) -> Any:
        """A handler that answers ``code`` without reading a message: it takes the call's messages
        as a stream, whatever the method's kind, so none is asked for."""
        start, metrics = time.perf_counter(), self.state.metrics

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            metrics.observe(method, code.name, time.perf_counter() - start)
            await context.abort(code, message)

        return grpc.stream_stream_rpc_method_handler(refuse)

    @staticmethod
    def _decoding(handler: Any, method: str) -> Any:
        """``handler`` with its messages decoded by :func:`_tolerant` and checked before its RPC sees them."""
        parse, serialize = _tolerant(handler.request_deserializer), handler.response_serializer
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if request is UNDECODABLE:
                    refusal = _undecodable(method)
                    await context.abort(refusal.code, refusal.message)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, parse, serialize)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def collected(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                return await inner_su(checked(requests, method), context)

            return grpc.stream_unary_rpc_method_handler(collected, parse, serialize)
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def streamed(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for answer in inner_ss(checked(requests, method), context):
                    yield answer

            return grpc.stream_stream_rpc_method_handler(streamed, parse, serialize)
        return handler  # a server-streaming method: TEI has none
