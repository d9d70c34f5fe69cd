# Port of vllm tests/entrypoints/pooling/embed/test_online_vision.py
# TIGER-Lab/VLM2Vec-Full (Phi-3.5-Vision, Phi3VForCausalLM, served natively) -> a tiny random
# VLM2Vec laid out as the published checkpoint (tests/tiny_phi3v.build_phi3v: a 64-wide Phi-3
# decoder, a CLIP tower on 16-pixel crops, num_crops 4 as VLM2Vec-Full's), served with vLLM's
# examples/pooling/embed/template/vlm2vec_phi3v.jinja (its text below), --max-num-seqs 5 and
# --limit-mm-per-prompt {"image": 2} behind the in-process app; --max-model-len 2048 -> 1024, the
# tiny model's positions. vLLM's usage counts (14, 767) are VLM2Vec's tokenizer and 336-pixel crops:
# here the counts of the same rendered prompt with the tiny checkpoint's tokenizer, and, with an
# image, as the published Phi3VProcessor counts it (tests/test_phi3v.Reference.input_ids: every
# piece tokenized with <s>, <|image_1|> as its crops' features), as vLLM's get_hf_prompt_tokens does.
# The images (cat_snow.jpg for image_base64, and the four TEST_IMAGE_ASSETS: a JPEG photo, a grey
# palette PNG, an RGB PNG, an RGBA PNG) are made here; vLLM downloads them.
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
from port_utils import VLM2VEC_CHAT_TEMPLATE

from poolkit import LLM
from poolkit.entrypoints.server import create_app

MODEL_NAME = "vlm2vec-stand-in"
MAXIMUM_IMAGES = 2
HIDDEN = 64  # the tiny decoder's width (VLM2Vec-Full: 3072)


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
        "2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg": _uri(picture(48, 64, 0), "JPEG"),
        "Grayscale_8bits_palette_sample_image.png": _uri(grey, "PNG"),
        "1280px-Venn_diagram_rgb.svg.png": _uri(picture(30, 70, 2), "PNG"),
        "RGBA_comp.png": _uri(picture(50, 36, 3, "RGBA"), "PNG"),
    }


# Test different image extensions (JPG/PNG) and formats (gray/RGB/RGBA)
TEST_IMAGE_ASSETS = list(_assets())


@pytest.fixture(scope="module")
def model_dir(vllm_models_root):
    from tiny_phi3v import build_phi3v

    return build_phi3v(vllm_models_root / "vlm2vec-full")


@pytest.fixture(scope="module")
def server(model_dir):
    llm = LLM(
        str(model_dir), runner="pooling", max_model_len=1024, max_num_seqs=5, enforce_eager=True,
        trust_remote_code=True, limit_mm_per_prompt={"image": MAXIMUM_IMAGES},
    )
    with TestClient(create_app(llm, served_model_name=MODEL_NAME, chat_template=VLM2VEC_CHAT_TEMPLATE)) as client:
        yield client


@pytest.fixture(scope="module")
def hf_processor(model_dir):
    """The published processor's counts, written out in tests/models/test_phi3v.py (num_crops 4, as vLLM asks)."""
    from test_phi3v import Reference

    return Reference(model_dir, num_crops=4)


@pytest.fixture(scope="module")
def image_base64():
    from tiny_models import picture

    return {"url": _uri(picture(56, 72, 4), "JPEG")}  # cat_snow.jpg's stand-in


def get_hf_prompt_tokens(hf_processor, messages, image_uri: str | None) -> int:
    """The tokens of the prompt vlm2vec_phi3v.jinja renders: the text alone as the tokenizer cuts it
    (a chat is tokenized without special tokens), with an image as Phi3VProcessor counts it. A string
    content is one text part, as vLLM gives it to a template that loops over the parts."""
    tok = hf_processor.tok
    rendered = [{**m, "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else [
        {"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]} for m in messages]
    text = tok.apply_chat_template(rendered, chat_template=VLM2VEC_CHAT_TEMPLATE, tokenize=False)
    if image_uri is None:
        return len(tok(text, add_special_tokens=False)["input_ids"])
    image = Image.open(io.BytesIO(base64.b64decode(image_uri.split(",", 1)[1])))
    return len(hf_processor.input_ids(text, [hf_processor.pixels(image)[1]]))


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_chat_text_request(server, hf_processor, model_name: str):
    messages = [
        {
            "role": "user",
            "content": input_text,
        },
    ]

    # note: vlm2vec_phi3v.jinja
    # Embedding models should only embed one message at a time.

    response = server.post("v1/embeddings", json={"model": model_name, "messages": messages})
    response.raise_for_status()

    output = response.json()
    assert len(output["data"]) == 1
    assert output["model"] == MODEL_NAME
    assert len(output["data"][0]["embedding"]) == HIDDEN
    assert output["usage"]["prompt_tokens"] == get_hf_prompt_tokens(hf_processor, messages, None)


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
def test_chat_image_base64_request(server, hf_processor, model_name: str, image_base64: dict):
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
    assert output["usage"]["prompt_tokens"] == get_hf_prompt_tokens(hf_processor, messages, image_base64["url"])


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
def test_image_embedding(server, hf_processor, model_name: str, image_url: str):
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

    hf_prompt_tokens = get_hf_prompt_tokens(hf_processor, messages, uri)

    assert embeddings["id"] is not None
    assert len(embeddings["data"]) == 1
    assert len(embeddings["data"][0]["embedding"]) == HIDDEN
    assert embeddings["usage"]["completion_tokens"] == 0
    assert embeddings["usage"]["prompt_tokens"] == hf_prompt_tokens
    assert embeddings["usage"]["total_tokens"] == hf_prompt_tokens
