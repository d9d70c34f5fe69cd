"""Vision-language inputs on every surface: the load settings (``limit_mm_per_prompt``,
``mm_processor_kwargs``), chat ``messages`` with ``image_url`` parts on ``/v1/embeddings`` and
``/pooling``, Cohere ``/v2/embed`` images and mixed inputs, remote images behind
``--allowed-media-domains`` (a local ``http.server`` on 127.0.0.1), ``/score`` and ``LLM.score``
with image documents, ``poolkit embed --image`` and ``poolkit.SentenceTransformer.encode``.

Every result is compared with offline ``LLM.embed`` of the same prompt, on the tiny Qwen2-VL.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import threading
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import poolkit  # noqa: E402
from tiny_models import picture  # noqa: E402
from poolkit import LLM, EngineArgs, InvalidRequest  # noqa: E402
from poolkit.entrypoints.cli import app as cli  # noqa: E402
from poolkit.entrypoints.server import create_app  # noqa: E402

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
#: Qwen2-VL's chat template, cut to what embeddings read: each image part is the template's own placeholder.
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}" + IMAGE +
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
)
NO_SPECIALS = {"add_special_tokens": False}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def chat(*parts: dict, role: str = "user") -> str:
    """What TEMPLATE renders of one message with ``parts``."""
    body = "".join(IMAGE if p["type"] == "image_url" else p["text"] for p in parts)
    return f"<|im_start|>{role}\n{body}<|im_end|>\n"


def image_part(image: Image.Image) -> dict:
    return {"type": "image_url", "image_url": {"url": data_uri(image)}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


RED, BLUE = picture(30, 40, 0), picture(20, 50, 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_models import build_qwen2_vl

    return build_qwen2_vl(tmp_path_factory.mktemp("qwen2-vl"))


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), dtype="float32")


@pytest.fixture(scope="module")
def client(llm):
    with TestClient(create_app(llm, served_model_name="vl", chat_template=TEMPLATE)) as c:
        yield c


@pytest.fixture(scope="module")
def bare_client(llm):
    """The model served without a chat template."""
    with TestClient(create_app(llm, served_model_name="vl")) as c:
        yield c


def offline(llm, text: str, images: list, special: bool = False) -> torch.Tensor:
    prompt = {"prompt": text, "multi_modal_data": {"image": images}} if images else text
    kwargs = None if special else NO_SPECIALS
    return torch.tensor(llm.embed([prompt], tokenization_kwargs=kwargs)[0].outputs.embedding)


def assert_same(got, want, atol: float = 1e-5) -> None:
    assert (torch.as_tensor(got, dtype=torch.float32) - torch.as_tensor(want, dtype=torch.float32)).abs().max() <= atol


def error_of(response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert "\n" not in message and "Traceback" not in message
    return message


# -- 1. the load settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"limit_mm_per_prompt": "{nope"}, "limit_mm_per_prompt is not valid JSON"),
        ({"limit_mm_per_prompt": "[1]"}, "limit_mm_per_prompt must be a dict (a JSON object), got list"),
        ({"limit_mm_per_prompt": {"audio": 1}}, "limit_mm_per_prompt: unknown media kind 'audio'; use 'image' or 'video'"),
        ({"limit_mm_per_prompt": {"image": -1}}, "the limit of 'image' must be a whole number of 0 or more, got -1"),
        ({"limit_mm_per_prompt": {"image": "2"}}, "the limit of 'image' must be a whole number of 0 or more, got '2'"),
        ({"mm_processor_kwargs": "{"}, "mm_processor_kwargs is not valid JSON"),
        ({"mm_processor_kwargs": {"max_pixels": 0}}, "max_pixels must be a positive whole number of pixels, got 0"),
        ({"mm_processor_kwargs": {"min_pixels": 900, "max_pixels": 100}}, "min_pixels (900) is more than max_pixels (100)"),
    ],
)
def test_bad_media_settings_are_one_line_errors(values, message):
    with pytest.raises(InvalidRequest) as info:
        EngineArgs(**values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_media_settings_reach_the_model(model_dir, llm):
    limited = LLM(str(model_dir), dtype="float32", limit_mm_per_prompt='{"image": 1}', mm_processor_kwargs={"max_pixels": 16 * 16})
    assert limited.model.limit_mm_per_prompt == {"image": 1} and limited.model.mm_processor_kwargs == {"max_pixels": 256}
    assert LLM.from_args(limited.args).args == limited.args and limited.args.identity()["limit_mm_per_prompt"] == {"image": 1}
    with pytest.raises(InvalidRequest, match="2 images, more than the limit of 1 per prompt"):
        limited.embed([{"prompt": IMAGE * 2, "multi_modal_data": {"image": [RED, BLUE]}}])
    big = picture(64, 64, 2)
    (small,) = limited.embed([{"prompt": "", "multi_modal_data": {"image": big}}])
    (full,) = llm.embed([{"prompt": "", "multi_modal_data": {"image": big}}])
    token = llm.model.hf_config.image_token_id
    assert sum(t == token for t in small.prompt_token_ids) == 4  # 16 x 16 pixels: 2 x 2 merged patches
    assert sum(t == token for t in full.prompt_token_ids) == 36  # the checkpoint's 48 x 48 budget


def test_cli_takes_the_media_settings_as_json(model_dir, llm, tmp_path):
    files = [tmp_path / "red.png", tmp_path / "blue.png"]
    for image, path in zip((RED, BLUE), files):
        image.save(path)
    base = ["embed", "--model", str(model_dir), "--dtype", "float32", "--format", "jsonl", "--quiet"]
    images = [arg for f in files for arg in ("--image", str(f))]
    refused = CliRunner().invoke(cli, base + ["--limit-mm-per-prompt", '{"image": 1}', *images, f"{IMAGE}{IMAGE} two"])
    assert refused.exit_code == 1 and "Error: prompt 0: 2 images, more than the limit of 1 per prompt" in refused.stderr
    bad = CliRunner().invoke(cli, base + ["--mm-processor-kwargs", "[1]", "x"])
    assert bad.exit_code == 1 and "Error: --mm-processor-kwargs must be a dict (a JSON object), got list" in bad.stderr
    small = CliRunner().invoke(cli, base + ["--mm-processor-kwargs", '{"max_pixels": 256}', "--image", str(files[0])])
    assert small.exit_code == 0, small.output
    want = LLM(str(model_dir), dtype="float32", mm_processor_kwargs={"max_pixels": 256}).embed(
        [{"prompt": "", "multi_modal_data": {"image": RED}}])[0].outputs.embedding
    assert_same(json.loads(small.stdout)["embedding"], want)


# -- 3. the CLI --------------------------------------------------------------------------------------


def test_cli_text_and_images_are_one_prompt(model_dir, llm, tmp_path):
    files = [tmp_path / "red.png", tmp_path / "blue.png"]
    for image, path in zip((RED, BLUE), files):
        image.save(path)
    base = ["embed", "--model", str(model_dir), "--dtype", "float32", "--format", "jsonl", "--quiet"]
    images = [arg for f in files for arg in ("--image", str(f))]
    text = f"{IMAGE} and {IMAGE} compared"
    result = CliRunner().invoke(cli, base + images + [text])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["index"] == 0
    assert_same(row["embedding"], offline(llm, text, [RED, BLUE], special=True))
    each = CliRunner().invoke(cli, base + images)  # no text: one record per image, as for CLIP
    rows = [json.loads(line) for line in each.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    for r, image in zip(rows, (RED, BLUE)):
        assert_same(r["embedding"], offline(llm, "", [image]))
    two = CliRunner().invoke(cli, base + images + ["a", "b"])
    assert two.exit_code == 1 and "Error: --image takes at most one text argument (the prompt the images go in), got 2" in two.stderr
    missing = CliRunner().invoke(cli, base + ["--image", str(files[0]), "no placeholder"])
    assert missing.exit_code == 1 and "Error: prompt 0 has 0 image placeholders" in missing.stderr


# -- 2. the server: chat messages --------------------------------------------------------------------


def test_messages_with_images_equal_offline_embeddings(client, llm):
    parts = [image_part(RED), text_part("What is in the picture?")]
    want = offline(llm, chat(*parts), [RED])
    response = client.post("/v1/embeddings", json={"model": "vl", "messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 200, response.text
    assert_same(response.json()["data"][0]["embedding"], want)
    assert response.json()["usage"]["prompt_tokens"] == len(llm.embed(
        [{"prompt": chat(*parts), "multi_modal_data": {"image": [RED]}}], tokenization_kwargs=NO_SPECIALS)[0].prompt_token_ids)
    pooled = client.post("/pooling", json={"messages": [{"role": "user", "content": parts}], "task": "embed"})
    assert pooled.status_code == 200, pooled.text
    assert_same(pooled.json()["data"][0]["data"], want)


def test_batched_conversations_mix_text_and_images(client, llm):
    two = [text_part("two: "), image_part(RED), image_part(BLUE)]
    conversations = [
        [{"role": "user", "content": two}],
        [{"role": "user", "content": "only text"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": [image_part(BLUE)]}],
    ]
    response = client.post("/v1/embeddings", json={"messages": conversations})
    assert response.status_code == 200, response.text
    got = [d["embedding"] for d in response.json()["data"]]
    assert_same(got[0], offline(llm, chat(*two), [RED, BLUE]))
    assert_same(got[1], offline(llm, chat(text_part("only text")), []))
    assert_same(got[2], offline(llm, chat(text_part("be brief"), role="system") + chat(image_part(BLUE)), [BLUE]))


def test_bad_image_messages_are_400s(client, model_dir):
    def send(content, c=client):
        return c.post("/v1/embeddings", json={"messages": [{"role": "user", "content": content}]})

    assert "remote image URLs are refused: the server fetches no remote images" in error_of(
        send([{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]))
    assert "an image must be a data:image/...;base64 URI" in error_of(send([{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]))
    assert "an image must be a data:image/...;base64 URI" in error_of(send([{"type": "image_url", "image_url": "file:///etc/passwd"}]))
    assert "not valid base64" in error_of(send([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]))
    assert "not a decodable image" in error_of(send([{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]))
    assert "a content part must be" in error_of(send([image_part(RED), {"type": "input_audio", "input_audio": {}}]))
    assert "needs 'image_url'" in error_of(send([{"type": "image_url", "image_url": {}}]))
    assert "17 images, more than the limit of 16 per prompt" in error_of(send([image_part(RED)] * 17))


def test_image_limits_over_http(model_dir, monkeypatch):
    limited = LLM(str(model_dir), dtype="float32", limit_mm_per_prompt={"image": 1})
    with TestClient(create_app(limited, chat_template=TEMPLATE)) as c:
        message = error_of(c.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [image_part(RED)] * 2}]}))
        assert "2 images, more than the limit of 1 per prompt (limit_mm_per_prompt)" in message
        assert "2 images, more than the limit of 1" in error_of(c.post(
            "/v2/embed", json={"inputs": [{"content": [text_part(IMAGE * 2), image_part(RED), image_part(BLUE)]}]}))
        monkeypatch.setenv("POOLKIT_MAX_IMAGE_PIXELS", "100")
        assert "the image is too large (40x30 = 1200 pixels, limit 100)" in error_of(
            c.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [image_part(RED)]}]}))
        monkeypatch.setenv("POOLKIT_MAX_IMAGE_BYTES", "64")
        assert "larger than the limit of 64 bytes" in error_of(c.post("/v2/embed", json={"images": [data_uri(RED)]}))


def test_text_only_models_refuse_image_parts(minilm_dir):
    with TestClient(create_app(LLM(str(minilm_dir)), chat_template=TEMPLATE)) as c:
        message = error_of(c.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [image_part(RED)]}]}))
        assert "reads text only; send no images" in message
        score = c.post("/score", json={"data_1": "q", "data_2": {"content": [image_part(RED)]}})
        assert "MultiModalParam is not supported for BertModel" in error_of(score)


# -- 2. the server: remote images, opted in -----------------------------------------------------------


@contextlib.contextmanager
def image_host() -> Iterator[str]:
    """An ``http.server`` on 127.0.0.1 serving ``/red.png``, a redirect to another host, a slow
    answer and a 404; yields its base URL."""
    body = png(RED)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == "/red.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/elsewhere.png":
                self.send_response(302)
                self.send_header("Location", "http://localhost.invalid/red.png")
                self.end_headers()
            elif self.path == "/here.png":
                self.send_response(302)
                self.send_header("Location", "/red.png")
                self.end_headers()
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_remote_images_only_from_allowed_domains(llm, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with image_host() as base, TestClient(
        create_app(llm, chat_template=TEMPLATE, allowed_media_domains=["127.0.0.1"])
    ) as c:
        def send(url):
            return c.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, text_part("remote")]}]})

        want = offline(llm, chat({"type": "image_url"}, text_part("remote")), [RED])
        for path in ("/red.png", "/here.png"):  # a redirect within the allowed host is followed
            response = send(base + path)
            assert response.status_code == 200, response.text
            assert_same(response.json()["data"][0]["embedding"], want)
        assert "redirects to 'localhost.invalid', which is not in --allowed-media-domains" in error_of(send(base + "/elsewhere.png"))
        assert "fetching the image failed: HTTP 404" in error_of(send(base + "/missing.png"))
        assert "'localhost' is not in --allowed-media-domains" in error_of(send(base.replace("127.0.0.1", "localhost") + "/red.png"))
        cohere = c.post("/v2/embed", json={"images": [base + "/red.png"]})
        assert cohere.status_code == 200, cohere.text
        monkeypatch.setenv("POOLKIT_MAX_IMAGE_BYTES", "100")
        assert "more than the limit of 100" in error_of(send(base + "/red.png"))
    with pytest.raises(InvalidRequest, match="--allowed-media-domains takes host names"):
        create_app(llm, allowed_media_domains=["http://127.0.0.1:8000/"])


# -- 2. the server: Cohere /v2/embed -----------------------------------------------------------------


def test_cohere_images_and_mixed_inputs(client, bare_client, llm):
    response = client.post("/v2/embed", json={"images": [data_uri(RED)], "embedding_types": ["float"]})
    assert response.status_code == 200, response.text
    assert_same(response.json()["embeddings"]["float"][0], offline(llm, chat({"type": "image_url"}), [RED]))
    assert response.json()["meta"]["billed_units"]["image_tokens"] > 1
    parts = [text_part("A photo of "), image_part(BLUE)]
    mixed = client.post("/v2/embed", json={"inputs": [{"content": parts}, {"content": [text_part("just text")]}]})
    assert mixed.status_code == 200, mixed.text
    rows = mixed.json()["embeddings"]["float"]
    assert_same(rows[0], offline(llm, chat(*parts), [BLUE]))
    assert_same(rows[1], offline(llm, "just text", [], special=True))
    # Without a chat template: an image alone gets the processor's placeholders; a text carries its own.
    bare = bare_client.post("/v2/embed", json={"inputs": [{"content": [image_part(RED)]}, {"content": [text_part(f"{IMAGE} what"), image_part(BLUE)]}]})
    assert bare.status_code == 200, bare.text
    rows = bare.json()["embeddings"]["float"]
    assert_same(rows[0], offline(llm, "", [RED], special=True))
    assert_same(rows[1], offline(llm, f"{IMAGE} what", [BLUE], special=True))
    assert "has 0 image placeholders" in error_of(bare_client.post("/v2/embed", json={"inputs": [{"content": [text_part("no place"), image_part(RED)]}]}))
    assert "remote image URLs are refused" in error_of(client.post("/v2/embed", json={"images": ["https://example.com/a.png"]}))


def test_dual_encoders_keep_refusing_text_with_images(tmp_path):
    from tiny_models import build_clip

    clip = LLM(str(build_clip(tmp_path / "clip")))
    with TestClient(create_app(clip, chat_template=TEMPLATE)) as c:
        mixed = c.post("/v2/embed", json={"inputs": [{"content": [text_part("a photo"), image_part(RED)]}]})
        assert "must have exactly one content part" in error_of(mixed)
        message = error_of(c.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [text_part("a"), image_part(RED)]}]}))
        assert "embeds one image without text" in message
        alone = c.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [image_part(RED)]}]})
        assert alone.status_code == 200, alone.text
        want = clip.embed([{"prompt": "", "multi_modal_data": {"image": RED}}])[0].outputs.embedding
        assert_same(alone.json()["data"][0]["embedding"], want)


# -- 5. scoring with image documents -----------------------------------------------------------------


def test_llm_score_text_query_against_image_documents(llm):
    # vLLM's ScoreMultiModalParam: each {"content": [...]} is one input, all its parts in one prompt
    docs = [{"content": [{"type": "image_pil", "image_pil": RED}]}, {"content": [{"type": "image_url", "image_url": {"url": data_uri(BLUE)}}]}]
    scores = llm.score("a red picture", docs)
    assert len(scores) == 2
    query = offline(llm, "a red picture", [], special=True)
    for out, image in zip(scores, (RED, BLUE)):
        want = torch.nn.functional.cosine_similarity(query, offline(llm, "", [image], special=True), dim=0)
        assert abs(out.outputs.score - float(want)) < 1e-5
    mixed = llm.score(["plain text", {"content": [text_part(f"{IMAGE} caption"), image_part(RED)]}], ["q1", "q2"])
    assert len(mixed) == 2
    with pytest.raises(InvalidRequest, match="a content part must be"):
        llm.score("q", {"content": [{"type": "video_url", "video_url": {"url": "x"}}]})
    with pytest.raises(InvalidRequest, match="'content' must be a non-empty list of content parts"):
        llm.score("q", {"content": []})
    both = llm.score("q", {"content": [text_part(f"{IMAGE}{IMAGE} two"), image_part(RED), image_part(BLUE)]})
    assert len(both) == 1  # one document holding both images


def test_score_route_equals_offline(client, llm):
    docs = [{"content": [image_part(RED)]}, {"content": [image_part(BLUE)]}]
    response = client.post("/score", json={"data_1": "a red picture", "data_2": docs})
    assert response.status_code == 200, response.text
    want = [o.outputs.score for o in llm.score("a red picture", [
        {"content": [{"type": "image_pil", "image_pil": RED}]}, {"content": [{"type": "image_pil", "image_pil": BLUE}]}])]
    got = [d["score"] for d in response.json()["data"]]
    assert np.allclose(got, want, atol=1e-5)
    listed = client.post("/score", json={"queries": ["a red picture"], "documents": [{"content": [image_part(RED)]}, "text doc"]})
    assert listed.status_code == 200, listed.text
    assert abs(listed.json()["data"][0]["score"] - want[0]) < 1e-5
    assert "an image must be a data:image" in error_of(client.post("/score", json={"data_1": "q", "data_2": {"content": [
        {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}}))
    assert "a content part must be" in error_of(client.post("/score", json={"data_1": "q", "data_2": {"content": [{"type": "audio"}]}}))
    assert "must be a string, a list of strings, or" in error_of(client.post("/score", json={"data_1": "q", "data_2": 5}))


# -- 4. sentence-transformers drop-in ----------------------------------------------------------------


def test_sentence_transformer_encodes_images_and_multimodal_dicts(model_dir, llm):
    model = poolkit.SentenceTransformer(str(model_dir))
    got = model.encode([RED, {"text": f"{IMAGE} hi", "image": BLUE}, "plain", {"image": [RED, BLUE], "text": IMAGE * 2}])
    want = [offline(llm, "", [RED], True), offline(llm, f"{IMAGE} hi", [BLUE], True), offline(llm, "plain", [], True),
            offline(llm, IMAGE * 2, [RED, BLUE], True)]
    assert_same(got, torch.stack(want))
    assert model.encode(RED).shape == (64,)
    model.tokenizer.chat_template = TEMPLATE  # with a chat template, the dict is one chat message, parts in key order
    try:
        chatted = model.encode({"text": "What?", "image": RED})
    finally:
        model.tokenizer.chat_template = None
    assert_same(chatted, offline(llm, chat(text_part("What?"), {"type": "image_url"}), [RED]))
    with pytest.raises(InvalidRequest, match="a multimodal input takes 'text' and 'image' keys, got video"):
        model.encode({"text": "x", "video": [RED]})


def test_pixel_and_byte_caps_are_load_settings(model_dir, tmp_path):
    """``max_image_pixels`` / ``max_image_bytes`` (load settings, CLI and server flags from them) refuse
    an image over them in Python, the CLI and over HTTP."""
    from typer.testing import CliRunner

    picture_file = tmp_path / "red.png"
    picture_file.write_bytes(png(RED))
    small = LLM(str(model_dir), max_image_pixels=100, max_image_bytes=10_000)
    with pytest.raises(InvalidRequest, match=r"prompt 0: the image is too large \(.* pixels, limit 100\)"):
        small.embed([{"prompt": "", "multi_modal_data": {"image": RED}}])
    with pytest.raises(InvalidRequest, match="more than the limit of 10"):
        LLM(str(model_dir), max_image_bytes=10).embed([{"prompt": "", "multi_modal_data": {"image": png(RED)}}])
    result = CliRunner().invoke(cli, ["embed", "--model", str(model_dir), "--max-image-pixels", "100", "--image", str(picture_file)])
    assert result.exit_code == 1 and "Error: prompt 0: the image is too large" in result.output
    with TestClient(create_app(small, served_model_name="vl")) as c:
        response = c.post("/v2/embed", json={"model": "vl", "images": [data_uri(RED)], "embedding_types": ["float"]})
    assert response.status_code == 400 and "the image is too large" in error_of(response)
    with pytest.raises(InvalidRequest, match="max_image_pixels"):
        LLM(str(model_dir), max_image_pixels=0)
