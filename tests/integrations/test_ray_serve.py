"""The server as a Ray Serve deployment: two replicas of a two-model server behind Ray Serve's HTTP
proxy, driven by the official ``openai`` client and ``huggingface_hub.InferenceClient``, answers equal to offline; the
server's limits and errors inside each replica; a replica killed mid-load replaced, and every request
answered once it is back. ``poolkit serve --ray-serve`` as a process: ``/health`` answers 503 while
its replica loads (and TEI's ``GET /`` with it), SIGTERM drains the requests in flight and exits 0, and Ctrl-C on a cluster it
joined deletes its applications and leaves the cluster (and the cluster's other application) running."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

serve = pytest.importorskip("ray.serve")
ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray

TEXTS = ["paris is the capital of france", "berlin is in germany", "the weather is nice today"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_replicas(name: str = "poolkit") -> int:
    status = serve.status().applications[name].deployments[name]
    return status.replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from tiny_models import build_classifier

    return build_classifier(tmp_path_factory.mktemp("c3"), "bert", 3)


@pytest.fixture(scope="module")
def served(minilm_dir, classifier, local_ray):
    """Two replicas of the server over two models (all-MiniLM-L6-v2 and a tiny three-label
    classifier) on a local Ray, the proxy on 127.0.0.1."""
    from poolkit import EngineArgs
    from poolkit.entrypoints.integrations.ray_serve import build_application
    from poolkit.entrypoints.server import ServerLimits

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_application(
        [EngineArgs(model=str(minilm_dir), dtype="float32"), EngineArgs(model=str(classifier), dtype="float32")],
        num_replicas=2, num_cpus=0.5, served_model_name=["minilm", "c3"], limits=ServerLimits(max_inputs_per_request=8),
    )
    serve.run(app, name="poolkit", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def offline(minilm_dir):
    from poolkit import LLM

    llm = LLM(str(minilm_dir), dtype="float32")
    return [torch.tensor(o.outputs.embedding) for o in llm.embed(TEXTS)]


def test_two_replicas_answer_the_openai_client_as_offline(served, offline):
    from openai import OpenAI

    assert running_replicas() == 2
    client = OpenAI(base_url=f"{served}/v1", api_key="unused")
    response = client.embeddings.create(model="minilm", input=TEXTS)
    for item, want in zip(response.data, offline):
        assert torch.allclose(torch.tensor(item.embedding), want, atol=1e-5)
    assert [m.id for m in client.models.list().data] == ["minilm", "c3"]


def test_every_model_of_the_server_answers_through_the_proxy(served, classifier):
    import httpx

    from poolkit import LLM

    got = httpx.post(f"{served}/classify", json={"model": "c3", "input": TEXTS}, timeout=30)
    assert got.status_code == 200, got.text
    want = LLM(str(classifier), dtype="float32").classify(TEXTS)
    for item, out in zip(got.json()["data"], want):
        assert torch.allclose(torch.tensor(item["probs"]), torch.tensor(out.outputs.probs), atol=1e-5)


def test_tei_route_answers_inference_client_as_offline(served, offline, hub_online):
    from huggingface_hub import InferenceClient

    got = InferenceClient(base_url=served).feature_extraction(TEXTS[0])
    assert torch.allclose(torch.tensor(got).flatten(), offline[0], atol=1e-5)


def test_limits_and_errors_hold_in_each_replica(served):
    import httpx

    too_many = httpx.post(f"{served}/v1/embeddings", json={"model": "minilm", "input": ["a"] * 9}, timeout=30)
    assert too_many.status_code == 400 and "\n" not in too_many.json()["error"]["message"]
    unknown = httpx.post(f"{served}/v1/embeddings", json={"model": "nope", "input": "a"}, timeout=30)
    assert unknown.status_code == 404
    scored = httpx.post(f"{served}/score", json={"model": "minilm", "text_1": TEXTS[0], "text_2": TEXTS[1:]}, timeout=30)
    assert scored.status_code == 200 and len(scored.json()["data"]) == 2


def test_a_replica_killed_mid_load_is_replaced(served, offline):
    """Load from four threads, kill one replica's actor: Ray Serve starts another, and once two
    replicas run again the requests are answered again, every one of them from then on. (While it is
    down, and until the proxy has seen it go, requests sent its way may fail: counted, not asserted.)"""
    import httpx

    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.post(f"{served}/v1/embeddings", json={"model": "minilm", "input": TEXTS}).status_code)
                except httpx.HTTPError:
                    statuses.append(-1)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    victims = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::")]
    assert len(victims) == 2
    ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]), no_restart=True)

    def replaced() -> bool:
        # Two named replicas without the victim, and two running. serve.status() can lag the named
        # actors (the victim still counted RUNNING while its successor starts), so this is checked
        # again, with the answers, at the end: never read once as a snapshot.
        named = _replicas_named()
        return victims[0]["name"] not in named and len(named) == 2 and running_replicas() == 2

    deadline = time.time() + 300  # a hang guard
    while time.time() < deadline and not replaced():
        time.sleep(1)
    back = len(statuses)

    def answered_again() -> bool:  # the last 20 answers since it came back are all 200s
        tail = statuses[back:][-20:]
        return len(tail) == 20 and all(code == 200 for code in tail)

    # A hang guard of its own: on a busy machine the replacement's start can take most of the first.
    # How soon the proxy sees the victim go is Ray's: not asserted.
    deadline = time.time() + 300
    while time.time() < deadline and not (done := answered_again() and replaced()):
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert done, (serve.status().applications["poolkit"].deployments["poolkit"].replica_states, _replicas_named(),
                  collections.Counter(statuses[back:]), statuses[back:][-20:], len(statuses) - back)
    with httpx.Client(timeout=30) as client:
        got = client.post(f"{served}/v1/embeddings", json={"model": "minilm", "input": TEXTS}).json()
    for item, want in zip(got["data"], offline):
        assert torch.allclose(torch.tensor(item["embedding"]), want, atol=1e-5)


def _replicas_named() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::")}


def test_deployment_settings_are_checked():
    from poolkit import EngineArgs, InvalidRequest
    from poolkit.entrypoints.integrations.ray_serve import build_application

    with pytest.raises(InvalidRequest, match="num_replicas must be a positive number of replicas or 'auto', got 0"):
        build_application(EngineArgs(), num_replicas=0)
    with pytest.raises(InvalidRequest, match="at least one model"):
        build_application([])


def test_cli_serve_ray_serve_passes_the_server_options(monkeypatch, minilm_dir):
    """``poolkit serve MODEL --ray-serve``: the same options as the single-process server reach the deployment."""
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app
    from poolkit.entrypoints.integrations import ray_serve

    seen = {}
    monkeypatch.setattr(ray_serve, "run", lambda args, **kwargs: seen.update(args=args, **kwargs))
    result = CliRunner().invoke(app, [
        "serve", str(minilm_dir), "--ray-serve", "--num-replicas", "3", "--served-model-name", "m", "--api-key", "k",
        "--max-inputs-per-request", "5", "--autoscaling-config", '{"min_replicas": 1, "max_replicas": 4}',
    ])
    assert result.exit_code == 0, result.output
    assert [a.model for a in seen["args"]] == [str(minilm_dir)]
    assert seen["num_replicas"] == 3 and seen["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}
    assert seen["served_model_name"] == "m" and seen["api_key"] == "k" and seen["limits"].max_inputs_per_request == 5
    bad = CliRunner().invoke(app, ["serve", str(minilm_dir), "--ray-serve", "--autoscaling-config", "[1]"])
    assert bad.exit_code == 1 and "--autoscaling-config must be a JSON object, got list" in bad.output


def test_health_replica_says_why_no_replica_runs(monkeypatch):
    """The ``/health`` deployment's answers, read from Serve's status: the server's JSON 503 while
    the application is not deployed yet or no replica of it runs, after a failed deployment, while
    it is deleted or once told to drain; 200 once a replica runs; 405 but for GET, as the server's."""
    import asyncio
    from types import SimpleNamespace

    from ray.serve.schema import ApplicationStatus

    from poolkit.entrypoints.integrations import ray_serve
    from poolkit.entrypoints.server.errors import error_body, tei_error_body

    apps: dict = {}
    monkeypatch.setattr(ray_serve, "_serve", lambda: SimpleNamespace(status=lambda: SimpleNamespace(applications=apps)))
    health = ray_serve.Health("poolkit")

    def answer(method: str = "GET", headers: dict | None = None) -> tuple:
        response = asyncio.run(health(SimpleNamespace(method=method, headers=headers or {})))
        return response.status_code, response.body, response.headers.get("retry-after")

    def root() -> tuple:  # TEI's GET /, as the proxy's RootHealth sends it here
        return answer(headers={"x-poolkit-health-alias": "1"})

    def app(status: ApplicationStatus, running: int) -> SimpleNamespace:
        replicas = {"RUNNING": running} if running else {"STARTING": 1}
        return SimpleNamespace(status=status, deployments={"poolkit": SimpleNamespace(replica_states=replicas)})

    loading = (503, error_body(503, "the model is loading"), "5")
    assert answer() == loading
    assert root() == (503, tei_error_body("Unhealthy", "the model is loading"), "5")
    apps["poolkit"] = app(ApplicationStatus.DEPLOYING, 0)
    assert answer() == loading
    apps["poolkit"] = app(ApplicationStatus.DEPLOY_FAILED, 0)
    assert answer() == (503, error_body(503, "the model failed to load"), None)
    apps["poolkit"] = app(ApplicationStatus.DELETING, 0)
    assert answer() == (503, error_body(503, "the server is shutting down"), None)
    apps["poolkit"] = app(ApplicationStatus.RUNNING, 1)
    assert answer() == (200, b'{"status":"ok"}', None)
    assert root() == (200, b"", None)
    assert answer("POST") == (405, error_body(405, "Method Not Allowed"), None)
    health.poolkit_drain()
    assert answer() == (503, error_body(503, "the server is shutting down"), None)
    assert root() == (503, tei_error_body("Unhealthy", "the server is shutting down"), None)


def test_the_proxy_sends_get_root_to_health_and_nothing_else():
    """Ray Serve's proxy middleware: ``GET /`` goes on as ``GET /health`` marked as TEI's alias;
    ``POST /`` (TEI's inference route) and other paths pass as they came; a client's own mark is dropped."""
    import asyncio

    from poolkit.entrypoints.integrations.ray_proxy import CALLBACK, RootHealth, middlewares

    seen = []

    async def app(scope, receive, send):
        seen.append((scope["method"], scope["path"], scope["raw_path"], scope["headers"]))

    def through(method: str, path: str, headers: list) -> tuple:
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "headers": headers}
        asyncio.run(RootHealth(app)(scope, None, None))
        return seen.pop()

    mark = (b"x-poolkit-health-alias", b"1")
    host = (b"host", b"x")
    assert through("GET", "/", [host]) == ("GET", "/health", b"/health", [host, mark])
    assert through("GET", "/", [host, mark]) == ("GET", "/health", b"/health", [host, mark])
    assert through("POST", "/", [host]) == ("POST", "/", b"/", [host])
    assert through("GET", "/v1/models", [host]) == ("GET", "/v1/models", b"/v1/models", [host])
    assert through("GET", "/health", [host, mark]) == ("GET", "/health", b"/health", [host])
    assert [m.cls for m in middlewares()] == [RootHealth]
    assert CALLBACK.rsplit(".", 1) == [middlewares.__module__, middlewares.__name__]


#: What Ray 2.60's ``ray.init(address=...)`` raises when the cluster has token authentication and
#: this process is not in RAY_AUTH_MODE=token (ray/_private/worker.py: a ConnectionError from the
#: RuntimeError of ray/_private/node.py, whose text carries the AuthenticationError of _raylet).
GCS_REFUSED = (
    "Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
    '  File "python/ray/includes/common.pxi", line 119, in ray._raylet.check_status\n'
    "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or incorrect. "
    "Note: RAY_AUTH_MODE is currently 'disabled' (not 'token'). Ensure that the token for the cluster is available in a "
    "local file (e.g., ~/.ray/auth_token or via RAY_AUTH_TOKEN_PATH) or as the `RAY_AUTH_TOKEN` environment variable.\n"
)


def ray_init_raising(monkeypatch, cause: str) -> list:
    """``ray.init`` raising as Ray 2.60 does when it cannot join the cluster (``cause``: the text of
    the RuntimeError under its ConnectionError); returns the addresses it was called with."""
    calls = []

    def init(address=None, **kwargs):
        calls.append(address)
        try:
            raise RuntimeError(cause)
        except RuntimeError as exc:
            raise ConnectionError(f"Failed to connect to Ray cluster at {address}") from exc

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    return calls


def test_joining_a_cluster_that_asks_for_a_token_says_to_set_ray_auth_mode(monkeypatch, minilm_dir):
    """An explicit ``--ray-address`` of a cluster with token authentication, without
    ``RAY_AUTH_MODE=token``: one line naming the address and the variables, not Ray's retries."""
    from typer.testing import CliRunner

    from poolkit import EngineArgs, PoolkitError
    from poolkit.entrypoints.cli import app
    from poolkit.entrypoints.integrations import ray_serve

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    calls = ray_init_raising(monkeypatch, GCS_REFUSED)
    with pytest.raises(PoolkitError) as info:
        ray_serve.run(EngineArgs(model=str(minilm_dir)), ray_address="10.0.0.7:6379")
    message = str(info.value)
    assert calls == ["10.0.0.7:6379"] and isinstance(info.value, ConnectionError) and "\n" not in message
    assert message.startswith("could not join the Ray cluster at '10.0.0.7:6379': it asks for its authentication token;")
    assert "set RAY_AUTH_MODE=token" in message and "RAY_AUTH_TOKEN " in message and "RAY_AUTH_TOKEN_PATH" in message

    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the mode is on: only the token is left to give
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.8:6379")
    with pytest.raises(PoolkitError) as info:
        ray_serve.run(EngineArgs(model=str(minilm_dir)))
    assert "'10.0.0.8:6379'" in str(info.value) and "set RAY_AUTH_MODE" not in str(info.value)
    assert "give the cluster's token in RAY_AUTH_TOKEN" in str(info.value)

    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_ADDRESS")
    result = CliRunner().invoke(app, ["serve", str(minilm_dir), "--ray-serve", "--ray-address", "10.0.0.7:6379"])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert error == [f"Error: {message}"], result.output


def test_joining_an_unreachable_cluster_names_the_address(monkeypatch, minilm_dir):
    """Another failure to join (a cause without Ray's authentication marks; its text is a stand-in):
    Ray's reason, the address, and the token variables as a hint."""
    from poolkit import EngineArgs, PoolkitError
    from poolkit.entrypoints.integrations import ray_serve

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    ray_init_raising(monkeypatch, "Failed to connect to GCS. Last connection error: RpcError: failed to connect to all addresses")
    with pytest.raises(PoolkitError) as info:
        ray_serve.run(EngineArgs(model=str(minilm_dir)), ray_address="10.0.0.9:6379")
    assert str(info.value).startswith(
        "could not join the Ray cluster at '10.0.0.9:6379' (Failed to connect to Ray cluster at 10.0.0.9:6379); check the address"
    )
    assert "RAY_AUTH_MODE=token" in str(info.value) and "\n" not in str(info.value)


# -- `poolkit serve --ray-serve` as a process ------------------------------------------------------

#: A plugin whose model resolver holds the load until a file exists, as a slow download would.
GATE = """
import os
import time
from pathlib import Path

from poolkit import hookimpl


@hookimpl
def poolkit_resolve_model(name):
    if name != "gated-minilm":
        return None
    deadline = time.monotonic() + 600
    while not Path(os.environ["GATE_FILE"]).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return os.environ["GATED_MODEL"]
"""

#: A Ray cluster that is not poolkit's, with an application of its own at /other; each line on its
#: stdin prints the applications deployed on it.
CLUSTER = """
import json
import sys

import ray
from ray import serve

ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})


@serve.deployment(ray_actor_options={"num_cpus": 0})
def other(request):
    return "other"


serve.run(other.bind(), name="other", route_prefix="/other")
print(json.dumps(ray.get_runtime_context().gcs_address), flush=True)
for line in sys.stdin:
    print(json.dumps(sorted(serve.status().applications)), flush=True)
"""


def serve_process(log: Path, model: str, port: int, *flags: str, env: dict | None = None) -> subprocess.Popen:
    """``poolkit serve MODEL --ray-serve --num-replicas 1`` on ``port``, in a process group of its own."""
    cmd = [sys.executable, "-m", "poolkit", "serve", model, "--port", str(port), "--served-model-name", "minilm",
           "--ray-serve", "--num-replicas", "1", *flags]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def until(check, proc: subprocess.Popen, log: Path, what: str, deadline: float = 600):
    """Poll ``check()`` until it returns something: a hang guard, not a timing."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode} waiting for {what}:\n{log.read_text()[-4000:]}")
        got = check()
        if got is not None:
            return got
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {deadline} s:\n{log.read_text()[-4000:]}")


def health(url: str, status: int):
    """``GET /health``'s response when it has ``status``, else ``None`` (nothing listening yet, or
    Serve's 404 before the health application is deployed; or, while Ray starts, one of its own
    services briefly on the port, which answers no HTTP/1.1: once Serve's proxy listens, the port
    is its, or the server exits and :func:`until` says so). Its timeout is a hang guard."""
    import httpx

    try:
        got = httpx.get(f"{url}/health", timeout=120)
    except (httpx.ConnectError, httpx.RemoteProtocolError):
        return None
    return got if got.status_code == status else None


def stopped(proc: subprocess.Popen) -> None:
    """End what is left of a server (its process group: its own Ray too) after a failed test."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_health_answers_503_while_loading_and_sigterm_drains_the_requests_in_flight(minilm_dir, tmp_path):
    """The replica's load held by a resolver plugin: ``/health`` answers the server's JSON 503 (not
    a wait behind the load); once the replica runs, 200. SIGTERM with four requests in flight (a
    slow stand-in device holds them in the replica) answers each with a 200, then the process
    exits 0 (not killed by Ray's signal handlers, which dropped the requests)."""
    import httpx

    from poolkit.entrypoints.server.errors import error_body, tei_error_body
    from poolkit.plugins.testing import fake_distribution

    site, gate = tmp_path / "site", tmp_path / "gate"
    fake_distribution(site, "poolkit-gate", "1.0", {"gate": "poolkit_gate"}, {"poolkit_gate": GATE})
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])), "GATE_FILE": str(gate),
           "GATED_MODEL": str(minilm_dir), "POOLKIT_STANDIN_TOKENS_PER_S": "40"}
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = serve_process(log, "gated-minilm", port, "--no-warmup", env=env)  # a warm-up at 40 tokens/s would take minutes
    try:
        loading = until(lambda: health(url, 503), proc, log, "503 from /health while the replica loads")
        assert loading.content == error_body(503, "the model is loading") and loading.headers["retry-after"] == "5"
        assert loading.headers["content-type"] == "application/json"
        root = httpx.get(f"{url}/", timeout=120)  # TEI's alias, sent to the health replica by the proxy: no wait either
        assert (root.status_code, root.content) == (503, tei_error_body("Unhealthy", "the model is loading"))
        gate.touch()
        assert until(lambda: health(url, 200), proc, log, "200 from /health").json() == {"status": "ok"}
        root = httpx.get(f"{url}/", timeout=120)
        assert (root.status_code, root.content) == (200, b"")
        inference = httpx.post(f"{url}/", json={"inputs": "the quick brown fox"}, timeout=300)  # TEI's POST /: the server's
        assert inference.status_code == 200 and len(inference.json()[0]) == 384

        def embed(i: int) -> int:
            texts = [f"request {i} text {j}: the quick brown fox jumps over the lazy dog" for j in range(8)]
            return httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": texts}, timeout=300).status_code

        def in_flight() -> int | None:
            metrics = httpx.get(f"{url}/metrics", timeout=120).text
            line = next(x for x in metrics.splitlines() if x.startswith("poolkit_requests_in_flight "))
            return 4 if float(line.split()[1]) == 4 else None

        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(embed, i) for i in range(4)]
            until(in_flight, proc, log, "four requests in flight")
            proc.send_signal(signal.SIGTERM)
            statuses = [f.result() for f in pending]
        code = proc.wait(300)
        assert statuses == [200] * 4, log.read_text()[-4000:]
        assert code == 0, log.read_text()[-4000:]
    finally:
        stopped(proc)


def test_ctrl_c_deletes_the_applications_it_deployed_on_a_cluster_and_leaves_the_cluster(minilm_dir, tmp_path):
    """``--ray-address`` of a running cluster (one that serves an application of its own): Ctrl-C
    ends the server with exit code 0, its two applications are gone from the cluster, and the
    cluster, its Serve and its other application still run (Ray's ``serve run`` shuts Serve down)."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"RAY_AUTH_MODE": "token"}  # Ray's token authentication, which a driver given an address must ask for
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True, env={**os.environ, **auth})
    proc = None
    try:
        address = json.loads(cluster.stdout.readline())
        assert httpx.get(f"{url}/other", timeout=120).text == "other"
        log = tmp_path / "serve.log"
        proc = serve_process(log, str(minilm_dir), port, "--ray-address", address, env=auth)
        until(lambda: health(url, 200), proc, log, "200 from /health")
        cluster.stdin.write("\n")
        cluster.stdin.flush()
        assert {"other", "poolkit"} <= set(json.loads(cluster.stdout.readline()))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(300) == 0, log.read_text()[-4000:]
        cluster.stdin.write("\n")
        cluster.stdin.flush()
        assert json.loads(cluster.stdout.readline()) == ["other"]
        assert httpx.get(f"{url}/other", timeout=120).text == "other"
        assert httpx.get(f"{url}/health", timeout=120).status_code == 404  # Serve's proxy: no such route now
    finally:
        if proc is not None:
            stopped(proc)
        cluster.stdin.close()  # the cluster's driver ends, and its Ray with it
        try:
            cluster.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait()
