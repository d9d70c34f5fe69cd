# Port of vllm tests/entrypoints/pooling/scoring/test_bi_encoder_online.py
# BAAI/bge-base-en-v1.5 (768 dimensions) served with --max-model-len 100 -> all-MiniLM-L6-v2 (384),
# max_model_len=100; EncoderScoringHfRunner -> the cosine of sentence-transformers embeddings.
import pytest
from fastapi.testclient import TestClient
from port_utils import EncoderScoringHfRunner

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "all-MiniLM-L6-v2"
input_text = "This product was excellent and exceeded my expectations"
EMBEDDING_SIZE = 384

TEXTS_1 = ["What is the capital of France?", "What is the capital of Germany?"]
TEXTS_2 = ["The capital of France is Paris.", "The capital of Germany is Berlin."]


@pytest.fixture(scope="module")
def server(minilm_dir):
    llm = LLM(str(minilm_dir), enforce_eager=True, max_model_len=100)
    with TestClient(create_app(llm, served_model_name=MODEL_NAME)) as c:
        yield c


@pytest.fixture(scope="module")
def hf_model(minilm_st):
    return EncoderScoringHfRunner(minilm_st)


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


def test_score_api_queries_vs_documents(hf_model, server):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]
    check_scores(server, {"queries": TEXTS_1, "documents": TEXTS_2}, text_pairs, hf_model)


def test_score_api_queries_vs_items(hf_model, server):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]
    check_scores(server, {"queries": TEXTS_1, "items": TEXTS_2}, text_pairs, hf_model)


def test_score_api_text_1_vs_text_2(hf_model, server):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]
    check_scores(server, {"text_1": TEXTS_1, "text_2": TEXTS_2}, text_pairs, hf_model)


def test_score_api_data_1_vs_data_2(hf_model, server):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]
    check_scores(server, {"data_1": TEXTS_1, "data_2": TEXTS_2}, text_pairs, hf_model)


def test_rerank_api_texts(server):
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
    assert paris_result["relevance_score"] > brazil_result["relevance_score"]


def test_rerank_api_top_n(server):
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris.", "Cross-encoder models are neat"]

    rerank_response = server.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents, "top_n": 2})
    assert rerank_response.status_code == 200, rerank_response.text
    rerank = rerank_response.json()

    assert rerank["id"] is not None
    assert rerank["results"] is not None
    assert len(rerank["results"]) == 2
    assert rerank["results"][0]["index"] == 1


def test_rerank_api_max_model_len(server):
    query = "What is the capital of France?" * 100
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]

    rerank_response = server.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents})
    assert rerank_response.status_code == 400
    # Assert just a small fragments of the response
    assert "Please reduce the length of the input prompt" in rerank_response.text


def test_score_api_max_model_len(server):
    queries = "What is the capital of France?" * 20
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]

    score_response = server.post("/score", json={"model": MODEL_NAME, "queries": queries, "documents": documents})
    assert score_response.status_code == 400
    # Assert just a small fragments of the response
    assert "Please reduce the length of the input prompt" in score_response.text

    # Test truncation
    score_response = server.post(
        "/score", json={"model": MODEL_NAME, "queries": queries, "documents": documents, "truncate_prompt_tokens": 101}
    )
    assert score_response.status_code == 400
    assert "Please request a smaller truncation size." in score_response.text


def test_invocations(server):
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    request_args = {"model": MODEL_NAME, "query": query, "documents": documents}

    rerank_response = server.post("/rerank", json=request_args)
    assert rerank_response.status_code == 200, rerank_response.text
    invocation_response = server.post("/invocations", json=request_args)
    assert invocation_response.status_code == 200, invocation_response.text

    rerank_output = rerank_response.json()
    invocation_output = invocation_response.json()

    assert rerank_output.keys() == invocation_output.keys()
    for rerank_result, invocations_result in zip(rerank_output["results"], invocation_output["results"]):
        assert rerank_result.keys() == invocations_result.keys()
        assert rerank_result["relevance_score"] == pytest.approx(invocations_result["relevance_score"], rel=0.01)


def test_pooling_embed(server):
    response = server.post("/pooling", json={"model": MODEL_NAME, "input": input_text, "encoding_format": "float", "task": "embed"})
    poolings = response.json()
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == EMBEDDING_SIZE


@pytest.mark.parametrize("task", ["classify", "token_classify", "plugin"])
def test_pooling_not_supported(server, task: str):
    response = server.post("/pooling", json={"model": MODEL_NAME, "input": input_text, "encoding_format": "float", "task": task})
    assert response.json()["error"]["type"] == "BadRequestError"
    assert response.json()["error"]["message"].startswith(f"Unsupported task: {task!r}")
