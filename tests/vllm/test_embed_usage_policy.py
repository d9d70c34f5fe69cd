# Port of vllm tests/entrypoints/pooling/embed/test_usage_policy.py
# BAAI/bge-base-en-v1.5 -> all-MiniLM-L6-v2 (max_model_len=512), the openai client over TestClient.
import openai
import pytest
from fastapi.testclient import TestClient
from port_utils import openai_client

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def server(minilm_dir):
    llm = LLM(str(minilm_dir), runner="pooling", dtype="float32", enforce_eager=True, max_model_len=512)
    with TestClient(create_app(llm, served_model_name=MODEL_NAME)) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


class TestUsagePolicyDefault:
    def test_non_streaming(self, client: openai.OpenAI):
        """Non-streaming embeddings should always return usage."""
        response = client.embeddings.create(model=MODEL_NAME, input="Hello world", encoding_format="float")
        assert response.usage is not None
        assert response.usage.prompt_tokens > 0
        assert response.usage.completion_tokens == 0
        assert response.usage.total_tokens == response.usage.prompt_tokens

    def test_non_streaming_batch(self, client: openai.OpenAI):
        """Batch embeddings should return usage per item."""
        response = client.embeddings.create(model=MODEL_NAME, input=["Hello", "World"], encoding_format="float")
        assert response.usage is not None
        assert response.usage.prompt_tokens > 0
        assert response.usage.completion_tokens == 0
        assert response.usage.total_tokens > 0
