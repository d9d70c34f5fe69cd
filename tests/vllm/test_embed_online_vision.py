# Port of vllm tests/entrypoints/pooling/embed/test_online_vision.py
# TIGER-Lab/VLM2Vec-Full (Phi-3-Vision, remote code: poolkit refuses it, naming Qwen3-VL instead)
# served with --max-model-len 2048 (here 512, the tiny model's positions), --chat-template
# vlm2vec_phi3v.jinja and --limit-mm-per-prompt {"image": 2} -> a tiny
# random Qwen2VLForConditionalGeneration (tests/tiny_models.build_qwen2_vl, 64 wide) with a chat
# template that writes Qwen2-VL's image placeholder, behind the in-process app. vLLM's usage counts
# (14, 767) are VLM2Vec's tokenizer and image crops: here the counts of the same rendered prompt with
# transformers' own Qwen2-VL image processor expanding the placeholder (get_hf_prompt_tokens).
# The four image assets (a JPEG photo, a grey palette PNG, an RGB PNG, an RGBA PNG) are made here.
# DEPARTURE (test_chat_image_url_request): remote image URLs are refused with a 400 unless the server
# names their host in --allowed-media-domains (poolkit fetches nothing named by request data by
# default); the same request with the image as a data URI is test_chat_image_base64_request.
# media_io_kwargs (test_chat_image_with_media_io_kwargs) is ignored like other unknown fields: an
# RGBA image is composited onto white, as transformers' processors do; vLLM's test checks the answer.
import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "qwen2-vl-stand-in"
MAXIMUM_IMAGES = 2
HIDDEN = 64
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}" + IMAGE + "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
)

input_text = "The best thing about vLLM is that it supports many different models"
image_url = "https://vllm-public-assets.s3.us-west-2.amazonaws.com/multimodal_asset/cat_snow.jpg"


def _uri(image: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _assets() -> dict[str, str]:
    from tiny_models import picture

    grey = picture(40, 56, 1, "L").convert("P")
    return {
        "photo.jpg": _uri(picture(48, 64, 0), "JPEG"),
        "Grayscale_8bits_palette_sample_image.png": _uri(grey, "PNG"),
        "Venn_diagram_rgb.png": _uri(picture(30, 70, 2), "PNG"),
        "RGBA_comp.png": _uri(picture(50, 36, 3, "RGBA"), "PNG"),
    }


TEST_IMAGE_ASSETS = list(_assets())


@pytest.fixture(scope="module")
def model_dir(vllm_models_root):
    from tiny_models import build_qwen2_vl

    return build_qwen2_vl(vllm_models_root / "qwen2-vl")


@pytest.fixture(scope="module")
def server(model_dir):
    llm = LLM(
        str(model_dir), runner="pooling", max_model_len=512, max_num_seqs=5, enforce_eager=True,
        trust_remote_code=True, limit_mm_per_prompt={"image": MAXIMUM_IMAGES},
    )
    with TestClient(create_app(llm, served_model_name=MODEL_NAME, chat_template=CHAT_TEMPLATE)) as client:
        yield client


@pytest.fixture(scope="module")
def image_base64():
    return {"url": _assets()["photo.jpg"]}


def get_hf_prompt_tokens(model_dir, messages, image_uri: str | None) -> int:
    """The rendered prompt's tokens with transformers' Qwen2-VL image processor expanding the placeholder."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rendered = [{**m, "content": m["content"] if isinstance(m["content"], str) else [
        {"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]} for m in messages]
    text = tok.apply_chat_template(rendered, chat_template=CHAT_TEMPLATE, tokenize=False)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    if image_uri is None:
        return n
    image = Image.open(io.BytesIO(base64.b64decode(image_uri.split(",", 1)[1])))
    grid = AutoImageProcessor.from_pretrained(model_dir)(images=[image], return_tensors="pt")["image_grid_thw"][0]
    return n - 1 + int(grid.prod()) // 4


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_chat_text_request(server, model_dir, model_name: str):
    messages = [
        {
            "role": "user",
            "content": input_text,
        },
    ]

    response = server.post("v1/embeddings", json={"model": model_name, "messages": messages})
    response.raise_for_status()

    output = response.json()
    assert len(output["data"]) == 1
    assert output["model"] == MODEL_NAME
    assert len(output["data"][0]["embedding"]) == HIDDEN
    assert output["usage"]["prompt_tokens"] == get_hf_prompt_tokens(model_dir, messages, None)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_chat_image_url_request(server, model_name: str):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Represent the user's input."},
                {"type": "image_url", "image_url": {"url": image_url}},
            ],
        }
    ]

    response = server.post("v1/embeddings", json={"model": model_name, "messages": messages})
    # DEPARTURE: a remote URL is refused unless --allowed-media-domains names its host
    assert response.status_code == 400
    assert "remote image URLs are refused" in response.json()["error"]["message"]


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_chat_image_base64_request(server, model_dir, model_name: str, image_base64: dict):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Represent the user's input."},
                {"type": "image_url", "image_url": image_base64},
            ],
        }
    ]

    response = server.post("v1/embeddings", json={"model": model_name, "messages": messages})
    response.raise_for_status()

    output = response.json()
    assert len(output["data"]) == 1
    assert output["model"] == MODEL_NAME
    assert len(output["data"][0]["embedding"]) == HIDDEN
    assert output["usage"]["prompt_tokens"] == get_hf_prompt_tokens(model_dir, messages, image_base64["url"])


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_chat_image_with_media_io_kwargs(server, model_name: str):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Represent the user's input."},
                {"type": "image_url", "image_url": {"url": _assets()["RGBA_comp.png"]}},
            ],
        }
    ]

    response = server.post(
        "v1/embeddings",
        json={
            "model": model_name,
            "messages": messages,
            "media_io_kwargs": {
                "image": {"rgba_background_color": [0, 0, 0]},
            },
        },
    )
    response.raise_for_status()

    output = response.json()
    assert len(output["data"]) == 1
    assert len(output["data"][0]["embedding"]) == HIDDEN


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("image_url", TEST_IMAGE_ASSETS)
def test_image_embedding(server, model_dir, model_name: str, image_url: str):
    content_text = "Represent the given image."
    uri = _assets()[image_url]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": content_text},
            ],
        }
    ]

    response = server.post("v1/embeddings", json={"model": model_name, "messages": messages, "encoding_format": "float"})
    response.raise_for_status()
    embeddings = response.json()

    hf_prompt_tokens = get_hf_prompt_tokens(model_dir, messages, uri)

    assert embeddings["id"] is not None
    assert len(embeddings["data"]) == 1
    assert len(embeddings["data"][0]["embedding"]) == HIDDEN
    assert embeddings["usage"]["completion_tokens"] == 0
    assert embeddings["usage"]["prompt_tokens"] == hf_prompt_tokens
    assert embeddings["usage"]["total_tokens"] == hf_prompt_tokens
