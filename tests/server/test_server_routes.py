"""The in-process app's routes against the offline Python API: the wire formats (base64, bytes,
Cohere bit packing), rerank and score on a tiny cross-encoder, and several tasks from one server."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # fastapi.testclient runs on it

from fastapi.testclient import TestClient  # noqa: E402
from offline_parity import ATOL, TEXTS, _close  # noqa: E402

from poolkit import LLM, PoolingParams  # noqa: E402
from poolkit.entrypoints.server import create_app  # noqa: E402

MATRYOSHKA = {"is_matryoshka": True}


# -- in-process apps -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_client(minilm):
    with TestClient(create_app(minilm, served_model_name="minilm")) as c:
        yield c


@pytest.fixture(scope="module")
def matryoshka(minilm_dir):
    return LLM(str(minilm_dir), hf_overrides=MATRYOSHKA)


@pytest.fixture(scope="module")
def matryoshka_client(matryoshka):
    with TestClient(create_app(matryoshka, served_model_name="m")) as c:
        yield c


def test_dimensions_on_a_matryoshka_model(matryoshka_client, matryoshka):
    expected = matryoshka.embed(TEXTS, PoolingParams(dimensions=64))
    r = matryoshka_client.post("/v1/embeddings", json={"model": "m", "input": TEXTS, "dimensions": 64})
    assert r.status_code == 200, r.text
    for d, e in zip(r.json()["data"], expected):
        assert len(d["embedding"]) == 64
        _close(d["embedding"], e.outputs.embedding)
        assert abs(float(np.linalg.norm(d["embedding"])) - 1) < 1e-5


@pytest.mark.parametrize(
    "dtype, endianness, np_dtype",
    [
        ("float32", "little", "<f4"),
        ("float32", "big", ">f4"),
        ("float16", "native", "=f2"),
        ("float16", "big", ">f2"),
    ],
)
def test_base64_embed_dtype_and_endianness(app_client, minilm, dtype, endianness, np_dtype):
    expected = torch.tensor(minilm.embed(TEXTS[1])[0].outputs.embedding)
    r = app_client.post(
        "/v1/embeddings",
        json={"input": TEXTS[1], "encoding_format": "base64", "embed_dtype": dtype, "endianness": endianness},
    )
    assert r.status_code == 200, r.text
    got = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype=np_dtype).astype(np.float32)
    assert np.array_equal(got, expected.to(getattr(torch, dtype)).float().numpy())


def test_base64_bfloat16(app_client, minilm):
    expected = torch.tensor(minilm.embed(TEXTS[0])[0].outputs.embedding).to(torch.bfloat16)
    r = app_client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64", "embed_dtype": "bfloat16"})
    words = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="=i2").copy()
    assert torch.equal(torch.from_numpy(words).view(torch.bfloat16), expected)


def test_bytes_encoding_with_metadata_header(app_client, minilm):
    expected = minilm.embed(TEXTS)
    r = app_client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "bytes"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    meta = json.loads(r.headers["metadata"])
    assert meta["model"] == "minilm" and meta["usage"]["prompt_tokens"] == sum(len(e.prompt_token_ids) for e in expected)
    for item, e in zip(meta["data"], expected):
        vector = np.frombuffer(r.content[item["start"] : item["end"]], dtype=np.float32)
        assert item["shape"] == [384]
        assert np.array_equal(vector, np.asarray(e.outputs.embedding, dtype=np.float32))
    only = app_client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "bytes_only"})
    assert "metadata" not in only.headers and only.content == r.content


# -- Cohere /v2/embed ------------------------------------------------------------------------------


def _reference_bits(vector: list[float], signed: bool) -> list[int]:
    """Inventory §6.3: bit = 1 if v >= 0, MSB first (bit << (7 - idx % 8)), 8 dims a byte; binary = byte - 128."""
    out = []
    for start in range(0, len(vector), 8):
        byte = 0
        for idx in range(start, start + 8):
            byte |= (1 if vector[idx] >= 0 else 0) << (7 - idx % 8)
        out.append(byte - 128 if signed else byte)
    return out


def test_cohere_embed_all_types_equal_a_reference(app_client, minilm):
    expected = [e.outputs.embedding for e in minilm.embed(TEXTS)]
    r = app_client.post(
        "/v2/embed",
        json={"model": "minilm", "texts": TEXTS, "embedding_types": ["float", "binary", "ubinary", "base64"]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["response_type"] == "embeddings_by_type" and body["texts"] == TEXTS
    assert body["meta"]["api_version"] == {"version": "2"}
    assert body["meta"]["billed_units"]["input_tokens"] == sum(len(e.prompt_token_ids) for e in minilm.embed(TEXTS))
    emb = body["embeddings"]
    for i, vector in enumerate(expected):
        _close(emb["float"][i], vector)
        assert emb["ubinary"][i] == _reference_bits(vector, signed=False)
        assert emb["binary"][i] == _reference_bits(vector, signed=True)
        assert len(emb["binary"][i]) == 384 // 8 and all(-128 <= b <= 127 for b in emb["binary"][i])
        assert base64.b64decode(emb["base64"][i]) == struct.pack(f"<{len(vector)}f", *vector)


def test_cohere_bit_order_on_a_known_vector():
    from poolkit.entrypoints.encodings import binary, ubinary

    vector = torch.tensor([1.0, -1, -1, -1, -1, -1, -1, 0.0] + [-0.5] * 7 + [2.0])
    assert ubinary(vector) == [0b10000001, 0b00000001]
    assert binary(vector) == [0b10000001 - 128, 1 - 128]


def test_cohere_truncation_and_input_type(app_client, minilm):
    long = "word " * 600
    default = minilm.embed(long, PoolingParams(truncate_prompt_tokens=-1))[0].outputs.embedding
    end = app_client.post("/v2/embed", json={"texts": [long], "truncate": "END"}).json()
    _close(end["embeddings"]["float"][0], default)
    start = app_client.post("/v2/embed", json={"texts": [long + "tail"], "truncate": "START"}).json()
    left = minilm.embed(long + "tail", PoolingParams(truncate_prompt_tokens=-1, truncation_side="left"))[0]
    _close(start["embeddings"]["float"][0], left.outputs.embedding)
    none = app_client.post("/v2/embed", json={"texts": [long], "truncate": "NONE"})
    assert none.status_code == 400 and "maximum context length is 256 tokens" in none.json()["error"]["message"]
    capped = app_client.post("/v2/embed", json={"texts": ["a b c d e f"], "truncate": "NONE", "max_tokens": 3})
    assert capped.status_code == 400 and "exceeds max_tokens=3 with truncate=NONE" in capped.json()["error"]["message"]
    bad = app_client.post("/v2/embed", json={"texts": ["x"], "input_type": "search_query"})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == (
        "Unsupported input_type 'search_query'. This model does not define any input_type task instructions."
    )


def test_cohere_input_type_uses_the_models_prompts(minilm_dir, tmp_path):
    model = tmp_path / "prompted"
    model.mkdir()
    for f in minilm_dir.iterdir():
        (model / f.name).symlink_to(f)
    (model / "config_sentence_transformers.json").unlink()
    (model / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: ", "document": ""}}))
    llm = LLM(str(model), allow_external_symlinks=True)  # the packaged model's files, linked
    with TestClient(create_app(llm, served_model_name="p")) as c:
        r = c.post("/v2/embed", json={"texts": TEXTS, "input_type": "query"})
        assert r.status_code == 200, r.text
        for got, e in zip(r.json()["embeddings"]["float"], llm.embed(TEXTS, prompt_name="query")):
            _close(got, e.outputs.embedding)
        wrong = c.post("/v2/embed", json={"texts": TEXTS, "input_type": "search"})
        assert wrong.json()["error"]["message"] == "Unsupported input_type 'search'. Supported values: document, query"


def test_cohere_binary_needs_a_multiple_of_8(matryoshka_client):
    r = matryoshka_client.post("/v2/embed", json={"texts": ["x"], "output_dimension": 12, "embedding_types": ["binary"]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "Embedding dimension must be a multiple of 8 for binary embedding types, but got 12."
    )
    ok = matryoshka_client.post("/v2/embed", json={"texts": ["x"], "output_dimension": 16, "embedding_types": ["ubinary"]})
    assert ok.status_code == 200 and len(ok.json()["embeddings"]["ubinary"][0]) == 2


def test_cohere_images_on_clip(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    from tiny_models import build_clip

    llm = LLM(str(build_clip(tmp_path / "clip")))
    buf = __import__("io").BytesIO()
    pil.new("RGB", (40, 30), (200, 30, 90)).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    expected = llm.embed([{"prompt": "", "multi_modal_data": {"image": buf.getvalue()}}])[0].outputs.embedding
    with TestClient(create_app(llm, served_model_name="clip")) as c:
        r = c.post("/v2/embed", json={"images": [uri]})
        assert r.status_code == 200, r.text
        _close(r.json()["embeddings"]["float"][0], expected)
        assert r.json()["meta"]["billed_units"]["image_tokens"] >= 1
        mixed = c.post(
            "/v2/embed",
            json={"inputs": [{"content": [{"type": "image_url", "image_url": {"url": uri}}]}, {"content": [{"type": "text", "text": "a red square"}]}]},
        )
        assert mixed.status_code == 200, mixed.text
        _close(mixed.json()["embeddings"]["float"][0], expected)
        _close(mixed.json()["embeddings"]["float"][1], llm.embed("a red square")[0].outputs.embedding)
        for image in ("/etc/passwd", "file:///etc/passwd", "http://169.254.169.254/x.png"):
            refused = c.post("/v2/embed", json={"images": [image]})
            assert refused.status_code == 400 and "data:" in refused.json()["error"]["message"]
        broken = c.post("/v2/embed", json={"images": ["data:image/png;base64,@@@"]})
        assert broken.status_code == 400 and "base64" in broken.json()["error"]["message"]


# -- rerank and score on a tiny cross-encoder ------------------------------------------------------

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is in germany", "the sky is blue", "france", "capital city"]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    from tiny_models import build_classifier

    return LLM(str(build_classifier(tmp_path_factory.mktemp("ce") / "ce", "bert", 1)))


@pytest.fixture(scope="module")
def ce_client(cross_encoder):
    with TestClient(create_app(cross_encoder, served_model_name="ce")) as c:
        yield c


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_equals_llm_rerank(ce_client, cross_encoder, route):
    assert cross_encoder.score_type == "cross-encoder"
    expected = cross_encoder.rerank(QUERY, DOCS)
    r = ce_client.post(route, json={"model": "ce", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [e.index for e in expected]
    assert [x["document"]["text"] for x in results] == [e.document for e in expected]
    for x, e in zip(results, expected):
        assert abs(x["relevance_score"] - e.relevance_score) <= ATOL
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert r.json()["usage"]["prompt_tokens"] > 0


def test_rerank_top_n_documents_as_objects_and_no_documents(ce_client, cross_encoder):
    expected = cross_encoder.rerank(QUERY, DOCS, top_n=2)
    r = ce_client.post(
        "/v2/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCS], "top_n": 2, "return_documents": False}
    )
    results = r.json()["results"]
    assert [x["index"] for x in results] == [e.index for e in expected] and "document" not in results[0]
    everything = ce_client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 50}).json()["results"]
    assert len(everything) == len(DOCS)


@pytest.mark.parametrize("route", ["/score", "/v1/score"])
def test_score_1_to_n_and_n_to_n_equal_llm_score(ce_client, cross_encoder, route):
    one_to_n = ce_client.post(route, json={"text_1": QUERY, "text_2": DOCS}).json()
    for item, e in zip(one_to_n["data"], cross_encoder.score(QUERY, DOCS)):
        assert item["object"] == "score" and abs(item["score"] - e.outputs.score) <= ATOL
    firsts = [QUERY, "germany", "colour of the sky"]
    n_to_n = ce_client.post(route, json={"text_1": firsts, "text_2": DOCS[:3]}).json()
    expected = cross_encoder.score(firsts, DOCS[:3])
    assert [d["index"] for d in n_to_n["data"]] == [0, 1, 2]
    for item, e in zip(n_to_n["data"], expected):
        assert abs(item["score"] - e.outputs.score) <= ATOL
    # the same pairs in the same batch as text_1/text_2's: equal to the bit (across other batches
    # only within the batch-invariance bound, as a classifier head's matmul sums rows by their count)
    aliases = ce_client.post(route, json={"queries": QUERY, "documents": DOCS}).json()
    assert [d["score"] for d in aliases["data"]] == [d["score"] for d in one_to_n["data"]]
    raw = ce_client.post(route, json={"text_1": QUERY, "text_2": DOCS[0], "use_activation": False}).json()
    logit = cross_encoder.score(QUERY, DOCS[0], PoolingParams(use_activation=False))[0].outputs.score
    assert abs(raw["data"][0]["score"] - logit) <= ATOL


def test_score_and_rerank_with_an_embedding_model_use_cosine(app_client, minilm):
    r = app_client.post("/score", json={"text_1": TEXTS[0], "text_2": TEXTS[1:]}).json()
    for item, e in zip(r["data"], minilm.score(TEXTS[0], TEXTS[1:])):
        assert abs(item["score"] - e.outputs.score) <= ATOL
    ranked = app_client.post("/rerank", json={"query": TEXTS[0], "documents": TEXTS[1:]}).json()["results"]
    assert [x["index"] for x in ranked] == [e.index for e in minilm.rerank(TEXTS[0], TEXTS[1:])]


# -- several tasks from one server -----------------------------------------------------------------


def test_classify_on_a_three_label_classifier(tmp_path):
    from tiny_models import build_classifier

    llm = LLM(str(build_classifier(tmp_path / "c3", "bert", 3)))
    expected = llm.classify(TEXTS)
    with TestClient(create_app(llm, served_model_name="c3")) as c:
        r = c.post("/classify", json={"input": TEXTS})
        assert r.status_code == 200, r.text
        for item, e in zip(r.json()["data"], expected):
            _close(item["probs"], e.outputs.probs)
            assert item["label"] == e.outputs.label and item["num_classes"] == 3
        pooled = c.post("/pooling", json={"input": TEXTS[0], "task": "classify", "use_activation": False}).json()
        logits = llm.classify(TEXTS[0], PoolingParams(use_activation=False))[0].outputs.probs
        _close(pooled["data"][0]["data"], logits)


def test_one_server_serves_every_task_of_its_model(app_client, minilm):
    embed = app_client.post("/pooling", json={"input": TEXTS[:2], "task": "embed"}).json()
    for item, e in zip(embed["data"], minilm.embed(TEXTS[:2])):
        _close(item["data"], e.outputs.embedding)
    tokens = app_client.post("/pooling", json={"input": TEXTS[:2], "task": "token_embed"}).json()
    expected = minilm.encode(TEXTS[:2], pooling_task="token_embed")
    for item, e in zip(tokens["data"], expected):
        assert len(item["data"]) == len(e.prompt_token_ids)
        _close(item["data"], e.outputs.data.tolist())
    packed = app_client.post("/pooling", json={"input": TEXTS[0], "task": "token_embed", "encoding_format": "base64"}).json()
    item = packed["data"][0]
    matrix = np.frombuffer(base64.b64decode(item["data"]), dtype=np.float32).reshape(item["shape"])
    single = minilm.encode(TEXTS[0], pooling_task="token_embed")[0].outputs.data.numpy()
    assert np.array_equal(matrix, single)  # the same batch (one input): bitwise
    default = app_client.post("/pooling", json={"input": TEXTS[0]}).json()  # the default task is embed
    _close(default["data"][0]["data"], minilm.embed(TEXTS[0])[0].outputs.embedding)
    unsupported = app_client.post("/pooling", json={"input": "x", "task": "classify"})
    assert unsupported.status_code == 400
    assert unsupported.json()["error"]["message"] == "Unsupported task: 'classify' Supported tasks: ('embed', 'token_embed')"


def test_token_pool_factor_on_pooling(app_client, minilm):
    # The request field pools each input's token vectors as PoolingParams(token_pool_factor=...) does
    # offline (tests/sentence_transformers/test_token_pooling.py checks that against sentence-transformers).
    pooled = app_client.post("/pooling", json={"input": TEXTS[:2], "task": "token_embed", "token_pool_factor": 2}).json()
    expected = minilm.encode(TEXTS[:2], pooling_task="token_embed", pooling_params=PoolingParams(token_pool_factor=2))
    for item, e in zip(pooled["data"], expected):
        assert len(item["data"]) == len(e.outputs.data) < len(e.prompt_token_ids)
        _close(item["data"], e.outputs.data.tolist())
    for body, message in (
        ({"task": "token_embed", "token_pool_factor": 0.5}, "token_pool_factor must be >= 1, got 0.5"),
        ({"task": "embed", "token_pool_factor": 2}, "Task 'embed' only supports ['dimensions', 'use_activation'] parameters, "
         "does not support ['token_pool_factor'] parameters"),
    ):
        refused = app_client.post("/pooling", json={"input": TEXTS[0], **body})
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == message
    not_a_number = app_client.post("/pooling", json={"input": TEXTS[0], "task": "token_embed", "token_pool_factor": "2"})
    assert not_a_number.status_code == 400 and "token_pool_factor" in not_a_number.json()["error"]["message"]


def test_sparse_embed_on_pooling_is_compact(tmp_path):
    from tiny_models import build_masked_lm

    llm = LLM(str(build_masked_lm(tmp_path / "splade")), hf_overrides={"architectures": ["BertSpladeSparseEmbeddingModel"]})
    assert "sparse_embed" in llm.supported_tasks
    expected = llm.sparse_embed(TEXTS[:2], top_k=5, return_tokens=True)
    with TestClient(create_app(llm, served_model_name="splade")) as c:
        r = c.post("/pooling", json={"input": TEXTS[:2], "task": "sparse_embed", "top_k": 5, "return_tokens": True})
        assert r.status_code == 200, r.text
        for item, e in zip(r.json()["data"], expected):
            assert item["data"]["indices"] == e.outputs.indices and item["data"]["tokens"] == e.outputs.tokens
            _close(item["data"]["values"], e.outputs.values)
        bad = c.post("/pooling", json={"input": "x", "task": "sparse_embed", "top_k": 0})
        assert bad.status_code == 400 and "top_k" in bad.json()["error"]["message"]


def test_pooling_plugin_task_through_an_io_processor_plugin(minilm):
    pytest.importorskip("poolkit_topk_plugin", reason="pip install ./plugins/poolkit-topk-plugin")
    data = {"query": "What is the capital of France?", "documents": ["I like pizza.", "Paris is the capital of France."], "k": 1}
    minilm.io_processor_plugin = "topk_retrieval"
    try:
        (expected,) = minilm.encode({"data": data}, pooling_task="plugin")
        with TestClient(create_app(minilm, served_model_name="topk")) as c:
            r = c.post("/pooling", json={"data": data})
            assert r.status_code == 200, r.text
            assert r.json()["data"] == expected.outputs
            bad = c.post("/pooling", json={"task": "plugin", "data": {"query": "q", "documents": []}})
            assert bad.status_code == 400 and "non-empty list of strings" in bad.json()["error"]["message"]
    finally:
        minilm.io_processor_plugin = None


def test_chat_messages_need_a_chat_template(app_client, minilm):
    messages = [{"role": "user", "content": "Hello, my name is"}]
    r = app_client.post("/v1/embeddings", json={"messages": messages})
    assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]
    tok = minilm.get_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    try:
        r = app_client.post("/v1/embeddings", json={"messages": messages})
        assert r.status_code == 200, r.text
        ids = tok("user: Hello, my name is\n", add_special_tokens=False)["input_ids"]
        _close(r.json()["data"][0]["embedding"], minilm.embed({"prompt_token_ids": ids})[0].outputs.embedding)
    finally:
        tok.chat_template = None
