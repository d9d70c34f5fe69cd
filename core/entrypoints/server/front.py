"""The server's HTTP/1.1 protocol: uvicorn's h11 protocol with a front for plain inference requests.

A server of small requests is bound by its event loop, and with FastAPI's layers out of the way
(:mod:`poolkit.entrypoints.server.lane`) a third of the loop's time per request went to the HTTP layer: h11
reading the request and writing the response event by event, uvicorn's request cycle and its
ASGI messages, and the middleware around the application. The front reads the common request
itself: a ``POST`` of an inference route, over HTTP/1.1 on a keep-alive connection, arriving
whole in one read with its ``Content-Length`` and nothing unusual in its head. It hands that to
the server's :class:`~poolkit.entrypoints.server.guard.Guard` as an ordinary ASGI request (so the key, the
admission, the limits, the lane and FastAPI's own errors apply unchanged) and writes the answer
in one piece. Anything else (other methods and routes, a head or body split across reads,
pipelined requests, chunked bodies, ``Expect``, ``Connection: close``, forwarded headers, a head
with anything h11 might refuse) is h11's and uvicorn's, byte for byte as without the front.

The protocol also answers what uvicorn would answer by itself in plain text (a request it
cannot parse) with the server's JSON error body, gives request heads a deadline
(``--header-timeout``), and sends each response's head and body in one write.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_client_addr

from ..serving.call import DISCONNECTED
from .errors import error_body
from .guard import body_then
from .routes import INFERENCE_ROUTES

if TYPE_CHECKING:
    from ..serving.state import ServerState

logger = logging.getLogger(__name__)

#: The request targets the front reads, as they arrive on the wire.
_FRONT_PATHS = frozenset(path.encode("ascii") for path in INFERENCE_ROUTES)
#: A header line h11 takes as it is: a token, a colon, a value of visible characters and inner
#: spaces or tabs (RFC 9110's field-value; h11 refuses the rest, and then h11 should say so). The
#: name and the value are matched apart, each by a pattern without backtracking: one pattern for
#: the whole line backtracked over runs of spaces, quadratic in their length, on the event loop.
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NOT_IN_A_VALUE = re.compile(rb"[^\x21-\x7e\x80-\xff \t]")
#: Headers whose presence leaves a request to h11 and uvicorn: they change how the body is read,
#: how the connection ends or who the client is.
_NOT_THE_FRONTS = frozenset(
    {b"transfer-encoding", b"expect", b"upgrade", b"connection", b"forwarded", b"x-forwarded-for",
     b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"x-forwarded-prefix"}
)
#: Bytes that may wait behind a request in flight before the connection stops being read.
_HELD_LIMIT = 1 << 20
_REASONS = {status.value: status.phrase.encode("latin-1") for status in http.HTTPStatus}


def read_plain_request(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes] | None:
    """A whole ``POST`` of an inference route in ``data``, and nothing after it: its target, its
    headers (names in lower case, as ASGI has them) and its body; ``None`` for anything else.

    It takes only what h11 would take exactly so (HTTP/1.1, one ``Host``, one ``Content-Length``
    in digits, the body complete, header lines h11 accepts) and none of the headers that change
    how a request is read or answered (:data:`_NOT_THE_FRONTS`).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or not data.startswith(b"POST /"):
        return None
    lines = data[:end].split(b"\r\n")
    method, target, version = (lines[0].split(b" ") + [b"", b""])[:3] if lines[0].count(b" ") == 2 else (b"", b"", b"")
    if method != b"POST" or version != b"HTTP/1.1" or target not in _FRONT_PATHS:
        return None
    headers: list[tuple[bytes, bytes]] = []
    length = hosts = -1
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _HEADER_NAME.fullmatch(name) is None or _NOT_IN_A_VALUE.search(value) is not None:
            return None
        name, value = name.lower(), value.strip(b" \t")
        if name == b"content-length":
            if length >= 0 or not value.isdigit():
                return None
            length = int(value)
        elif name == b"host":
            hosts += 1
        elif name in _NOT_THE_FRONTS:
            return None
        headers.append((name, value))
    body = data[end + 4 :]
    if hosts != 0 or length != len(body):
        return None
    return target, headers, body


def plain_scope(
    app: Any, target: bytes, headers: list[tuple[bytes, bytes]], gone: asyncio.Future, *, asgi_version: str = "3.0",
    server: tuple[str, int] | None = None, client: tuple[str, int] | None = None, scheme: str = "http",
    root_path: str = "", state: dict | None = None,
) -> dict[str, Any]:
    """The ASGI scope of a plain request the front read (:func:`read_plain_request`): ``gone`` is
    the future set when its client goes away (the scope's :data:`~poolkit.entrypoints.serving.call.DISCONNECTED`)."""
    return {
        "type": "http",
        "asgi": {"version": asgi_version, "spec_version": "2.3"},
        "http_version": "1.1",
        "server": server,
        "client": client,
        "scheme": scheme,
        "method": "POST",
        "root_path": root_path,
        "path": root_path + target.decode("ascii"),
        "raw_path": root_path.encode("ascii") + target,
        "query_string": b"",
        "headers": headers,
        "state": state if state is not None else {},
        "app": app,  # as Starlette sets it: the application's error handlers read its state
        DISCONNECTED: gone,
    }


def whole_body(body: bytes, gone: asyncio.Future) -> Any:
    """The ``receive`` of a request whose body is all in: the body, then the disconnect once ``gone`` is set."""

    async def disconnect() -> dict:
        await asyncio.shield(gone)
        return {"type": "http.disconnect"}

    return body_then(body, disconnect)


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


def front_protocol(app: Any) -> type:
    """The uvicorn HTTP protocol class of a server of ``app`` (:func:`~poolkit.entrypoints.server.app.create_app`'s;
    see the module).

    A request uvicorn cannot parse (``Content-Length: abc``, a bad request line) gets a JSON 400
    instead of plain text. A client that has not sent a request's complete headers within
    ``limits.header_timeout`` seconds of connecting, or of the first byte of its next request on a
    keep-alive connection, gets a JSON 408 and is disconnected: uvicorn has no such deadline, so a
    client sending a byte now and then (slowloris) would hold its connection for ever. An idle
    keep-alive connection stays uvicorn's ``timeout_keep_alive`` business; the body has its own limits.
    """
    st: ServerState = app.state.poolkit
    limits = st.limits
    timeout = limits.header_timeout

    class FrontProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        #: The front's request in flight on this connection, the bytes that came after it, the
        #: future set when the client goes away, and whether to close once it is answered.
        _front: asyncio.Task | None = None
        _held = b""
        _gone: asyncio.Future | None = None
        _close_after = False

        # -- the connection --------------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(OneSendPerTurn(transport, self.loop))  # type: ignore[arg-type]
            self._start_header_clock()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_clock()
            if self._gone is not None and not self._gone.done():
                self._gone.set_result(None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._front is not None:  # answer in order: the bytes wait for the request in flight
                self._held += data
                if len(self._held) > _HELD_LIMIT:
                    self.flow.pause_reading()
                return
            if self._idle() and st.guard is not None and self.limit_concurrency is None:
                request = read_plain_request(data)
                if request is not None:
                    self._unset_keepalive_if_required()
                    self._stop_header_clock()
                    self._take(*request)
                    return
            super().data_received(data)
            self._time_headers()

        def _idle(self) -> bool:
            """No request of h11's under way or in its buffer: the next bytes start a request."""
            conn = self.conn
            return (
                conn.our_state is h11.IDLE
                and conn.their_state is h11.IDLE
                and not conn.trailing_data[0]
                and (self.cycle is None or self.cycle.response_complete)
            )

        def shutdown(self) -> None:
            if self._front is not None:
                self._close_after = True
            else:
                super().shutdown()

        # -- the front's requests -------------------------------------------------------------

        def _take(self, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            self._gone = self.loop.create_future()
            scope = plain_scope(
                app, target, headers, self._gone, asgi_version=self.asgi_version, server=self.server, client=self.client,
                scheme=self.scheme, root_path=self.root_path, state=self.app_state.copy(),
            )
            task = self.loop.create_task(self._answer(scope, body, self._gone))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            self._front = task

        async def _answer(self, scope: dict, body: bytes, gone: asyncio.Future) -> None:
            response: dict[str, Any] = {}
            chunks: list[bytes] = []

            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    response.update(message)
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        self._write(scope, response, b"".join(chunks))

            try:
                await st.guard(scope, whole_body(body, gone), send)
            except BaseException:
                self.transport.close()
                raise
            finally:
                self._front = None
                self._gone = None
            self._done()

        def _write(self, scope: dict, response: dict, body: bytes) -> None:
            if self.transport.is_closing():
                return
            status = response.get("status", 500)
            if self.access_log:
                self.access_logger.info('%s - "POST %s HTTP/1.1" %d', get_client_addr(scope), scope["path"], status)
            head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
            length = False
            for name, value in (*self.server_state.default_headers, *response.get("headers", ())):
                length = length or name.lower() == b"content-length"
                head.append(b"%s: %s\r\n" % (name, value))
            if not length:
                head.append(b"content-length: %d\r\n" % len(body))
            if self._close_after:
                head.append(b"connection: close\r\n")
            head.append(b"\r\n")
            head.append(body)
            self.transport.write(b"".join(head))

        def _done(self) -> None:
            """After an answer: uvicorn's count and keep-alive, then what waited."""
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            if self._close_after:
                self.transport.close()
                return
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
            if self._held:
                held, self._held = self._held, b""
                self.flow.resume_reading()
                self.data_received(held)

        # -- errors and the header deadline ---------------------------------------------------

        def send_400_response(self, msg: str) -> None:
            self._close_with(400, error_body(400, f"{msg.rstrip('.')}: the request is not valid HTTP"))

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._time_headers()

        def _time_headers(self) -> None:
            """Run the clock while part of a request's head waits in h11's buffer, stop it once h11 has the head."""
            if self.conn.their_state is not h11.IDLE:
                self._stop_header_clock()
            elif self.conn.trailing_data[0] and not self.transport.is_closing():
                self._start_header_clock()

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
            if self._front is not None or (self.cycle is not None and not self.cycle.response_complete):
                self._start_header_clock()  # a request is being answered: the next one's head waits its turn
                return
            client = "%s:%d" % self.client if self.client else "a client"
            logger.info("%s sent no complete request headers within %g s: 408, connection closed", client, timeout)
            self._close_with(408, error_body(408, f"the request headers did not arrive within {timeout:g} s"))

        def _close_with(self, status: int, body: bytes) -> None:
            head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            self.transport.write(head % (status, _REASONS[status], len(body)) + body)
            self.transport.close()

    return FrontProtocol
