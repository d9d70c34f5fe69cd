# Port of vllm tests/entrypoints/pooling/scoring/test_cross_encoder_online.py
# BAAI/bge-reranker-base (XLMRobertaForSequenceClassification) served with --max-model-len 100 ->
# a tiny one-label XLMRobertaForSequenceClassification (conftest ``bge_reranker_dir``), the same
# max_model_len; vLLM's hf_runner(is_cross_encoder=True) -> sentence-transformers' CrossEncoder on
# the same directory. vLLM's token-id constants are bge's: here they come from the tokenizer.
# dtype: fp32 (vLLM: half).
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "bge-reranker-stand-in"
input_text = "This product was excellent and exceeded my expectations"

TEXTS_1 = ["What is the capital of France?", "What is the capital of Germany?"]
TEXTS_2 = ["The capital of France is Paris.", "The capital of Germany is Berlin."]

@pytest.fixture(scope="module")
def input_tokens(bge_reranker_dir):
    return AutoTokenizer.from_pretrained(str(bge_reranker_dir))(input_text)["input_ids"]


@pytest.fixture(scope="module")
def server(bge_reranker_dir):
    llm = LLM(str(bge_reranker_dir), enforce_eager=True, max_model_len=100)
    with TestClient(create_app(llm, served_model_name=MODEL_NAME)) as c:
        yield c


@pytest.fixture(scope="module")
def hf_model(bge_reranker_ce):
    return bge_reranker_ce


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


def test_basic(server, input_tokens):
    # test /v1/models
    response = server.get("/v1/models")
    served_model = response.json()["data"][0]["id"]
    assert served_model == MODEL_NAME

    # test /tokenize
    response = server.post("/tokenize", json={"model": MODEL_NAME, "prompt": input_text})
    assert response.json()["tokens"] == input_tokens


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


def test_rerank_api_texts(server, hf_model):
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]

    rerank_response = server.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents})
    assert rerank_response.status_code == 200, rerank_response.text
    rerank = rerank_response.json()

    assert rerank["id"] is not None
    assert rerank["results"] is not None
    assert len(rerank["results"]) == 2
    # ADAPTED: vLLM asserts bge-reranker's trained verdict (Paris >= 0.9, Brazil <= 0.01). The tiny
    # stand-in is random, so the check is that the results are sentence-transformers' scores for
    # the same pairs, best first.
    hf_scores = hf_model.predict([[query, d] for d in documents]).tolist()
    assert [r["index"] for r in rerank["results"]] == sorted(range(2), key=lambda i: -hf_scores[i])
    for r in rerank["results"]:
        assert r["relevance_score"] == pytest.approx(hf_scores[r["index"]], rel=0.01)


def test_rerank_api_top_n(server, hf_model):
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris.", "Cross-encoder models are neat"]

    rerank_response = server.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents, "top_n": 2})
    assert rerank_response.status_code == 200, rerank_response.text
    rerank = rerank_response.json()

    assert rerank["id"] is not None
    assert rerank["results"] is not None
    assert len(rerank["results"]) == 2
    # ADAPTED: as in test_rerank_api_texts (vLLM: results[0] >= 0.9, results[1] <= 0.01).
    hf_scores = hf_model.predict([[query, d] for d in documents]).tolist()
    assert [r["index"] for r in rerank["results"]] == sorted(range(3), key=lambda i: -hf_scores[i])[:2]


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


def test_use_activation(server):
    def get_outputs(use_activation):
        query = "What is the capital of France?"
        documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
        response = server.post(
            "/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents, "use_activation": use_activation}
        )
        outputs = response.json()
        return torch.tensor([x["relevance_score"] for x in outputs["results"]])

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)

    assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), "wo_activation should not use activation."
    assert torch.allclose(F.sigmoid(wo_activation), w_activation, atol=1e-2), "w_activation should be close to activation(wo_activation)."


def test_pooling_classify(server):
    response = server.post("/pooling", json={"model": MODEL_NAME, "input": input_text, "encoding_format": "float", "task": "classify"})
    poolings = response.json()
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == 1


def test_pooling_token_classify(server, input_tokens):
    response = server.post(
        "/pooling", json={"model": MODEL_NAME, "task": "token_classify", "input": input_text, "encoding_format": "float"}
    )
    poolings = response.json()
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == len(input_tokens)
    assert len(poolings["data"][0]["data"][0]) == 1


def test_rerank_max_tokens_per_doc(server):
    """Test that max_tokens_per_doc truncates documents correctly."""
    query = "What is the capital of France?"
    long_doc = "The capital of France is Paris. " * 50
    short_doc = "The capital of Brazil is Brasilia."

    rerank_response = server.post(
        "/rerank", json={"model": MODEL_NAME, "query": query, "documents": [long_doc, short_doc], "max_tokens_per_doc": 10}
    )
    assert rerank_response.status_code == 200, rerank_response.text
    rerank = rerank_response.json()
    assert rerank["id"] is not None
    assert rerank["results"] is not None
    assert len(rerank["results"]) == 2
    assert rerank["usage"]["prompt_tokens"] > 0


def test_rerank_max_tokens_per_doc_reduces_tokens(server):
    """Test that max_tokens_per_doc actually reduces the token count."""
    query = "What is the capital of France?"
    # vLLM: a doc that fits within max_model_len=100 (~70 tokens with bge's tokenizer); the tiny
    # WordPiece vocabulary splits "capital"-free words into more pieces, so 5 repeats here.
    long_doc = "The capital of France is Paris. " * 5

    response_no_limit = server.post(
        "/rerank", json={"model": MODEL_NAME, "query": query, "documents": [long_doc], "truncate_prompt_tokens": 99}
    )
    assert response_no_limit.status_code == 200, response_no_limit.text
    rerank_no_limit = response_no_limit.json()

    response_with_limit = server.post(
        "/rerank", json={"model": MODEL_NAME, "query": query, "documents": [long_doc], "max_tokens_per_doc": 10}
    )
    assert response_with_limit.status_code == 200, response_with_limit.text
    rerank_with_limit = response_with_limit.json()

    assert rerank_with_limit["usage"]["prompt_tokens"] < rerank_no_limit["usage"]["prompt_tokens"]


def test_rerank_max_tokens_per_doc_validation(server):
    """Test that max_tokens_per_doc validation works correctly."""
    query = "What is the capital of France?"
    documents = ["The capital of France is Paris."]

    response = server.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents, "max_tokens_per_doc": 0})
    assert response.status_code == 400
    assert "max_tokens_per_doc must be a positive integer" in response.text

    response = server.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents, "max_tokens_per_doc": -5})
    assert response.status_code == 400
    assert "max_tokens_per_doc must be a positive integer" in response.text


def test_score_max_tokens_per_doc_with_score_template(server):
    """Test max_tokens_per_doc compatibility with the rerank API's cross-encoder path."""
    query = "What is the capital of France?"
    long_doc = "The capital of France is Paris. " * 20

    rerank_response = server.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": [long_doc], "max_tokens_per_doc": 15})
    assert rerank_response.status_code == 200, rerank_response.text
    rerank = rerank_response.json()
    assert rerank["results"] is not None
    assert len(rerank["results"]) == 1
    assert rerank["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("task", ["embed", "token_embed", "plugin"])
def test_pooling_not_supported(server, task: str):
    response = server.post("/pooling", json={"model": MODEL_NAME, "input": input_text, "encoding_format": "float", "task": task})
    assert response.json()["error"]["type"] == "BadRequestError"
    assert response.json()["error"]["message"].startswith(f"Unsupported task: {task!r}")
