"""The deadline for request headers (slowloris defence): a client that has not sent a request's
complete headers within ``--header-timeout`` gets a JSON 408 and is disconnected, while normal,
keep-alive and slow-but-timely requests are answered as before. The server is ``run()`` itself, on a
real socket in a thread of this process, driven with raw sockets so the bytes and their timing are
the test's own."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from served import connect, parse, read_response, served  # noqa: E402

from poolkit.contracts.errors import InvalidRequest  # noqa: E402
from poolkit.entrypoints.server import ServerLimits  # noqa: E402
from poolkit.entrypoints.server.errors import error_body  # noqa: E402

TIMEOUT = 1.0
#: How long a test waits for the 408 before calling it a hang: a deadline, not a measure of speed
#: (a busy 2-core machine may answer seconds late).
HANG_GUARD = 60.0
BODY = b'{"model": "minilm", "input": "hi"}'
HEAD = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
REQUEST = HEAD + b"content-length: %d\r\n\r\n" % len(BODY) + BODY


@pytest.fixture(scope="module")
def port(minilm):
    """``run()`` serving minilm with a 1 s header deadline."""
    limits = ServerLimits(header_timeout=TIMEOUT, shutdown_timeout=2.0)
    with served(minilm, served_model_name="minilm", limits=limits, log_level="warning") as port:
        yield port


def _read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    status, headers, body, rest = read_response(sock)
    assert not rest
    return status, headers, body


def _trickle(sock: socket.socket, interval: float, limit: float) -> bytes:
    """Send one more header byte every ``interval`` seconds, never ending the headers, until the
    server answers (its first bytes are returned) or ``limit`` seconds pass (``b""``)."""
    end = time.monotonic() + limit
    sock.sendall(b"X-Slow: ")
    sock.settimeout(interval)
    try:
        while time.monotonic() < end:
            try:
                return sock.recv(65536)
            except socket.timeout:
                with contextlib.suppress(OSError):  # the server may close it between two reads
                    sock.sendall(b"a")
    finally:
        sock.settimeout(5)
    return b""


def _assert_408(sock: socket.socket, first: bytes) -> None:
    """``first`` and what follows are a JSON 408 (the server's error body), then the server closes."""
    data = first
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    status, headers, body = parse(data)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == 408 and error["type"] == "RequestTimeoutError" and error["param"] is None
    assert body == error_body(408, error["message"])


def test_headers_sent_a_byte_at_a_time_get_a_json_408_and_the_connection_closed(port):
    with connect(port) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        first = _trickle(sock, 0.3, HANG_GUARD)
        elapsed = time.monotonic() - start
        assert first.startswith(b"HTTP/1.1 408"), first
        assert TIMEOUT - 0.1 <= elapsed  # never before the deadline; after it, as soon as the loop gets to it
        _assert_408(sock, first)


def test_a_connection_that_sends_nothing_gets_a_408(port):
    with connect(port) as sock:
        start = time.monotonic()
        sock.settimeout(HANG_GUARD)
        first = sock.recv(65536)
        assert TIMEOUT - 0.1 <= time.monotonic() - start
        _assert_408(sock, first)


def test_normal_keep_alive_and_slow_but_timely_requests_are_answered(port):
    with connect(port) as sock:
        sock.sendall(REQUEST)
        status, headers, body = _read_response(sock)
        assert status == "HTTP/1.1 200 OK" and json.loads(body)["data"][0]["index"] == 0
        time.sleep(0.5 * TIMEOUT)
        sock.sendall(REQUEST)
        assert _read_response(sock)[0] == "HTTP/1.1 200 OK"
        # Idle for longer than the header deadline (but not uvicorn's keep-alive timeout): no 408,
        # and the next request's clock starts at its first byte, so its slow pieces still make it.
        sock.settimeout(1.5 * TIMEOUT)
        with pytest.raises(socket.timeout):
            sock.recv(65536)
        sock.settimeout(5)
        for i in range(0, len(REQUEST), len(REQUEST) // 4):
            sock.sendall(REQUEST[i : i + len(REQUEST) // 4])
            time.sleep(0.15 * TIMEOUT)
        assert _read_response(sock)[0] == "HTTP/1.1 200 OK"
        # The deadline applies again to the next request on the same connection.
        sock.sendall(HEAD)
        _assert_408(sock, _trickle(sock, 0.3, HANG_GUARD))


def test_the_limit_is_validated_and_on_the_command_line(minilm_dir, monkeypatch):
    from typer.testing import CliRunner

    import poolkit.entrypoints.server
    from poolkit.entrypoints.cli import app

    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match="header_timeout .--header-timeout. must be a positive finite number"):
            ServerLimits(header_timeout=bad)
    assert ServerLimits().header_timeout == 10.0
    runner = CliRunner()
    assert "--header-timeout" in runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "300"}).stdout
    bad = runner.invoke(app, ["serve", str(minilm_dir), "--header-timeout", "0"])
    assert bad.exit_code == 1 and "header_timeout (--header-timeout) must be a positive finite number" in bad.output
    seen = []
    monkeypatch.setattr(poolkit.entrypoints.server, "run", lambda llm, **kw: seen.append(kw["limits"]))
    assert runner.invoke(app, ["serve", str(minilm_dir), "-q", "--header-timeout", "2.5"]).exit_code == 0
    assert seen[0].header_timeout == 2.5


@pytest.mark.parametrize("option", ["--header-timeout", "--body-timeout", "--shutdown-timeout"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_a_limit_that_is_not_a_finite_number_is_refused_before_the_model_loads(minilm_dir, monkeypatch, option, value):
    """Issue 52, item 3: NaN passed `value <= 0` (every comparison with NaN is false): --header-timeout nan
    started a server that answered nothing, --body-timeout nan a 408 to any body of two reads,
    --shutdown-timeout nan a raw ValueError at shutdown."""
    from typer.testing import CliRunner

    import poolkit.entrypoints.server
    from poolkit.entrypoints.cli import app

    monkeypatch.setattr(poolkit.entrypoints.server, "run", lambda llm, **kw: pytest.fail("the server started"))
    result = CliRunner().invoke(app, ["serve", str(minilm_dir), "-q", option, value])
    name = option[2:].replace("-", "_")
    assert result.exit_code == 1, result.output
    assert f"Error: server limit {name} ({option}) must be a positive finite number" in result.output
    assert "Traceback" not in result.output
