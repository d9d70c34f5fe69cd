"""The server under hostile clients (issue 43): what a probe of the TEI routes, several models and
the cache found, each as the request that showed it.

The key comes before the model a request names; a stalled body holds no admission slot (issue 52:
requests are admitted once their body is in) and is closed at ``--body-timeout``; TEI's ``/tokenize`` is linear in the text; a response is bounded by
``--max-response-bytes`` (413, before the work where it can be estimated); the cache is bounded in
bytes; open routes never show a model's directory; TEI's bodies are validated, not coerced, and
name their model as the other routes do.
"""

from __future__ import annotations

import json
import random
import socket
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402
from served import connect, parse, read_response, served  # noqa: E402
from test_server_models import _cache_counts  # noqa: E402
from test_server_tei import SPLADE, assert_tei_error  # noqa: E402
from tiny_models import build_classifier  # noqa: E402

from poolkit import LLM, PoolingParams  # noqa: E402
from poolkit.entrypoints.server import ServerLimits, create_app  # noqa: E402
from poolkit.entrypoints.serving.cache import ENTRY_OVERHEAD, entry_bytes  # noqa: E402
from poolkit.entrypoints.serving.tei import utf8_offsets  # noqa: E402

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _error(r, status: int) -> dict:
    """The OpenAI-shaped error of ``r``, with ``status``."""
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == status
    return error


@pytest.fixture(scope="module")
def ce(tmp_path_factory):
    return LLM(str(build_classifier(tmp_path_factory.mktemp("ce") / "ce", "bert", 1)))


@pytest.fixture(scope="module")
def splade(splade_dir):
    return LLM(str(splade_dir), hf_overrides=SPLADE)


# -- 1. the key before the model ------------------------------------------------------------------


@pytest.mark.parametrize("models", [1, 2])
def test_no_key_is_a_401_whatever_model_the_request_names(minilm, ce, models):
    llms, names = ([minilm], ["emb"]) if models == 1 else ([minilm, ce], ["emb", "rr"])
    with TestClient(create_app(llms, served_model_name=names, api_key=KEY)) as c:
        for path, body in (("/embed", {"inputs": "x"}), ("/v1/embeddings", {"input": "x"}), ("/", {"inputs": "x"})):
            for headers, payload in (({"X-Model": "nope"}, body), ({}, {**body, "model": "nope"})):
                r = c.post(path, json=payload, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert "emb" not in r.text and "nope" not in r.text
            # with the key, the unknown name is the 404 (listing the served models on a server of several)
            r = c.post(path, json=body, headers={**AUTH, "X-Model": "nope"})
            assert r.status_code == 404 and "nope" in r.text
            assert ("Served models: emb, rr" in r.text) == (models == 2)


# -- 2. a stalled body ----------------------------------------------------------------------------

STALL = (
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    b'{"input": "'
)


def _post(port: int) -> tuple[str, bytes]:
    body = b'{"input": "hello"}'
    with connect(port) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        status, _, answer, _ = read_response(sock)
    return status, answer


def test_stalled_bodies_hold_no_slot_and_are_closed_at_the_body_timeout(minilm):
    """Issue 52, item 7: admission counts work, not uploads. Eight sockets stalling their bodies on a
    server of --max-concurrent-requests 2 leave every slot free (before, they held them: a 429 for
    everyone until --body-timeout); each still gets its 408 at the body deadline."""
    limits = ServerLimits(body_timeout=1.5, max_concurrent_requests=2, shutdown_timeout=2.0)
    with served(minilm, served_model_name="minilm", limits=limits, log_level="warning") as port:
        stalled = [connect(port) for _ in range(8)]
        for sock in stalled:
            sock.sendall(STALL)  # 11 of the 100 bytes, then silence
        time.sleep(0.3)
        for _ in range(3):
            status, answer = _post(port)
            assert status.startswith("HTTP/1.1 200"), (status, answer)
        for sock in stalled:  # the body deadline still closes each stalled socket: a JSON 408
            sock.settimeout(30)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            status, headers, body = parse(data)
            assert status == "HTTP/1.1 408 Request Timeout" and headers["connection"] == "close", data
            error = json.loads(body)["error"]
            assert error["type"] == "RequestTimeoutError" and "--body-timeout" in error["message"]
            sock.close()


def test_a_slow_but_timely_body_is_answered(minilm):
    body = b'{"input": "slow but steady"}'
    with served(minilm, served_model_name="minilm", limits=ServerLimits(body_timeout=2.0), log_level="warning") as port:
        with connect(port) as sock:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 8):
                sock.sendall(body[i : i + 8])
                time.sleep(0.2)
            status, _, answer, _ = read_response(sock)
    assert status.startswith("HTTP/1.1 200"), answer
    np.testing.assert_allclose(json.loads(answer)["data"][0]["embedding"], minilm.embed("slow but steady")[0].outputs.embedding, atol=1e-6)


# -- 3. TEI's /tokenize is linear ------------------------------------------------------------------


def test_utf8_offsets_are_the_byte_offsets_of_every_character():
    rng = random.Random(0)
    alphabet = ["a", "Z", " ", "é", "ß", "✓", "中", "😀", "\U0001F9EA", "\u0301"]
    for n in (0, 1, 7, 300):
        text = "".join(rng.choice(alphabet) for _ in range(n))
        offsets = utf8_offsets(text)
        expected = [len(text[:i].encode()) for i in range(len(text) + 1)]
        assert (list(range(len(text) + 1)) if offsets is None else offsets.tolist()) == expected
    assert utf8_offsets("plain ascii") is None


def test_tei_tokenize_of_a_long_text_costs_about_what_the_tokenizer_does(minilm):
    """100,000 two-character words: the route once took ~10 s, each offset re-encoding its prefix.
    Now it is within a small factor of the tokenizer's own call on the same text (one run, so the
    machine's speed cancels out)."""
    text = " ".join(["éb"] * 100_000)
    tok = minilm.get_tokenizer()
    with TestClient(create_app(minilm, served_model_name="m")) as c:
        route, alone = [], []
        for _ in range(2):
            start = time.perf_counter()
            r = c.post("/tokenize", json={"inputs": text})
            route.append(time.perf_counter() - start)
            start = time.perf_counter()
            tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
            alone.append(time.perf_counter() - start)
    assert r.status_code == 200
    tokens = r.json()[0]
    assert len(tokens) == 200_002 and tokens[-2] == {"id": tokens[-2]["id"], "text": "b", "special": False,
                                                     "start": len(text.encode()) - 1, "stop": len(text.encode())}
    assert min(route) < 12 * min(alone) + 0.5, (route, alone)


# -- 4. a bound on each response -------------------------------------------------------------------


def test_a_response_over_the_limit_is_a_413_before_the_work(minilm):
    """The probe's request: /embed_all with 512 texts of ~62 tokens would answer ~300 MB of JSON."""
    texts = [" ".join(f"word{i}x{j}" for j in range(20)) for i in range(512)]
    app = create_app(minilm, served_model_name="m")
    with TestClient(app) as c:
        st = app.state.poolkit.first
        batches = st.batcher.stats.batches
        r = c.post("/embed_all", json={"inputs": texts})
        message = assert_tei_error(r, 413, "Validation", contains="--max-response-bytes")
        assert "would be about" in message
        r = c.post("/pooling", json={"input": texts, "task": "token_embed"})
        assert "--max-response-bytes" in _error(r, 413)["message"] and _error(r, 413)["param"] == "input"
        assert st.batcher.stats.batches == batches  # refused before anything ran
        assert c.post("/embed_all", json={"inputs": texts[:8]}).status_code == 200


def test_the_response_bound_follows_the_encoding(minilm):
    texts = [f"text number {i}" for i in range(64)]  # 64 x 384 numbers: ~590 KB of JSON, ~131 KB of base64
    with TestClient(create_app(minilm, served_model_name="m", limits=ServerLimits(max_response_bytes=300_000))) as c:
        error = _error(c.post("/v1/embeddings", json={"input": texts}), 413)
        assert "or ask for base64" in error["message"]
        r = c.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"})
        assert r.status_code == 200 and len(r.content) < 300_000
        assert c.post("/v1/embeddings", json={"input": texts, "encoding_format": "bytes_only"}).status_code == 200
        assert _error(c.post("/v2/embed", json={"texts": texts, "embedding_types": ["float"]}), 413)
        assert c.post("/v2/embed", json={"texts": texts, "embedding_types": ["ubinary"]}).status_code == 200


def test_results_over_the_limit_that_the_estimate_missed_are_a_413_before_the_body(minilm):
    """The token estimate (four characters a token) is low for one-letter words: the results are
    counted again before the body is built."""
    text = " ".join("abcdefghij")  # 19 characters, estimated 6 tokens, really 12
    tokens = len(minilm.get_tokenizer()(text)["input_ids"])
    limit = 24 * 384 * (tokens - 2)  # above the estimate's response, below the real one
    with TestClient(create_app(minilm, served_model_name="m", limits=ServerLimits(max_response_bytes=limit))) as c:
        message = assert_tei_error(c.post("/embed_all", json={"inputs": text}), 413, "Validation")
        assert "is about" in message and str(24 * 384 * tokens) in message


def test_sparse_responses_are_counted_by_their_non_zero_weights(splade):
    texts = [f"sparse text {i}" for i in range(64)]
    dense = 64 * splade.model.hf_config.vocab_size * 24  # ~47 MB, were the rows written densely
    with TestClient(create_app(splade, served_model_name="s", limits=ServerLimits(max_response_bytes=dense // 20))) as c:
        assert c.post("/embed_sparse", json={"inputs": texts}).status_code == 200
        assert c.post("/pooling", json={"input": texts, "task": "sparse_embed"}).status_code == 200


# -- 5. the cache counts bytes ---------------------------------------------------------------------


def test_the_cache_is_bounded_in_bytes_and_keeps_sparse_rows_sparse(splade):
    app = create_app(splade, served_model_name="s", cache_size=100_000, cache_max_bytes=20_000)
    texts = [f"the cache holds text {i}" for i in range(40)]
    with TestClient(app) as c:
        first = c.post("/embed_sparse", json={"inputs": texts}).json()
        cache = app.state.poolkit.first.cache
        assert 0 < cache.bytes <= 20_000 and 0 < len(cache) < len(texts)
        assert cache.bytes == sum(entry_bytes(k, e) for k, (e, _) in cache._entries.items())
        tensor = next(iter(cache._entries.values()))[0][0]
        assert tensor.is_sparse and entry_bytes(("k", "text", "x"), (tensor, [1, 2], False)) < 4_000  # not 30,522 floats
        again = c.post("/embed_sparse", json={"inputs": texts}).json()  # the held ones from the cache
        assert again == first
    expected = splade.encode(texts[-1], pooling_task="sparse_embed")[0].outputs.data
    got = torch.zeros_like(expected)
    for pair in first[-1]:
        got[pair["index"]] = pair["value"]
    # The row was computed in a batch of 40 and the expectation alone: equal within fp32's batch
    # invariance (DESIGN §7), which a GPU's GEMMs (another kernel for another batch shape) use.
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_an_entry_larger_than_the_whole_cache_is_not_kept(minilm):
    app = create_app(minilm, served_model_name="m", cache_size=10, cache_max_bytes=ENTRY_OVERHEAD + 2_000)
    with TestClient(app) as c:
        assert c.post("/embed", json={"inputs": "short"}).status_code == 200
        cache = app.state.poolkit.first.cache
        assert len(cache) == 1 and cache.bytes == ENTRY_OVERHEAD + 384 * 4 + 3 * 8 + len("short")
        # 9 token vectors of 384 floats: over the whole budget, so not kept, and nothing evicted for it
        assert c.post("/embed_all", json={"inputs": "a longer text of several tokens"}).status_code == 200
        assert len(cache) == 1 and c.post("/embed", json={"inputs": "short"}).status_code == 200
        assert _cache_counts(c) == (1, 2)


# -- 6. no directory on the open routes ------------------------------------------------------------


def test_open_routes_never_show_the_model_directory(minilm_dir):
    path = str(minilm_dir)
    llm = LLM(path)
    assert llm.model.name == path
    with TestClient(create_app(llm, api_key=KEY)) as c:  # no served name: served as its path, as vLLM does
        assert c.post("/v1/embeddings", json={"input": "count me"}, headers=AUTH).status_code == 200
        metrics, document = c.get("/metrics"), c.get("/openapi.json")
        assert metrics.status_code == document.status_code == 200
        assert path not in metrics.text and path not in document.text
        assert f'poolkit_inputs_total{{model="{minilm_dir.name}"}} 1.0' in metrics.text
        assert [m["id"] for m in c.get("/v1/models", headers=AUTH).json()["data"]] == [path]  # behind the key
        assert c.post("/v1/embeddings", json={"input": "x", "model": path}, headers=AUTH).status_code == 200


def test_two_models_from_directories_of_one_name_get_two_labels(minilm_dir, tmp_path):
    import shutil

    twin = tmp_path / minilm_dir.name
    shutil.copytree(minilm_dir, twin)
    app = create_app([LLM(str(minilm_dir)), LLM(str(twin))])
    labels = [m.label for m in app.state.poolkit.models]
    assert labels == [f"{minilm_dir.name}-1", f"{minilm_dir.name}-2"]


# -- 7-10. TEI's bodies and the model they name ----------------------------------------------------


@pytest.fixture(scope="module")
def one(minilm):
    with TestClient(create_app(minilm, served_model_name="emb")) as c:
        yield c


@pytest.mark.parametrize(
    "path, body",
    [
        ("/embed", {"inputs": [True, False]}),
        ("/embed", {"inputs": [101.0, 102.0]}),
        ("/embed", {"inputs": "x", "normalize": "yes"}),
        ("/embed", {"inputs": "x", "dimensions": "8"}),
        ("/embed", {"inputs": "x", "truncate": 1}),
        ("/embed_all", {"inputs": [[True]]}),
        ("/tei-rerank", {"query": "q", "texts": ["a"], "raw_scores": "no"}),
        ("/predict", {"inputs": "x", "raw_scores": "no"}),
        ("/decode", {"ids": ["7592"]}),
        ("/decode", {"ids": [True]}),
        ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"truncate": "yes"}}),
        ("/", {"inputs": [True]}),
    ],
)
def test_tei_bodies_are_validated_not_coerced(one, path, body):
    path = "/rerank" if path == "/tei-rerank" else path
    assert_tei_error(one.post(path, json=body), 422, "Validation")


def test_truncation_direction_in_any_case(one, minilm):
    long = "the beginning. " + "lorem ipsum dolor " * 150 + "the end!"
    expected = minilm.embed(long, pooling_params=PoolingParams(truncate_prompt_tokens=-1, truncation_side="left"))
    for direction in ("LEFT", "Left", "left", "lEfT"):
        r = one.post("/embed", json={"inputs": long, "truncate": True, "truncation_direction": direction})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()[0], expected[0].outputs.embedding, atol=1e-6)
    assert_tei_error(one.post("/embed", json={"inputs": "x", "truncation_direction": "up"}), 422, "Validation")


@pytest.mark.parametrize(
    "path, body",
    [
        ("/embed", {"inputs": "x"}), ("/embed_all", {"inputs": "x"}), ("/rerank", {"query": "q", "texts": ["a"]}),
        ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"]}}), ("/tokenize", {"inputs": "x"}),
        ("/decode", {"ids": [101]}), ("/", {"inputs": "x"}),
    ],
)
def test_tei_routes_refuse_an_unknown_model_on_a_one_model_server(one, path, body):
    assert_tei_error(one.post(path, json={**body, "model": "nope"}), 404, "Validation", "The model `nope` does not exist.")
    assert one.post(path, json={**body, "model": "emb"}).status_code == 200


def test_x_model_and_the_body_model_disagreeing_names_both(minilm, ce):
    with TestClient(create_app([minilm, ce], served_model_name=["emb", "rr"])) as c:
        r = c.post("/v1/embeddings", json={"model": "emb", "input": "x"}, headers={"X-Model": "rr"})
        message = _error(r, 400)["message"]
        assert "X-Model header names the model `rr`" in message and "body's model is `emb`" in message
        message = assert_tei_error(c.post("/embed", json={"model": "emb", "inputs": "x"}, headers={"X-Model": "rr"}), 413, "Validation")
        assert "`rr`" in message and "`emb`" in message
        r = c.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers={"X-Model": "emb"})
        assert "Served models: emb, rr" in _error(r, 404)["message"]
        assert c.post("/v1/embeddings", json={"model": "emb", "input": "x"}, headers={"X-Model": "emb"}).status_code == 200
