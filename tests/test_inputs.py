"""The input layer (issue 53): chat messages offline (``LLM.embed`` / ``encode`` / ``classify`` take
``messages`` as vLLM's chat-style inputs do), rendered by the same renderer the server uses, and
the renderer's refusals.

Offline results are compared with the server's ``/v1/embeddings`` on the same conversation, and
with the prompt the chat template renders, tokenized without special tokens (vLLM's rule)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from test_vlm_surfaces import BLUE, RED, TEMPLATE, assert_same, chat, image_part, offline, text_part  # noqa: E402

from poolkit import LLM, InvalidRequest  # noqa: E402
from poolkit.entrypoints.server import create_app  # noqa: E402
from poolkit.inputs import Chat  # noqa: E402

TEXT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
CONVERSATION = [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "what is a cat?"}]


@pytest.fixture(scope="module")
def minilm(minilm_dir) -> LLM:
    return LLM(str(minilm_dir))


def rendered_ids(llm: LLM, messages, template: str = TEXT_TEMPLATE, **kwargs) -> list[int]:
    text = llm.get_tokenizer().apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)
    return llm.get_tokenizer()(text, add_special_tokens=False)["input_ids"]


def test_offline_messages_embed_the_rendered_chat(minilm):
    (out,) = minilm.embed(messages=CONVERSATION, chat_template=TEXT_TEMPLATE)
    (want,) = minilm.embed({"prompt_token_ids": rendered_ids(minilm, CONVERSATION)})
    assert out.prompt_token_ids == want.prompt_token_ids
    assert_same(out.outputs.embedding, want.outputs.embedding, atol=0)


def test_offline_messages_equal_the_server(minilm):
    with TestClient(create_app(minilm, served_model_name="m", chat_template=TEXT_TEMPLATE)) as client:
        response = client.post("/v1/embeddings", json={"messages": CONVERSATION})
    assert response.status_code == 200, response.text
    (out,) = minilm.embed(messages=CONVERSATION, chat_template=TEXT_TEMPLATE)
    assert_same(response.json()["data"][0]["embedding"], out.outputs.embedding)


def test_a_list_of_conversations_and_chat_fields(minilm):
    other = [{"role": "user", "content": "a dog"}]
    both = minilm.embed(messages=[CONVERSATION, other], chat_template=TEXT_TEMPLATE)
    assert [o.prompt_token_ids for o in both] == [rendered_ids(minilm, CONVERSATION), rendered_ids(minilm, other)]
    # vLLM's chat-style fields in a prompt dict, and the typed input, mixed with a plain text
    dict_form = {"messages": other, "add_generation_prompt": True, "chat_template": TEXT_TEMPLATE}
    typed = Chat(other, add_special_tokens=True, chat_template=TEXT_TEMPLATE)
    outs = minilm.embed([dict_form, typed, "plain text"])
    assert outs[0].prompt_token_ids == rendered_ids(minilm, other, add_generation_prompt=True)
    assert outs[1].prompt_token_ids[0] == minilm.get_tokenizer().cls_token_id  # special tokens asked for
    assert outs[2].prompt_token_ids == minilm.embed("plain text")[0].prompt_token_ids
    encoded = minilm.encode(messages=other, chat_template=TEXT_TEMPLATE, pooling_task="token_embed")
    assert encoded[0].prompt_token_ids == rendered_ids(minilm, other)


def test_offline_classify_takes_messages(tmp_path):
    from tiny_models import build_classifier

    llm = LLM(str(build_classifier(tmp_path / "clf", "bert", num_labels=3)))
    (out,) = llm.classify(messages=CONVERSATION, chat_template=TEXT_TEMPLATE)
    (want,) = llm.classify({"prompt_token_ids": rendered_ids(llm, CONVERSATION)})
    assert torch.allclose(torch.tensor(out.outputs.probs), torch.tensor(want.outputs.probs), atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"messages": CONVERSATION}, "has no chat template: send 'prompts' instead of 'messages'$"),
        ({"messages": CONVERSATION, "prompts": "x", "chat_template": TEXT_TEMPLATE}, "either prompts or messages, not both"),
        ({}, "pass prompts, or chat messages as messages="),
        ({"messages": "hi", "chat_template": TEXT_TEMPLATE}, "messages must be a non-empty list"),
        ({"messages": [], "chat_template": TEXT_TEMPLATE}, "messages must be a non-empty list"),
        ({"messages": [{"content": "x"}], "chat_template": TEXT_TEMPLATE}, r"messages\[0\] needs a string 'role'"),
        ({"prompts": "x", "chat_template": TEXT_TEMPLATE}, "chat_template goes with messages="),
        ({"prompts": {"messages": CONVERSATION, "tools": []}}, "a chat input takes 'messages' and .*; got tools"),
        ({"prompts": {"messages": CONVERSATION, "chat_template": TEXT_TEMPLATE, "chat_template_kwargs": {"tokenize": True}}},
         "chat_template_kwargs may not set tokenize"),
        ({"prompts": {"messages": CONVERSATION, "chat_template": TEXT_TEMPLATE, "add_generation_prompt": True,
                      "continue_final_message": True}}, "Cannot set both"),
        ({"messages": [{"role": "user", "content": "{{ x"}], "chat_template": "{{ messages[0]['content'] | bad_filter }}"},
         "cannot apply the chat template"),
    ],
)
def test_bad_chat_inputs_are_one_line_errors(minilm, kwargs, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        minilm.embed(**kwargs)
    assert "\n" not in str(caught.value)


# -- with images: the tiny Qwen2-VL ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vl(tmp_path_factory) -> LLM:
    from tiny_models import build_qwen2_vl

    return LLM(str(build_qwen2_vl(tmp_path_factory.mktemp("qwen2-vl"))), dtype="float32")


def test_offline_messages_with_images_equal_the_prompt_with_images(vl):
    parts = [text_part("two: "), image_part(RED), image_part(BLUE)]
    (out,) = vl.embed(messages=[{"role": "user", "content": parts}], chat_template=TEMPLATE)
    assert_same(out.outputs.embedding, offline(vl, chat(*parts), [RED, BLUE]))
    pil = [text_part("two: "), {"type": "image_pil", "image_pil": RED}, {"type": "image_pil", "image_pil": BLUE}]
    (same,) = vl.embed(messages=[{"role": "user", "content": pil}], chat_template=TEMPLATE)
    assert_same(same.outputs.embedding, out.outputs.embedding)


def test_offline_messages_refuse_remote_and_file_images(vl):
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]
    with pytest.raises(InvalidRequest, match="remote image URLs are refused"):
        vl.embed(messages=remote, chat_template=TEMPLATE)
    files = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]
    with pytest.raises(InvalidRequest, match="files and other URLs are not read"):
        vl.embed(messages=files, chat_template=TEMPLATE)
