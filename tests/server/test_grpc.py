"""TEI's gRPC API (``poolkit serve --grpc-port``) driven by a client generated from TEI's own
``tei.proto`` with grpcio-tools (protoc), as TEI's users generate theirs; poolkit's compiled stubs
are not used. Every RPC is compared with the TEI HTTP route of the same application on the same
inputs (equal vectors, scores and tokens), with proto3's defaults where TEI's gRPC API differs from
its HTTP one; then the bad inputs with TEI's status codes, the API key, the model chosen by
``x-model``, and the health service. Streams, deadlines and the shutdown: test_grpc_streams.py."""

from __future__ import annotations

import hashlib
import importlib.resources
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
grpc = pytest.importorskip("grpc")
protoc = pytest.importorskip("grpc_tools.protoc")
health = pytest.importorskip("grpc_health.v1.health_pb2_grpc")

from fastapi.testclient import TestClient  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

from poolkit import LLM  # noqa: E402
from poolkit.entrypoints.server import ServerLimits, create_app  # noqa: E402

TEXTS = ["Hello, my name is", "The capital of France is Paris.", "ünïcödé ✓ text"]
#: Over minilm's 256 tokens, with a head and a tail that differ.
LONG = "the beginning of a long story. " + "lorem ipsum dolor " * 150 + "and its very different ending!"
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is in germany", "the sky is blue"]
#: TEI's proto as its repository holds it (git's blob id of proto/tei.proto, PROTO_ORIGIN.md).
TEI_PROTO_BLOB = "e02e6651524849e942ac787d5996bcf36bfdcbbd"


def tei_client(out: Path) -> tuple:
    """``tei_pb2`` and ``tei_pb2_grpc`` generated into ``out`` from TEI's proto by protoc."""
    (out / "tei.proto").write_bytes((importlib.resources.files("poolkit.entrypoints.grpc") / "vendor" / "tei.proto").read_bytes())
    assert protoc.main(["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}", "tei.proto"]) == 0
    for name in ("tei_pb2", "tei_pb2_grpc"):
        sys.modules.pop(name, None)
    sys.path.insert(0, str(out))
    try:
        import tei_pb2
        import tei_pb2_grpc
    finally:
        sys.path.remove(str(out))
    assert Path(tei_pb2_grpc.__file__).parent == out  # the generated client, not poolkit's stubs
    return tei_pb2, tei_pb2_grpc


@pytest.fixture(scope="session")
def tei(tmp_path_factory):
    return tei_client(tmp_path_factory.mktemp("tei-client"))


@pytest.fixture(scope="module")
def models(minilm, splade_dir, tmp_path_factory):
    from tiny_models import build_classifier

    root = tmp_path_factory.mktemp("grpc-tiny")
    return {
        "minilm": minilm,
        "c3": LLM(str(build_classifier(root / "c3", "bert", 3))),
        "r1": LLM(str(build_classifier(root / "r1", "bert", 1))),
        "splade": LLM(str(splade_dir), hf_overrides={"architectures": ["BertSpladeSparseEmbeddingModel"]}),
    }


@pytest.fixture(scope="module")
def served(models):
    """The HTTP client and a gRPC channel of one application serving the four models."""
    app = create_app(list(models.values()), served_model_name=list(models), grpc_port=0,
                     limits=ServerLimits(max_inputs_per_request=8))
    with TestClient(app) as http:
        with grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}") as channel:
            yield http, channel


@pytest.fixture
def http(served):
    return served[0]


@pytest.fixture
def stubs(served, tei):
    pb, services = tei
    channel = served[1]
    return pb, {name: getattr(services, f"{name}Stub")(channel) for name in ("Info", "Embed", "Predict", "Rerank", "Tokenize")}


def on(model: str) -> list[tuple[str, str]]:
    return [("x-model", model)]


def post(http, path: str, model: str, body: dict):
    r = http.post(path, json=body, headers={"X-Model": model})
    assert r.status_code == 200, r.text
    return r.json()


def refused(call, code, contains: str | None = None) -> str:
    """``call()`` fails with the gRPC status ``code``; its message."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, (info.value.code(), info.value.details())
    if contains is not None:
        assert contains in info.value.details(), info.value.details()
    return info.value.details()


def test_the_proto_is_teis_unchanged():
    data = (importlib.resources.files("poolkit.entrypoints.grpc") / "vendor" / "tei.proto").read_bytes()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == TEI_PROTO_BLOB


# -- every RPC against its HTTP route --------------------------------------------------------------


def test_info_is_the_http_info_for_the_model_chosen(http, stubs):
    pb, stub = stubs
    for model, kind in (("minilm", pb.MODEL_TYPE_EMBEDDING), ("c3", pb.MODEL_TYPE_CLASSIFIER), ("r1", pb.MODEL_TYPE_RERANKER)):
        got = stub["Info"].Info(pb.InfoRequest(), metadata=on(model))
        want = http.get("/info", headers={"X-Model": model}).json()
        assert got.model_type == kind and got.model_id == want["model_id"] == model
        for field in ("version", "model_dtype", "max_concurrent_requests", "max_batch_tokens", "max_client_batch_size", "tokenization_workers"):
            assert getattr(got, field) == want[field], field
        assert got.max_input_length == want["max_input_length"]
        assert not got.HasField("model_sha") and not got.HasField("max_batch_requests")


@pytest.mark.parametrize("options", [
    {},
    {"normalize": False},
    {"truncate": True, "inputs": LONG},
    {"truncate": True, "inputs": LONG, "truncation_direction": 1},
])
def test_embed_equals_the_http_route(http, stubs, options):
    pb, stub = stubs
    for text in [options.get("inputs")] if "inputs" in options else TEXTS:
        request = pb.EmbedRequest(**{**options, "inputs": text})
        got = stub["Embed"].Embed(request, metadata=on("minilm"))
        body = {"inputs": text, "normalize": options.get("normalize", True), "truncate": options.get("truncate", False),
                "truncation_direction": ["right", "left"][options.get("truncation_direction", 0)]}
        (want,) = post(http, "/embed", "minilm", body)
        assert list(got.embeddings) == want
        assert got.metadata.compute_chars == len(text) and got.metadata.compute_tokens > 0


def test_truncate_is_false_unless_asked_whatever_auto_truncate(tei, models):
    """TEI's gRPC API reads ``truncate`` as proto3 gives it (false when unset) and ignores
    ``--auto-truncate``; its HTTP routes truncate under that flag."""
    pb, services = tei
    app = create_app(models["minilm"], served_model_name="minilm", grpc_port=0, auto_truncate=True)
    with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}") as channel:
        assert client.post("/embed", json={"inputs": LONG}).status_code == 200
        refused(lambda: services.EmbedStub(channel).Embed(pb.EmbedRequest(inputs=LONG)), grpc.StatusCode.INVALID_ARGUMENT)


def test_embed_sparse_equals_the_http_route(http, stubs):
    pb, stub = stubs
    for text in TEXTS:
        got = stub["Embed"].EmbedSparse(pb.EmbedSparseRequest(inputs=text), metadata=on("splade"))
        (want,) = post(http, "/embed_sparse", "splade", {"inputs": text, "truncate": False})
        assert [(v.index, v.value) for v in got.sparse_embeddings] == [(w["index"], w["value"]) for w in want]
        assert [v.index for v in got.sparse_embeddings] == sorted(v.index for v in got.sparse_embeddings)


def test_embed_all_equals_the_http_route(http, stubs):
    pb, stub = stubs
    for text in TEXTS:
        got = stub["Embed"].EmbedAll(pb.EmbedAllRequest(inputs=text), metadata=on("minilm"))
        (want,) = post(http, "/embed_all", "minilm", {"inputs": text, "truncate": False})
        assert [list(t.embeddings) for t in got.token_embeddings] == want
        assert got.metadata.compute_tokens == len(want)


@pytest.mark.parametrize("raw_scores", [False, True])
def test_predict_and_predict_pair_equal_the_http_route(http, stubs, raw_scores):
    pb, stub = stubs
    for text in TEXTS:
        got = stub["Predict"].Predict(pb.PredictRequest(inputs=text, raw_scores=raw_scores), metadata=on("c3"))
        want = post(http, "/predict", "c3", {"inputs": text, "raw_scores": raw_scores, "truncate": False})
        assert [(p.label, p.score) for p in got.predictions] == [(w["label"], np.float32(w["score"])) for w in want]
        assert [p.score for p in got.predictions] == sorted((p.score for p in got.predictions), reverse=True)
    for pair in ([QUERY, DOCS[0]], [QUERY]):
        got = stub["Predict"].PredictPair(pb.PredictPairRequest(inputs=pair, raw_scores=raw_scores), metadata=on("c3"))
        want = post(http, "/predict", "c3", {"inputs": pair, "raw_scores": raw_scores, "truncate": False})
        assert [(p.label, p.score) for p in got.predictions] == [(w["label"], np.float32(w["score"])) for w in want]


@pytest.mark.parametrize("options", [{}, {"raw_scores": True, "return_text": True}])
def test_rerank_and_rerank_stream_equal_the_http_route(http, stubs, options):
    pb, stub = stubs
    got = stub["Rerank"].Rerank(pb.RerankRequest(query=QUERY, texts=DOCS, **options), metadata=on("r1"))
    want = post(http, "/rerank", "r1", {"query": QUERY, "texts": DOCS, "truncate": False, **options})
    ranks = [(r.index, r.text if r.HasField("text") else None, r.score) for r in got.ranks]
    assert ranks == [(w["index"], w.get("text"), np.float32(w["score"])) for w in want]
    streamed = stub["Rerank"].RerankStream(iter([pb.RerankStreamRequest(query=QUERY, text=d, **options) for d in DOCS]), metadata=on("r1"))
    assert [(r.index, r.text, r.score) for r in streamed.ranks] == [(r.index, r.text, r.score) for r in got.ranks]
    assert streamed.metadata.compute_tokens == got.metadata.compute_tokens


def test_rerank_stream_takes_a_query_a_message(http, stubs):
    """Each of RerankStream's messages is a (query, text) pair; the ranks are those of scoring each
    pair, the highest first."""
    pb, stub = stubs
    queries = [QUERY, "where is berlin", "what colour is the sky"]
    got = stub["Rerank"].RerankStream(iter([pb.RerankStreamRequest(query=q, text=d) for q, d in zip(queries, DOCS)]), metadata=on("r1"))
    want = {i: post(http, "/rerank", "r1", {"query": q, "texts": [d], "truncate": False})[0]["score"]
            for i, (q, d) in enumerate(zip(queries, DOCS))}
    assert {r.index: r.score for r in got.ranks} == {i: pytest.approx(s, abs=1e-6) for i, s in want.items()}
    assert [r.score for r in got.ranks] == sorted((r.score for r in got.ranks), reverse=True)


@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_tokenize_and_decode_equal_the_http_routes(http, stubs, add_special_tokens):
    pb, stub = stubs
    for text in TEXTS:
        got = stub["Tokenize"].Tokenize(pb.EncodeRequest(inputs=text, add_special_tokens=add_special_tokens), metadata=on("minilm"))
        (want,) = post(http, "/tokenize", "minilm", {"inputs": text, "add_special_tokens": add_special_tokens})
        tokens = [{"id": t.id, "text": t.text, "special": t.special, "start": t.start if t.HasField("start") else None,
                   "stop": t.stop if t.HasField("stop") else None} for t in got.tokens]
        assert tokens == want
        ids = [t.id for t in got.tokens]
        for skip in (False, True):
            decoded = stub["Tokenize"].Decode(pb.DecodeRequest(ids=ids, skip_special_tokens=skip), metadata=on("minilm"))
            assert [decoded.text] == post(http, "/decode", "minilm", {"ids": ids, "skip_special_tokens": skip})


def test_the_metadata_and_the_headers_say_what_the_work_took(http, stubs, models):
    """TEI's gRPC ``Metadata`` and its HTTP routes' ``x-compute-*`` headers on the same request: the
    same characters (a text's, a pair's both, the query once a text) and tokens, and the times of the
    phases of work that ran in the batcher, each within the request's total."""
    pb, stub = stubs
    pair = [QUERY, DOCS[0]]
    cases = [  # (RPC, its request, the model, the HTTP route and body, the characters)
        (stub["Embed"].Embed, pb.EmbedRequest(inputs=TEXTS[2]), "minilm", "/embed", {"inputs": TEXTS[2]}, 14),
        (stub["Embed"].EmbedAll, pb.EmbedAllRequest(inputs=TEXTS[0]), "minilm", "/embed_all", {"inputs": TEXTS[0]}, 17),
        (stub["Embed"].EmbedSparse, pb.EmbedSparseRequest(inputs=TEXTS[1]), "splade", "/embed_sparse", {"inputs": TEXTS[1]}, 31),
        (stub["Predict"].PredictPair, pb.PredictPairRequest(inputs=pair), "c3", "/predict", {"inputs": pair}, 29 + 30),
        (stub["Rerank"].Rerank, pb.RerankRequest(query=QUERY, texts=DOCS), "r1", "/rerank", {"query": QUERY, "texts": DOCS},
         3 * 29 + 30 + 20 + 15),
    ]
    for rpc, request, model, path, body, chars in cases:
        metadata = rpc(request, metadata=on(model)).metadata
        r = http.post(path, json={**body, "truncate": False}, headers={"X-Model": model})
        assert r.status_code == 200, r.text
        headers = {k: v for k, v in r.headers.items() if k.startswith("x-") and k.endswith(("-time", "-type", "-characters", "-tokens"))}
        assert metadata.compute_chars == int(headers["x-compute-characters"]) == chars, path
        assert metadata.compute_tokens == int(headers["x-compute-tokens"]) > 0, path
        assert metadata.inference_time_ns > 0, path  # the batcher ran it: the phases are measured, not left at 0
        phases = metadata.tokenization_time_ns + metadata.queue_time_ns + metadata.inference_time_ns
        assert phases <= metadata.total_time_ns, path
        milliseconds = sum(int(headers[f"x-{phase}-time"]) for phase in ("tokenization", "queue", "inference"))
        assert milliseconds <= int(headers["x-total-time"]) == int(headers["x-compute-time"]), headers
        assert headers["x-compute-type"] == ("cpu" if models[model].model.device.type == "cpu" else "gpu+optimized")
        assert len(headers) == 8, headers


# -- bad inputs, TEI's status codes --------------------------------------------------------------


def test_bad_inputs_get_teis_status_codes(stubs):
    pb, stub = stubs
    invalid, precondition = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
    embed, predict, rerank = stub["Embed"], stub["Predict"], stub["Rerank"]
    assert refused(lambda: embed.Embed(pb.EmbedRequest(inputs=""), metadata=on("minilm")), invalid) == \
        "Input validation error: `inputs` cannot be empty"
    refused(lambda: embed.Embed(pb.EmbedRequest(inputs=LONG), metadata=on("minilm")), invalid, "256")
    refused(lambda: embed.Embed(pb.EmbedRequest(inputs="x", dimensions=0), metadata=on("minilm")), invalid, "`dimensions` should be positive")
    refused(lambda: embed.Embed(pb.EmbedRequest(inputs="x", truncation_direction=7), metadata=on("minilm")), invalid, "truncation_direction")
    refused(lambda: embed.Embed(pb.EmbedRequest(inputs="x", prompt_name="nope"), metadata=on("minilm")), invalid)
    assert refused(lambda: rerank.Rerank(pb.RerankRequest(query=QUERY, texts=["d"] * 9), metadata=on("r1")), invalid) == \
        "batch size 9 > maximum allowed batch size 8"
    assert refused(lambda: rerank.Rerank(pb.RerankRequest(query=QUERY), metadata=on("r1")), invalid) == "`texts` cannot be empty"
    refused(lambda: rerank.RerankStream(iter([]), metadata=on("r1")), invalid, "`texts` cannot be empty")
    assert refused(lambda: predict.PredictPair(pb.PredictPairRequest(inputs=["a", "b", "c"]), metadata=on("c3")), invalid) == \
        "`inputs` must have a single or two elements. Given: 3"
    # a model of the wrong type: TEI's FailedPrecondition with its words
    assert refused(lambda: embed.Embed(pb.EmbedRequest(inputs="x"), metadata=on("c3")), precondition) == "Model is not an embedding model"
    refused(lambda: predict.Predict(pb.PredictRequest(inputs="x"), metadata=on("minilm")), precondition, "not a classifier model")
    refused(lambda: embed.EmbedSparse(pb.EmbedSparseRequest(inputs="x"), metadata=on("minilm")), precondition, "SPLADE")
    # a model the server does not serve
    refused(lambda: embed.Embed(pb.EmbedRequest(inputs="x"), metadata=on("gpt-5")), grpc.StatusCode.NOT_FOUND, "minilm")


def test_an_overloaded_server_is_resource_exhausted(served, stubs):
    pb, stub = stubs
    http = served[0]
    state = http.app.state.poolkit
    state.admission.in_flight += state.limits.max_concurrent_requests
    try:
        refused(lambda: stub["Embed"].Embed(pb.EmbedRequest(inputs="x"), metadata=on("minilm")), grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
    finally:
        state.admission.in_flight -= state.limits.max_concurrent_requests
    assert stub["Embed"].Embed(pb.EmbedRequest(inputs="x"), metadata=on("minilm")).embeddings


def test_the_calls_are_counted_in_metrics(http, stubs):
    pb, stub = stubs
    stub["Embed"].Embed(pb.EmbedRequest(inputs="counted"), metadata=on("minilm"))
    refused(lambda: stub["Embed"].Embed(pb.EmbedRequest(inputs=""), metadata=on("minilm")), grpc.StatusCode.INVALID_ARGUMENT)
    text = http.get("/metrics").text
    assert 'poolkit_requests_total{route="/tei.v1.Embed/Embed",status="OK"}' in text
    assert 'poolkit_requests_total{route="/tei.v1.Embed/Embed",status="INVALID_ARGUMENT"}' in text


# -- the API key, the health service -----------------------------------------------------------------


def test_the_api_key_is_the_http_key_as_metadata(models, tei):
    pb, services = tei
    app = create_app(models["minilm"], served_model_name="minilm", grpc_port=0, api_key="s3cret")
    with TestClient(app), grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}") as channel:
        embed = services.EmbedStub(channel)
        request = pb.EmbedRequest(inputs="x")
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", "s3cret")]):
            assert refused(lambda: embed.Embed(request, metadata=metadata), grpc.StatusCode.UNAUTHENTICATED) == "No valid auth token"
        refused(lambda: services.InfoStub(channel).Info(pb.InfoRequest()), grpc.StatusCode.UNAUTHENTICATED)
        refused(lambda: list(embed.EmbedStream(iter([request]))), grpc.StatusCode.UNAUTHENTICATED)
        assert embed.Embed(request, metadata=[("authorization", "Bearer s3cret")]).embeddings
        # the key comes before the model: nothing about the server answers a client without it
        refused(lambda: embed.Embed(request, metadata=on("gpt-5")), grpc.StatusCode.UNAUTHENTICATED)
        check = health.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))  # open, as TEI's
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_health_says_which_services_the_default_model_serves(served):
    stub = health.HealthStub(served[1])
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    expected = {"": serving, "tei.v1.Info": serving, "tei.v1.Tokenize": serving, "tei.v1.Embed": serving,
                "tei.v1.Predict": not_serving, "tei.v1.Rerank": serving}  # minilm: an embedding model, which ranks by cosine
    for service, status in expected.items():
        assert stub.Check(health_pb2.HealthCheckRequest(service=service)).status == status, service
    refused(lambda: stub.Check(health_pb2.HealthCheckRequest(service="tei.v1.Nope")), grpc.StatusCode.NOT_FOUND)
    watched = stub.Watch(health_pb2.HealthCheckRequest(service="tei.v1.Embed"))
    assert next(watched).status == serving
    watched.cancel()


def test_reflection_lists_teis_services(served):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(served[1])
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in answer.list_services_response.service}
    assert {"tei.v1.Info", "tei.v1.Embed", "tei.v1.Predict", "tei.v1.Rerank", "tei.v1.Tokenize", "grpc.health.v1.Health"} <= names


def test_a_model_still_loading_is_unavailable(minilm, tei):
    """The server starts before its model has loaded: calls are Unavailable and the model's
    services not serving until it has."""
    import threading

    pb, services = tei
    loaded = threading.Event()
    app = create_app(lambda: loaded.wait(120) and minilm, served_model_name="minilm", grpc_port=0)
    with TestClient(app), grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}") as channel:
        embed, checks = services.EmbedStub(channel), health.HealthStub(channel)
        refused(lambda: embed.Embed(pb.EmbedRequest(inputs="x")), grpc.StatusCode.UNAVAILABLE, "loading")
        status = checks.Check(health_pb2.HealthCheckRequest(service="tei.v1.Embed")).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        loaded.set()
        watched = checks.Watch(health_pb2.HealthCheckRequest(service="tei.v1.Embed"))
        statuses = [next(watched).status]
        if statuses[0] != health_pb2.HealthCheckResponse.SERVING:  # the change is sent when it happens
            statuses.append(next(watched).status)
        watched.cancel()
        assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING
        assert len(embed.Embed(pb.EmbedRequest(inputs="x")).embeddings) == 384


def test_every_error_has_teis_code():
    """What the routes' work raises, as TEI's gRPC server answers its error types."""
    from poolkit.contracts.errors import InvalidRequest
    from poolkit.entrypoints.grpc.service import grpc_status
    from poolkit.entrypoints.serving.errors import ApiError
    from poolkit.runtime.batching import QueueFull, ShuttingDown

    cases = [
        (ApiError(413, "Input validation error: `inputs` cannot be empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (ApiError(400, "`texts` cannot be empty", tei=(400, "Empty")), grpc.StatusCode.INVALID_ARGUMENT),
        (ApiError(424, "Model is not an embedding model", tei=(424, "Backend")), grpc.StatusCode.FAILED_PRECONDITION),
        (ApiError(400, "the request has about 400000 tokens (estimated)"), grpc.StatusCode.INVALID_ARGUMENT),
        (ApiError(404, "The model `x` does not exist."), grpc.StatusCode.NOT_FOUND),
        (ApiError(503, "the server is shutting down"), grpc.StatusCode.UNAVAILABLE),
        (InvalidRequest("a prompt of 300 tokens is longer than the model's 256"), grpc.StatusCode.INVALID_ARGUMENT),
        (QueueFull("the server is busy"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ShuttingDown("the server is shutting down"), grpc.StatusCode.UNAVAILABLE),
        (RuntimeError("/home/me/secret/path broke"), grpc.StatusCode.INTERNAL),
    ]
    for error, code in cases:
        got, message = grpc_status(error, [("/models/minilm", "minilm")])
        assert got == code, (error, got)
        assert "/home/me" not in message
    assert grpc_status(RuntimeError("x"), [])[1] == "internal server error"
    assert grpc_status(ApiError(400, "bad /models/minilm/config.json"), [("/models/minilm", "minilm")])[1] == "bad minilm/config.json"


def test_x_model_names_a_lora_adapter(tei, tmp_path):
    """A served LoRA adapter is a model name like another: its calls run with the adapter, as the
    HTTP routes' requests naming it."""
    peft = pytest.importorskip("peft")
    import torch
    import transformers as T
    from tiny_models import build_encoder

    from poolkit.lora.request import LoRARequest

    base = build_encoder(tmp_path / "bert", "bert")
    torch.manual_seed(1)
    adapter = peft.get_peft_model(T.AutoModel.from_pretrained(base), peft.LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, target_modules=["query", "value"]))
    adapter.save_pretrained(tmp_path / "legal")
    pb, services = tei
    llm = LLM(str(base), enable_lora=True, dtype="float32")
    app = create_app(llm, served_model_name="base", grpc_port=0, lora_modules=[LoRARequest("legal", 1, str(tmp_path / "legal"))])
    with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}") as channel:
        embed = services.EmbedStub(channel)
        got = {name: list(embed.Embed(pb.EmbedRequest(inputs=TEXTS[1]), metadata=on(name)).embeddings) for name in ("legal", "base")}
        for name, vector in got.items():
            assert [vector] == post(client, "/embed", name, {"inputs": TEXTS[1], "truncate": False})
        assert got["legal"] != got["base"]
