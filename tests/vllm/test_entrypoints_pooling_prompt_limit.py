# Port of vllm tests/entrypoints/pooling/test_pooling_prompt_limit.py
# vLLM bounds the fan-out of /score, /rerank, /pooling and /classify requests with the environment
# variable VLLM_MAX_COMPLETION_PROMPTS, checked when its pydantic request models are built
# (VLLMValidationError "<field> list length ..."). DEPARTURE: poolkit's bound is its own server
# limit, --max-inputs-per-request (ServerLimits.max_inputs_per_request), checked when a request
# arrives: a 400 whose error names the field in "param". The ports send the same request shapes to
# servers with the limit set to 5 (vLLM's value) and check that.
# Not ported: TestIOProcessorPromptLimit (2 tests; IOProcessorRequest "data" lists belong to an IO
# processor plugin, whose data shape poolkit leaves to the plugin).
import pytest
from fastapi.testclient import TestClient

from poolkit.entrypoints.server import ServerLimits, create_app

LIMITS = ServerLimits(max_inputs_per_request=5)


@pytest.fixture(scope="module")
def embed_server(minilm):
    with TestClient(create_app(minilm, served_model_name="m", limits=LIMITS)) as c:
        yield c


@pytest.fixture(scope="module")
def classify_server(apeach):
    with TestClient(create_app(apeach, served_model_name="m", limits=LIMITS)) as c:
        yield c


def rejected(response, field):
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


class TestScoringPromptLimit:
    """Scoring and rerank requests reject oversized lists."""

    def test_score_documents_rejected(self, embed_server):
        rejected(embed_server.post("/score", json={"model": "m", "queries": ["q"], "documents": ["d"] * 10}), "documents")

    def test_score_documents_within_limit(self, embed_server):
        response = embed_server.post("/score", json={"model": "m", "queries": ["q"], "documents": ["d"] * 5})
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 5

    def test_score_items_rejected(self, embed_server):
        rejected(embed_server.post("/score", json={"model": "m", "queries": ["q"], "items": ["d"] * 10}), "items")

    def test_score_text_2_rejected(self, embed_server):
        rejected(embed_server.post("/score", json={"model": "m", "text_1": "q", "text_2": ["d"] * 10}), "text_2")

    def test_rerank_documents_rejected(self, embed_server):
        rejected(embed_server.post("/rerank", json={"model": "m", "query": "q", "documents": ["d"] * 10}), "documents")

    def test_rerank_within_limit(self, embed_server):
        response = embed_server.post("/rerank", json={"model": "m", "query": "q", "documents": ["d"] * 5})
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 5

    def test_scalar_input_unaffected(self, embed_server):
        response = embed_server.post("/rerank", json={"model": "m", "query": "q", "documents": "single doc"})
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 1


class TestPoolingPromptLimit:
    """/pooling rejects oversized input lists."""

    def test_string_list_rejected(self, embed_server):
        rejected(embed_server.post("/pooling", json={"model": "m", "input": ["x"] * 10}), "input")

    def test_token_id_lists_rejected(self, embed_server):
        rejected(embed_server.post("/pooling", json={"model": "m", "input": [[1000]] * 10}), "input")

    def test_single_token_id_list_unaffected(self, embed_server):
        response = embed_server.post("/pooling", json={"model": "m", "input": [1000, 1001, 1002, 1003, 1004, 1005]})
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 1

    def test_within_limit_accepted(self, embed_server):
        response = embed_server.post("/pooling", json={"model": "m", "input": ["x"] * 5})
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 5

    def test_scalar_string_unaffected(self, embed_server):
        response = embed_server.post("/pooling", json={"model": "m", "input": "hello world"})
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 1


class TestClassifyPromptLimit:
    """/classify rejects oversized input lists."""

    def test_input_list_rejected(self, classify_server):
        rejected(classify_server.post("/classify", json={"model": "m", "input": ["x"] * 10}), "input")

    def test_within_limit_accepted(self, classify_server):
        response = classify_server.post("/classify", json={"model": "m", "input": ["x"] * 5})
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 5
