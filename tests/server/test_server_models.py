"""Several models in one server, and the embedding cache.

A real ``poolkit serve`` process holding an embedder, a reranker and a three-label classifier is
driven by the ``openai`` client and plain HTTP: each request reaches the model it names (its
``model`` field, or the ``X-Model`` header on TEI's routes), and answers as that model does
offline. In-process apps check the cache: repeats come from it, never a result computed with
other parameters, least recently used entries go first, and ``/metrics`` counts hits and misses.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_server import start_server, stop_server  # noqa: E402
from tiny_models import build_classifier  # noqa: E402

from poolkit import LLM, PoolingParams  # noqa: E402
from poolkit.contracts.errors import InvalidRequest  # noqa: E402

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from poolkit.entrypoints.server import create_app  # noqa: E402

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is in germany", "the sky is blue"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return build_classifier(root / "ce", "bert", 1), build_classifier(root / "c3", "bert", 3)


@pytest.fixture(scope="module")
def three(minilm_dir, model_dirs, tmp_path_factory):
    ce_dir, c3_dir = model_dirs
    srv = start_server(
        minilm_dir, tmp_path_factory.mktemp("three") / "server.log",
        "--model", str(ce_dir), "--model", str(c3_dir), "--served-model-name", "ce", "--served-model-name", "c3",
        "--cache-size", "64",
    )
    yield srv
    assert stop_server(srv) == 0, srv.logs()


@pytest.fixture(scope="module")
def offline(model_dirs):
    return LLM(str(model_dirs[0])), LLM(str(model_dirs[1]))


def test_the_openai_client_reaches_each_model_by_name(three, minilm):
    client = openai.OpenAI(base_url=f"{three.url}/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["minilm", "ce", "c3"]
    got = client.embeddings.create(model="minilm", input=["a first text", "another"])
    expected = [o.outputs.embedding for o in minilm.embed(["a first text", "another"])]
    np.testing.assert_allclose([d.embedding for d in got.data], expected, atol=1e-6)
    with pytest.raises(openai.BadRequestError, match="not supported by model 'ce'|Embedding API is not supported"):
        client.embeddings.create(model="ce", input="a reranker does not embed")
    with pytest.raises(openai.NotFoundError, match="Served models: minilm, ce, c3"):
        client.embeddings.create(model="gpt-4", input="x")


def test_http_routes_answer_as_the_named_model_does_offline(three, offline):
    ce, c3 = offline
    ranked = httpx.post(f"{three.url}/rerank", json={"model": "ce", "query": QUERY, "documents": DOCS}, timeout=60).json()
    expected = ce.rerank(QUERY, DOCS)
    assert [r["index"] for r in ranked["results"]] == [r.index for r in expected]
    np.testing.assert_allclose([r["relevance_score"] for r in ranked["results"]], [r.relevance_score for r in expected], atol=1e-6)
    probs = httpx.post(f"{three.url}/classify", json={"model": "c3", "input": DOCS}, timeout=60).json()
    np.testing.assert_allclose([d["probs"] for d in probs["data"]], [o.outputs.probs for o in c3.classify(DOCS)], atol=1e-6)
    # TEI's routes name no model: the first answers, or the one X-Model (or a "model" field) names
    assert len(httpx.post(f"{three.url}/embed", json={"inputs": "x"}, timeout=60).json()[0]) == 384
    predicted = httpx.post(f"{three.url}/predict", json={"inputs": DOCS[0]}, headers={"X-Model": "c3"}, timeout=60).json()
    assert sorted(p["score"] for p in predicted) == pytest.approx(sorted(c3.classify(DOCS[:1])[0].outputs.probs), abs=1e-6)
    wrong = httpx.post(f"{three.url}/embed", json={"inputs": "x"}, headers={"X-Model": "c3"}, timeout=60)
    assert wrong.status_code == 424 and wrong.json() == {"error": "Model is not an embedding model", "error_type": "Backend"}
    unknown = httpx.post(f"{three.url}/embed", json={"inputs": "x"}, headers={"X-Model": "nope"}, timeout=60)
    assert unknown.status_code == 404 and "Served models: minilm, ce, c3" in unknown.json()["error"]


def test_health_and_metrics_cover_every_model(three):
    assert httpx.get(f"{three.url}/health").status_code == 200
    httpx.post(f"{three.url}/classify", json={"model": "c3", "input": "count me"}, timeout=60)
    text = httpx.get(f"{three.url}/metrics").text
    for name in ("minilm", "ce", "c3"):
        assert f'poolkit_model_ready{{model="{name}"}} 1.0' in text
    assert 'poolkit_inputs_total{model="c3"}' in text


# -- in process: loading, names ---------------------------------------------------------------------


def test_health_waits_for_every_model_while_loaded_ones_answer(minilm, offline):
    gate = threading.Event()

    def late():
        gate.wait(30)
        return offline[1]

    app = create_app([minilm, late], served_model_name=["minilm", "c3"])
    with TestClient(app) as c:
        try:
            assert c.get("/health").status_code == 503
            assert c.post("/v1/embeddings", json={"model": "minilm", "input": "ready"}).status_code == 200
            loading = c.post("/classify", json={"model": "c3", "input": "not yet"})
            assert loading.status_code == 503 and "loading" in loading.json()["error"]["message"]
        finally:
            gate.set()
        for _ in range(300):
            if c.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert c.get("/health").status_code == 200
        assert c.post("/classify", json={"model": "c3", "input": "now"}).status_code == 200


def test_served_names_are_one_per_model_and_distinct(minilm, offline):
    with pytest.raises(InvalidRequest, match="one name per model"):
        create_app([minilm, offline[0]], served_model_name=["only-one"])
    with pytest.raises(InvalidRequest, match="must differ"):
        create_app([minilm, offline[0]], served_model_name=["same", "same"])
    with pytest.raises(InvalidRequest, match="two models would be served as"):
        create_app([minilm, minilm])


# -- the embedding cache ----------------------------------------------------------------------------


def _cache_counts(client) -> tuple[float, float]:
    lines = client.get("/metrics").text.splitlines()

    def value(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))

    return value("poolkit_cache_hits_total"), value("poolkit_cache_misses_total")


def test_repeats_come_from_the_cache_and_equal_a_fresh_run(minilm):
    with TestClient(create_app(minilm, served_model_name="m", cache_size=8)) as c:
        first = c.post("/v1/embeddings", json={"input": ["alpha", "beta"]}).json()
        assert _cache_counts(c) == (0, 2)
        mixed = c.post("/v1/embeddings", json={"input": ["gamma", "alpha", "beta"]}).json()
        assert _cache_counts(c) == (2, 3)
        assert [d["embedding"] for d in mixed["data"][1:]] == [d["embedding"] for d in first["data"]]
        assert mixed["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"] + len(minilm.embed("gamma")[0].prompt_token_ids)
        expected = minilm.embed(["gamma", "alpha", "beta"])
        np.testing.assert_allclose([d["embedding"] for d in mixed["data"]], [o.outputs.embedding for o in expected], atol=1e-6)
        # TEI's /embed shares the cache with the OpenAI route: same task, same parameters
        tei = c.post("/embed", json={"inputs": "alpha"}).json()
        assert tei[0] == first["data"][0]["embedding"] and _cache_counts(c) == (3, 3)


def test_other_parameters_never_get_a_cached_result(minilm):
    with TestClient(create_app(minilm, served_model_name="m", cache_size=8)) as c:
        normalized = c.post("/embed", json={"inputs": "alpha"}).json()[0]
        raw = c.post("/embed", json={"inputs": "alpha", "normalize": False}).json()[0]
        assert _cache_counts(c) == (0, 2) and np.linalg.norm(raw) > 1.5
        expected = minilm.embed("alpha", pooling_params=PoolingParams(use_activation=False))[0].outputs.embedding
        np.testing.assert_allclose(raw, expected, atol=1e-6)
        truncated = c.post("/v1/embeddings", json={"input": "alpha", "truncate_prompt_tokens": 2}).json()["data"][0]["embedding"]
        assert truncated != normalized and _cache_counts(c) == (0, 3)
        ids = minilm.get_tokenizer()("alpha")["input_ids"]
        by_ids = c.post("/v1/embeddings", json={"input": ids}).json()["data"][0]["embedding"]
        assert _cache_counts(c) == (0, 4)  # token ids are another input than the text, even when equal
        np.testing.assert_allclose(by_ids, normalized, atol=1e-6)


def test_an_input_too_long_beside_cached_ones_is_named_by_its_place_in_the_request(minilm):
    """The cache runs only the inputs it does not hold; a refusal of one of them names the input the
    client sent (its place in the request), not its place in what ran (a defect: 'input 0' here)."""
    long = "word " * 600
    with TestClient(create_app(minilm, served_model_name="m", cache_size=8)) as c:
        c.post("/v1/embeddings", json={"input": ["alpha", "beta"]})
        refused = c.post("/v1/embeddings", json={"input": ["alpha", "beta", long]})
        assert refused.status_code == 400 and _cache_counts(c) == (2, 3)
        assert "maximum context length is 256 tokens. However, input 2 has more tokens" in refused.json()["error"]["message"]
        # Cohere's truncate=NONE words the same refusal its own way, with the input's length
        cohere = c.post("/v2/embed", json={"texts": ["alpha", long], "truncate": "NONE"})
        message = cohere.json()["error"]["message"]
        assert cohere.status_code == 400 and "However, input 1 has " in message and "(truncate=NONE)" in message
        given = int(message.split("input 1 has ")[1].split(" ")[0])
        assert given == len(minilm.get_tokenizer()(long)["input_ids"])


def test_least_recently_used_entries_go_first(minilm):
    app = create_app(minilm, served_model_name="m", cache_size=2)
    with TestClient(app) as c:
        for text in ("one", "two", "one", "three"):  # "two" is the least recently used when "three" comes
            c.post("/v1/embeddings", json={"input": text})
        assert _cache_counts(c) == (1, 3)
        c.post("/v1/embeddings", json={"input": ["one", "three", "two"]})
        assert _cache_counts(c) == (3, 4)
        assert len(app.state.poolkit.first.cache) == 2


def test_without_a_cache_nothing_is_counted(minilm):
    with TestClient(create_app(minilm, served_model_name="m")) as c:
        c.post("/v1/embeddings", json={"input": ["one", "one"]})
        assert _cache_counts(c) == (0, 0)
    with pytest.raises(InvalidRequest, match="cache size"):
        create_app(minilm, cache_size=-1)
