# Port of vllm tests/entrypoints/pooling/pooling/test_online.py
# (the same server and checks as reward/test_token_reward_online.py; internlm2-1_8b-reward again)
# internlm/internlm2-1_8b-reward (remote code) served with --chat-template DUMMY_CHAT_TEMPLATE ->
# a tiny one-label Qwen2ForTokenClassification (conftest ``internlm_reward``) served with
# create_app(chat_template=DUMMY_CHAT_TEMPLATE), which overrides its tokenizer's own template.
# Token counts vLLM hard-codes for internlm's tokenizer come from the stand-in's tokenizer
# (transformers). vLLM validates with PoolingResponse; here the same fields are checked on the
# JSON. dtype: fp32 (vLLM's CI uses bf16 for speed).
# DEPARTURE (test_conversation_pooling): the completions request reads the prefix states the chat
# request left in poolkit's prefix cache (on by default for a causal decoder), so its per-token data
# equal the chat request's to the rounding of another summation order (within 1e-6), not bit for
# bit; every other field is compared exactly.
import base64
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from port_utils import (
    DUMMY_CHAT_TEMPLATE,
    EMBED_DTYPES,
    ENDIANNESS,
    binary2tensor,
    build_metadata_items,
    check_embeddings_close,
    decode_pooling_output,
)
from transformers import AutoTokenizer

from poolkit.entrypoints.server import create_app

MODEL_NAME = "internlm2-reward-stand-in"
input_text = "The chef prepared a delicious meal."

MESSAGES = [
    {"role": "user", "content": "The cat sat on the mat."},
    {"role": "assistant", "content": "A feline was resting on a rug."},
    {"role": "user", "content": "Stars twinkle brightly in the night sky."},
]

DTYPE_PARAMS = list(EMBED_DTYPES)


@pytest.fixture(scope="module")
def tokenizer(internlm_reward_dir):
    return AutoTokenizer.from_pretrained(str(internlm_reward_dir))


@pytest.fixture(scope="module")
def input_tokens(tokenizer):
    return tokenizer(input_text)["input_ids"]


@pytest.fixture(scope="module")
def server(internlm_reward):
    with TestClient(create_app(internlm_reward, served_model_name=MODEL_NAME, chat_template=DUMMY_CHAT_TEMPLATE)) as c:
        yield c


def float_rows(response_json):
    return [np.array(d["data"]).squeeze(-1).tolist() for d in response_json["data"]]


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
    response = server.post("/pooling", json={"model": model_name, "input": input_text, "encoding_format": "float"})
    assert response.status_code == 200, response.text
    poolings = response.json()
    assert poolings["id"] is not None
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == len(input_tokens)
    assert poolings["usage"]["completion_tokens"] == 0
    assert poolings["usage"]["prompt_tokens"] == len(input_tokens)
    assert poolings["usage"]["total_tokens"] == len(input_tokens)

    # test input: list[int]
    response = server.post("/pooling", json={"model": model_name, "input": input_tokens, "encoding_format": "float"})
    assert response.status_code == 200, response.text
    poolings = response.json()
    assert poolings["id"] is not None
    assert len(poolings["data"]) == 1
    assert len(poolings["data"][0]["data"]) == len(input_tokens)
    assert poolings["usage"]["completion_tokens"] == 0
    assert poolings["usage"]["prompt_tokens"] == len(input_tokens)
    assert poolings["usage"]["total_tokens"] == len(input_tokens)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_completion_request_batched(server, model_name: str, input_tokens):
    N = 10
    input_texts = [input_text] * N

    response = server.post("/pooling", json={"model": model_name, "input": input_texts, "encoding_format": "float"})
    assert response.status_code == 200, response.text
    poolings = response.json()
    assert poolings["id"] is not None
    assert len(poolings["data"]) == N
    assert len(poolings["data"][0]["data"]) == len(input_tokens)
    assert poolings["usage"]["completion_tokens"] == 0
    assert poolings["usage"]["prompt_tokens"] == len(input_tokens) * N
    assert poolings["usage"]["total_tokens"] == len(input_tokens) * N

    # test list[list[int]]
    response = server.post("/pooling", json={"model": model_name, "input": [input_tokens] * N, "encoding_format": "float"})
    assert response.status_code == 200, response.text
    poolings = response.json()
    assert poolings["id"] is not None
    assert len(poolings["data"]) == N
    assert len(poolings["data"][0]["data"]) == len(input_tokens)
    assert poolings["usage"]["completion_tokens"] == 0
    assert poolings["usage"]["prompt_tokens"] == len(input_tokens) * N
    assert poolings["usage"]["total_tokens"] == len(input_tokens) * N


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_conversation_pooling(server, model_name: str, tokenizer):
    messages = MESSAGES

    # test chat request basic usage
    chat_response = server.post("/pooling", json={"model": model_name, "messages": messages, "encoding_format": "float"})
    assert chat_response.status_code == 200, chat_response.text
    chat_poolings = chat_response.json()

    prompt = tokenizer.apply_chat_template(
        messages, chat_template=DUMMY_CHAT_TEMPLATE, add_generation_prompt=True, continue_final_message=False, tokenize=False
    )
    completions_response = server.post(
        "/pooling",
        json={
            "model": model_name,
            "input": prompt,
            "encoding_format": "float",
            # To be consistent with chat
            "add_special_tokens": False,
        },
    )
    assert completions_response.status_code == 200, completions_response.text
    completion_poolings = completions_response.json()

    assert chat_poolings["id"] is not None
    assert completion_poolings["id"] is not None
    assert chat_poolings["created"] <= completion_poolings["created"]
    drop = ("id", "created", "data")
    assert {k: v for k, v in chat_poolings.items() if k not in drop} == {k: v for k, v in completion_poolings.items() if k not in drop}
    # DEPARTURE: the data within 1e-6 (see the header)
    assert [{k: v for k, v in d.items() if k != "data"} for d in chat_poolings["data"]] == [
        {k: v for k, v in d.items() if k != "data"} for d in completion_poolings["data"]]
    for chat, completion in zip(chat_poolings["data"], completion_poolings["data"]):
        np.testing.assert_allclose(np.asarray(chat["data"]), np.asarray(completion["data"]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_batch_base64_pooling(server, model_name: str):
    input_texts = ["Hello my name is", "The best thing about vLLM is that it supports many different models"]

    float_response = server.post("/pooling", json={"input": input_texts, "model": model_name, "encoding_format": "float"})
    assert float_response.status_code == 200, float_response.text
    float_data = float_rows(float_response.json())

    base64_response = server.post("/pooling", json={"input": input_texts, "model": model_name, "encoding_format": "base64"})
    assert base64_response.status_code == 200, base64_response.text
    decoded_responses_base64_data = [
        np.frombuffer(base64.b64decode(data["data"]), dtype="float32").tolist() for data in base64_response.json()["data"]
    ]
    check_embeddings_close(embeddings_0_lst=float_data, embeddings_1_lst=decoded_responses_base64_data, name_0="float32", name_1="base64")

    # Default response is float32 decoded from base64 by OpenAI Client
    default_response = server.post("/pooling", json={"input": input_texts, "model": model_name})
    assert default_response.status_code == 200, default_response.text
    default_data = float_rows(default_response.json())
    check_embeddings_close(embeddings_0_lst=float_data, embeddings_1_lst=default_data, name_0="float32", name_1="default")


# vLLM loops over every embed_dtype inside one test; here each dtype is a case (fp8 marked apart).
@pytest.mark.parametrize("embed_dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_base64_embed_dtype_and_endianness(server, model_name: str, embed_dtype: str):
    input_texts = [input_text] * 3
    float_response = server.post("/pooling", json={"model": model_name, "input": input_texts, "encoding_format": "float"})
    float_data = float_rows(float_response.json())

    for endianness in ENDIANNESS:
        responses_base64 = server.post(
            "/pooling",
            json={"model": model_name, "input": input_texts, "encoding_format": "base64", "embed_dtype": embed_dtype, "endianness": endianness},
        )
        assert responses_base64.status_code == 200, responses_base64.text
        base64_data = []
        for data in responses_base64.json()["data"]:
            binary = base64.b64decode(data["data"])
            tensor = binary2tensor(binary, (-1,), embed_dtype, endianness)
            base64_data.append(tensor.to(torch.float32).tolist())
        check_embeddings_close(embeddings_0_lst=float_data, embeddings_1_lst=base64_data, name_0="float_data", name_1="base64_data", tol=1e-2)


@pytest.mark.parametrize("embed_dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_bytes_embed_dtype_and_endianness(server, model_name: str, embed_dtype: str):
    input_texts = [input_text] * 3
    float_response = server.post("/pooling", json={"model": model_name, "input": input_texts, "encoding_format": "float"})
    float_data = float_rows(float_response.json())

    for endianness in ENDIANNESS:
        responses_bytes = server.post(
            "/pooling",
            json={"model": model_name, "input": input_texts, "encoding_format": "bytes", "embed_dtype": embed_dtype, "endianness": endianness},
        )
        assert responses_bytes.status_code == 200, responses_bytes.text
        metadata = json.loads(responses_bytes.headers["metadata"])
        bytes_data = decode_pooling_output(items=metadata["data"], body=responses_bytes.content)
        bytes_data = [x.to(torch.float32).view(-1).tolist() for x in bytes_data]
        check_embeddings_close(embeddings_0_lst=float_data, embeddings_1_lst=bytes_data, name_0="float_data", name_1="bytes_data", tol=1e-2)


@pytest.mark.parametrize("embed_dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_bytes_only_embed_dtype_and_endianness(server, model_name: str, embed_dtype: str):
    input_texts = [input_text] * 3
    float_response = server.post("/pooling", json={"model": model_name, "input": input_texts, "encoding_format": "float"})
    responses_float = float_response.json()
    float_data = float_rows(responses_float)
    n_tokens = responses_float["usage"]["prompt_tokens"] // len(input_texts)

    for endianness in ENDIANNESS:
        responses_bytes = server.post(
            "/pooling",
            json={"model": model_name, "input": input_texts, "encoding_format": "bytes_only", "embed_dtype": embed_dtype, "endianness": endianness},
        )
        assert responses_bytes.status_code == 200, responses_bytes.text
        assert "metadata" not in responses_bytes.headers
        items = build_metadata_items(embed_dtype=embed_dtype, endianness=endianness, shape=(n_tokens, 1), n_request=len(input_texts))
        bytes_data = decode_pooling_output(items=items, body=responses_bytes.content)
        bytes_data = [x.to(torch.float32).view(-1).tolist() for x in bytes_data]
        check_embeddings_close(embeddings_0_lst=float_data, embeddings_1_lst=bytes_data, name_0="float_data", name_1="bytes_data", tol=1e-2)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("param_name", ["encoding_format", "embed_dtype", "endianness"])
def test_params_not_supported(server, model_name: str, param_name: str):
    responses_base64 = server.post(
        "/pooling", json={"model": model_name, "input": input_text, "encoding_format": "base64", param_name: f"bad_{param_name}"}
    )
    assert responses_base64.status_code == 400
    assert "literal_error" in responses_base64.json()["error"]["message"]
    assert f"bad_{param_name}" in responses_base64.json()["error"]["message"]


def test_invocations(server):
    request_args = {"model": MODEL_NAME, "input": input_text, "encoding_format": "float"}

    completion_response = server.post("/pooling", json=request_args)
    assert completion_response.status_code == 200, completion_response.text
    invocation_response = server.post("/invocations", json=request_args)
    assert invocation_response.status_code == 200, invocation_response.text

    completion_output = completion_response.json()
    invocation_output = invocation_response.json()

    assert completion_output.keys() == invocation_output.keys()
    for completion_data, invocation_data in zip(completion_output["data"], invocation_output["data"]):
        assert completion_data.keys() == invocation_data.keys()
        check_embeddings_close(embeddings_0_lst=completion_data["data"], embeddings_1_lst=invocation_data["data"], name_0="completion", name_1="invocation")


def test_invocations_conversation(server):
    request_args = {"model": MODEL_NAME, "messages": MESSAGES, "encoding_format": "float"}

    chat_response = server.post("/pooling", json=request_args)
    assert chat_response.status_code == 200, chat_response.text
    invocation_response = server.post("/invocations", json=request_args)
    assert invocation_response.status_code == 200, invocation_response.text

    chat_output = chat_response.json()
    invocation_output = invocation_response.json()

    assert chat_output.keys() == invocation_output.keys()
    for chat_data, invocation_data in zip(chat_output["data"], invocation_output["data"]):
        assert chat_data.keys() == invocation_data.keys()
        check_embeddings_close(embeddings_0_lst=chat_data["data"], embeddings_1_lst=invocation_data["data"], name_0="chat", name_1="invocation")
