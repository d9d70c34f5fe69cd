# Port of vllm tests/entrypoints/pooling/token_embed/test_online.py
# intfloat/multilingual-e5-small with --pooler-config '{"pooling_task": "token_embed"}' ->
# all-MiniLM-L6-v2 with the same pooler config.
import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "all-MiniLM-L6-v2"
input_text = "The best thing about vLLM is that it supports many different models"


@pytest.fixture(scope="module")
def input_tokens(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))(input_text)["input_ids"]


@pytest.fixture(scope="module")
def server(minilm_dir):
    llm = LLM(str(minilm_dir), runner="pooling", enforce_eager=True, max_model_len=512, pooler_config='{"pooling_task": "token_embed"}')
    with TestClient(create_app(llm, served_model_name=MODEL_NAME)) as c:
        yield c


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_pooling_token_embed(server, model_name: str, input_tokens):
    task = "token_embed"
    response = server.post("/pooling", json={"model": model_name, "input": input_text, "encoding_format": "float", "task": task})
    poolings = response.json()
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == len(input_tokens)
    assert len(poolings["data"][0]["data"][0]) == 384


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("task", ["embed", "classify", "token_classify", "plugin"])
def test_pooling_not_supported(server, model_name: str, task: str):
    response = server.post("/pooling", json={"model": model_name, "input": "test", "encoding_format": "float", "task": task})
    if task == "embed":
        # DEPARTURE: vLLM's token_embed server refuses embed ("Unsupported task: 'embed'"); poolkit
        # serves every task of the model from one server.
        assert response.status_code == 200, response.text
        assert len(response.json()["data"][0]["data"]) == 384
        return
    assert response.json()["error"]["type"] == "BadRequestError"
    assert response.json()["error"]["message"].startswith(f"Unsupported task: {task!r}")
