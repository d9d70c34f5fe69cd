"""``poolkit serve --api-server-count N``: API processes in front of one engine process.

A real server with an embedder and a cross-encoder in two processes: connections from many
clients reach both, every answer is the single-process server's (the front's batches run in the
engine process), the front does its share of the work, bad requests get the same errors, and
SIGTERM ends both processes with exit code 0.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
import torch
from tiny_models import build_classifier
from typer.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from poolkit import LLM  # noqa: E402
from poolkit.config.settings import EngineArgs  # noqa: E402
from poolkit.entrypoints.bench.load import StartedServer  # noqa: E402
from poolkit.entrypoints.bench.standin import _cpu_seconds  # noqa: E402

TEXTS = [f"text number {i} about {'cats' if i % 2 else 'the weather'}" for i in range(48)]


def _children(pid: int) -> list[int]:
    """A process's children; none once it has ended."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _fronts(engine: int) -> list[int]:
    """The API processes in front of the engine process: its keeper's children."""
    (keeper,) = _children(engine)
    return _children(keeper)


def _post(conn: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, dict]:
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_two_api_processes_answer_as_one(minilm, minilm_dir, tmp_path):
    ce_dir = build_classifier(tmp_path / "ce", "bert", 1)
    server = StartedServer(
        EngineArgs(), str(tmp_path / "server.log"), models=[str(minilm_dir), str(ce_dir)],
        served_model_names=["minilm", "ce"], serve_flags=["--api-server-count", "2"],
    )
    try:
        (front,) = _fronts(server.proc.pid)
        before = _cpu_seconds(front)
        address = urlparse(server.url)
        local = threading.local()

        def embed(i: int) -> tuple[int, dict]:
            if not hasattr(local, "conn"):
                local.conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
            return _post(local.conn, "/v1/embeddings", {"model": "minilm", "input": [TEXTS[i]]})

        with ThreadPoolExecutor(32) as pool:  # 32 connections: the kernel spreads them over both processes
            answers = list(pool.map(embed, list(range(len(TEXTS))) * 30))
        assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:2]
        expected = torch.tensor([o.outputs.embedding for o in minilm.embed(TEXTS)])
        for k, (_, body) in enumerate(answers):
            got = torch.tensor(body["data"][0]["embedding"])
            assert torch.allclose(got, expected[k % len(TEXTS)], atol=1e-5), k
        assert _cpu_seconds(front) - before > 0.1  # the front answered its share of the connections (~0.2 ms a request)

        ce = LLM(str(ce_dir))
        query, docs = "what about cats", TEXTS[:5]
        scores = [o.outputs.score for o in ce.score(query, docs)]
        with ThreadPoolExecutor(8) as pool:
            scored = list(pool.map(
                lambda _: _post(http.client.HTTPConnection(address.hostname, address.port, timeout=60), "/score",
                                {"model": "ce", "text_1": query, "text_2": docs}),
                range(8),
            ))
        for status, body in scored:
            assert status == 200, body
            assert [d["score"] for d in body["data"]] == pytest.approx(scores, abs=1e-5)

        with ThreadPoolExecutor(8) as pool:  # a bad request is refused as by one process, by either
            refused = list(pool.map(
                lambda _: _post(http.client.HTTPConnection(address.hostname, address.port, timeout=60), "/v1/embeddings",
                                {"model": "minilm", "input": [[10**9]]}),
                range(8),
            ))
        assert {status for status, _ in refused} == {400} and len({body["error"]["message"] for _, body in refused}) == 1
    finally:
        code = server.stop()
    assert code == 0
    assert not os.path.exists(f"/proc/{front}")  # ended and reaped by its keeper
    # The engine process warms each model up once. A front runs no warm-up (each ran one more
    # through the engine process, and on CUDA read the allocator's counters in a forked process).
    log = (tmp_path / "server.log").read_text()
    assert log.count("warm-up of 'minilm'") == 1 and log.count("warm-up of 'ce'") == 1, log[-3000:]
    assert "an API process failed" not in log, log[-3000:]


def test_sigterm_drains_every_process_and_a_front_ends_with_its_engine(minilm_dir, tmp_path):
    """SIGTERM while requests are in flight in both processes (a slow stand-in device holds them
    there): each is answered, both processes end, exit code 0. A front whose engine process is
    killed outright ends too (it drains: its requests get 503, not a hang), and so does its
    keeper, which removes the engine socket's folder."""
    env = dict(os.environ, POOLKIT_STANDIN_TOKENS_PER_S="100")  # ~0.1 s of device time a text: 1.6 s for the 16
    server = StartedServer(EngineArgs(), str(tmp_path / "server.log"), models=[str(minilm_dir)],
                           serve_flags=["--api-server-count", "2", "--no-warmup"], env=env)  # a warm-up at 100 tokens/s: 80 s
    (front,) = _fronts(server.proc.pid)
    address = urlparse(server.url)

    def embed(i: int) -> int:
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        return _post(conn, "/v1/embeddings", {"input": [TEXTS[i]]})[0]

    with ThreadPoolExecutor(16) as pool:
        pending = [pool.submit(embed, i) for i in range(16)]
        time.sleep(0.4)  # connected, and waiting for the device
        assert sum(f.done() for f in pending) < 16  # still in flight
        server.proc.send_signal(signal.SIGTERM)
        statuses = [f.result() for f in pending]
    assert server.proc.wait(60) == 0 and statuses == [200] * 16
    assert not os.path.exists(f"/proc/{front}")

    temp = tempfile.mkdtemp(prefix="pk", dir="/tmp")  # a short path: the engine socket's is at most 107 bytes
    try:
        server = StartedServer(EngineArgs(), str(tmp_path / "server2.log"), models=[str(minilm_dir)],
                               serve_flags=["--api-server-count", "2"], env=dict(os.environ, TMPDIR=temp))
        (keeper,) = _children(server.proc.pid)
        (front,) = _children(keeper)
        server.proc.kill()
        server.proc.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (_running(front) or _running(keeper)):
            time.sleep(0.1)
        assert not _running(front) and not _running(keeper)
        assert os.listdir(temp) == []  # the keeper cleared the engine socket's folder the engine process left
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_the_engine_link_pipelines_and_carries_errors(tmp_path):
    """The protocol alone, in one process: a front thread launches two batches before reading
    either back; the engine side answers the second first (it finishes first) and each call gets
    its own answer; a library error keeps its class, any other failure becomes a 500's, a model
    the engine process lacks and a lost engine process are 503s."""
    import asyncio
    from types import SimpleNamespace

    from poolkit.contracts.errors import InvalidRequest
    from poolkit.entrypoints.serving.errors import status_of
    from poolkit.entrypoints.server.processes import EngineService, EngineUnavailable, RemoteEngine, engine_socket

    class SlowThenFast:
        async def submit(self, task, prompts, params):
            if prompts == ["boom"]:
                raise ValueError("the model broke")
            if prompts == ["bad"]:
                raise InvalidRequest("prompt 0 is bad")
            await asyncio.sleep(0.3 if prompts == ["slow"] else 0.0)
            return [p.upper() for p in prompts]

    address, key = str(tmp_path / "engine.sock"), b"k" * 32
    service = EngineService(engine_socket(address), key, lambda i: [SlowThenFast()][i])
    service.start()
    try:
        task = SimpleNamespace(name="embed")
        engine = RemoteEngine(SimpleNamespace(), 0, address, key)
        assert engine.asynchronous
        slow, fast = engine.staged(task, ["slow"], [None]).launch(), engine.staged(task, ["fast"], [None]).launch()
        assert fast.finish() == ["FAST"] and slow.finish() == ["SLOW"]
        with pytest.raises(InvalidRequest, match="^prompt 0 is bad$") as bad:
            engine.run(task, ["bad"], [None])
        assert status_of(bad.value) == 400
        with pytest.raises(RuntimeError, match="^ValueError: the model broke$"):
            engine.run(task, ["boom"], [None])
        with pytest.raises(EngineUnavailable) as missing:
            RemoteEngine(SimpleNamespace(), 1, address, key).run(task, ["x"], [None])
        assert status_of(missing.value) == 503
    finally:
        service.close()
    pending = engine.staged(task, ["slow"], [None]).launch()
    service._loop.call_soon_threadsafe(service._loop.stop)
    engine._local.link.conn.close()  # the engine process's end goes away
    with pytest.raises(EngineUnavailable):
        pending.finish()


def test_the_count_is_checked(minilm_dir):
    from poolkit.entrypoints.cli import app

    result = CliRunner().invoke(app, ["serve", str(minilm_dir), "--api-server-count", "0"])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[0] == "Error: --api-server-count must be at least 1, got 0"


@pytest.mark.parametrize("flags", [["--enable-lora"], ["--enable-lora", "--lora-modules", "a=/nowhere"]], ids=["enable", "modules"])
def test_adapters_are_refused_with_several_api_processes(minilm_dir, flags):
    """An adapter loaded at run time (``/v1/load_lora_adapter``) would be the answering process's
    alone, and a front must not load weights (on a GPU, in a process forked from the one holding
    it): LoRA serves with one API process, refused before the model loads."""
    from poolkit.entrypoints.cli import app

    result = CliRunner().invoke(app, ["serve", str(minilm_dir), "--api-server-count", "2", *flags])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[0] == "Error: --enable-lora serves adapters with one API process; leave --api-server-count at 1"
