# Port of vllm tests/entrypoints/pooling/test_cache_salt_validation.py
# vLLM validates its pydantic request classes directly; poolkit's are served: the same requests go
# to /v1/embeddings on all-MiniLM-L6-v2, and a pydantic ValidationError is a 400 there.
# test_pooling_matches_completions_on_empty_cache_salt compares with vLLM's CompletionRequest:
# poolkit has no completions endpoint, so only its embedding half runs (the same check as the first).
# poolkit keeps no prefix cache: the salt is accepted and checked, and changes nothing.
import pytest
from fastapi.testclient import TestClient

from poolkit.entrypoints.server import create_app

MODEL = "any-model"
PROMPT = "hello"


@pytest.fixture(scope="module")
def client(minilm):
    with TestClient(create_app(minilm, served_model_name=MODEL)) as c:
        yield c


def _embed(client, **fields):
    return client.post("/v1/embeddings", json={"model": MODEL, "input": PROMPT, **fields})


def test_pooling_rejects_empty_cache_salt(client):
    response = _embed(client, cache_salt="")
    assert response.status_code == 400
    assert "cache_salt" in response.text


def test_pooling_accepts_a_real_cache_salt(client):
    response = _embed(client, cache_salt="tenant-a")
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["embedding"] == _embed(client).json()["data"][0]["embedding"]


def test_pooling_allows_cache_salt_to_be_omitted(client):
    """Omission stays valid; only the empty string is rejected."""
    assert _embed(client).status_code == 200


def test_pooling_matches_completions_on_empty_cache_salt(client):
    """The two endpoints should agree, which is the point of the change."""
    assert _embed(client, cache_salt="").status_code == 400
    for route, body in (("/pooling", {"input": PROMPT}), ("/score", {"text_1": "a", "text_2": "b"}), ("/v2/embed", {"texts": [PROMPT]})):
        assert client.post(route, json={"model": MODEL, "cache_salt": "", **body}).status_code == 400, route
