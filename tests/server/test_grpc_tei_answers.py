"""TEI's gRPC API answering as TEI does (its ``router/src/grpc/server.rs`` and ``core/src/infer.rs``),
seen by a client generated from TEI's proto: the response metadata of unary RPCs, the tokenization
time of pairs, ``dimensions`` on any model, SPLADE's ``Embed`` and TEI's words for an input too long,
on the RPCs and on TEI's HTTP routes alike."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("fastapi")
grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools.protoc")

from test_grpc import DOCS, LONG, QUERY, TEXTS, http, models, on, post, refused, served, stubs, tei  # noqa: E402,F401 - fixtures

#: TEI's response headers (``From<ResponseMetadata> for HeaderMap``), sent by its unary RPCs too.
HEADERS = ("x-compute-type", "x-compute-time", "x-compute-characters", "x-compute-tokens", "x-total-time",
           "x-tokenization-time", "x-queue-time", "x-inference-time")


def test_unary_rpcs_send_teis_response_metadata(stubs):
    pb, stub = stubs
    calls = [
        (stub["Embed"].Embed, pb.EmbedRequest(inputs=TEXTS[0]), "minilm"),
        (stub["Embed"].EmbedAll, pb.EmbedAllRequest(inputs=TEXTS[0]), "minilm"),
        (stub["Embed"].EmbedSparse, pb.EmbedSparseRequest(inputs=TEXTS[0]), "splade"),
        (stub["Predict"].Predict, pb.PredictRequest(inputs=TEXTS[0]), "c3"),
        (stub["Predict"].PredictPair, pb.PredictPairRequest(inputs=[QUERY, DOCS[0]]), "c3"),
        (stub["Rerank"].Rerank, pb.RerankRequest(query=QUERY, texts=DOCS), "r1"),
        (stub["Rerank"].RerankStream, iter([pb.RerankStreamRequest(query=QUERY, text=d) for d in DOCS]), "r1"),
    ]
    for rpc, request, model in calls:
        answer, call = rpc.with_call(request, metadata=on(model))
        headers = {k: v for k, v in call.initial_metadata() if k.startswith("x-")}
        assert sorted(headers) == sorted(HEADERS), rpc
        metadata = answer.metadata
        assert int(headers["x-compute-characters"]) == metadata.compute_chars
        assert int(headers["x-compute-tokens"]) == metadata.compute_tokens > 0
        assert int(headers["x-total-time"]) == int(headers["x-compute-time"]) == metadata.total_time_ns // 1_000_000
        assert int(headers["x-inference-time"]) == metadata.inference_time_ns // 1_000_000
        assert headers["x-compute-type"] == "cpu"
    _, call = stub["Info"].Info.with_call(pb.InfoRequest())  # TEI sends none on Info
    assert not [k for k, _ in call.initial_metadata() if k.startswith("x-compute")]


def test_pairs_report_their_tokenization_time(stubs):
    """PredictPair, Rerank and RerankStream tokenize inside the work they queue: that time is
    reported, not left at 0."""
    pb, stub = stubs
    for rpc, request, model in (
        (stub["Predict"].PredictPair, pb.PredictPairRequest(inputs=[QUERY, DOCS[0]]), "c3"),
        (stub["Rerank"].Rerank, pb.RerankRequest(query=QUERY, texts=DOCS), "r1"),
        (stub["Rerank"].RerankStream, iter([pb.RerankStreamRequest(query=QUERY, text=d) for d in DOCS]), "r1"),
    ):
        metadata = rpc(request, metadata=on(model)).metadata
        assert metadata.tokenization_time_ns > 0, rpc
        assert metadata.tokenization_time_ns + metadata.queue_time_ns + metadata.inference_time_ns <= metadata.total_time_ns


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


def test_dimensions_cut_any_model_as_tei_does(http, stubs):
    """all-MiniLM-L6-v2 is no matryoshka model: TEI cuts its vector and normalizes the cut; wider
    than the vector is TEI's validation error (vLLM's routes still refuse, as vLLM does)."""
    pb, stub = stubs
    embed = stub["Embed"].Embed
    whole = list(embed(pb.EmbedRequest(inputs=TEXTS[1], normalize=False), metadata=on("minilm")).embeddings)
    cut = list(embed(pb.EmbedRequest(inputs=TEXTS[1], dimensions=16), metadata=on("minilm")).embeddings)
    assert cut == pytest.approx(_unit(whole[:16]), abs=1e-6)
    raw = list(embed(pb.EmbedRequest(inputs=TEXTS[1], dimensions=16, normalize=False), metadata=on("minilm")).embeddings)
    assert raw == pytest.approx(whole[:16], abs=1e-6)
    assert post(http, "/embed", "minilm", {"inputs": TEXTS[1], "dimensions": 16})[0] == pytest.approx(cut, abs=1e-6)
    message = "Input validation error: `dimensions` should be smaller than the maximum embedding dimension."
    assert refused(lambda: embed(pb.EmbedRequest(inputs="x", dimensions=385), metadata=on("minilm")), grpc.StatusCode.INVALID_ARGUMENT) == message
    r = http.post("/embed", json={"inputs": "x", "dimensions": 385}, headers={"X-Model": "minilm"})
    assert r.status_code == 413 and r.json() == {"error": message, "error_type": "Validation"}
    assert http.post("/v1/embeddings", json={"input": "x", "dimensions": 16}, headers={"X-Model": "minilm"}).status_code == 400


def test_embed_on_a_splade_model_is_teis(http, stubs):
    """``Embed`` on a SPLADE model: its vocabulary-wide weights with ``normalize: false`` (those of
    ``EmbedSparse``), TEI's FailedPrecondition when normalizing."""
    pb, stub = stubs
    embed = stub["Embed"]
    vector = list(embed.Embed(pb.EmbedRequest(inputs=TEXTS[1], normalize=False), metadata=on("splade")).embeddings)
    sparse = embed.EmbedSparse(pb.EmbedSparseRequest(inputs=TEXTS[1]), metadata=on("splade")).sparse_embeddings
    assert len(vector) == 30522
    assert {i: v for i, v in enumerate(vector) if v} == pytest.approx({s.index: s.value for s in sparse}, rel=1e-5)
    message = "`normalize` is not available for SPLADE models"
    assert refused(lambda: embed.Embed(pb.EmbedRequest(inputs="x"), metadata=on("splade")), grpc.StatusCode.FAILED_PRECONDITION) == message
    r = http.post("/embed", json={"inputs": "x"}, headers={"X-Model": "splade"})
    assert r.status_code == 424 and r.json() == {"error": message, "error_type": "Backend"}


def test_an_input_too_long_is_refused_in_teis_words(http, stubs):
    pb, stub = stubs
    given = len(stub["Tokenize"].Tokenize(pb.EncodeRequest(inputs=LONG, add_special_tokens=True), metadata=on("minilm")).tokens)
    message = f"Input validation error: `inputs` must have less than 256 tokens. Given: {given}"
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: stub["Embed"].Embed(pb.EmbedRequest(inputs=LONG), metadata=on("minilm")), invalid) == message
    assert refused(lambda: stub["Embed"].EmbedAll(pb.EmbedAllRequest(inputs=LONG), metadata=on("minilm")), invalid) == message
    assert refused(lambda: stub["Predict"].Predict(pb.PredictRequest(inputs=LONG), metadata=on("c3")), invalid).startswith(
        "Input validation error: `inputs` must have less than")
    assert refused(lambda: stub["Rerank"].Rerank(pb.RerankRequest(query=QUERY, texts=[LONG]), metadata=on("r1")), invalid).startswith(
        "Input validation error: `inputs` must have less than")
    for path in ("/embed", "/embed_all"):
        r = http.post(path, json={"inputs": LONG, "truncate": False}, headers={"X-Model": "minilm"})
        assert r.status_code == 413 and r.json() == {"error": message, "error_type": "Validation"}, path
    assert stub["Embed"].Embed(pb.EmbedRequest(inputs=LONG, truncate=True), metadata=on("minilm")).embeddings
    # vLLM's routes keep vLLM's words
    r = http.post("/v1/embeddings", json={"input": LONG}, headers={"X-Model": "minilm"})
    assert "maximum context length is 256 tokens" in r.json()["error"]["message"]


def test_an_answer_from_the_cache_says_cache(minilm, tei):
    """With --cache-size, a text another client sent before is answered from the cache: its phases
    are 0 because nothing ran, and x-compute-type says so (``cache``) instead of ``cpu``."""
    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    pb, services = tei
    app = create_app(minilm, served_model_name="m", grpc_port=0, cache_size=8)
    with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}") as channel:
        first = client.post("/embed", json={"inputs": "the first client's text"})
        again = client.post("/embed", json={"inputs": "the first client's text"})
        assert first.headers["x-compute-type"] == "cpu" and again.headers["x-compute-type"] == "cache"
        assert again.json() == first.json()
        assert [again.headers[f"x-{p}-time"] for p in ("tokenization", "queue", "inference")] == ["0", "0", "0"]
        embed = services.EmbedStub(channel)
        answer, call = embed.Embed.with_call(pb.EmbedRequest(inputs="the first client's text"))
        assert dict(call.initial_metadata())["x-compute-type"] == "cache"
        assert answer.metadata.inference_time_ns == 0
        _, call = embed.Embed.with_call(pb.EmbedRequest(inputs="a text nobody sent"))
        assert dict(call.initial_metadata())["x-compute-type"] == "cpu"
