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
from test_vlm_surfaces import BLUE, IMAGE as IMAGE_PLACEHOLDER, RED, TEMPLATE, assert_same, chat, image_part, offline, text_part  # noqa: E402

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
        ({}, "prompts must be a string or a list of strings, got None"),
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


# -- proof by use: /tokenize of a conversation with images ------------------------------------------


@pytest.fixture(scope="module")
def vl_client(vl):
    with TestClient(create_app(vl, served_model_name="vl", chat_template=TEMPLATE)) as client:
        yield client


def test_tokenize_of_chat_with_images_expands_the_placeholders(vl, vl_client):
    parts = [text_part("two: "), image_part(RED), image_part(BLUE)]
    response = vl_client.post("/tokenize", json={"model": "vl", "messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 200, response.text
    want = vl.embed([{"prompt": chat(*parts), "multi_modal_data": {"image": [RED, BLUE]}}],
                    tokenization_kwargs={"add_special_tokens": False})[0].prompt_token_ids
    body = response.json()
    assert body["tokens"] == want and body["count"] == len(want)
    pad = vl.get_tokenizer().convert_tokens_to_ids("<|image_pad|>")
    assert body["tokens"].count(pad) > 2  # each image's placeholder became one token per merged patch
    text_only = vl_client.post("/tokenize", json={"messages": [{"role": "user", "content": "only text"}]})
    assert text_only.json()["tokens"] == vl.get_tokenizer()(chat(text_part("only text")), add_special_tokens=False)["input_ids"]


def test_tokenize_of_chat_with_images_refusals(minilm, vl_client):
    bad = vl_client.post("/tokenize", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]})
    assert bad.status_code == 400 and "files and other URLs are not read" in bad.json()["error"]["message"]
    with TestClient(create_app(minilm, served_model_name="m", chat_template=TEXT_TEMPLATE)) as client:
        text_model = client.post("/tokenize", json={"messages": [{"role": "user", "content": [image_part(RED)]}]})
    assert text_model.status_code == 400, text_model.text
    assert "reads text only; send no images" in text_model.json()["error"]["message"]


# -- proof by use: videos over HTTP ------------------------------------------------------------------

VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
#: TEMPLATE's rendering with video parts as the template's video placeholder.
MEDIA_TEMPLATE = TEMPLATE.replace(
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}",
    "{% if content['type'] == 'video' %}" + VIDEO + "{% elif content['type'] == 'image' or 'image' in content or 'image_url' in content %}",
)


def frames(n: int = 4, seed: int = 20) -> list:
    from tiny_models import picture

    return [picture(32, 32, seed + i) for i in range(n)]


def gif_uri(images: list) -> tuple[str, list]:
    """An animated GIF data URI of ``images``, and its frames as a reader decodes them (GIF keeps a palette)."""
    import base64
    import io as _io

    from PIL import Image, ImageSequence

    buf = _io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=40, loop=0, disposal=2)
    decoded = [f.convert("RGB") for f in ImageSequence.Iterator(Image.open(_io.BytesIO(buf.getvalue())))]
    return "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode(), decoded


def mp4_uri(images: list) -> tuple[str, list]:
    """An MPEG-4 data URI of ``images`` (PyAV), and its frames as PyAV decodes them."""
    av = pytest.importorskip("av")
    import base64
    import io as _io

    buf = _io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = images[0].width, images[0].height, "yuv420p"
        for image in images:
            out.mux(stream.encode(av.VideoFrame.from_image(image)))
        out.mux(stream.encode(None))
    with av.open(_io.BytesIO(buf.getvalue())) as container:
        decoded = [f.to_image().convert("RGB") for f in container.decode(video=0)]
    return "data:video/mp4;base64," + base64.b64encode(buf.getvalue()).decode(), decoded


def video_part(uri: str) -> dict:
    return {"type": "video_url", "video_url": {"url": uri}}


@pytest.fixture(scope="module")
def video_client(vl):
    with TestClient(create_app(vl, served_model_name="vl", chat_template=MEDIA_TEMPLATE)) as client:
        yield client


def offline_video(vl, text: str, videos: list, images: list = ()) -> list[float]:
    media = {"video": videos} | ({"image": list(images)} if images else {})
    return vl.embed([{"prompt": text, "multi_modal_data": media}], tokenization_kwargs={"add_special_tokens": False})[0].outputs.embedding


@pytest.mark.parametrize("encode", [gif_uri, mp4_uri], ids=["animated-gif", "mp4"])
def test_video_url_parts_over_http_equal_offline_frames(vl, video_client, encode):
    uri, decoded = encode(frames())
    parts = [text_part("a clip: "), video_part(uri), text_part(" and a picture "), image_part(RED)]
    messages = [{"role": "user", "content": parts}]
    rendered = f"<|im_start|>user\na clip: {VIDEO} and a picture {IMAGE_PLACEHOLDER}<|im_end|>\n"
    want = offline_video(vl, rendered, [decoded], [RED])
    for path, field in (("/v1/embeddings", "embedding"), ("/pooling", "data")):
        response = video_client.post(path, json={"messages": messages, **({"task": "embed"} if path == "/pooling" else {})})
        assert response.status_code == 200, response.text
        assert_same(response.json()["data"][0][field], want)
    # the same conversation offline, and /tokenize counting the video's tokens
    (offline_chat,) = vl.embed(messages=messages, chat_template=MEDIA_TEMPLATE)
    assert_same(offline_chat.outputs.embedding, want)
    tokens = video_client.post("/tokenize", json={"messages": messages}).json()["tokens"]
    assert tokens == offline_chat.prompt_token_ids


def test_videos_have_the_limits_images_have(vl, monkeypatch):
    uri, _ = gif_uri(frames())
    messages = [{"role": "user", "content": [video_part(uri), video_part(uri)]}]
    limited = LLM(str(vl.model.path), dtype="float32", limit_mm_per_prompt={"video": 1})
    with TestClient(create_app(limited, chat_template=MEDIA_TEMPLATE)) as client:
        too_many = client.post("/v1/embeddings", json={"messages": messages})
        assert too_many.status_code == 400 and "2 videos, more than the limit of 1 per prompt" in too_many.json()["error"]["message"]
        remote = client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [video_part("http://127.0.0.1:9/a.mp4")]}]})
        assert remote.status_code == 400 and "remote image URLs are refused" in remote.json()["error"]["message"]
        files = client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [video_part("/etc/passwd")]}]})
        assert files.status_code == 400 and "files and other URLs are not read" in files.json()["error"]["message"]
        monkeypatch.setenv("POOLKIT_MAX_VIDEO_FRAMES", "3")
        long = client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [video_part(uri)]}]})
        assert long.status_code == 400 and "the video has 4 frames, more than the limit of 3" in long.json()["error"]["message"]
        monkeypatch.delenv("POOLKIT_MAX_VIDEO_FRAMES")
        junk = client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [video_part("data:video/mp4;base64,AAAA")]}]})
        assert junk.status_code == 400 and "video" in junk.json()["error"]["message"]


def test_models_without_videos_refuse_video_parts(minilm):
    uri, _ = gif_uri(frames())
    with TestClient(create_app(minilm, served_model_name="m", chat_template=TEXT_TEMPLATE)) as client:
        response = client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [video_part(uri)]}]})
    assert response.status_code == 400
    assert "a content part must be {'type': 'text', 'text': ...} or {'type': 'image_url'" in response.json()["error"]["message"]


# -- proof by use: /rerank with image documents ------------------------------------------------------


def test_rerank_image_documents_on_an_embedding_model_equal_offline_scores(vl, vl_client):
    docs = [{"content": [image_part(RED)]}, "a text document", {"content": [text_part(f"{IMAGE_PLACEHOLDER} a blue one"), image_part(BLUE)]}]
    offline_docs = [{"content": [{"type": "image_pil", "image_pil": RED}]}, "a text document",
                    {"content": [text_part(f"{IMAGE_PLACEHOLDER} a blue one"), {"type": "image_pil", "image_pil": BLUE}]}]
    want = [o.outputs.score for o in vl.score("a red picture", offline_docs)]
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        response = vl_client.post(path, json={"model": "vl", "query": "a red picture", "documents": docs})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["index"] for r in results] == sorted(range(3), key=lambda i: -want[i])
        for r in results:
            assert abs(r["relevance_score"] - want[r["index"]]) < 1e-5
            assert r["document"] == ({"text": docs[1]} if r["index"] == 1 else {"multi_modal": docs[r["index"]]})
    one = vl_client.post("/rerank", json={"query": "q", "documents": {"content": [image_part(RED)]}, "return_documents": False})
    assert one.status_code == 200 and "document" not in one.json()["results"][0]
    bad = vl_client.post("/rerank", json={"query": "q", "documents": [{"content": [image_part(RED)]}, {"content": "x"}]})
    assert bad.status_code == 400 and "must be strings, {'text': ...} or {'content': [text and image_url parts]}" in bad.json()["error"]["message"]
    bad_part = vl_client.post("/rerank", json={"query": "q", "documents": [{"content": [{"type": "audio"}]}]})
    assert bad_part.status_code == 400 and "a content part must be" in bad_part.json()["error"]["message"]


def test_rerank_image_documents_on_a_late_interaction_model(tmp_path):
    """ColQwen2 scores each page by MaxSim: /rerank with image documents equals LLM.score offline."""
    from tiny_colretrieval import build_colqwen2

    llm = LLM(str(build_colqwen2(tmp_path / "colqwen2")), dtype="float32")
    pages = [RED, BLUE]
    want = [o.outputs.score for o in llm.score("which page", [{"content": [{"type": "image_pil", "image_pil": p}]} for p in pages])]
    with TestClient(create_app(llm, served_model_name="colqwen2")) as client:
        response = client.post("/rerank", json={"query": "which page", "documents": [{"content": [image_part(p)]} for p in pages]})
        assert response.status_code == 200, response.text
        got = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
        assert all(abs(got[i] - want[i]) < 1e-4 for i in range(2))
        remote = client.post("/rerank", json={"query": "q", "documents": [{"content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/p.png"}}]}]})
        assert remote.status_code == 400 and "remote image URLs are refused" in remote.json()["error"]["message"]


def test_rerank_image_documents_refused_by_text_models(minilm, tmp_path):
    docs = [{"content": [image_part(RED)]}]
    with TestClient(create_app(minilm, served_model_name="m")) as client:
        response = client.post("/rerank", json={"query": "q", "documents": docs})
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "MultiModalParam is not supported for BertModel"
        schema = client.get("/openapi.json").json()["components"]["schemas"]["RerankRequest"]["properties"]["documents"]
        assert "content" not in str(schema["anyOf"])  # a text model's document has no image form
        texts = client.post("/rerank", json={"query": "q", "documents": ["a", {"text": "b"}]})
        assert texts.status_code == 200 and texts.json()["results"][0]["document"]["text"] in ("a", "b")


def test_cohere_inputs_take_video_parts(vl, video_client, minilm):
    uri, decoded = gif_uri(frames())
    content = [{"type": "text", "text": "a clip: "}, {"type": "video_url", "video_url": {"url": uri}}]
    response = video_client.post("/v2/embed", json={"inputs": [{"content": content}], "embedding_types": ["float"]})
    assert response.status_code == 200, response.text
    want = offline_video(vl, f"<|im_start|>user\na clip: {VIDEO}<|im_end|>\n", [decoded])
    assert_same(response.json()["embeddings"]["float"][0], want)
    schema = video_client.get("/openapi.json").json()["components"]["schemas"]["CohereContent"]["properties"]
    assert "video_url" in str(schema["type"]) and schema["video_url"] != {"type": "null"}
    with TestClient(create_app(minilm, served_model_name="m")) as client:
        refused = client.post("/v2/embed", json={"inputs": [{"content": [{"type": "video_url", "video_url": {"url": uri}}]}],
                                                 "embedding_types": ["float"]})
        assert refused.status_code == 400 and "reads no videos" in refused.json()["error"]["message"]
        text_schema = client.get("/openapi.json").json()["components"]["schemas"]["CohereContent"]["properties"]
        assert text_schema["type"] == {"const": "text"} and text_schema["video_url"] == {"type": "null"}
