"""``poolkit serve --api-server-count N`` under a hostile local process and a clumsy operator.

The engine socket (a Unix socket in a private temporary folder) is where the fronts send their
batches; any local process of the same user can connect to it. One that connects and says nothing,
or answers the handshake with a wrong key, must not keep a front from linking: the handshake of
each connection is its own, with a deadline, and a failed one is logged and dropped. A front that
dies is replaced, on the same port; a clean exit leaves nothing in the temporary directory.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import AuthenticationError, Client
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from poolkit.config.settings import EngineArgs  # noqa: E402
from poolkit.entrypoints.bench.load import StartedServer  # noqa: E402
from poolkit.entrypoints.bench.standin import _cpu_seconds  # noqa: E402
from test_server_processes import _children, _running  # noqa: E402

HANG_GUARD = 120  # seconds: only so that a hang fails the test instead of stalling it


def _fronts(engine: int) -> list[int]:
    """The API processes in front of the engine process (its grandchildren, through the keeper)."""
    return [front for keeper in _children(engine) for front in _children(keeper)]


def _serving(port: int) -> list[int]:
    """The processes still running whose command line serves on ``port``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and b"--port" in args and args[args.index(b"--port") + 1] == str(port).encode():
            if _running(int(entry)):
                pids.append(int(entry))
    return pids


def _embed_many(url: str, connections: int, each: int) -> list[int]:
    """``each`` requests on each of ``connections`` new connections (the kernel spreads them over
    the API processes); their statuses."""
    address = urlparse(url)

    def one(_: int) -> list[int]:
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=HANG_GUARD)
        statuses = []
        for i in range(each):
            conn.request("POST", "/v1/embeddings", body=json.dumps({"input": [f"text {i}"]}),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        conn.close()
        return statuses

    with ThreadPoolExecutor(connections) as pool:
        return [s for statuses in pool.map(one, range(connections)) for s in statuses]


@pytest.fixture
def temp():
    """A temporary directory for the server, with a short path (a Unix socket's is at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pk", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _server(minilm_dir, tmp_path, temp, name: str) -> tuple[StartedServer, str]:
    log = str(tmp_path / f"{name}.log")
    server = StartedServer(EngineArgs(), log, models=[str(minilm_dir)], serve_flags=["--api-server-count", "2"],
                           env=dict(os.environ, TMPDIR=str(temp)))
    return server, log


def test_a_silent_or_wrong_key_connection_to_the_engine_socket_blocks_no_front(minilm_dir, tmp_path, temp):
    """A wrong key, a silent connection and junk on the engine socket, before any front has linked:
    the client with the wrong key is refused, and every request (those the front answers need its
    link) is still answered; a clean exit leaves no ``poolkit-engine-*`` folder behind."""
    server, log = _server(minilm_dir, tmp_path, temp, "hostile")
    try:
        (folder,) = temp.glob("poolkit-engine-*")
        address = str(folder / "engine.sock")
        with ThreadPoolExecutor(1) as pool:
            with pytest.raises(AuthenticationError):
                pool.submit(Client, address, authkey=b"not the key" * 3).result(HANG_GUARD)
        silent = socket.socket(socket.AF_UNIX)
        silent.connect(address)
        junk = socket.socket(socket.AF_UNIX)
        junk.connect(address)
        junk.sendall(b"\x00\x00\x00\x05hello" + b"\xff" * 64)
        try:
            statuses = _embed_many(server.url, 16, 3)
        finally:
            silent.close()
            junk.close()
        assert statuses == [200] * 48
    finally:
        code = server.stop()
    assert code == 0
    with open(log) as f:
        text = f.read()
    assert "Exception in thread" not in text
    assert "failed its handshake" in text
    assert list(temp.iterdir()) == []


def test_a_killed_front_is_replaced_on_the_same_port(minilm_dir, tmp_path, temp):
    """SIGKILL to a front: it is reaped (no zombie), a new front is started, logged, and serves on
    the same port; SIGTERM then ends every process with exit code 0 and starts no other front."""
    server, log = _server(minilm_dir, tmp_path, temp, "replaced")
    port = urlparse(server.url).port
    try:
        (front,) = _fronts(server.proc.pid)
        os.kill(front, signal.SIGKILL)
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            fronts = _fronts(server.proc.pid)
            if fronts and front not in fronts:
                break
            time.sleep(0.1)
        (replacement,) = _fronts(server.proc.pid)
        assert replacement != front and not os.path.exists(f"/proc/{front}")  # reaped
        before = _cpu_seconds(replacement)
        assert _embed_many(server.url, 32, 10) == [200] * 320
        assert _cpu_seconds(replacement) - before > 0  # it answered its share of the connections
        assert _running(replacement)
    finally:
        code = server.stop()
    assert code == 0
    assert not _running(replacement)
    assert _serving(port) == []  # no front started during the shutdown lingers
    with open(log) as f:
        text = f.read()
    assert text.count("starting another") == 1, text
    assert list(temp.iterdir()) == []


def test_the_engine_socket_survives_hostile_handshakes(tmp_path, caplog):
    """The protocol alone, in one process: a silent connection holds no one up and is dropped at
    its deadline; a wrong key is refused and logged, and the accept loop goes on."""
    import asyncio
    from types import SimpleNamespace

    from poolkit.entrypoints.server.processes import EngineService, RemoteEngine, engine_socket

    class Echo:
        async def submit(self, task, prompts, params):
            await asyncio.sleep(0)
            return [p.upper() for p in prompts]

    address, key = str(tmp_path / "engine.sock"), b"k" * 32
    service = EngineService(engine_socket(address), key, lambda i: [Echo()][i])
    service.handshake_timeout = 1.0
    died = []
    previous, threading.excepthook = threading.excepthook, died.append
    service.start()
    try:
        task = SimpleNamespace(name="embed")
        silent = socket.socket(socket.AF_UNIX)
        silent.connect(address)
        silent.settimeout(HANG_GUARD)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(RemoteEngine(SimpleNamespace(), 0, address, key).run, task, ["a"], [None])
            assert answer.result(HANG_GUARD) == ["A"]
            with pytest.raises(AuthenticationError):
                pool.submit(Client, address, authkey=b"x" * 32).result(HANG_GUARD)
            answer = pool.submit(RemoteEngine(SimpleNamespace(), 0, address, key).run, task, ["b"], [None])
            assert answer.result(HANG_GUARD) == ["B"]
        received = b""
        while chunk := silent.recv(1024):  # the challenge, then the engine's end closes
            received += chunk
        assert received  # it was challenged, then dropped
        silent.close()
        assert died == []
        messages = [r.getMessage() for r in caplog.records if r.name.endswith("processes")]
        assert any("failed its handshake" in m and "key" in m for m in messages), messages
        assert any("failed its handshake" in m and "within" in m for m in messages), messages
    finally:
        threading.excepthook = previous
        service.close()
