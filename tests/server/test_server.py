"""The HTTP server: a real ``poolkit serve`` process driven by the official ``openai`` client and
httpx, the command line, metrics, concurrency, client disconnects and graceful shutdown. Every
result is compared with the offline Python API (the in-process app's routes are in
test_server_routes.py)."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from offline_parity import ATOL, TEXTS, _close  # noqa: E402

from poolkit.entrypoints.server import create_app  # noqa: E402


# -- a real server process -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_server(model_dir: Path, log: Path, *args: str) -> Server:
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "poolkit", "serve", str(model_dir), "--port", str(port), "--served-model-name", "minilm", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{server.logs()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not become healthy:\n{server.logs()}")


def stop_server(server: Server, timeout: float = 30) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return server.proc.returncode


@pytest.fixture(scope="session")
def server(minilm_dir, tmp_path_factory):
    srv = start_server(minilm_dir, tmp_path_factory.mktemp("server") / "server.log", "--max-batch-tokens", "8192")
    yield srv
    code = stop_server(srv)
    assert code == 0, srv.logs()


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


# -- the openai client against the real process ----------------------------------------------------


def test_openai_client_float_equals_offline(client, minilm):
    expected = minilm.embed(TEXTS)
    response = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    diffs = [_close(d.embedding, e.outputs.embedding) for d, e in zip(response.data, expected)]
    assert response.usage.prompt_tokens == sum(len(e.prompt_token_ids) for e in expected)
    print(f"\nopenai float parity: max |diff| = {max(diffs):.2e}")


def test_openai_client_base64_equals_offline(client, minilm):
    expected = minilm.embed(TEXTS)
    # The client asks for base64 when no encoding is given and decodes it as float32.
    decoded = client.embeddings.create(model="minilm", input=TEXTS)
    raw = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="base64")
    for d, r, e in zip(decoded.data, raw.data, expected):
        _close(d.embedding, e.outputs.embedding)
        assert isinstance(r.embedding, str)
        vector = np.frombuffer(base64.b64decode(r.embedding), dtype="<f4")
        assert np.array_equal(vector, np.asarray(d.embedding, dtype=np.float32))


def test_openai_client_token_ids_and_single_string(client, minilm):
    ids = minilm.embed("The capital of France is Paris.")[0].prompt_token_ids
    expected = minilm.embed({"prompt_token_ids": ids})[0].outputs.embedding
    for given in (ids, [ids]):
        response = client.embeddings.create(model="minilm", input=given, encoding_format="float")
        assert len(response.data) == 1
        _close(response.data[0].embedding, expected)
    single = client.embeddings.create(model="minilm", input="Hello, my name is", encoding_format="float")
    _close(single.data[0].embedding, minilm.embed("Hello, my name is")[0].outputs.embedding)


def test_openai_client_dimensions_on_a_non_matryoshka_model(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="minilm", input="hi", dimensions=32)
    assert err.value.status_code == 400
    body = err.value.body
    assert "does not support matryoshka representation, changing output dimensions will lead to poor results" in body["message"]
    assert body["param"] == "dimensions" and body["code"] == 400


def test_openai_client_errors_map_to_its_exception_types(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="gpt-4", input="hi")
    assert err.value.body["message"] == "The model `gpt-4` does not exist."
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="minilm", input="")
    models = client.models.list()
    assert [m.id for m in models.data] == ["minilm"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_real_server_rejects_bad_requests_at_the_transport(server):
    url = f"{server.url}/v1/embeddings"
    big = httpx.post(url, content=b"x" * (17 * 1024 * 1024), headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == 413

    def chunks():
        for _ in range(20):
            yield b" " * (1024 * 1024)

    streamed = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert httpx.post(url, content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert httpx.post(url, content=b"input=hi", headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 415
    nan = httpx.post(url, content=b'{"input": "hi", "dimensions": NaN}', headers={"content-type": "application/json"})
    assert nan.status_code == 400 and "NaN" in nan.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200


# -- the command line ------------------------------------------------------------------------------


def test_serve_without_the_extra_names_it(monkeypatch):
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 1
    assert "Error: poolkit serve needs FastAPI and uvicorn: pip install 'poolkit[serve]'" in result.output


def test_serve_rejects_bad_options_before_loading(minilm_dir):
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    bad_json = CliRunner().invoke(app, ["serve", str(minilm_dir), "--pooler-config", "{nope"])
    assert bad_json.exit_code == 1 and "--pooler-config is not valid JSON" in bad_json.output
    bad_limit = CliRunner().invoke(app, ["serve", str(minilm_dir), "--max-body-bytes", "0"])
    assert bad_limit.exit_code == 1 and "max_body_bytes (--max-body-bytes) must be a positive finite number" in bad_limit.output


def test_serve_reports_a_model_that_does_not_load(tmp_path):
    port = _free_port()
    result = subprocess.run(
        [sys.executable, "-m", "poolkit", "serve", str(tmp_path / "missing"), "--port", str(port)],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )
    assert result.returncode == 1, result.stderr
    assert "Error: " in result.stderr and "Traceback" not in result.stderr


# -- operations ------------------------------------------------------------------------------------


def test_models_health_and_metrics(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["data"][0]["id"] == "minilm" and models["data"][0]["max_model_len"] == 256
    assert set(models["data"][0]["tasks"]) >= {"embed", "token_embed"}
    assert "/work" not in json.dumps(models)  # no file paths
    httpx.post(f"{server.url}/v1/embeddings", json={"model": "minilm", "input": ["a", "b"]})
    text = httpx.get(f"{server.url}/metrics").text
    assert text.endswith("\n")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['poolkit_requests_total{route="/v1/embeddings",status="200"}'] >= 1
    assert samples['poolkit_prompt_tokens_total{model="minilm"}'] > 0 and samples['poolkit_batches_total{model="minilm"}'] >= 1
    assert samples['poolkit_request_duration_seconds_count{route="/v1/embeddings"}'] >= 1
    assert samples['poolkit_request_duration_seconds_bucket{route="/v1/embeddings",le="+Inf"}'] >= 1
    assert samples['poolkit_batch_size_count{model="minilm"}'] >= 1 and 'poolkit_queue_depth{model="minilm"}' in samples
    assert samples['poolkit_model_ready{model="minilm"}'] == 1


def _metric(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


@pytest.fixture
def threaded_server(minilm):
    """The app on a real uvicorn socket in a thread of this process, so a test can hold its worker."""
    import uvicorn

    app = create_app(minilm, served_model_name="minilm")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_a_client_that_goes_away_cancels_its_queued_work(threaded_server, monkeypatch):
    import asyncio

    app, url = threaded_server
    state = app.state.poolkit
    gate = threading.Event()
    ran = []
    real_run = state.llm.engine.run
    monkeypatch.setattr(state.llm.engine, "run", lambda task, prompts, params, **kw: ran.append(len(prompts)) or real_run(task, prompts, params, **kw))
    holder = threading.Thread(target=lambda: asyncio.run(state.batcher.call(lambda: gate.wait(30), 1)))
    holder.start()  # the worker thread is now busy until the gate opens
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/embeddings", json={"input": ["queued", "behind"]}, timeout=0.5)
        deadline = time.monotonic() + 10
        while state.batcher.stats.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.batcher.stats.cancelled == 1 and state.batcher.queue_depth == 0
    finally:
        gate.set()
        holder.join()
    assert httpx.post(f"{url}/v1/embeddings", json={"input": "after"}).status_code == 200
    assert ran == [1]  # the abandoned request never reached the model
    text = httpx.get(f"{url}/metrics").text
    assert 'poolkit_requests_cancelled_total{model="' in text and "poolkit_client_disconnects_total 1" in text
    assert [line for line in text.splitlines() if line.startswith("poolkit_requests_cancelled_total")][0].endswith(" 1.0")


# -- concurrency and load --------------------------------------------------------------------------

WORDS = "the of and to in is was for on that with as by at from his her it an are were be this which".split()


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 8, 20, 40]))) for i in range(n)]


def test_32_concurrent_clients_get_their_own_results(server, minilm):
    corpus = _corpus(96)
    expected = {t: np.asarray(e.outputs.embedding) for t, e in zip(corpus, minilm.embed(corpus))}
    rng = random.Random(1)
    plans = [[rng.sample(corpus, rng.randint(1, 3)) for _ in range(8)] for _ in range(32)]

    def client_run(plan):
        diffs = []
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for texts in plan:
                r = http.post("/v1/embeddings", json={"model": "minilm", "input": texts})
                assert r.status_code == 200, r.text
                for item, text in zip(r.json()["data"], texts):
                    diffs.append(float(np.abs(np.asarray(item["embedding"]) - expected[text]).max()))
        return diffs

    start = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        diffs = [d for result in pool.map(client_run, plans) for d in result]
    elapsed = time.perf_counter() - start
    assert len(diffs) == sum(len(t) for plan in plans for t in plan)
    print(f"\n32 clients x 8 requests: {len(diffs)} inputs in {elapsed:.2f} s; max |diff| vs offline = {max(diffs):.2e}")
    assert max(diffs) <= ATOL


def test_load_run_reports_throughput_and_latency(server):
    corpus = _corpus(64, seed=2)
    stop_at = time.perf_counter() + 5.0
    latencies: list[float] = []
    statuses: list[int] = []
    inputs = [0]
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while time.perf_counter() < stop_at:
                texts = rng.sample(corpus, rng.randint(1, 4))
                t0 = time.perf_counter()
                r = http.post("/v1/embeddings", json={"input": texts})
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    statuses.append(r.status_code)
                    inputs[0] += len(texts)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert statuses and set(statuses) == {200}
    q = statistics.quantiles(latencies, n=100)
    print(
        f"\nload (16 closed-loop clients, {elapsed:.1f} s): {len(latencies) / elapsed:.1f} req/s, "
        f"{inputs[0] / elapsed:.1f} inputs/s, p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms"
    )


# -- graceful shutdown -----------------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_and_exits_0(minilm_dir, minilm, tmp_path):
    srv = start_server(minilm_dir, tmp_path / "drain.log", "--shutdown-timeout", "60")
    try:
        batches = [[f"request {r} text {i} " + "lorem ipsum " * 80 for i in range(6)] for r in range(3)] + [["short"]]
        results: list = [None] * len(batches)
        sigterm_sent = threading.Event()

        def send(k: int) -> None:
            # Each body arrives in two parts, the second after SIGTERM: all four requests are in
            # flight when the server is told to stop, whatever the machine's speed.
            def body():
                data = json.dumps({"input": batches[k], "truncate_prompt_tokens": -1}).encode()
                yield data[:10]
                sigterm_sent.wait(30)
                time.sleep(0.3)
                yield data[10:]

            results[k] = httpx.post(
                f"{srv.url}/v1/embeddings", content=body(), headers={"content-type": "application/json"}, timeout=120
            )

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(batches))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60  # a hang guard: the four bodies' first parts arrive at once
        while _metric(srv, "poolkit_requests_receiving") < len(batches) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _metric(srv, "poolkit_requests_receiving") == len(batches)  # admitted once their bodies are in (issue 52)
        srv.proc.send_signal(signal.SIGTERM)
        sigterm_sent.set()
        time.sleep(0.1)
        with pytest.raises(httpx.TransportError):  # no longer accepting connections
            httpx.post(f"{srv.url}/v1/embeddings", json={"input": "late"}, timeout=5)
        for t in threads:
            t.join()
        assert srv.proc.wait(60) == 0, srv.logs()
        for response, texts in zip(results, batches):
            assert response.status_code == 200, response.text
            for item, e in zip(response.json()["data"], minilm.embed(texts, tokenization_kwargs={"truncate_prompt_tokens": -1})):
                _close(item["embedding"], e.outputs.embedding)
    finally:
        stop_server(srv)


def test_work_left_at_the_shutdown_timeout_gets_a_503_with_retry_after(minilm_dir, tmp_path):
    # Issue 14: requests still queued when --shutdown-timeout ran out got uvicorn's plain-text 500
    # and a CancelledError traceback in the log. They get a JSON 503 with Retry-After instead.
    srv = start_server(minilm_dir, tmp_path / "timeout.log", "--shutdown-timeout", "2", "--max-batch-tokens", "2048")
    try:
        texts = ["lorem ipsum dolor sit amet " * 40] * 48  # ~10k tokens a request: seconds of work each
        results: list = [None] * 6

        def send(k: int) -> None:
            results[k] = httpx.post(f"{srv.url}/v1/embeddings", json={"input": texts, "truncate_prompt_tokens": -1}, timeout=120)

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(results))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while _metric(srv, "poolkit_requests_in_flight") < len(results) and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert srv.proc.wait(60) == 0, srv.logs()
        statuses = [r.status_code for r in results]
        assert 503 in statuses and set(statuses) <= {200, 503}, statuses
        for r in results:
            if r.status_code == 503:
                assert r.headers["retry-after"] and r.json()["error"]["type"] == "ServiceUnavailableError", r.text
        assert "CancelledError" not in srv.logs() and "Traceback" not in srv.logs(), srv.logs()
    finally:
        stop_server(srv)


def test_a_request_uvicorn_cannot_parse_gets_the_json_error_body(server):
    # Issue 14: "Content-Length: abc" got uvicorn's plain-text 400.
    host, port = server.url.removeprefix("http://").split(":")
    for head in (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"NOT A REQUEST\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        status_line, _, rest = raw.partition(b"\r\n")
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 400"), raw
        assert b"content-type: application/json" in headers.lower(), raw
        error = json.loads(body)["error"]
        assert error["code"] == 400 and error["type"] == "BadRequestError" and "not valid HTTP" in error["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200  # and the server goes on


def test_bench_serve_loads_a_server_and_reads_its_memory(server):
    from poolkit.entrypoints.bench.load import LoadReport, format_load, run_load

    report = run_load(server.url, clients=2, seconds=600, inputs_per_request=2, sample_every=0.5, rounds=10).as_dict()
    assert report["requests"] > 0 and set(report["status_codes"]) == {"200"}
    assert report["p50_ms"] <= report["p99_ms"]
    assert report["rss_mb"]["start"] > 50 and report["rss_mb"]["end"] > 50  # process_resident_memory_bytes on /metrics
    assert report["soak_ok"] is None  # shorter than the first minute: no verdict
    assert "status codes: 200:" in format_load(report)

    soak = LoadReport("u", 1, 600.0, 1, latencies=[0.1, 0.2], rss=[(0.0, 300.0), (61.0, 400.0), (600.0, 430.0)])
    assert soak.as_dict()["rss_mb"]["before"] == 400.0  # without a warm-up: the first minute
    assert soak.as_dict()["rss_growth_after_first_minute"] == 0.075 and soak.as_dict()["soak_ok"] is True
    soak.rss.append((601.0, 450.0))
    assert soak.as_dict()["soak_ok"] is False

    warmed = LoadReport("u", 1, 60.0, 1, latencies=[0.1], warmup=60.0, rss_before=500.0, rss=[(0.0, 300.0), (125.0, 540.0)])
    assert warmed.as_dict()["rss_growth"] == 0.08 and warmed.as_dict()["soak_ok"] is True
    warmed.warmup_routes["POST /embed [m]"][502] += 1  # a 5xx fails the soak, in the warm-up too
    assert warmed.as_dict()["server_errors"] == 1 and warmed.as_dict()["soak_ok"] is False
    warmed.warmup_routes["POST /embed [m]"]["ConnectionResetError"] += 1
    assert warmed.as_dict()["connection_errors"] == 1


def test_bench_serve_every_route_of_a_served_model(server):
    """``--routes every`` on one embedder: each route it can run answers 200, the rest are listed
    as skipped with the reason, and TEI's routes name the model in X-Model."""
    from poolkit.entrypoints.bench.load import format_load, run_load

    # An amount of work, not of time: each client goes through every route once (the hang guard is long).
    report = run_load(server.url, clients=4, seconds=600, inputs_per_request=2, routes="every", rounds=1).as_dict()
    routes = report["routes"]
    assert report["server_errors"] == 0 and report["connection_errors"] == 0, report["failures"]
    assert {"POST /v1/embeddings [minilm]", "POST /embed [minilm]", "POST /tokenize (TEI) [minilm]", "GET /metrics"} <= set(routes)
    answered = {label for label, route in routes.items() if route["requests"]}
    assert answered == set(routes)
    assert all(sum(route["status_codes"].values()) == 4 for route in routes.values())  # one round of 4 clients
    assert {label for label, route in routes.items() if set(route["status_codes"]) != {"200"}} == set(), report["refusals"]
    assert report["skipped_routes"]["POST /classify"] == "no served model has task 'classify'"
    assert report["skipped_routes"]["POST /embed_sparse"] == "no served model has task 'sparse_embed'"
    assert {"POST /score [minilm]", "POST /pooling embed [minilm]"} <= set(routes)  # an embedder scores by cosine
    assert "skipped POST /classify" in format_load(report)
