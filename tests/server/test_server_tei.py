"""Text Embeddings Inference's routes (``/embed``, ``/embed_all``, ``/embed_sparse``, ``/predict``,
``/rerank``, ``/similarity``, ``/tokenize``, ``/decode``, ``/info`` and the root ``POST /``): a real
``poolkit serve`` process driven by ``huggingface_hub.InferenceClient`` and httpx, in-process apps
on a tiny classifier, a tiny reranker and SPLADE-tiny, TEI's error shape, statuses and types
(``{"error", "error_type"}``), ``auto_truncate`` and ``default_prompt_name``. Every result is
compared with the offline ``LLM`` on the same model; the paths TEI shares with vLLM (``/rerank``,
``/tokenize``) still answer vLLM's bodies in vLLM's shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
hf_hub = pytest.importorskip("huggingface_hub")

from fastapi.testclient import TestClient  # noqa: E402
from huggingface_hub import InferenceClient  # noqa: E402
from huggingface_hub.errors import HfHubHTTPError  # noqa: E402
from test_server import start_server, stop_server  # noqa: E402

from poolkit import LLM, InvalidRequest, PoolingParams  # noqa: E402
from poolkit.contracts.io import Prompt  # noqa: E402
from poolkit.entrypoints.server import ServerLimits, create_app  # noqa: E402

ATOL = 1e-6
TEXTS = ["Hello, my name is", "The capital of France is Paris.", "A man is eating food.", "ünïcödé ✓ text"]
#: Over minilm's 256 tokens; the head and the tail differ, so the two truncation sides differ.
LONG = "the beginning of a long story. " + "lorem ipsum dolor " * 150 + "and its very different ending!"
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is in germany", "the sky is blue", "france"]
SPLADE = {"architectures": ["BertSpladeSparseEmbeddingModel"]}
INFO_KEYS = [
    "model_id", "model_sha", "model_dtype", "served_model_name", "model_type", "max_concurrent_requests",
    "max_input_length", "max_batch_tokens", "max_batch_requests", "max_client_batch_size", "auto_truncate",
    "tokenization_workers", "version", "sha", "docker_label",
]


def _close(got, expected, atol: float = ATOL) -> None:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    diff = float(np.abs(got - expected).max()) if got.size else 0.0
    assert diff <= atol, diff


def _vectors(outputs) -> np.ndarray:
    return np.stack([np.asarray(o.outputs.embedding, dtype=np.float64) for o in outputs])


def assert_tei_error(r, status: int, error_type: str, message: str | None = None, contains: str | None = None) -> str:
    """``r`` is TEI's error: ``status``, ``{"error": str, "error_type": error_type}`` and nothing else."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "error_type"} and isinstance(body["error"], str), body
    assert body["error_type"] == error_type, body
    if message is not None:
        assert body["error"] == message, body
    if contains is not None:
        assert contains in body["error"], body
    return body["error"]


def _ranked(scores: list[float], labels: dict[int, str]) -> list[tuple[str, float]]:
    """TEI's ``/predict`` order: every label, the highest score first."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [(labels[i], scores[i]) for i in order]


def _assert_predicted(got: list[dict], probs: list[float], labels: dict[int, str]) -> None:
    expected = _ranked(list(probs), labels)
    assert [x["label"] for x in got] == [label for label, _ in expected]
    _close([x["score"] for x in got], [score for _, score in expected])


# -- a real server process: huggingface_hub's InferenceClient and httpx ----------------------------


@pytest.fixture(scope="module")
def tei_server(minilm_dir, tmp_path_factory):
    srv = start_server(minilm_dir, tmp_path_factory.mktemp("tei") / "server.log", "--max-client-batch-size", "8")
    yield srv
    code = stop_server(srv)
    assert code == 0, srv.logs()


@pytest.fixture
def hf(tei_server, hub_online):
    return InferenceClient(model=tei_server.url, timeout=60)


def test_feature_extraction_equals_offline(hf, minilm):
    single = hf.feature_extraction("The capital of France is Paris.")
    assert single.shape == (1, 384)
    _close(single, _vectors(minilm.embed("The capital of France is Paris.")))
    batch = hf.feature_extraction(TEXTS)
    assert batch.shape == (len(TEXTS), 384)
    _close(batch, _vectors(minilm.embed(TEXTS)))
    _close(np.linalg.norm(batch, axis=1), np.ones(len(TEXTS)), atol=1e-5)


def test_feature_extraction_normalize_false_and_truncation(hf, minilm):
    raw = hf.feature_extraction(TEXTS, normalize=False)
    expected = _vectors(minilm.embed(TEXTS, PoolingParams(use_activation=False)))
    _close(raw, expected)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).min() > 1e-2  # really not normalised

    with pytest.raises(HfHubHTTPError) as err:
        hf.feature_extraction(LONG)
    assert err.value.response.status_code == 413
    assert err.value.response.json()["error_type"] == "Validation"
    assert "Input validation error: `inputs` must have less than 256 tokens. Given: " in str(err.value)

    left = hf.feature_extraction(LONG, truncate=True, truncation_direction="left")
    _close(left, _vectors(minilm.embed(LONG, PoolingParams(truncate_prompt_tokens=-1, truncation_side="left"))))
    right = hf.feature_extraction(LONG, truncate=True, truncation_direction="right")
    _close(right, _vectors(minilm.embed(LONG, PoolingParams(truncate_prompt_tokens=-1))))
    assert np.abs(left - right).max() > 1e-3  # the direction was honoured


def test_sentence_similarity_is_the_cosine_of_unnormalised_embeddings(hf, minilm):
    sentences = ["A man is eating a piece of bread.", "The sky is blue.", "Someone eats food."]
    got = hf.sentence_similarity("A man is eating food.", sentences)
    assert isinstance(got, list) and len(got) == len(sentences)
    vectors = torch.tensor(_vectors(minilm.embed(["A man is eating food.", *sentences], PoolingParams(use_activation=False))))
    expected = torch.nn.functional.cosine_similarity(vectors[:1].float(), vectors[1:].float(), dim=-1)
    _close(got, expected.double().numpy())
    assert got[0] > got[1] and got[2] > got[1]


def test_tei_routes_over_http(tei_server, minilm):
    url = tei_server.url
    ids = minilm.embed(TEXTS[1])[0].prompt_token_ids
    embed = httpx.post(f"{url}/embed", json={"inputs": TEXTS[:2]})
    assert embed.status_code == 200, embed.text
    _close(embed.json(), _vectors(minilm.embed(TEXTS[:2])))
    by_ids = httpx.post(f"{url}/embed", json={"inputs": ids}).json()  # one input as token ids
    _close(by_ids, _vectors(minilm.embed({"prompt_token_ids": ids})))

    tokens = httpx.post(f"{url}/embed_all", json={"inputs": TEXTS[1]}).json()
    expected = minilm.encode(TEXTS[1], PoolingParams(use_activation=False), pooling_task="token_embed")[0].outputs.data
    assert np.asarray(tokens).shape == (1, len(ids), 384)
    _close(tokens[0], expected.numpy())  # the hidden states as they are, as TEI's

    similarity = httpx.post(
        f"{url}/similarity", json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}, "parameters": None}
    ).json()
    vectors = torch.tensor(_vectors(minilm.embed(TEXTS, PoolingParams(use_activation=False)))).float()
    _close(similarity, torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:], dim=-1).numpy())

    tokenized = httpx.post(f"{url}/tokenize", json={"inputs": [TEXTS[1], "ok"]}).json()
    assert [[t["id"] for t in row] for row in tokenized] == [ids, minilm.embed("ok")[0].prompt_token_ids]
    decoded = httpx.post(f"{url}/decode", json={"ids": [ids, ids[1:3]]}).json()
    tok = minilm.get_tokenizer()
    assert decoded == [tok.decode(ids, skip_special_tokens=True), tok.decode(ids[1:3], skip_special_tokens=True)]
    assert decoded[0] == "the capital of france is paris."
    assert httpx.post(f"{url}/decode", json={"ids": ids, "skip_special_tokens": False}).json() == [tok.decode(ids)]

    info = httpx.get(f"{url}/info").json()
    assert list(info) == INFO_KEYS
    assert info["model_id"] == info["served_model_name"] == "minilm"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256 and info["max_client_batch_size"] == 8 and info["auto_truncate"] is False
    assert info["model_dtype"] == "float32"
    too_many = httpx.post(f"{url}/embed", json={"inputs": ["x"] * 9})
    assert_tei_error(too_many, 413, "Validation", "batch size 9 > maximum allowed batch size 8")


# -- a tiny classifier and a tiny reranker ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from tiny_models import build_classifier

    root = tmp_path_factory.mktemp("tei-tiny")
    return {"classifier": build_classifier(root / "c3", "bert", 3), "reranker": build_classifier(root / "r1", "bert", 1)}


@pytest.fixture(scope="module")
def classifier(tiny_dirs):
    return LLM(str(tiny_dirs["classifier"]))


@pytest.fixture(scope="module")
def reranker(tiny_dirs):
    return LLM(str(tiny_dirs["reranker"]))


@pytest.fixture(scope="module")
def cls_client(classifier):
    with TestClient(create_app(classifier, served_model_name="c3")) as c:
        yield c


@pytest.fixture(scope="module")
def rr_client(reranker):
    with TestClient(create_app(reranker, served_model_name="r1")) as c:
        yield c


@pytest.fixture(scope="module")
def app_client(minilm):
    with TestClient(create_app(minilm, served_model_name="minilm")) as c:
        yield c


def test_text_classification_through_inference_client(tiny_dirs, classifier, tmp_path, hub_online):
    srv = start_server(tiny_dirs["classifier"], tmp_path / "classifier.log")
    try:
        top = InferenceClient(model=srv.url, timeout=60).text_classification("I like you")
        probs = classifier.classify("I like you")[0].outputs.probs
        best = int(np.argmax(probs))
        assert not isinstance(top, list)  # TEI's flat list for one input: the client keeps its first element
        assert top.label == f"class_{best}"
        _close(top.score, probs[best])
    finally:
        code = stop_server(srv)
    assert code == 0, srv.logs()


def test_predict_single_pair_and_batch_equal_classify(cls_client, classifier):
    labels = classifier.model.id2label
    single = cls_client.post("/predict", json={"inputs": "I like you"})
    assert single.status_code == 200, single.text
    _assert_predicted(single.json(), classifier.classify("I like you")[0].outputs.probs, labels)
    assert cls_client.post("/predict", json={"inputs": ["I like you"]}).json() == single.json()

    pair_probs = classifier.classify(Prompt(text="I like you", text_pair="me too"))[0].outputs.probs
    assert abs(pair_probs[0] - classifier.classify("I like you")[0].outputs.probs[0]) > 1e-4  # a pair is not its first text
    _assert_predicted(cls_client.post("/predict", json={"inputs": ["I like you", "me too"]}).json(), pair_probs, labels)

    batch = cls_client.post("/predict", json={"inputs": [["I like you"], ["I like you", "me too"]]}).json()
    assert len(batch) == 2 and all(len(row) == 3 for row in batch)
    expected = classifier.classify(["I like you", Prompt(text="I like you", text_pair="me too")])
    for row, e in zip(batch, expected):
        _assert_predicted(row, e.outputs.probs, labels)

    raw = cls_client.post("/predict", json={"inputs": "I like you", "raw_scores": True}).json()
    logits = classifier.classify("I like you", PoolingParams(use_activation=False))[0].outputs.probs
    _assert_predicted(raw, logits, labels)
    assert max(x["score"] for x in raw) > 1  # logits, not probabilities


def test_rerank_with_a_tei_body_equals_score(rr_client, reranker):
    expected = [o.outputs.score for o in reranker.score(QUERY, DOCS)]
    order = sorted(range(len(DOCS)), key=lambda i: -expected[i])
    r = rr_client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()] == order
    assert all(list(x) == ["index", "score"] for x in r.json())  # no "text" unless asked
    _close([x["score"] for x in r.json()], [expected[i] for i in order])

    with_text = rr_client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}).json()
    assert [list(x) for x in with_text] == [["index", "text", "score"]] * len(DOCS)
    assert [x["text"] for x in with_text] == [DOCS[i] for i in order]

    raw = rr_client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    logits = [o.outputs.score for o in reranker.score(QUERY, DOCS, PoolingParams(use_activation=False))]
    raw_order = sorted(range(len(DOCS)), key=lambda i: -logits[i])
    assert [x["index"] for x in raw] == raw_order
    _close([x["score"] for x in raw], [logits[i] for i in raw_order])


def test_rerank_with_a_vllm_body_is_still_vllms(rr_client, reranker):
    expected = reranker.rerank(QUERY, DOCS)
    r = rr_client.post("/rerank", json={"query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "r1" and body["usage"]["prompt_tokens"] > 0
    assert [x["index"] for x in body["results"]] == [e.index for e in expected]
    assert [x["document"]["text"] for x in body["results"]] == [e.document for e in expected]
    _close([x["relevance_score"] for x in body["results"]], [e.relevance_score for e in expected])
    # a vLLM body that fails vLLM's schema keeps vLLM's error shape
    bad = rr_client.post("/rerank", json={"query": QUERY, "documents": 5})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}


def test_tokenize_vllm_and_tei_bodies(app_client, minilm):
    text = "héllo wörld ✓"
    ids = minilm.embed(text)[0].prompt_token_ids
    vllm = app_client.post("/tokenize", json={"prompt": text})
    assert vllm.status_code == 200, vllm.text
    assert vllm.json()["tokens"] == ids and vllm.json()["count"] == len(ids)

    tei = app_client.post("/tokenize", json={"inputs": text})
    assert tei.status_code == 200, tei.text
    (tokens,) = tei.json()
    assert [t["id"] for t in tokens] == ids
    assert all(list(t) == ["id", "text", "special", "start", "stop"] for t in tokens)
    assert tokens[0] == {"id": ids[0], "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert tokens[-1] == {"id": ids[-1], "text": "[SEP]", "special": True, "start": None, "stop": None}
    raw = text.encode()
    for t in tokens[1:-1]:  # UTF-8 byte offsets into the text, and the text they cover
        assert t["special"] is False and raw[t["start"] : t["stop"]].decode() == t["text"]
    assert [(t["text"], t["start"], t["stop"]) for t in tokens[1:3]] == [("héllo", 0, 6), ("wörld", 7, 13)]

    bare = app_client.post("/tokenize", json={"inputs": [text, "ok"], "add_special_tokens": False}).json()
    assert [[t["id"] for t in row] for row in bare] == [ids[1:-1], minilm.embed("ok")[0].prompt_token_ids[1:-1]]
    assert not any(t["special"] for row in bare for t in row)


# -- SPLADE ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splade(splade_dir):
    return LLM(str(splade_dir), hf_overrides=SPLADE)


@pytest.fixture(scope="module")
def splade_client(splade):
    with TestClient(create_app(splade, served_model_name="splade")) as c:
        yield c


def _sparse(llm, texts) -> list[list[dict]]:
    """TEI's ``/embed_sparse`` of the offline dense vocabulary vectors: the non-zero entries, by index."""
    out = []
    for o in llm.encode(texts, pooling_task="sparse_embed"):
        row = o.outputs.data
        index = row.nonzero().flatten()
        out.append([{"index": i, "value": v} for i, v in zip(index.tolist(), row[index].double().tolist())])
    return out


def _assert_sparse(got: list[list[dict]], expected: list[list[dict]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert [x["index"] for x in g] == [x["index"] for x in e]
        assert [x["index"] for x in g] == sorted({x["index"] for x in g}) and 0 < len(g) < 1000
        _close([x["value"] for x in g], [x["value"] for x in e])


def test_embed_sparse_equals_the_offline_sparse_vectors(splade_client, splade):
    r = splade_client.post("/embed_sparse", json={"inputs": TEXTS[:2]})
    assert r.status_code == 200, r.text
    _assert_sparse(r.json(), _sparse(splade, TEXTS[:2]))
    single = splade_client.post("/embed_sparse", json={"inputs": TEXTS[1]}).json()
    _assert_sparse(single, _sparse(splade, [TEXTS[1]]))


def test_the_root_route_of_a_splade_model_embeds_sparsely(splade_client, splade):
    # TEI: the root route of a model with SPLADE pooling is /embed_sparse.
    r = splade_client.post("/", json={"inputs": TEXTS[1]})
    assert r.status_code == 200, r.text
    body = r.json()
    shape = "sparse" if isinstance(body[0][0], dict) else f"a dense vector of {len(body[0])} values"
    assert shape == "sparse"
    _assert_sparse(body, _sparse(splade, [TEXTS[1]]))


def test_info_of_a_splade_model_says_splade(splade_client):
    assert splade_client.get("/info").json()["model_type"] == {"embedding": {"pooling": "splade"}}


def test_routes_of_another_model_type_are_424(app_client, cls_client, splade_client):
    assert_tei_error(app_client.post("/predict", json={"inputs": "x"}), 424, "Backend", "Model is not a classifier model")
    assert_tei_error(
        app_client.post("/embed_sparse", json={"inputs": "x"}), 424, "Backend", "Model is not an embedding model with SPLADE pooling"
    )
    assert_tei_error(cls_client.post("/embed", json={"inputs": "x"}), 424, "Backend", "Model is not an embedding model")
    assert_tei_error(cls_client.post("/embed_all", json={"inputs": "x"}), 424, "Backend", "Model is not an embedding model")
    assert_tei_error(
        cls_client.post("/similarity", json={"inputs": {"source_sentence": "x", "sentences": ["y"]}}),
        424, "Backend", "Model is not an embedding model",
    )
    assert_tei_error(
        cls_client.post("/rerank", json={"query": "q", "texts": ["a"]}), 424, "Backend", "model is not a re-ranker model"
    )
    assert_tei_error(splade_client.post("/predict", json={"inputs": "x"}), 424, "Backend", "Model is not a classifier model")


def test_root_route_of_a_classifier_predicts(cls_client, classifier):
    r = cls_client.post("/", json={"inputs": "I like you", "parameters": {}})
    assert r.status_code == 200, r.text
    _assert_predicted(r.json(), classifier.classify("I like you")[0].outputs.probs, classifier.model.id2label)


# -- errors: TEI's shape, statuses and types -------------------------------------------------------


def test_tei_errors_have_teis_types_and_statuses(app_client):
    post = app_client.post
    # an empty input is TEI's tokenizer's 413 Validation, an empty list a route checks itself a 400 Empty
    # (tests/server/test_tei_spec.py has the rest)
    empty = "Input validation error: `inputs` cannot be empty"
    assert_tei_error(post("/embed", json={"inputs": []}), 413, "Validation", empty)
    assert_tei_error(post("/embed", json={"inputs": ["a", ""]}), 413, "Validation", empty)
    assert_tei_error(post("/embed_all", json={"inputs": ""}), 413, "Validation", empty)
    assert_tei_error(post("/rerank", json={"query": "q", "texts": []}), 400, "Empty", "`texts` cannot be empty")
    assert_tei_error(
        post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": []}}),
        400, "Empty", "`inputs.sentences` cannot be empty",
    )
    assert_tei_error(post("/tokenize", json={"inputs": []}), 400, "Empty", "`inputs` cannot be empty")
    assert_tei_error(post("/decode", json={"ids": []}), 413, "Validation", "Input validation error: `input_ids` cannot be empty")

    for body in ({"nope": 1}, {"inputs": 5}, {"inputs": "x", "normalize": None}):
        assert_tei_error(post("/embed", json=body), 422, "Validation")
    bad_side = post("/embed", json={"inputs": "x", "truncation_direction": "up"})
    assert_tei_error(bad_side, 422, "Validation", contains="truncation_direction")
    assert_tei_error(post("/similarity", json={"inputs": ["a", "b"]}), 422, "Validation")
    assert_tei_error(post("/", json={"inputs": {"sentences": ["a"]}}), 422, "Validation")

    assert_tei_error(post("/embed", json={"inputs": "x", "prompt_name": "nope"}), 413, "Validation", contains="'nope'")
    assert_tei_error(post("/tokenize", json={"inputs": "x", "prompt_name": "nope"}), 413, "Validation", contains="'nope'")
    assert_tei_error(post("/embed", json={"inputs": LONG}), 413, "Validation", contains="`inputs` must have less than 256 tokens. Given: ")
    assert_tei_error(post("/embed", json={"inputs": LONG, "truncate": False}), 413, "Validation")
    assert_tei_error(post("/embed", json={"inputs": [1, 10**6]}), 413, "Validation", contains="out of vocabulary")
    no_dimensions = post("/embed", json={"inputs": "x", "dimensions": 0})
    assert_tei_error(no_dimensions, 413, "Validation", "Input validation error: `dimensions` should be positive")

    wrong_type = post("/embed", content=b"inputs=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert_tei_error(wrong_type, 415, "Validation", contains="application/json")
    broken = post("/embed", content=b"{", headers={"content-type": "application/json"})
    assert_tei_error(broken, 422, "Validation", contains="invalid JSON")
    # TEI's routes on shared paths are reached only through those paths
    assert post("/tei/rerank", json={"query": "q", "texts": ["a"]}).status_code == 404
    assert post("/tei/tokenize", json={"inputs": "a"}).status_code == 404
    assert post("/embed", json={"inputs": "fine"}).status_code == 200  # and the app goes on


def test_invalid_json_on_the_root_route_is_a_tei_error(app_client):
    r = app_client.post("/", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), (r.status_code, r.text)
    assert set(r.json()) == {"error", "error_type"}, r.text


def test_predict_with_an_empty_list_is_a_422(cls_client):
    # TEI (spec E): `[]` is an inner list of invalid length 0, a body that does not deserialise.
    assert_tei_error(cls_client.post("/predict", json={"inputs": []}), 422, "Validation", contains="invalid length 0")


def test_predict_refuses_a_list_of_three_texts(cls_client):
    assert_tei_error(cls_client.post("/predict", json={"inputs": ["a", "b", "c"]}), 422, "Validation", contains="invalid length 3")


def test_the_batch_limit_is_teis_max_client_batch_size(minilm):
    with TestClient(create_app(minilm, served_model_name="m", limits=ServerLimits(max_inputs_per_request=2))) as c:
        message = "batch size 3 > maximum allowed batch size 2"
        assert_tei_error(c.post("/embed", json={"inputs": ["a", "b", "c"]}), 413, "Validation", message)
        assert_tei_error(c.post("/embed_all", json={"inputs": ["a", "b", "c"]}), 413, "Validation", message)
        assert_tei_error(c.post("/tokenize", json={"inputs": ["a", "b", "c"]}), 413, "Validation", message)
        assert_tei_error(c.post("/decode", json={"ids": [[101], [102], [103]]}), 413, "Validation", message)
        assert_tei_error(
            c.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}}), 413, "Validation", message
        )
        assert c.post("/embed", json={"inputs": ["a", "b"]}).status_code == 200
        ids = minilm.embed("a b c")[0].prompt_token_ids  # one input of 5 token ids is not a batch
        assert c.post("/embed", json={"inputs": ids}).status_code == 200
        assert c.get("/info").json()["max_client_batch_size"] == 2


def test_auto_truncate(minilm):
    with TestClient(create_app(minilm, served_model_name="m", auto_truncate=True)) as c:
        assert c.get("/info").json()["auto_truncate"] is True
        r = c.post("/embed", json={"inputs": LONG})
        assert r.status_code == 200, r.text
        _close(r.json(), _vectors(minilm.embed(LONG, PoolingParams(truncate_prompt_tokens=-1))))
        left = c.post("/embed", json={"inputs": LONG, "truncation_direction": "Left"}).json()
        _close(left, _vectors(minilm.embed(LONG, PoolingParams(truncate_prompt_tokens=-1, truncation_side="left"))))
        assert_tei_error(c.post("/embed", json={"inputs": LONG, "truncate": False}), 413, "Validation")


def test_the_api_key_and_content_type_errors_are_teis(minilm):
    with TestClient(create_app(minilm, served_model_name="m", api_key="secret")) as c:
        missing = c.post("/embed", json={"inputs": "x"})
        assert_tei_error(missing, 401, "Validation", contains="Bearer")  # tei_status: a 4xx TEI has no type for
        assert missing.headers["www-authenticate"] == "Bearer"
        assert c.get("/info").status_code == 401 and set(c.get("/info").json()) == {"error", "error_type"}
        # vLLM's routes keep vLLM's shape
        assert set(c.post("/v1/embeddings", json={"input": "x"}).json()["error"]) == {"message", "type", "param", "code"}
        auth = {"authorization": "Bearer secret"}
        assert c.post("/embed", json={"inputs": "x"}, headers=auth).status_code == 200
        assert c.get("/info", headers=auth).json()["model_id"] == "m"
        plain = c.post("/embed", content=b'{"inputs": "x"}', headers={**auth, "content-type": "text/plain"})
        assert_tei_error(plain, 415, "Validation")


# -- default_prompt_name ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompted(minilm_dir, tmp_path_factory):
    model = tmp_path_factory.mktemp("prompted") / "model"
    model.mkdir()
    for f in minilm_dir.iterdir():
        if f.name != "config_sentence_transformers.json":
            (model / f.name).symlink_to(f)
    (model / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}}))
    return LLM(str(model), allow_external_symlinks=True)  # the packaged model's files, linked


def test_default_prompt_name(prompted):
    with TestClient(create_app(prompted, served_model_name="p", default_prompt_name="query")) as c:
        r = c.post("/embed", json={"inputs": TEXTS[:2]})
        assert r.status_code == 200, r.text
        _close(r.json(), _vectors(prompted.embed(TEXTS[:2], prompt_name="query")))
        assert np.abs(np.asarray(r.json()) - _vectors(prompted.embed(TEXTS[:2]))).max() > 1e-3  # the prompt was used
        named = c.post("/embed", json={"inputs": TEXTS[:2], "prompt_name": "passage"}).json()  # a request's name wins
        _close(named, _vectors(prompted.embed(TEXTS[:2], prompt_name="passage")))
        (tokens,) = c.post("/tokenize", json={"inputs": "paris"}).json()  # offsets into the prompted text
        assert [t["id"] for t in tokens] == prompted.embed("paris", prompt_name="query")[0].prompt_token_ids
        assert [(t["text"], t["start"], t["stop"]) for t in tokens[1:-1]] == [("query", 0, 5), (":", 5, 6), ("paris", 7, 12)]
    with pytest.raises(InvalidRequest) as err:
        create_app(prompted, served_model_name="p", default_prompt_name="nope")
    message = str(err.value)
    assert "'nope'" in message and ("passage, query" in message or "query, passage" in message), message


# -- /info -----------------------------------------------------------------------------------------


def test_info_describes_each_model_type(app_client, cls_client, rr_client):
    info = app_client.get("/info").json()
    assert list(info) == INFO_KEYS
    assert info["model_id"] == "minilm" and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256 and info["max_client_batch_size"] == ServerLimits().max_inputs_per_request
    labels = {"0": "class_0", "1": "class_1", "2": "class_2"}
    assert cls_client.get("/info").json()["model_type"] == {
        "classifier": {"id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}}
    }
    assert cls_client.get("/info").json()["max_input_length"] == 128
    assert rr_client.get("/info").json()["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    assert rr_client.get("/info").json()["model_id"] == "r1"
