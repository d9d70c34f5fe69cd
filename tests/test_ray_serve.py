"""The server as a Ray Serve deployment: two replicas of a two-model server behind Ray Serve's HTTP
proxy, driven by the official ``openai`` client and ``huggingface_hub.InferenceClient``, answers equal to offline; the
server's limits and errors inside each replica; a replica killed mid-load replaced, and every request
answered once it is back."""

from __future__ import annotations

import socket
import threading
import time

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
def served(minilm_dir, classifier):
    """Two replicas of the server over two models (all-MiniLM-L6-v2 and a tiny three-label
    classifier) on a local Ray, the proxy on 127.0.0.1."""
    from poolkit import EngineArgs
    from poolkit.entrypoints.integrations.ray_serve import build_application
    from poolkit.entrypoints.server import ServerLimits

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_application(
        [EngineArgs(model=str(minilm_dir), dtype="float32"), EngineArgs(model=str(classifier), dtype="float32")],
        num_replicas=2, num_cpus=0.5, served_model_name=["minilm", "c3"], limits=ServerLimits(max_inputs_per_request=8),
    )
    serve.run(app, name="poolkit", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


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
    """Load from four threads, kill one replica's actor: Ray Serve starts another; once two replicas
    run again, no request fails. (While it is down, requests it held may fail: counted, not asserted.)"""
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
    deadline = time.time() + 120
    while time.time() < deadline and not (running_replicas() == 2 and victims[0]["name"] not in _replicas_named()):
        time.sleep(1)
    back = len(statuses)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert running_replicas() == 2
    assert victims[0]["name"] not in _replicas_named()
    after = statuses[back:]
    assert after and all(code == 200 for code in after), after
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
