"""``run()`` itself on a real socket, in a thread of the test process, and raw-socket helpers, for
the tests of what only a real server does (the HTTP front, the header deadline): the bytes sent and
their timing are the test's own."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any, Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(llm: Any, **kwargs: Any) -> Iterator[int]:
    """Serve ``llm`` with ``poolkit.entrypoints.server.app.run(llm, **kwargs)`` until the block ends; yields the
    port. uvicorn's server object is caught on its way in so that the block's end can stop it."""
    import uvicorn

    from poolkit.entrypoints.server.app import run

    servers: list = []
    real_init = uvicorn.Server.__init__
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")]
    levels = [lg.level for lg in loggers]
    port = _free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(uvicorn.Server, "__init__", lambda self, config: servers.append(self) or real_init(self, config))
        thread = threading.Thread(target=run, args=(llm,), kwargs=dict(port=port, **kwargs), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not (servers and servers[0].started) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert servers and servers[0].started
    try:
        yield port
    finally:
        servers[0].should_exit = True
        thread.join(30)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def parse(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """A response's status line, headers (lower-case names) and what follows them."""
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}, body


def read_response(sock: socket.socket, data: bytes = b"") -> tuple[str, dict[str, str], bytes, bytes]:
    """One response (by ``content-length``) from ``data`` already read and the socket: its status
    line, headers (lower-case names), body, and the bytes read past it."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    status, headers, rest = parse(data)
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, headers, rest[:length], rest[length:]
