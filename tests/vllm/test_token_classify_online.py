# Port of vllm tests/entrypoints/pooling/token_classify/test_online.py
# jason9693/Qwen2.5-1.5B-apeach served with --pooler-config '{"pooling_task": "token_classify"}'
# -> the tiny two-label Qwen2 classifier stand-in with the same pooler config.
import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "apeach-stand-in"
input_text = "This product was excellent and exceeded my expectations"


@pytest.fixture(scope="module")
def input_tokens(apeach_dir):
    return AutoTokenizer.from_pretrained(str(apeach_dir))(input_text)["input_ids"]


@pytest.fixture(scope="module")
def server(apeach_dir):
    llm = LLM(str(apeach_dir), enforce_eager=True, dtype="float32", pooler_config='{"pooling_task": "token_classify"}')
    with TestClient(create_app(llm, served_model_name=MODEL_NAME)) as c:
        yield c


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_pooling_token_classify(server, model_name: str, input_tokens):
    task = "token_classify"
    response = server.post("/pooling", json={"model": model_name, "input": input_text, "encoding_format": "float", "task": task})
    poolings = response.json()
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == len(input_tokens)  # vLLM: 8, apeach's tokenizer
    assert len(poolings["data"][0]["data"][0]) == 2


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("task", ["classify", "embed", "token_embed", "plugin"])
def test_pooling_not_supported(server, model_name: str, task: str):
    response = server.post("/pooling", json={"model": model_name, "input": input_text, "encoding_format": "float", "task": task})
    if task == "classify":
        # DEPARTURE: vLLM refuses classify on a token_classify server ("Try switching the model's
        # pooling_task via"); poolkit serves every task of the model from one server.
        assert response.status_code == 200, response.text
        assert len(response.json()["data"][0]["data"]) == 2
        return
    assert response.json()["error"]["type"] == "BadRequestError"
    err_msg = f"Unsupported task: {task!r}"
    assert response.json()["error"]["message"].startswith(err_msg)
