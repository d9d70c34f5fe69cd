# Port of vllm tests/entrypoints/pooling/classify/test_online.py
# jason9693/Qwen2.5-1.5B-apeach -> a tiny Qwen2ForSequenceClassification, labels "Default" /
# "Spoiled" as apeach's, with a ChatML chat template (conftest ``apeach``). vLLM starts the server
# with --max-model-len 512; the tiny model's limit is 128 (max_position_embeddings), which keeps
# 513 an invalid truncation size. vLLM validates responses with its ClassificationResponse /
# PoolingResponse pydantic classes; here the same fields are checked on the JSON. Token counts
# vLLM hard-codes for apeach's tokenizer come from the stand-in's tokenizer (transformers).
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from poolkit.entrypoints.server import create_app

MODEL_NAME = "apeach-stand-in"
input_text = "This product was excellent and exceeded my expectations"

MESSAGES = [
    {"role": "user", "content": "The cat sat on the mat."},
    {"role": "assistant", "content": "A feline was resting on a rug."},
    {"role": "user", "content": "Stars twinkle brightly in the night sky."},
]


@pytest.fixture(scope="module")
def tokenizer(apeach_dir):
    return AutoTokenizer.from_pretrained(str(apeach_dir))


@pytest.fixture(scope="module")
def input_tokens(tokenizer):
    return tokenizer(input_text)["input_ids"]


@pytest.fixture(scope="module")
def server(apeach):
    with TestClient(create_app(apeach, served_model_name=MODEL_NAME)) as c:
        yield c


def chat_tokens(tokenizer, add_special_tokens=False, **kwargs):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, **kwargs)
    return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def check_classification(output, n=1):
    assert output["object"] == "list"
    assert output["model"] == MODEL_NAME
    assert len(output["data"]) == n
    assert "label" in output["data"][0]
    assert "probs" in output["data"][0]


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_basic(server, model_name: str, input_tokens):
    # test /v1/models
    response = server.get("/v1/models")
    served_model = response.json()["data"][0]["id"]
    assert served_model == MODEL_NAME

    # test /tokenize
    response = server.post("/tokenize", json={"model": model_name, "prompt": input_text})
    assert response.json()["tokens"] == input_tokens


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_completion_request(server, model_name: str, input_tokens):
    # test input: str
    response = server.post("/classify", json={"model": model_name, "input": input_text})
    assert response.status_code == 200, response.text
    check_classification(response.json())

    # test input: list[int]
    response = server.post("/classify", json={"model": model_name, "input": input_tokens})
    assert response.status_code == 200, response.text
    check_classification(response.json())


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_completion_request_batched(server, model_name: str, input_tokens):
    N = 10

    # test input: list[str]
    output = server.post("/classify", json={"model": model_name, "input": [input_text] * N}).json()
    assert len(output["data"]) == N
    for i, item in enumerate(output["data"]):
        assert item["index"] == i
        assert "label" in item
        assert "probs" in item
        assert len(item["probs"]) == item["num_classes"]
        assert item["label"] in ["Default", "Spoiled"]

    # test input: list[list[int]]
    output = server.post("/classify", json={"model": model_name, "input": [input_tokens] * N}).json()
    assert len(output["data"]) == N
    for i, item in enumerate(output["data"]):
        assert item["index"] == i
        assert "label" in item
        assert "probs" in item
        assert len(item["probs"]) == item["num_classes"]
        assert item["label"] in ["Default", "Spoiled"]


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_empty_input_error(server, model_name: str):
    response = server.post("/classify", json={"model": model_name, "input": ""})
    error = response.json()
    assert response.status_code == 400
    assert "error" in error

    response = server.post("/classify", json={"model": model_name, "input": []})
    error = response.json()
    assert response.status_code == 400
    assert "error" in error


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_truncate_prompt_tokens(server, model_name: str):
    long_text = "hello " * 600

    response = server.post("/classify", json={"model": model_name, "input": long_text, "truncate_prompt_tokens": 5})
    assert response.status_code == 200, response.text
    output = response.json()
    assert len(output["data"]) == 1
    assert output["data"][0]["index"] == 0
    assert "probs" in output["data"][0]
    assert output["usage"]["prompt_tokens"] == 5
    assert output["usage"]["total_tokens"] == 5

    # invalid_truncate_prompt_tokens
    response = server.post("/classify", json={"model": model_name, "input": "test", "truncate_prompt_tokens": 513})
    error = response.json()
    assert response.status_code == 400
    assert "truncate_prompt_tokens" in error["error"]["message"]


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_add_special_tokens(server, model_name: str):
    response = server.post("/classify", json={"model": model_name, "input": input_text, "add_special_tokens": False})
    assert response.status_code == 200, response.text
    check_classification(response.json())

    response = server.post("/classify", json={"model": model_name, "input": input_text, "add_special_tokens": True})
    assert response.status_code == 200, response.text
    check_classification(response.json())


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_chat_request(server, model_name: str, tokenizer):
    messages = MESSAGES

    # test chat request basic usage (vLLM: 51 tokens with apeach's template)
    response = server.post("/classify", json={"model": model_name, "messages": messages})
    assert response.status_code == 200, response.text
    output = response.json()
    check_classification(output)
    assert output["usage"]["prompt_tokens"] == chat_tokens(tokenizer)

    # test add_generation_prompt (vLLM: 54)
    response = server.post("/classify", json={"model": model_name, "messages": messages, "add_generation_prompt": True})
    assert response.status_code == 200, response.text
    output = response.json()
    check_classification(output)
    assert output["usage"]["prompt_tokens"] == chat_tokens(tokenizer, add_generation_prompt=True)

    # test continue_final_message (vLLM: 49)
    response = server.post("/classify", json={"model": model_name, "messages": messages, "continue_final_message": True})
    assert response.status_code == 200, response.text
    output = response.json()
    check_classification(output)
    assert output["usage"]["prompt_tokens"] == chat_tokens(tokenizer, continue_final_message=True)

    # test add_special_tokens (vLLM: 51)
    response = server.post("/classify", json={"model": model_name, "messages": messages, "add_special_tokens": True})
    assert response.status_code == 200, response.text
    output = response.json()
    check_classification(output)
    assert output["usage"]["prompt_tokens"] == chat_tokens(tokenizer, add_special_tokens=True)

    # test continue_final_message with add_generation_prompt
    response = server.post(
        "/classify",
        json={"model": model_name, "messages": messages, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert "Cannot set both `continue_final_message` and `add_generation_prompt` to True." in response.json()["error"]["message"]


def test_invocations_completion_request(server):
    request_args = {"model": MODEL_NAME, "input": input_text}

    classification_response = server.post("/classify", json=request_args)
    assert classification_response.status_code == 200, classification_response.text
    invocation_response = server.post("/invocations", json=request_args)
    assert invocation_response.status_code == 200, invocation_response.text

    classification_output = classification_response.json()
    invocation_output = invocation_response.json()

    assert classification_output.keys() == invocation_output.keys()
    for classification_data, invocation_data in zip(classification_output["data"], invocation_output["data"]):
        assert classification_data.keys() == invocation_data.keys()
        assert classification_data["probs"] == pytest.approx(invocation_data["probs"], rel=0.01)


def test_invocations_chat_request(server):
    request_args = {"model": MODEL_NAME, "messages": MESSAGES}

    classification_response = server.post("/classify", json=request_args)
    assert classification_response.status_code == 200, classification_response.text
    invocation_response = server.post("/invocations", json=request_args)
    assert invocation_response.status_code == 200, invocation_response.text

    classification_output = classification_response.json()
    invocation_output = invocation_response.json()

    assert classification_output.keys() == invocation_output.keys()
    for classification_data, invocation_data in zip(classification_output["data"], invocation_output["data"]):
        assert classification_data.keys() == invocation_data.keys()
        assert classification_data["probs"] == pytest.approx(invocation_data["probs"], rel=0.01)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_use_activation(server, model_name: str):
    def get_outputs(use_activation):
        response = server.post("/classify", json={"model": model_name, "input": input_text, "use_activation": use_activation})
        outputs = response.json()
        return torch.tensor([x["probs"] for x in outputs["data"]])

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)

    assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), "wo_activation should not use activation."
    assert torch.allclose(F.softmax(wo_activation, dim=-1), w_activation, atol=1e-2), "w_activation should be close to activation(wo_activation)."


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_score(server, model_name: str):
    # Scoring API is only enabled for num_labels == 1.
    response = server.post("/score", json={"model": model_name, "queries": "ping", "documents": "pong"})
    # DEPARTURE: vLLM does not mount /score for a two-label classifier, so FastAPI answers 404
    # {"detail": "Not Found"}; poolkit answers every error in its own body (docs/server.md,
    # {"error": {...}}): the same 404, with the reason.
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 404


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_rerank(server, model_name: str):
    # Scoring API is only enabled for num_labels == 1.
    response = server.post("/rerank", json={"model": model_name, "query": "ping", "documents": ["pong"]})
    # DEPARTURE: as in test_score: the 404 in poolkit's error body instead of {"detail": "Not Found"}.
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 404


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_pooling_classify(server, model_name: str):
    response = server.post("/pooling", json={"model": model_name, "input": input_text, "encoding_format": "float", "task": "classify"})
    poolings = response.json()
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == 2


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize(
    "task",
    [
        "embed",
        "token_embed",
        "token_classify",
        "plugin",
    ],
)
def test_pooling_not_supported(server, model_name: str, task: str, input_tokens):
    response = server.post("/pooling", json={"model": model_name, "input": input_text, "encoding_format": "float", "task": task})
    if task == "token_classify":
        # DEPARTURE: vLLM's classify server refuses token_classify ("Try switching the model's
        # pooling_task via"); poolkit serves every task of the model from one server.
        assert response.status_code == 200, response.text
        assert len(response.json()["data"][0]["data"]) == len(input_tokens)
        return
    assert response.json()["error"]["type"] == "BadRequestError"

    # DEPARTURE (plugin): this vLLM test wants "No IOProcessor plugin installed." on /pooling, where
    # vLLM's embed, token_embed, token_classify and scoring online tests want "Unsupported task:
    # 'plugin'" for a server without a plugin; poolkit gives the latter everywhere.
    err_msg = f"Unsupported task: {task!r}"
    assert response.json()["error"]["message"].startswith(err_msg)
