"""The server package's shape: one router per protocol, all mounted, and Prometheus metrics on
``prometheus_client`` with a registry per application."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
prometheus_client = pytest.importorskip("prometheus_client")

from fastapi import Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from poolkit.entrypoints.server import INFERENCE_ROUTES, create_app  # noqa: E402
from poolkit.entrypoints.server import app as app_module  # noqa: E402
from poolkit.entrypoints.server import routes  # noqa: E402
from poolkit.entrypoints.server.deps import Model, State  # noqa: E402
from poolkit.entrypoints.server.endpoints import Endpoints  # noqa: E402
from poolkit.entrypoints.server.guard import TEI_ALIASES  # noqa: E402
from poolkit.entrypoints.server.lane import Lane  # noqa: E402
from poolkit.entrypoints.server.routes_openai import EmbeddingRequest  # noqa: E402

#: Every family /metrics exposes, by the name the parser gives it (counters without ``_total``).
FAMILIES = {
    "poolkit_requests": "counter",
    "poolkit_request_duration_seconds": "histogram",
    "poolkit_prompt_tokens": "counter",
    "poolkit_inputs": "counter",
    "poolkit_requests_rejected": "counter",
    "poolkit_client_disconnects": "counter",
    "poolkit_requests_cancelled": "counter",
    "poolkit_batches": "counter",
    "poolkit_batch_tokens": "counter",
    "poolkit_requests_in_flight": "gauge",
    "poolkit_requests_receiving": "gauge",
    "poolkit_queue_depth": "gauge",
    "poolkit_model_ready": "gauge",
    "poolkit_batch_size": "histogram",
    "poolkit_queue_wait_seconds": "histogram",
    "poolkit_cache_hits": "counter",
    "poolkit_cache_misses": "counter",
    # prometheus_client's process collector (Linux): poolkit bench-serve reads the resident memory.
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_cpu_seconds": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
}


def _families(client: TestClient) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def _value(family, sample: str, **labels: str) -> float:
    return sum(s.value for s in family.samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def two_apps(minilm):
    with TestClient(create_app(minilm, served_model_name="a")) as a, TestClient(create_app(minilm, served_model_name="b")) as b:
        yield a, b


def test_metrics_are_valid_prometheus_exposition(two_apps):
    client, _ = two_apps
    assert client.post("/v1/embeddings", json={"input": ["one", "two"]}).status_code == 200
    families = _families(client)
    assert {name: f.type for name, f in families.items()} == FAMILIES
    requests = families["poolkit_requests"]
    assert _value(requests, "poolkit_requests_total", route="/v1/embeddings", status="200") >= 1
    duration = families["poolkit_request_duration_seconds"]
    assert _value(duration, "poolkit_request_duration_seconds_bucket", route="/v1/embeddings", le="+Inf") >= 1
    assert _value(families["poolkit_inputs"], "poolkit_inputs_total", model="a") >= 2
    assert _value(families["poolkit_batch_size"], "poolkit_batch_size_count", model="a") >= 1
    assert _value(families["poolkit_model_ready"], "poolkit_model_ready", model="a") == 1
    samples = [s.name for f in families.values() for s in f.samples]
    assert not [name for name in samples if name.endswith("_created")]


def test_two_apps_in_one_process_keep_separate_metrics(two_apps):
    a, b = two_apps
    before = _value(_families(b)["poolkit_requests"], "poolkit_requests_total", route="/score")
    for _ in range(3):
        assert a.post("/score", json={"text_1": "a", "text_2": "b"}).status_code == 200
    assert _value(_families(a)["poolkit_requests"], "poolkit_requests_total", route="/score") >= 3
    assert _value(_families(b)["poolkit_requests"], "poolkit_requests_total", route="/score") == before
    # Nothing lands in prometheus_client's process-wide default registry.
    assert not [m.name for m in prometheus_client.REGISTRY.collect() if m.name.startswith("poolkit_")]


def test_every_protocol_router_is_mounted(two_apps):
    client, _ = two_apps
    modules = routes.MODULES
    assert [m.__name__.rpartition(".")[2] for m in modules] == [
        "routes_ops", "routes_openai", "routes_vllm", "routes_lora", "routes_sagemaker", "routes_cohere", "routes_jina", "routes_tei"
    ]
    assert routes.ENDPOINTS == tuple(endpoint for module in modules for endpoint in module.ENDPOINTS)
    mounted = {(r.path, frozenset(r.methods)): r.endpoint for r in client.app.routes if hasattr(r, "endpoint")}
    for module in modules:
        assert len(module.ENDPOINTS), module.__name__
        for endpoint in module.ENDPOINTS:
            assert mounted.get((endpoint.path, frozenset({endpoint.method}))) is endpoint.function, (module.__name__, endpoint.path)
            assert endpoint.function.__module__ == module.__name__
    paths = {endpoint.path for module in modules for endpoint in module.ENDPOINTS}
    assert paths == set(INFERENCE_ROUTES) | TEI_ALIASES | {"/v1/models", "/info", "/health", "/metrics"}


def test_no_route_module_imports_another_protocols():
    """Each protocol's routes stand alone: what several share lives in modules of no protocol."""
    import ast
    from pathlib import Path

    names = {m.__name__.rpartition(".")[2] for m in routes.MODULES}
    for module in routes.MODULES:
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.module for a in node.names}
        assert not {name.rpartition(".")[2] for name in imported} & (names - {module.__name__.rpartition(".")[2]}), module.__name__


def test_an_endpoint_asking_for_the_lane_with_another_signature_fails_the_build(monkeypatch, minilm):
    """The lane calls ``function(body, request, st, llm)``: a route declared for it with other
    parameters is an error when the application is built, not a silent slow path."""
    declared = Endpoints()

    @declared.post("/v1/odd", "A route whose parameters the lane cannot call.")
    async def odd(request: Request, body: EmbeddingRequest, st: State, llm: Model):  # noqa: ARG001
        raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"POST /v1/odd asks for the fast lane.*it takes \(request, body, st, llm\)"):
        Lane(declared)
    monkeypatch.setattr(app_module, "ENDPOINTS", (*routes.ENDPOINTS, *declared))
    with pytest.raises(TypeError, match="POST /v1/odd asks for the fast lane"):
        create_app(minilm)
    declared_off = Endpoints()
    declared_off.post("/v1/odd", "Not in the lane.", lane=False)(odd)
    assert "/v1/odd" not in Lane(declared_off).routes


def test_routes_read_the_state_of_their_own_app(two_apps):
    a, b = two_apps
    assert a.get("/v1/models").json()["data"][0]["id"] == "a"
    assert b.get("/v1/models").json()["data"][0]["id"] == "b"
    assert a.post("/v1/embeddings", json={"model": "b", "input": "x"}).status_code == 404
