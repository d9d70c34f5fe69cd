"""The server's answers to bad input: the catalogue of reliability-security.md §(b), in process.

Every case checks the status code, the error body ``{"error": {"message", "type", "param",
"code"}}`` (code == status, a short message without file paths) and, after it, that ``/health``
is still 200. Then schemathesis fuzzes every operation of ``/openapi.json`` and finds no 5xx.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from waits import until  # noqa: E402

from poolkit import LLM  # noqa: E402
from poolkit.entrypoints.server import INFERENCE_ROUTES, ServerLimits, create_app, strict_json  # noqa: E402
from poolkit.entrypoints.server.guard import SHARED_ROUTES, TEI_ALIASES, TEI_ROUTES  # noqa: E402

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = ServerLimits(max_body_bytes=2 * 1024 * 1024, max_request_tokens=50_000)


@pytest.fixture(scope="module")
def app(minilm):
    return create_app(minilm, served_model_name="minilm", api_key=KEY, limits=LIMITS)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, headers=AUTH) as c:
        yield c


@pytest.fixture(autouse=True)
def still_healthy(request):
    yield
    if "client" in request.fixturenames:
        health = request.getfixturevalue("client").get("/health")
        assert health.status_code == 200, health.text


def error_of(response, status: int, *, contains: str | None = None, param: str | None = "unset") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert error["code"] == status and isinstance(error["type"], str) and error["type"]
    assert 0 < len(error["message"]) <= 500 and "\n" not in error["message"]
    assert "/work/" not in error["message"] and "site-packages" not in error["message"]
    assert len(response.content) < 16 * 1024
    if contains is not None:
        assert contains in error["message"], error["message"]
    if param != "unset":
        assert error["param"] == param, error
    return error


def post(client, path: str, body, **kw):
    return client.post(path, json=body, **kw)


def raw(client, path: str, content: bytes, content_type: str = "application/json", headers: dict | None = None):
    return client.post(path, content=content, headers={"content-type": content_type, **AUTH, **(headers or {})})


# -- (b) 1-7: empty, missing, wrong types ----------------------------------------------------------


def test_01_empty_string(client):
    error_of(post(client, "/v1/embeddings", {"input": ""}), 400, contains="is not a valid text: an empty string", param="input")


def test_02_whitespace_only_is_valid_text(client):
    r = post(client, "/v1/embeddings", {"input": ["   ", "\u200b"]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2


def test_03_empty_list(client):
    error_of(post(client, "/v1/embeddings", {"input": []}), 400, contains="must not be empty", param="input")


def test_04_one_empty_item_rejects_the_request(client):
    error_of(post(client, "/v1/embeddings", {"input": ["a", ""]}), 400, param="input[1]")


def test_05_missing_input_and_empty_body(client):
    error_of(post(client, "/v1/embeddings", {}), 400, contains="input is required", param="input")
    error_of(raw(client, "/v1/embeddings", b""), 400, contains="body is missing")
    error_of(post(client, "/rerank", {"documents": ["a"]}), 400, contains="query", param="query")


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null", b"3"])
def test_06_wrong_top_level_type(client, body):
    error_of(raw(client, "/v1/embeddings", body), 400, contains="must be a JSON object")


@pytest.mark.parametrize("value", [123, {"a": 1}, [1, "a"], True, [[1, 2], "a"], [True, False], 1.5])
def test_07_wrong_input_types(client, value):
    error_of(post(client, "/v1/embeddings", {"input": value}), 400, contains="must be a string, a list of strings", param="input")


# -- 8-10: token ids and long inputs ---------------------------------------------------------------


@pytest.mark.parametrize("ids", [[[-1]], [[30522]], [[2**40]], [101, -5], [[]]])
def test_08_token_ids_outside_the_vocabulary(client, ids):
    error = error_of(post(client, "/v1/embeddings", {"input": ids}), 400)
    assert "vocabulary" in error["message"] or "empty list" in error["message"]


def test_09_over_long_text_is_refused_unless_truncation_is_asked(client):
    text = "hello world " * 50_000  # 100k tokens
    # vLLM refuses an input over max_model_len (issue 13); it used to be truncated silently
    error_of(post(client, "/v1/embeddings", {"input": text}), 400, contains="Please reduce the length of the input prompt")
    r = post(client, "/v1/embeddings", {"input": text, "truncate_prompt_tokens": -1})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256
    error_of(
        post(client, "/v1/embeddings", {"input": "hi", "truncate_prompt_tokens": 1000}),
        400,
        contains="truncate_prompt_tokens value is greater than max_model_len. Please request a smaller truncation size.",  # vLLM's words (issue 13)
        param="truncate_prompt_tokens",
    )
    error_of(post(client, "/v1/embeddings", {"input": "hi", "truncate_prompt_tokens": -2}), 400, param="truncate_prompt_tokens")
    error_of(post(client, "/v1/embeddings", {"input": "hi", "truncation_side": "middle"}), 400, param="truncation_side")


def test_10_absurd_single_word_is_cheap(client):
    start = time.perf_counter()
    r = post(client, "/v1/embeddings", {"input": "x" * 1_900_000})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] <= 256
    assert time.perf_counter() - start < 30  # pre-cut by characters, not a tokenizer crawl


# -- 11-14: encodings and JSON strictness ----------------------------------------------------------


def test_11_non_utf8_body(client):
    error_of(raw(client, "/v1/embeddings", b'{"input": "\xff\xfe"}'), 400, contains="not valid UTF-8")


def test_12_lone_surrogate(client):
    error_of(raw(client, "/v1/embeddings", b'{"input": "a\\ud800b"}'), 400, contains="invalid Unicode", param="input")
    error_of(raw(client, "/rerank", b'{"query": "q", "documents": ["\\udfff"]}'), 400, param="documents[0]")


def test_13_nul_and_control_characters_are_text(client):
    r = post(client, "/v1/embeddings", {"input": ["a\u0000b", "\u001b[31mred"]})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "body", [b'{"input": "a", "dimensions": NaN}', b'{"input": "a", "top_n": Infinity}', b'{"input": -Infinity}']
)
def test_14_nan_and_infinity_in_json(client, body):
    error_of(raw(client, "/v1/embeddings", body), 400, contains="is not valid JSON")


# -- 15-19: dimensions -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [256.5, "256", True, 256.0, [256]])
def test_15_dimensions_must_be_an_integer(client, value):
    error_of(post(client, "/v1/embeddings", {"input": "a", "dimensions": value}), 400, param="dimensions")


@pytest.fixture(scope="module")
def matryoshka_client(minilm_dir):
    llm = LLM(str(minilm_dir), hf_overrides={"is_matryoshka": True})
    with TestClient(create_app(llm, served_model_name="m")) as c:
        yield c


def test_16_dimensions_above_the_embedding_size(matryoshka_client):
    error_of(
        matryoshka_client.post("/v1/embeddings", json={"input": "a", "dimensions": 100_000}),
        400,
        contains="larger than the model's embedding size (384)",
        param="dimensions",
    )
    assert matryoshka_client.post("/v1/embeddings", json={"input": "a", "dimensions": 384}).status_code == 200


@pytest.mark.parametrize("value", [0, -1])
def test_17_dimensions_not_positive(client, matryoshka_client, value):
    error_of(post(client, "/v1/embeddings", {"input": "a", "dimensions": value}), 400, contains="greater than 0")
    error_of(matryoshka_client.post("/v1/embeddings", json={"input": "a", "dimensions": value}), 400, param="dimensions")


def test_18_dimensions_on_a_non_matryoshka_model(client):
    error_of(
        post(client, "/v1/embeddings", {"input": "a", "dimensions": 32}),
        400,
        contains='Model "minilm" does not support matryoshka representation',
        param="dimensions",
    )
    error_of(post(client, "/v2/embed", {"texts": ["a"], "output_dimension": 32}), 400, contains="matryoshka")


def test_19_huge_integers(client):
    error_of(raw(client, "/v1/embeddings", b'{"input": "a", "dimensions": 1e400}'), 400, param="dimensions")
    error_of(raw(client, "/v1/embeddings", b'{"input": "a", "dimensions": ' + b"9" * 5000 + b"}"), 400, contains="invalid JSON")
    error_of(post(client, "/v1/embeddings", {"input": "a", "dimensions": 2**70}), 400)


# -- 20-25: fan-out, sizes, structure, content type ------------------------------------------------


def test_20_too_many_inputs(client):
    r = post(client, "/v1/embeddings", {"input": ["a"] * 100_000})
    error_of(r, 400, contains="too many inputs: 100000 > 2048", param="input")
    error_of(post(client, "/rerank", {"query": "q", "documents": ["d"] * 3000}), 400, contains="too many inputs", param="documents")
    error_of(post(client, "/score", {"text_1": "q", "text_2": ["d"] * 3000}), 400, contains="too many inputs")
    error_of(post(client, "/v2/embed", {"texts": ["d"] * 3000}), 400, contains="too many inputs", param="texts")


def test_21_too_many_tokens_in_one_request(client):
    error_of(
        post(client, "/v1/embeddings", {"input": ["word " * 250] * 300}),
        400,
        contains="more than the limit of 50000 per request",
    )


def test_22_oversized_bodies(client):
    big = b'{"input": "' + b"a" * (3 * 1024 * 1024) + b'"}'
    error_of(raw(client, "/v1/embeddings", big), 413, contains="larger than the limit of 2097152 bytes")

    def trickle():
        for _ in range(40):
            yield b" " * (128 * 1024)

    streamed = client.post("/v1/embeddings", content=trickle(), headers={"content-type": "application/json", **AUTH})
    assert "content-length" not in streamed.request.headers
    error_of(streamed, 413)
    lying = raw(client, "/v1/embeddings", b'{"input": "a"}', headers={"content-length": "99999999999"})
    error_of(lying, 413)


def test_23_deeply_nested_json(client):
    deep = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    error_of(raw(client, "/v1/embeddings", deep), 400, contains="nested too deeply")


def test_24_duplicate_keys(client):
    error_of(raw(client, "/v1/embeddings", b'{"input": "a", "input": "b"}'), 400, contains="duplicate key 'input'")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_25_wrong_content_type(client, content_type):
    headers = dict(AUTH)
    if content_type:
        headers["content-type"] = content_type
    r = client.post("/v1/embeddings", content=b'{"input": "a"}', headers=headers)
    error_of(r, 415, contains="Only 'application/json' is allowed")
    assert post(client, "/v1/embeddings", {"input": "a"}, headers={"content-type": "application/json; charset=utf-8"}).status_code == 200


# -- 26-32: names, tasks, fields, encodings, rerank and score --------------------------------------


@pytest.mark.parametrize("route, body", [
    ("/v1/embeddings", {"input": "a"}),
    ("/pooling", {"input": "a"}),
    ("/score", {"text_1": "a", "text_2": "b"}),
    ("/rerank", {"query": "a", "documents": ["b"]}),
    ("/v2/embed", {"texts": ["a"]}),
])
def test_26_unknown_model(client, route, body):
    error_of(post(client, route, {**body, "model": "gpt-4"}), 404, contains="The model `gpt-4` does not exist.", param="model")
    long_name = "m" * 10_000
    error = error_of(post(client, route, {**body, "model": long_name}), 404)
    assert len(error["message"]) < 200


def test_27_unsupported_task(client):
    error_of(post(client, "/classify", {"input": "a"}), 400, contains="Task classify is not supported by model")
    error_of(post(client, "/pooling", {"input": "a", "task": "foo"}), 400, contains="Unsupported task: 'foo'", param="task")
    error_of(post(client, "/pooling", {"input": "a", "task": "token_classify"}), 400, param="task")
    error_of(post(client, "/pooling", {"data": {"x": 1}}), 400, contains="IOProcessor")
    error_of(post(client, "/pooling", {"data": {"x": 1}, "task": "embed"}), 400, contains="only supported for the 'plugin'")


def test_28_unknown_fields_are_ignored(client):
    r = post(client, "/v1/embeddings", {"input": "a", "foo": 1, "user": "u1", "request_id": "r"})
    assert r.status_code == 200


@pytest.mark.parametrize("value", ["int8", "FLOAT", 1])
def test_29_unsupported_encoding_format(client, value):
    error = error_of(post(client, "/v1/embeddings", {"input": "a", "encoding_format": value}), 400, param="encoding_format")
    assert "'float'" in error["message"] and "'base64'" in error["message"]
    # fp8_e4m3 / fp8_e5m2 are vLLM embed_dtypes and supported since issue 13
    error_of(post(client, "/v1/embeddings", {"input": "a", "embed_dtype": "int4"}), 400, param="embed_dtype")
    error_of(post(client, "/v2/embed", {"texts": ["a"], "embedding_types": ["int8"]}), 400, param="embedding_types[0]")


def test_29_null_encoding_fields_are_the_defaults(client):
    """OpenAI's clients send ``null`` for "not given": it is the default (float32 floats), not a 400."""
    want = post(client, "/v1/embeddings", {"input": "a"}).json()["data"][0]["embedding"]
    body = {"input": "a", "encoding_format": None, "embed_dtype": None, "endianness": None}
    for path, key in (("/v1/embeddings", "embedding"), ("/pooling", "data")):
        r = post(client, path, body)
        assert r.status_code == 200, r.text
        assert r.json()["data"][0][key] == want


def test_30_request_ids_are_labels(client):
    a = post(client, "/v1/embeddings", {"input": "a"}, headers={"X-Request-Id": "same"})
    b = post(client, "/v1/embeddings", {"input": "b"}, headers={"X-Request-Id": "same"})
    assert a.status_code == b.status_code == 200 and a.json()["id"] == b.json()["id"] == "embd-same"
    assert a.json()["data"][0]["embedding"] != b.json()["data"][0]["embedding"]
    weird = post(client, "/v1/embeddings", {"input": "a"}, headers={"X-Request-Id": "x" * 1000})
    assert weird.status_code == 200 and len(weird.json()["id"]) < 64


def test_31_rerank_edge_cases(client):
    error_of(post(client, "/rerank", {"query": "", "documents": ["a"]}), 400, param="query")
    error_of(post(client, "/rerank", {"query": "q", "documents": []}), 400, contains="At least one document", param="documents")
    error_of(post(client, "/rerank", {"query": "q", "documents": ["a"], "top_n": -1}), 400, param="top_n")
    error_of(post(client, "/rerank", {"query": "q", "documents": [{"id": 1}]}), 400)
    error_of(post(client, "/rerank", {"query": "q", "documents": ["a"], "top_n": 1.5}), 400, param="top_n")
    r = post(client, "/rerank", {"query": "q", "documents": ["a", "b"], "top_n": 10})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    zero = post(client, "/rerank", {"query": "q", "documents": ["a", "b"], "top_n": 0})
    assert len(zero.json()["results"]) == 2


def test_32_score_shape_mismatch(client):
    error_of(post(client, "/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}), 400, contains="1:1, 1:N or N:N")
    error_of(post(client, "/score", {"text_1": [], "text_2": ["c"]}), 400, contains="At least one text element")
    error_of(post(client, "/score", {"text_1": "a"}), 400, contains="send one pair")
    error_of(post(client, "/score", {"text_1": "a", "text_2": "b", "data_2": "c"}), 400, contains="send one pair")
    error_of(post(client, "/score", {"text_1": 5, "text_2": "b"}), 400, param="text_1")


# -- 33-37: images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    ["http://169.254.169.254/latest", "file:///etc/passwd", "/etc/passwd", "../../secret.png", "data:image/png;base64,@@@"],
)
def test_33_36_images_are_data_uris_only(client, image):
    error = error_of(post(client, "/v2/embed", {"images": [image]}), 400)
    assert "/etc/passwd" not in error["message"]


def test_37_cohere_input_shapes(client):
    error_of(post(client, "/v2/embed", {}), 400, contains="One of texts, images, or inputs must be provided")
    error_of(post(client, "/v2/embed", {"texts": ["a"], "images": ["data:,"]}), 400, contains="only one of")
    two_parts = {"inputs": [{"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    error_of(post(client, "/v2/embed", two_parts), 400, contains="exactly one content part")
    error_of(post(client, "/v2/embed", {"inputs": [{"content": [{"type": "audio"}]}]}), 400)
    error_of(post(client, "/v2/embed", {"texts": ["a"], "truncate": "MIDDLE"}), 400, param="truncate")
    error_of(post(client, "/v2/embed", {"texts": ["a"], "max_tokens": 0}), 400, param="max_tokens")


# -- 38: the API key -------------------------------------------------------------------------------


PROTECTED = [
    "/v1/embeddings", "/pooling", "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/v2/embed", "/v1/multi-vector",
    "/tokenize", "/detokenize", "/invocations", "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
    "/v1/models",
]
#: TEI's routes need the key too; their 401 has TEI's shape (tests/server/test_server_tei.py).
TEI_PROTECTED = ["/", "/embed", "/embed_all", "/embed_sparse", "/predict", "/similarity", "/decode", "/info"]


def test_38_the_protected_routes_are_every_route_but_health_metrics_and_docs(app):
    routes = {r.path for r in app.routes if getattr(r, "methods", None)}
    # TEI's routes on shared paths are reached through those paths (/rerank, /tokenize), key checked there
    reached = routes - TEI_ALIASES
    assert reached - set(PROTECTED) - set(TEI_PROTECTED) == {"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    assert set(PROTECTED + TEI_PROTECTED) - {"/v1/models", "/info"} == set(INFERENCE_ROUTES)


@pytest.mark.parametrize("route", PROTECTED)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", KEY, "Bearer"])
def test_38_every_inference_route_needs_the_key(app, route, auth):
    anonymous = TestClient(app)  # no `with`: the shared app's lifespan keeps running
    if True:
        headers = {"content-type": "application/json"}
        if auth:
            headers["Authorization"] = auth
        method = anonymous.get if route == "/v1/models" else anonymous.post
        kwargs = {} if route == "/v1/models" else {"content": b'{"input": "a"}'}
        error = error_of(method(route, headers=headers, **kwargs), 401, contains="Unauthorized")
        assert KEY not in error["message"]
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
        assert method(f"{route}?api_key={KEY}", headers=headers, **kwargs).status_code == 401  # never from the query


def test_38_the_right_key_works_everywhere(client):
    assert client.get("/v1/models").status_code == 200
    assert post(client, "/pooling", {"input": "a"}).status_code == 200
    assert post(client, "/v2/rerank", {"query": "a", "documents": ["b"]}).status_code == 200


# -- 39, 43: overload, loading, draining -----------------------------------------------------------


def test_39_overload_is_429_with_retry_after(app, client):
    state = app.state.poolkit
    state.admission.in_flight += LIMITS.max_concurrent_requests
    try:
        r = post(client, "/v1/embeddings", {"input": "a"})
    finally:
        state.admission.in_flight -= LIMITS.max_concurrent_requests
    error_of(r, 429, contains="busy")
    assert r.headers["retry-after"] == "1"


@pytest.fixture(scope="module")
def pipelined(minilm_dir):
    """all-MiniLM-L6-v2 on a stand-in device (:mod:`poolkit.runtime.standin`): its engine runs as on
    an accelerator, so the server's batcher pipelines as it does on a GPU."""
    from poolkit.runtime.standin import attach

    llm = LLM(str(minilm_dir))
    attach(llm, 1e7)
    return llm


@pytest.mark.parametrize("on", ["cpu", "accelerator"])
def test_39_full_queue_is_429(minilm, on, request):
    """With the batcher's threads held (the worker; pipelined, also the device thread and the batch
    handed between them), requests queue until it is full: the next is a 429. Each goes once the one
    before is counted in and taken or held up (two waiting would merge, leaving room for one more)."""
    llm = minilm if on == "cpu" else request.getfixturevalue("pipelined")
    app = create_app(llm, served_model_name="q", limits=ServerLimits(max_queue_tokens=1))
    batcher = app.state.poolkit.batcher
    assert batcher.pipelined == (on == "accelerator")
    held = 3 if batcher.pipelined else 1  # batches taken and held: the hold, and the pipeline's two
    gate = threading.Event()
    answers: list = []
    senders: list[threading.Thread] = []
    with TestClient(app) as c:
        holder = threading.Thread(target=lambda: asyncio.run(batcher.call(lambda: gate.wait(300), 1)))
        holder.start()
        try:
            # The hold taken first: else the first request finds it queued, or is taken for its count.
            until(lambda: batcher.stats.requests == 1 and not batcher.queue_depth, "the hold taken")
            for i in range(8):
                seen = batcher.stats.requests + batcher.stats.rejected
                sender = threading.Thread(target=lambda i=i: answers.append((i, c.post("/v1/embeddings", json={"input": f"text {i}"}))))
                sender.start()
                senders.append(sender)
                until(lambda: batcher.stats.requests + batcher.stats.rejected > seen, f"request {i} counted in")
                if batcher.stats.rejected:
                    break
                until(lambda: not batcher.queue_depth or batcher._active >= held, f"request {i} taken or held up")
        finally:
            gate.set()
            holder.join()
            for sender in senders:
                sender.join()
        assert c.get("/health").status_code == 200
    refused = [r for _, r in answers if r.status_code != 200]
    assert len(refused) == 1 and len(answers) == len(senders) == held + 1, [(i, r.status_code) for i, r in answers]
    error_of(refused[0], 429, contains="too much work is queued")
    assert refused[0].headers["retry-after"] == "1"


def test_43_loading_and_draining_are_503(minilm):
    release = threading.Event()

    def loader():
        release.wait(30)
        return minilm

    app = create_app(loader, served_model_name="late")
    with TestClient(app) as c:
        error_of(c.get("/health"), 503, contains="loading")
        r = c.post("/v1/embeddings", json={"input": "a"})
        error_of(r, 503, contains="loading")
        assert r.headers["retry-after"]
        assert "/classify" in c.get("/openapi.json").json()["paths"]  # the operations, not yet the model's bounds
        release.set()
        deadline = time.monotonic() + 30
        while c.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.post("/v1/embeddings", json={"input": "a", "model": "late"}).status_code == 200
        assert "/classify" not in c.get("/openapi.json").json()["paths"]  # all-MiniLM-L6-v2 does not classify
        app.state.poolkit.draining = True
        error_of(c.post("/v1/embeddings", json={"input": "a"}), 503, contains="shutting down")
        error_of(c.get("/health"), 503)
        app.state.poolkit.draining = False


def test_43_a_model_that_fails_to_load(tmp_path):
    def loader():
        raise __import__("poolkit").ModelLoadError(f"model '{tmp_path}/nothing' was not found")

    app = create_app(loader, served_model_name="broken")
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while app.state.poolkit.load_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        error_of(c.get("/health"), 503, contains="failed to load")
        error_of(c.post("/v1/embeddings", json={"input": "a"}), 503, contains="failed to load")


# -- 44-47 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("on", ["cpu", "accelerator"])
def test_44_non_finite_model_output_is_a_500_never_nan_json(app, client, monkeypatch, on, request):
    """The model's hidden states turn NaN on the path every batch takes (the engine's run, and on
    an accelerator the pipelined batcher's staged one)."""
    if on == "cpu":
        _nan_is_a_500(app, client, monkeypatch)
        return
    app = create_app(request.getfixturevalue("pipelined"), served_model_name="minilm", api_key=KEY, limits=LIMITS)
    assert app.state.poolkit.batcher.pipelined
    with TestClient(app, headers=AUTH) as c:
        _nan_is_a_500(app, c, monkeypatch)


def _nan_is_a_500(app, client, monkeypatch) -> None:
    arch = app.state.poolkit.llm.model.architecture
    real_forward = arch.forward
    monkeypatch.setattr(arch, "forward", lambda *args, **kw: torch.full_like(real_forward(*args, **kw), float("nan")))
    for fmt in ("float", "base64", "bytes"):
        r = post(client, "/v1/embeddings", {"input": "a", "encoding_format": fmt})
        error_of(r, 500, contains="non-finite")
    monkeypatch.undo()
    assert post(client, "/v1/embeddings", {"input": "a"}).status_code == 200


def test_45_validation_errors_are_bounded(client):
    body = {"query": "q", "documents": [{"bad": i} for i in range(5000)]}
    error = error_of(post(client, "/rerank", body), 400)
    assert "more errors" in error["message"]
    error = error_of(post(client, "/v1/embeddings", {"input": [[1, 2], ["x" * 100_000]]}), 400)
    assert "xxxxx" not in error["message"]


def test_46_unknown_input_type_and_prompt_names(client):
    error_of(post(client, "/v2/embed", {"texts": ["a"], "input_type": "../../x"}), 400, contains="Unsupported input_type", param="input_type")


def test_47_invalid_option_combinations(client):
    error_of(post(client, "/pooling", {"input": "a", "task": "embed", "top_k": 3}), 400, contains="sparse_embed", param="task")
    error_of(post(client, "/v1/embeddings", {"input": "a", "messages": [{"role": "user", "content": "a"}]}), 400, param="messages")
    error_of(post(client, "/v1/embeddings", {"messages": [{"role": "user", "content": "a"}]}), 400, contains="no chat template")
    error_of(post(client, "/v1/embeddings", {"input": "a", "use_activation": True, "normalize": False}), 400, param="use_activation")
    error_of(post(client, "/pooling", {"input": "a", "task": "embed", "step_tag_id": 3}), 400, contains="does not support")


# -- routes and methods ----------------------------------------------------------------------------


def test_unknown_routes_and_wrong_methods(client):
    error_of(client.get("/v1/nothing"), 404)
    error_of(client.get("/v1/embeddings"), 405)
    error_of(client.put("/rerank", json={}), 405)
    error_of(raw(client, "/v1/embeddings", b'{"input": "a"}', headers={"content-length": "x1"}), 400)


def test_strict_json_parser():
    assert strict_json(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for bad in (b'{"a": NaN}', b'{"a": 1, "a": 2}', b"\xff", b"[" * 50_000, b'{"a": ' + b"1" * 5000 + b"}"):
        with pytest.raises(json.JSONDecodeError):
            strict_json(bad)


# -- schema fuzzing --------------------------------------------------------------------------------
# schemathesis generates requests from /openapi.json (valid ones, and invalid ones in negative
# mode) for every operation and runs every check on each answer: no 5xx, only documented statuses,
# content types and headers, bodies that match their schemas, valid data accepted and invalid data
# refused, the API key enforced. Its pytest plugin does not run on pytest 9 (it reads the removed
# ``Node._nodeid``), so the test drives its Hypothesis strategies directly.

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402

from poolkit.entrypoints.server.openapi import UNSTATED_RULES  # noqa: E402

FUZZ_EXAMPLES = 25


def _whole_floats(value) -> bool:
    """Whether a JSON value holds a number like ``256.0``, which JSON Schema counts as an integer."""
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_whole_floats(v) for v in value.values())
    return isinstance(value, list) and any(_whole_floats(v) for v in value)


def _json(response):
    try:
        return response.json()
    except ValueError:
        return None


def _refusal(response) -> str:
    """The message of a refusal of a request's values: a 400, or TEI's 413 or 422 ``Validation``
    (TEI's statuses for what poolkit's other routes answer with 400); ``""`` for anything else."""
    body = _json(response)
    if response.status_code == 400 and isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]["message"]
    if response.status_code in (400, 413, 422) and isinstance(body, dict) and body.get("error_type") in ("Empty", "Validation"):
        return body["error"]
    return ""


def valid_data_accepted_but_for_unstated_rules(ctx, response, case):
    """schemathesis' positive_data_acceptance, except for a refusal (:func:`_refusal`) that names one
    of the rules the document lists as beyond JSON Schema
    (:data:`poolkit.entrypoints.server.openapi.UNSTATED_RULES`), or for a body with a number like
    ``256.0`` (the first of them, whatever field the 400 names: on /invocations it is the message
    of the first request type of the body's shape)."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except Exception:
        message = _refusal(response)
        if not (any(words in message for words in UNSTATED_RULES.values()) or (message and _whole_floats(case.body))):
            raise
        return None


def invalid_data_refused_in_the_api_s_own_terms(ctx, response, case):
    """schemathesis' negative_data_rejection, with TEI's statuses for a refusal on TEI's routes:
    413 ``Validation`` (what is 400 elsewhere) and 424 ``Backend`` (a model of the wrong type)."""
    try:
        return negative_data_rejection(ctx, response, case)
    except Exception:
        body = _json(response)
        tei = isinstance(body, dict) and (response.status_code, body.get("error_type")) in ((413, "Validation"), (424, "Backend"))
        if not tei:
            raise
        return None


def fuzz(app, headers: dict | None = None, examples: int = FUZZ_EXAMPLES, paths: tuple[str, ...] = ()) -> tuple[dict, int]:
    """Every operation of ``app``'s document (or those of ``paths``), positive and negative cases,
    all checks; the statuses seen and the number of operations."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if not paths or op.path in paths]
    seen: dict[int, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call_and_validate(
                    headers=headers,
                    excluded_checks=[positive_data_acceptance, negative_data_rejection],
                    additional_checks=[valid_data_accepted_but_for_unstated_rules, invalid_data_refused_in_the_api_s_own_terms],
                )
                seen[response.status_code] = seen.get(response.status_code, 0) + 1

            try:
                check()
            except Unsatisfiable:  # nothing to break in an operation without parameters
                assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    return seen, len(operations)


def test_schema_fuzzing_with_every_check_finds_nothing(minilm):
    app = create_app(minilm, served_model_name="minilm", api_key=KEY, limits=ServerLimits(max_request_tokens=20_000))
    seen, operations = fuzz(app, headers=AUTH)
    print(f"\nschemathesis: {sum(seen.values())} requests over {operations} operations, statuses {dict(sorted(seen.items()))}")
    # /classify, TEI's /predict and /embed_sparse are left out: all-MiniLM-L6-v2 neither classifies nor
    # embeds sparsely; /rerank and /tokenize are vLLM's and TEI's at once; GET / is TEI's health alias;
    # vLLM's two LoRA routes answer 404 here (runtime updating is off)
    assert operations == 24
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0 and seen.get(401, 0) > 0 and seen.get(422, 0) > 0


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    from tiny_models import build_classifier

    return LLM(str(build_classifier(tmp_path_factory.mktemp("ce") / "ce", "bert", 1)))


def test_schema_fuzzing_of_a_cross_encoder_finds_nothing(cross_encoder):
    """A one-label classifier: /classify, and scoring that takes score templates and instructions."""
    app = create_app(cross_encoder, served_model_name="ce", limits=ServerLimits(max_request_tokens=20_000))
    seen, operations = fuzz(app, examples=10)
    assert operations == 20  # no /v1/embeddings, /v2/embed, /embed, /embed_all, /similarity: a cross-encoder does not embed
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0


def test_schema_fuzzing_of_tei_s_sparse_routes_finds_nothing(splade_dir):
    """SPLADE: TEI's /embed_sparse, and the root route answering as it (and GET /, TEI's health alias)."""
    splade = LLM(str(splade_dir), hf_overrides={"architectures": ["BertSpladeSparseEmbeddingModel"]})
    app = create_app(splade, served_model_name="splade", limits=ServerLimits(max_request_tokens=20_000))
    seen, operations = fuzz(app, examples=15, paths=("/embed_sparse", "/"))
    assert operations == 3 and seen.get(200, 0) > 0 and seen.get(422, 0) > 0


def _openapi(app) -> dict:
    with TestClient(app) as c:
        r = c.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _valid(doc: dict, name: str, body) -> bool:
    import jsonschema

    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(body)


def test_the_openapi_document_describes_what_the_server_answers(app, minilm):
    doc = _openapi(app)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error, tei_error = {"$ref": "#/components/schemas/ErrorResponse"}, {"$ref": "#/components/schemas/TeiErrorResponse"}
    assert not {alias for alias in TEI_ALIASES} & set(doc["paths"])  # described under the paths they share
    for path in INFERENCE_ROUTES & set(doc["paths"]):
        answers = doc["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "404", "413", "415", "429", "500", "503"} <= set(answers), path
        errors = [answers[s]["content"]["application/json"]["schema"] for s in answers if s != "200"]
        if path in TEI_ROUTES:  # TEI's error body and statuses; never FastAPI's 422 body
            assert {"422", "424"} <= set(answers) and all(e == tei_error for e in errors), path
        elif path in SHARED_ROUTES:  # vLLM's and TEI's
            assert {"422", "424"} <= set(answers)
            assert all(e in (error, tei_error, {"anyOf": [error, tei_error]}) for e in errors), path
            assert answers["400"]["content"]["application/json"]["schema"] == {"anyOf": [error, tei_error]}
        else:
            assert "422" not in answers and all(e == error for e in errors), path
        assert "Retry-After" in answers["429"]["headers"] and "WWW-Authenticate" in answers["401"]["headers"]
        assert doc["paths"][path]["post"]["security"] == [{"apiKey": []}]
    assert doc["paths"]["/info"]["get"]["security"] == [{"apiKey": []}]
    assert doc["paths"]["/embed_all"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"
    assert doc["components"]["securitySchemes"]["apiKey"] == {"type": "http", "scheme": "bearer"}
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "application/octet-stream" in doc["paths"]["/v1/embeddings"]["post"]["responses"]["200"]["content"]
    assert "/classify" not in doc["paths"]  # all-MiniLM-L6-v2 does not classify
    # The request schemas refuse what the server refuses.
    for name, body in (
        ("RerankRequest", {"documents": "", "query": ""}),
        ("RerankRequest", {"documents": [], "query": "q"}),
        ("EmbeddingRequest", {"input": ""}),
        ("EmbeddingRequest", {"input": []}),
        ("EmbeddingRequest", {}),
        ("EmbeddingRequest", {"input": [minilm.model.hf_config.vocab_size]}),  # out of the vocabulary
        ("EmbeddingRequest", {"input": "a", "model": "another"}),
        ("EmbeddingRequest", {"input": "a", "dimensions": 8}),  # not a matryoshka model
        ("EmbeddingRequest", {"input": "a", "truncate_prompt_tokens": 0}),
        ("EmbeddingRequest", {"input": "a", "truncate_prompt_tokens": 100_000}),
        ("EmbeddingRequest", {"messages": [{"role": "user", "content": "a"}]}),  # no chat template
        ("ScoreRequest", {"text_1": "a", "documents": ["b"]}),  # not a pair of one kind
        ("ScoreRequest", {"text_1": "a"}),
        ("CohereEmbedRequest", {"texts": ["a"], "images": ["data:image/png;base64,AA=="]}),
        ("TokenizeRequest", {}),
        ("EmbedRequest", {"inputs": [True, False]}),  # TEI's
        ("EmbedRequest", {"inputs": ""}),
        ("EmbedRequest", {"inputs": [[]]}),
        ("EmbedRequest", {"inputs": [minilm.model.hf_config.vocab_size]}),
        ("EmbedRequest", {"inputs": "a", "normalize": "yes"}),
        ("EmbedRequest", {"inputs": "a", "truncation_direction": "up"}),
        ("EmbedRequest", {"inputs": "a", "prompt_name": "query"}),  # the model has no prompts
        ("DecodeRequest", {"ids": ["7592"]}),
        ("TeiRerankRequest", {"query": "q", "texts": []}),
    ):
        assert not _valid(doc, name, body), (name, body)
        path = {"RerankRequest": "/v2/rerank", "EmbeddingRequest": "/v1/embeddings", "ScoreRequest": "/score",
                "CohereEmbedRequest": "/v2/embed", "TokenizeRequest": "/tokenize", "EmbedRequest": "/embed",
                "DecodeRequest": "/decode", "TeiRerankRequest": "/rerank"}[name]
        with TestClient(app, headers=AUTH) as c:
            answer = c.post(path, json=body)
        assert answer.status_code in (400, 404, 413, 422), (name, body, answer.text)  # and the server refuses it
    for name, body in (
        ("EmbedRequest", {"inputs": ["a", [101, 102]], "truncation_direction": "LEFT", "model": "minilm"}),
        ("RerankRequest", {"documents": ["b", {"text": "c"}], "query": "q", "top_n": 0}),
        ("EmbeddingRequest", {"input": [[101, 102]], "model": "minilm", "encoding_format": None}),
        ("ScoreRequest", {"queries": "a", "documents": ["b", "c"]}),
        ("CohereEmbedRequest", {"texts": ["a"], "embedding_types": ["float", "binary"]}),
    ):
        assert _valid(doc, name, body), (name, body)


def test_the_openapi_document_without_a_key(minilm):
    doc = _openapi(create_app(minilm, served_model_name="minilm"))
    assert "securitySchemes" not in doc["components"]
    assert "401" not in doc["paths"]["/v1/embeddings"]["post"]["responses"]
