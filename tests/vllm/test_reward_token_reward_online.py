# Port of vllm tests/entrypoints/pooling/reward/test_token_reward_online.py
# vLLM's file repeats pooling/test_online.py on the same server (internlm2-1_8b-reward, served with
# --chat-template DUMMY_CHAT_TEMPLATE), with three tests renamed and more chat checks in
# test_chat_request. The shared tests are imported from that port (test_pooling_online.py), so
# pytest runs them here too, under vLLM's names, on this module's own server.
import pytest
from port_utils import DUMMY_CHAT_TEMPLATE
from test_pooling_online import (  # noqa: F401 - fixtures and tests pytest collects here
    MESSAGES,
    MODEL_NAME,
    input_tokens,
    server,
    test_base64_embed_dtype_and_endianness,
    test_basic,
    test_batch_base64_pooling,
    test_bytes_embed_dtype_and_endianness,
    test_bytes_only_embed_dtype_and_endianness,
    test_completion_request,
    test_completion_request_batched,
    test_invocations,
    test_invocations_conversation,
    test_params_not_supported,
    tokenizer,
)
from test_pooling_online import test_conversation_pooling as _conversation_pooling

test_invocations_chat_request = test_invocations
test_invocations_conversation_chat_request = test_invocations_conversation
del test_invocations, test_invocations_conversation


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_chat_request(server, model_name: str, tokenizer):
    _conversation_pooling(server, model_name, tokenizer)
    messages = MESSAGES

    # vLLM's counts are internlm's (33, 33, 34); here the same tokenizer counts them.
    def n_tokens(add_special_tokens=False, **kwargs):
        text = tokenizer.apply_chat_template(messages, chat_template=DUMMY_CHAT_TEMPLATE, tokenize=False, **kwargs)
        return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    # test add_generation_prompt
    response = server.post("/pooling", json={"model": model_name, "messages": messages, "add_generation_prompt": True})
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["object"] == "list"
    assert len(output["data"]) == 1
    assert output["model"] == MODEL_NAME
    assert output["usage"]["prompt_tokens"] == n_tokens(add_generation_prompt=True)

    # test continue_final_message
    response = server.post("/pooling", json={"model": model_name, "messages": messages, "continue_final_message": True})
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["object"] == "list"
    assert len(output["data"]) == 1
    assert output["model"] == MODEL_NAME
    assert output["usage"]["prompt_tokens"] == n_tokens(continue_final_message=True)

    # test add_special_tokens
    response = server.post("/pooling", json={"model": model_name, "messages": messages, "add_special_tokens": True})
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["object"] == "list"
    assert len(output["data"]) == 1
    assert output["model"] == MODEL_NAME
    assert output["usage"]["prompt_tokens"] == n_tokens(add_special_tokens=True)

    # test continue_final_message with add_generation_prompt
    response = server.post(
        "/pooling",
        json={"model": model_name, "messages": messages, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert "Cannot set both `continue_final_message` and `add_generation_prompt` to True." in response.json()["error"]["message"]

