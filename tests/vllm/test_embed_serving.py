# Port of vllm tests/entrypoints/pooling/embed/test_serving.py
# vLLM unit-tests ServingEmbedding._build_cohere_response_from_ctx with a fake 3-token output for
# each request shape. poolkit has no such class: the same four Cohere request shapes go to /v2/embed
# on a tiny CLIP (tests/support/tiny_models.build_clip), and billed_units is checked against the real
# token counts (texts: the tokenizer's; an image: what the server reports as image_tokens).
import base64
import io

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from poolkit import LLM
from poolkit.entrypoints.server import create_app

pytest.importorskip("PIL")

MODEL_NAME = "test"


@pytest.fixture(scope="module")
def clip_dir(vllm_models_root):
    from tiny_models import build_clip

    return build_clip(vllm_models_root / "clip-serving")


@pytest.fixture(scope="module")
def server(clip_dir):
    with TestClient(create_app(LLM(str(clip_dir)), served_model_name=MODEL_NAME)) as c:
        yield c


def _image_uri() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


IMAGE = "image-uri"  # replaced by a real data URI (vLLM's fake output never decodes it)

# DEPARTURE (the fourth shape, one input holding a text part and an image part): vLLM's unit test
# bills it as an image with a fake model output; a real CLIP or SigLIP in vLLM refuses such a prompt
# ("CLIP accepts text-only or image-only inputs, not both!"). poolkit refuses it before running,
# with a 400 that says so, and bills nothing.
MIXED = {"inputs": [{"content": [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": IMAGE}}]}]}


@pytest.mark.parametrize(
    ("cohere_request", "text_billed", "image_billed"),
    [
        ({"texts": ["hello"]}, True, False),
        ({"images": [IMAGE]}, False, True),
        ({"inputs": [{"content": [{"type": "text", "text": "hello"}]}]}, True, False),
        (MIXED, False, True),
    ],
)
def test_cohere_billed_units_account_for_image_input_shapes(server, clip_dir, cohere_request, text_billed, image_billed):
    body = {"model": MODEL_NAME, **cohere_request}
    if "images" in body:
        body["images"] = [_image_uri()]
    for item in body.get("inputs", []):
        for part in item["content"]:
            if part["type"] == "image_url":
                part["image_url"]["url"] = _image_uri()
    response = server.post("/v2/embed", json=body)
    if cohere_request is MIXED:
        assert response.status_code == 400
        assert "text-only or image-only inputs, not both" in response.json()["error"]["message"]
        return
    assert response.status_code == 200, response.text
    billed = response.json()["meta"]["billed_units"]

    n_text = len(AutoTokenizer.from_pretrained(str(clip_dir))("hello")["input_ids"])
    expected_input_tokens = n_text if text_billed else 0
    assert billed["input_tokens"] == expected_input_tokens
    if image_billed:
        assert billed["image_tokens"] > 0
    else:
        assert billed["image_tokens"] == 0
    assert set(billed) == {"input_tokens", "image_tokens"}
