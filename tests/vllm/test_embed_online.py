# Port of vllm tests/entrypoints/pooling/embed/test_online.py
# intfloat/multilingual-e5-small -> the real all-MiniLM-L6-v2; vLLM's --chat-template is
# create_app(chat_template=...). The server is poolkit's app under
# FastAPI's TestClient; the openai client talks to it. vLLM's token-id constants are e5's: here
# they come from the same tokenizer through transformers. dtype: fp32 (vLLM's CI uses bf16 for speed).
import base64
import json

import numpy as np
import openai
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from port_utils import (
    DUMMY_CHAT_TEMPLATE,
    EMBED_DTYPES,
    ENDIANNESS,
    binary2tensor,
    build_metadata_items,
    check_embeddings_close,
    decode_pooling_output,
    openai_client,
    run_embedding_correctness_test,
)
from transformers import AutoTokenizer

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "all-MiniLM-L6-v2"
input_text = "The best thing about vLLM is that it supports many different models"

MESSAGES = [
    {"role": "user", "content": "The cat sat on the mat."},
    {"role": "assistant", "content": "A feline was resting on a rug."},
    {"role": "user", "content": "Stars twinkle brightly in the night sky."},
]

DTYPE_PARAMS = list(EMBED_DTYPES)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def input_tokens(tokenizer):
    return tokenizer(input_text)["input_ids"]


@pytest.fixture(scope="module")
def server(minilm_dir):
    llm = LLM(str(minilm_dir), runner="pooling", enforce_eager=True, max_model_len=512)
    with TestClient(create_app(llm, served_model_name=MODEL_NAME, chat_template=DUMMY_CHAT_TEMPLATE)) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


@pytest.fixture(scope="module")
def hf_model(minilm_st):
    return minilm_st


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_basic(server, client, model_name: str, input_tokens):
    # test /v1/models
    response = server.get("/v1/models")
    model = response.json()["data"][0]["id"]
    assert model == MODEL_NAME

    models = client.models.list()
    served_model = models.data[0]
    assert served_model.id == MODEL_NAME

    # test /tokenize
    response = server.post("/tokenize", json={"model": model_name, "prompt": input_text})
    assert response.json()["tokens"] == input_tokens


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_completion_request(client, model_name: str, hf_model, input_tokens):
    # test input: str
    embeddings = client.embeddings.create(model=model_name, input=input_text, encoding_format="float")
    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == 384
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == len(input_tokens)
    assert embeddings.usage.total_tokens == len(input_tokens)
    run_embedding_correctness_test(hf_model, [input_text], [d.embedding for d in embeddings.data])

    # test input: list[int]
    embeddings = client.embeddings.create(model=model_name, input=input_tokens, encoding_format="float")
    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == 384
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == len(input_tokens)
    assert embeddings.usage.total_tokens == len(input_tokens)
    run_embedding_correctness_test(hf_model, [input_text], [d.embedding for d in embeddings.data])


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_completion_request_batched(client, model_name: str, hf_model, input_tokens):
    N = 10
    input_texts = [input_text] * N

    # test input: list[str]
    embeddings = client.embeddings.create(model=model_name, input=input_texts, encoding_format="float")
    assert embeddings.id is not None
    assert len(embeddings.data) == N
    assert len(embeddings.data[0].embedding) == 384
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == len(input_tokens) * N
    assert embeddings.usage.total_tokens == len(input_tokens) * N
    run_embedding_correctness_test(hf_model, input_texts, [d.embedding for d in embeddings.data])

    # test list[list[int]]
    embeddings = client.embeddings.create(model=model_name, input=[input_tokens] * N, encoding_format="float")
    assert embeddings.id is not None
    assert len(embeddings.data) == N
    assert len(embeddings.data[0].embedding) == 384
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == len(input_tokens) * N
    assert embeddings.usage.total_tokens == len(input_tokens) * N
    run_embedding_correctness_test(hf_model, input_texts, [d.embedding for d in embeddings.data])


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_truncate_prompt_tokens(client, model_name: str, tokenizer):
    input_texts = ["Como o Brasil pode fomentar o desenvolvimento de modelos de IA?"]

    # test single embedding
    embeddings = client.embeddings.create(model=model_name, input=input_texts, extra_body={"truncate_prompt_tokens": 10})
    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == 384
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == 10
    assert embeddings.usage.total_tokens == 10

    input_tokens = tokenizer(input_texts[0])["input_ids"]
    assert len(input_tokens) > 10
    embeddings = client.embeddings.create(model=model_name, input=input_tokens, extra_body={"truncate_prompt_tokens": 10})
    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == 384
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == 10
    assert embeddings.usage.total_tokens == 10

    # invalid_truncate_prompt_tokens
    with pytest.raises(openai.BadRequestError):
        response = client.embeddings.create(model=model_name, input=input_texts, extra_body={"truncate_prompt_tokens": 8193})
        assert "error" in response.object
        assert (
            "truncate_prompt_tokens value is greater than max_model_len. "
            "Please, select a smaller truncation size." in response.message
        )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_chat_request(server, client, model_name: str, tokenizer):
    messages = MESSAGES

    # test chat request basic usage
    chat_response = server.post("/v1/embeddings", json={"model": model_name, "messages": messages, "encoding_format": "float"})
    assert chat_response.status_code == 200, chat_response.text
    chat_embeddings = chat_response.json()

    prompt = tokenizer.apply_chat_template(
        messages, chat_template=DUMMY_CHAT_TEMPLATE, add_generation_prompt=True, continue_final_message=False, tokenize=False
    )
    completion_embeddings = client.embeddings.create(
        model=model_name,
        input=prompt,
        encoding_format="float",
        # To be consistent with chat
        extra_body={"add_special_tokens": False},
    ).model_dump(mode="json")

    assert chat_embeddings["id"] is not None
    assert completion_embeddings["id"] is not None
    assert chat_embeddings["created"] <= completion_embeddings["created"]
    check_embeddings_close(
        embeddings_0_lst=[d["embedding"] for d in chat_embeddings["data"]],
        embeddings_1_lst=[d["embedding"] for d in completion_embeddings["data"]],
        name_0="chat",
        name_1="completion",
    )
    drop = ("id", "created", "data")
    assert {k: v for k, v in chat_embeddings.items() if k not in drop} == {
        k: v for k, v in completion_embeddings.items() if k not in drop
    }

    # vLLM's counts are e5's (34, 33, 36): here the same tokenizer counts them.
    def n_tokens(add_special_tokens=False, **kwargs):
        text = tokenizer.apply_chat_template(messages, chat_template=DUMMY_CHAT_TEMPLATE, tokenize=False, **kwargs)
        return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    # test add_generation_prompt
    response = server.post("/v1/embeddings", json={"model": model_name, "messages": messages, "add_generation_prompt": True})
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["object"] == "list"
    assert len(output["data"]) == 1
    assert output["model"] == MODEL_NAME
    assert output["usage"]["prompt_tokens"] == n_tokens(add_generation_prompt=True)

    # test continue_final_message
    response = server.post("/v1/embeddings", json={"model": model_name, "messages": messages, "continue_final_message": True})
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["object"] == "list"
    assert len(output["data"]) == 1
    assert output["model"] == MODEL_NAME
    assert output["usage"]["prompt_tokens"] == n_tokens(continue_final_message=True)

    # test add_special_tokens
    response = server.post("/v1/embeddings", json={"model": model_name, "messages": messages, "add_special_tokens": True})
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["object"] == "list"
    assert len(output["data"]) == 1
    assert output["model"] == MODEL_NAME
    assert output["usage"]["prompt_tokens"] == n_tokens(add_special_tokens=True)

    # test continue_final_message with add_generation_prompt
    response = server.post(
        "/v1/embeddings",
        json={"model": model_name, "messages": messages, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert "Cannot set both `continue_final_message` and `add_generation_prompt` to True." in response.json()["error"]["message"]


def test_invocations_completion_request(server, client):
    request_args = {"model": MODEL_NAME, "input": input_text, "encoding_format": "float"}

    completion_response = client.embeddings.create(**request_args)
    invocation_response = server.post("/invocations", json=request_args)
    assert invocation_response.status_code == 200, invocation_response.text

    completion_output = completion_response.model_dump()
    invocation_output = invocation_response.json()

    assert completion_output.keys() == invocation_output.keys()
    for completion_data, invocation_data in zip(completion_output["data"], invocation_output["data"]):
        assert completion_data.keys() == invocation_data.keys()
        check_embeddings_close(
            embeddings_0_lst=[completion_data["embedding"]],
            embeddings_1_lst=[invocation_data["embedding"]],
            name_0="completion",
            name_1="invocation",
        )


def test_invocations_chat_request(server):
    request_args = {"model": MODEL_NAME, "messages": MESSAGES, "encoding_format": "float"}

    chat_response = server.post("/v1/embeddings", json=request_args)
    assert chat_response.status_code == 200, chat_response.text
    invocation_response = server.post("/invocations", json=request_args)
    assert invocation_response.status_code == 200, invocation_response.text

    chat_output = chat_response.json()
    invocation_output = invocation_response.json()

    assert chat_output.keys() == invocation_output.keys()
    for chat_data, invocation_data in zip(chat_output["data"], invocation_output["data"]):
        assert chat_data.keys() == invocation_data.keys()
        check_embeddings_close(
            embeddings_0_lst=[chat_data["embedding"]],
            embeddings_1_lst=[invocation_data["embedding"]],
            name_0="chat",
            name_1="invocation",
        )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_base64_embedding(hf_model, client, model_name: str):
    input_texts = ["Hello my name is", "The best thing about vLLM is that it supports many different models"]

    responses_float = client.embeddings.create(input=input_texts, model=model_name, encoding_format="float")
    float_data = [d.embedding for d in responses_float.data]
    run_embedding_correctness_test(hf_model, input_texts, float_data)

    responses_base64 = client.embeddings.create(input=input_texts, model=model_name, encoding_format="base64")
    base64_data = [np.frombuffer(base64.b64decode(data.embedding), dtype="float32").tolist() for data in responses_base64.data]
    run_embedding_correctness_test(hf_model, input_texts, base64_data)

    # Default response is float32 decoded from base64 by OpenAI Client
    responses_default = client.embeddings.create(input=input_texts, model=model_name)
    default_data = [d.embedding for d in responses_default.data]
    run_embedding_correctness_test(hf_model, input_texts, default_data)


# vLLM loops over every embed_dtype inside one test; here each dtype is a case, so the fp8 ones
# (which poolkit does not produce) are marked on their own.
@pytest.mark.parametrize("embed_dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_base64_embed_dtype_and_endianness(server, client, model_name: str, embed_dtype: str):
    input_texts = [input_text] * 3
    responses_float = client.embeddings.create(input=input_texts, model=model_name, encoding_format="float")
    float_data = [d.embedding for d in responses_float.data]

    for endianness in ENDIANNESS:
        responses_base64 = server.post(
            "/v1/embeddings",
            json={"model": model_name, "input": input_texts, "encoding_format": "base64", "embed_dtype": embed_dtype, "endianness": endianness},
        )
        assert responses_base64.status_code == 200, responses_base64.text
        base64_data = []
        for data in responses_base64.json()["data"]:
            binary = base64.b64decode(data["embedding"])
            tensor = binary2tensor(binary, (-1,), embed_dtype, endianness)
            base64_data.append(tensor.to(torch.float32).tolist())

        check_embeddings_close(embeddings_0_lst=float_data, embeddings_1_lst=base64_data, name_0="float_data", name_1="base64_data", tol=1e-2)


@pytest.mark.parametrize("embed_dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_bytes_embed_dtype_and_endianness(server, client, model_name: str, embed_dtype: str):
    input_texts = [input_text] * 3
    responses_float = client.embeddings.create(input=input_texts, model=model_name, encoding_format="float")
    float_data = [d.embedding for d in responses_float.data]

    for endianness in ENDIANNESS:
        responses_bytes = server.post(
            "/v1/embeddings",
            json={"model": model_name, "input": input_texts, "encoding_format": "bytes", "embed_dtype": embed_dtype, "endianness": endianness},
        )
        assert responses_bytes.status_code == 200, responses_bytes.text
        metadata = json.loads(responses_bytes.headers["metadata"])
        body = responses_bytes.content
        bytes_data = decode_pooling_output(items=metadata["data"], body=body)
        bytes_data = [x.to(torch.float32).tolist() for x in bytes_data]

        check_embeddings_close(embeddings_0_lst=float_data, embeddings_1_lst=bytes_data, name_0="float_data", name_1="bytes_data", tol=1e-2)


@pytest.mark.parametrize("embed_dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_bytes_only_embed_dtype_and_endianness(server, client, model_name: str, embed_dtype: str):
    input_texts = ["The best thing about vLLM is that it supports many different models"] * 2

    responses_float = client.embeddings.create(input=input_texts, model=model_name, encoding_format="float")
    float_data = [d.embedding for d in responses_float.data]
    embedding_size = len(float_data[0])

    for endianness in ENDIANNESS:
        responses_bytes = server.post(
            "/v1/embeddings",
            json={"model": model_name, "input": input_texts, "encoding_format": "bytes_only", "embed_dtype": embed_dtype, "endianness": endianness},
        )
        assert responses_bytes.status_code == 200, responses_bytes.text
        assert "metadata" not in responses_bytes.headers
        body = responses_bytes.content
        items = build_metadata_items(embed_dtype=embed_dtype, endianness=endianness, shape=(embedding_size,), n_request=len(input_texts))
        bytes_data = decode_pooling_output(items=items, body=body)
        bytes_data = [x.to(torch.float32).tolist() for x in bytes_data]

        check_embeddings_close(embeddings_0_lst=float_data, embeddings_1_lst=bytes_data, name_0="float_data", name_1="bytes_data", tol=1e-2)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("param_name", ["encoding_format", "embed_dtype", "endianness"])
def test_params_not_supported(server, model_name: str, param_name: str):
    responses_base64 = server.post(
        "/v1/embeddings",
        json={"model": model_name, "input": input_text, "encoding_format": "base64", param_name: f"bad_{param_name}"},
    )
    assert responses_base64.status_code == 400
    assert "literal_error" in responses_base64.json()["error"]["message"]
    assert f"bad_{param_name}" in responses_base64.json()["error"]["message"]


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_use_activation(server, model_name: str):
    def get_outputs(use_activation):
        request_args = {"model": MODEL_NAME, "input": input_text, "encoding_format": "float", "use_activation": use_activation}
        response = server.post("/v1/embeddings", json=request_args)
        outputs = response.json()
        return torch.tensor([x["embedding"] for x in outputs["data"]])

    default = get_outputs(use_activation=None)
    w_normal = get_outputs(use_activation=True)
    wo_normal = get_outputs(use_activation=False)

    assert torch.allclose(default, w_normal, atol=1e-2), "Default should use normal."
    assert not torch.allclose(w_normal, wo_normal, atol=1e-2), "wo_normal should not use normal."
    assert torch.allclose(w_normal, F.normalize(wo_normal, p=2, dim=-1), atol=1e-2), "w_normal should be close to normal(wo_normal)."


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_pooling_embed(server, model_name: str):
    response = server.post("/pooling", json={"model": model_name, "input": input_text, "encoding_format": "float", "task": "embed"})
    poolings = response.json()
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == 384


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_pooling_token_embed(server, model_name: str, input_tokens):
    response = server.post("/pooling", json={"model": model_name, "input": input_text, "encoding_format": "float", "task": "token_embed"})
    poolings = response.json()
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == len(input_tokens)
    assert len(poolings["data"][0]["data"][0]) == 384


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize(
    "task",
    [
        "classify",
        "token_classify",
        "plugin",
    ],
)
def test_pooling_not_supported(server, model_name: str, task: str):
    response = server.post("/pooling", json={"model": model_name, "input": "test", "encoding_format": "float", "task": task})
    assert response.json()["error"]["type"] == "BadRequestError"
    assert response.json()["error"]["message"].startswith(f"Unsupported task: {task!r}")
