# Port of vllm tests/entrypoints/pooling/embed/test_cohere_openai_parity.py
# BAAI/bge-base-en-v1.5 -> all-MiniLM-L6-v2, max_model_len=512, under FastAPI's TestClient.
import numpy as np
import pytest
from fastapi.testclient import TestClient

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def server(minilm_dir):
    llm = LLM(str(minilm_dir), runner="pooling", enforce_eager=True, max_model_len=512, gpu_memory_utilization=0.02)
    with TestClient(create_app(llm, served_model_name=MODEL_NAME)) as c:
        yield c


def _cohere_embed(server, texts: list[str]) -> list[list[float]]:
    body = {"model": MODEL_NAME, "texts": texts, "embedding_types": ["float"]}
    resp = server.post("/v2/embed", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["embeddings"]["float"]


def _openai_embed(server, texts: list[str]) -> list[list[float]]:
    body = {"model": MODEL_NAME, "input": texts, "encoding_format": "float"}
    resp = server.post("/v1/embeddings", json=body)
    assert resp.status_code == 200, resp.text
    return [item["embedding"] for item in resp.json()["data"]]


def _cosine_sim(a: list[float], b: list[float]) -> float:
    va, vb = np.array(a), np.array(b)
    return float(np.dot(va, vb) / (np.linalg.norm(va) * np.linalg.norm(vb)))


def test_single_text_parity(server):
    """A single text should produce equivalent embeddings via both APIs."""
    texts = ["the quick brown fox jumps over the lazy dog"]
    v2 = _cohere_embed(server, texts)
    v1 = _openai_embed(server, texts)
    cos = _cosine_sim(v2[0], v1[0])
    assert cos > 0.9999, f"single-text parity failed, cosine={cos}"


def test_batch_parity(server):
    """A batch of texts should produce equivalent embeddings via both APIs, in the same order."""
    texts = ["machine learning", "deep learning", "natural language processing"]
    v2 = _cohere_embed(server, texts)
    v1 = _openai_embed(server, texts)
    assert len(v2) == len(v1) == 3

    similarities = np.array([[_cosine_sim(v2_emb, v1_emb) for v1_emb in v1] for v2_emb in v2])
    for i in range(3):
        assert int(np.argmax(similarities[i])) == i, f"batch parity order mismatch at index {i}: similarities={similarities[i].tolist()}"
        assert similarities[i, i] > 0.9999, f"batch parity failed at index {i}, cosine={similarities[i, i]}"


def test_token_count_parity(server):
    """Both APIs should report the same prompt token count."""
    texts = ["hello world"]
    v2_resp = server.post("/v2/embed", json={"model": MODEL_NAME, "texts": texts, "embedding_types": ["float"]})
    v1_resp = server.post("/v1/embeddings", json={"model": MODEL_NAME, "input": texts, "encoding_format": "float"})
    assert v2_resp.status_code == 200 and v1_resp.status_code == 200
    v2_tokens = v2_resp.json()["meta"]["billed_units"]["input_tokens"]
    v1_tokens = v1_resp.json()["usage"]["prompt_tokens"]
    assert v2_tokens == v1_tokens
