# Port of vllm tests/entrypoints/pooling/basic/test_truncation.py
# sentence-transformers/all-MiniLM-L12-v2 served with --max-model-len 128 -> all-MiniLM-L6-v2 with
# max_model_len=128, under FastAPI's TestClient; the openai client posts as vLLM's test does.
import openai
import pytest
from fastapi.testclient import TestClient
from port_utils import openai_client

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "all-MiniLM-L6-v2"
max_model_len = 128

input = """Immerse yourself in the enchanting chronicle of calculus, a 
    mathematical domain that has radically transformed our comprehension of 
    change and motion. Despite its roots in ancient civilizations, the 
    formal birth of calculus predominantly occurred in the 17th century, 
    primarily under the influential guidance of Sir Isaac Newton and Gottfried 
    Wilhelm Leibniz. The earliest traces of calculus concepts are found in 
    ancient Greek mathematics,most notably in the works of Eudoxus and 
    Archimedes, around 300 BCE. They utilized the 'method of exhaustion'—a 
    technique for computing areas and volumes through the use of finite sums. 
    This methodology laid crucial foundational work for integral calculus. 
    In the 17th century, both Newton and Leibniz independently pioneered 
    calculus, each contributing unique perspectives that would shape this new 
    field."""


@pytest.fixture(scope="module")
def server(minilm_dir):
    llm = LLM(str(minilm_dir), runner="pooling", enforce_eager=True, max_model_len=max_model_len)
    with TestClient(create_app(llm, served_model_name=MODEL_NAME)) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def test_smaller_truncation_size(client: openai.OpenAI):
    truncation_size = 10
    kwargs = {"model": MODEL_NAME, "input": input, "truncate_prompt_tokens": truncation_size}
    response = client.post(path="embeddings", cast_to=object, body={**kwargs})
    assert response["usage"]["prompt_tokens"] == truncation_size


def test_bigger_truncation_size(client: openai.OpenAI):
    truncation_size = max_model_len + 1
    kwargs = {"model": MODEL_NAME, "input": input, "truncate_prompt_tokens": truncation_size}

    with pytest.raises(openai.BadRequestError) as err:
        client.post(path="embeddings", cast_to=object, body={**kwargs})

    assert err.value.status_code == 400
    error_details = err.value.response.json()["error"]
    assert error_details["type"] == "BadRequestError"
    expected_message = "truncate_prompt_tokens value is greater than max_model_len. Please request a smaller truncation size."
    assert error_details["message"] == expected_message


def test_max_truncation_size(client: openai.OpenAI):
    truncation_size = -1
    kwargs = {"model": MODEL_NAME, "input": input, "truncate_prompt_tokens": truncation_size}
    response = client.post(path="embeddings", cast_to=object, body={**kwargs})
    assert response["usage"]["prompt_tokens"] == max_model_len
