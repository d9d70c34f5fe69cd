# Port of vllm tests/entrypoints/pooling/scoring/test_late_interaction_online.py
# answerdotai/answerai-colbert-small-v1 (96-wide) served with --max-model-len 512 -> a tiny
# HF_ColBERT with a 16-wide projection (conftest ``colbert_dir``; its context is 128), scored
# against ColBERTScoringHfRunner (transformers + the checkpoint's ``linear`` + MaxSim).
# vLLM runs every test twice, with MaxSim on the worker (flash late interaction) and with
# --no-enable-flash-late-interaction; poolkit has one MaxSim path (the ``maxsim`` kernel), so the
# server fixture keeps vLLM's two params and both serve the same app.
# ADAPTED: test_rerank_api_texts / test_rerank_api_top_n assert colbert-small's trained ranking
# (Paris above Brasilia); the tiny stand-in is random, so the ranking is checked against
# ColBERTScoringHfRunner's MaxSim scores on the same weights instead.
import pytest
from fastapi.testclient import TestClient
from port_utils import ColBERTScoringHfRunner

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "answerai-colbert-stand-in"
COLBERT_DIM = 16
LINEAR_WEIGHTS_KEY = "linear.weight"

TEXTS_1 = ["What is the capital of France?", "What is the capital of Germany?"]
TEXTS_2 = ["The capital of France is Paris.", "The capital of Germany is Berlin."]


@pytest.fixture(scope="module")
def colbert_llm(colbert_dir):
    return LLM(str(colbert_dir))


@pytest.fixture(scope="module", params=[True, False])
def server(request, colbert_llm):
    with TestClient(create_app(colbert_llm, served_model_name=MODEL_NAME)) as c:
        yield c


@pytest.fixture(scope="module")
def hf_model(colbert_dir):
    return ColBERTScoringHfRunner(model_name=str(colbert_dir), linear_weights_key=LINEAR_WEIGHTS_KEY)


def check_scores(server, body, text_pairs, hf_model):
    score_response = server.post("/score", json={"model": MODEL_NAME, **body})
    assert score_response.status_code == 200, score_response.text
    score = score_response.json()

    assert score["id"] is not None
    assert score["data"] is not None
    assert len(score["data"]) == len(text_pairs)

    vllm_outputs = [d["score"] for d in score["data"]]
    hf_outputs = hf_model.predict(text_pairs).tolist()
    for i in range(len(vllm_outputs)):
        assert hf_outputs[i] == pytest.approx(vllm_outputs[i], rel=0.01)


def test_score_api_queries_str_1_documents_str_1(hf_model, server):
    check_scores(server, {"queries": TEXTS_1[0], "documents": TEXTS_2[0]}, [[TEXTS_1[0], TEXTS_2[0]]], hf_model)


def test_score_api_queries_str_1_documents_str_n(hf_model, server):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[0], TEXTS_2[1]]]
    check_scores(server, {"queries": TEXTS_1[0], "documents": TEXTS_2}, text_pairs, hf_model)


def test_score_api_queries_str_n_documents_str_n(hf_model, server):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]
    check_scores(server, {"queries": TEXTS_1, "documents": TEXTS_2}, text_pairs, hf_model)


def test_rerank_api_texts(server, hf_model):
    """Test ColBERT rerank endpoint."""
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]

    rerank_response = server.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents})
    assert rerank_response.status_code == 200, rerank_response.text
    rerank = rerank_response.json()

    assert rerank["id"] is not None
    assert rerank["results"] is not None
    assert len(rerank["results"]) == 2

    paris_result = next(r for r in rerank["results"] if r["index"] == 1)
    brazil_result = next(r for r in rerank["results"] if r["index"] == 0)
    hf_brazil, hf_paris = hf_model.predict([[query, d] for d in documents]).tolist()
    assert (paris_result["relevance_score"] > brazil_result["relevance_score"]) == (hf_paris > hf_brazil)


def test_rerank_api_top_n(server, hf_model):
    """Test ColBERT rerank with top_n parameter."""
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris.", "Machine learning is a field of AI."]

    rerank_response = server.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents, "top_n": 2})
    assert rerank_response.status_code == 200, rerank_response.text
    rerank = rerank_response.json()

    assert len(rerank["results"]) == 2
    hf_scores = hf_model.predict([[query, d] for d in documents]).tolist()
    assert rerank["results"][0]["index"] == max(range(3), key=lambda i: hf_scores[i])


def test_token_embed(server):
    """Test ColBERT token_embed task via pooling endpoint."""
    text = "What is the capital of France?"

    pooling_response = server.post("/pooling", json={"model": MODEL_NAME, "input": text, "task": "token_embed"})
    assert pooling_response.status_code == 200, pooling_response.text
    pooling = pooling_response.json()

    assert "data" in pooling
    assert len(pooling["data"]) == 1

    embeddings = pooling["data"][0]["data"]
    assert isinstance(embeddings, list)
    assert len(embeddings) > 0
    assert len(embeddings[0]) == COLBERT_DIM


def test_embed_not_supported(server):
    """Test that ColBERT model does not support 'embed' task."""
    task = "embed"
    text = "What is the capital of France?"

    response = server.post("/pooling", json={"model": MODEL_NAME, "input": text, "task": task})
    assert response.json()["error"]["type"] == "BadRequestError"
    assert response.json()["error"]["message"].startswith(f"Unsupported task: {task!r}")
