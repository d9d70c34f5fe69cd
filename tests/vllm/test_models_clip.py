# Port of vllm tests/models/multimodal/pooling/test_clip.py
# openai/clip-vit-base-patch32 -> the tiny CLIPModel that tests/support/tiny_models.build_clip builds (text
# and vision towers, 16-wide projections, a 64-token context: max_model_len=64 where vLLM passes
# CLIP's 77). vLLM's IMAGE_ASSETS (stop_sign, cherry_blossom, downloaded) -> two generated PIL
# images of the same subjects. vLLM's HfRunner -> transformers' CLIPModel.get_text_features /
# get_image_features on the same weights, fed by the checkpoint's own tokenizer and image processor.
# vLLM's ``vllm_model.embed(texts, images=images)`` -> LLM.embed on the prompts VllmRunner builds
# (``_vllm_inputs``): a text, or ``{"prompt": text, "multi_modal_data": {"image": image}}``.
# poolkit's own tests/models/test_clip.py checks the same things more widely under its own names.
import pytest
import torch
from port_utils import check_embeddings_close
from transformers import CLIPModel

from poolkit import LLM

pytest.importorskip("PIL")
from PIL import Image, ImageDraw  # noqa: E402

HF_TEXT_PROMPTS = [
    "a photo of a stop sign",
    "a photo of a cherry blossom",
]

# vLLM: IMAGE_ASSETS.prompts({"stop_sign": "", "cherry_blossom": ""}): an empty text per image.
HF_IMAGE_PROMPTS = ["", ""]

MODELS = ["clip-vit-base-patch32-stand-in"]


def _stop_sign() -> Image.Image:
    """A red octagon with a white rim on a sky-blue background, landscape (resized, then cropped)."""
    image = Image.new("RGB", (160, 112), (120, 170, 220))
    draw = ImageDraw.Draw(image)
    draw.regular_polygon((80, 56, 48), n_sides=8, rotation=22.5, fill=(255, 255, 255))
    draw.regular_polygon((80, 56, 42), n_sides=8, rotation=22.5, fill=(200, 16, 32))
    draw.rectangle((76, 104, 84, 112), fill=(90, 90, 90))
    return image


def _cherry_blossom() -> Image.Image:
    """Pink blossoms along a brown branch under a blue sky, portrait."""
    image = Image.new("RGB", (96, 144), (90, 150, 235))
    draw = ImageDraw.Draw(image)
    draw.line((0, 130, 96, 20), fill=(90, 50, 30), width=6)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        t = torch.rand((), generator=generator).item()
        x, y = 96 * t, 130 - 110 * t
        dx, dy = (torch.randn(2, generator=generator) * 10).tolist()
        r = 4 + 4 * torch.rand((), generator=generator).item()
        draw.ellipse((x + dx - r, y + dy - r, x + dx + r, y + dy + r), fill=(250, 180, 200), outline=(230, 120, 160))
    return image


@pytest.fixture(scope="module")
def image_assets():
    return [_stop_sign(), _cherry_blossom()]


@pytest.fixture(scope="module")
def clip_dir(vllm_models_root):
    from tiny_models import build_clip

    return build_clip(vllm_models_root / "clip")


def _vllm_inputs(texts, images):
    """The prompts vLLM's VllmRunner.get_inputs builds from ``texts`` and ``images``."""
    return [text if image is None else {"prompt": text, "multi_modal_data": {"image": image}} for text, image in zip(texts, images)]


def _features(output) -> torch.Tensor:
    # transformers 5 returns the projected features as ``pooler_output``; older ones a tensor.
    return getattr(output, "pooler_output", output)


def _run_test(clip_dir, input_texts, input_images, model: str, *, dtype: str) -> None:
    vllm_model = LLM(str(clip_dir), runner="pooling", dtype=dtype, enforce_eager=True, max_model_len=64)
    vllm_outputs = [o.outputs.embedding for o in vllm_model.embed(_vllm_inputs(input_texts, input_images))]

    from transformers import AutoImageProcessor, AutoTokenizer

    hf_model = CLIPModel.from_pretrained(str(clip_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(clip_dir))
    processor = AutoImageProcessor.from_pretrained(str(clip_dir))
    all_outputs = []
    with torch.no_grad():
        for text, image in zip(input_texts, input_images):
            if image is not None:
                pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
                pooled_output = _features(hf_model.get_image_features(pixel_values=pixel_values)).squeeze(0)
            else:
                pooled_output = _features(hf_model.get_text_features(**tokenizer(text, return_tensors="pt"))).squeeze(0)
            all_outputs.append(pooled_output.tolist())
    hf_outputs = all_outputs

    check_embeddings_close(
        embeddings_0_lst=hf_outputs,
        embeddings_1_lst=vllm_outputs,
        name_0="hf",
        name_1="vllm",
    )
    # The tiny random model must still tell its inputs apart, or the comparison proves little.
    vectors = torch.nn.functional.normalize(torch.tensor(vllm_outputs), dim=-1)
    assert (vectors[0] @ vectors[1]).item() < 0.999


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["float"])
def test_models_text(clip_dir, image_assets, model: str, dtype: str) -> None:
    input_texts_images = [(text, None) for text in HF_TEXT_PROMPTS]
    input_texts = [text for text, _ in input_texts_images]
    input_images = [image for _, image in input_texts_images]

    _run_test(clip_dir, input_texts, input_images, model, dtype=dtype)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["float"])
def test_models_image(clip_dir, image_assets, model: str, dtype: str) -> None:
    input_texts_images = [(text, asset) for text, asset in zip(HF_IMAGE_PROMPTS, image_assets)]
    input_texts = [text for text, _ in input_texts_images]
    input_images = [image for _, image in input_texts_images]

    _run_test(clip_dir, input_texts, input_images, model, dtype=dtype)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["float"])
def test_models_text_image_no_crash(clip_dir, image_assets, model: str, dtype: str) -> None:
    texts = [HF_TEXT_PROMPTS[0]]
    images = [image_assets[0]]

    vllm_model = LLM(str(clip_dir), runner="pooling", dtype=dtype, enforce_eager=True, max_model_len=64)
    with pytest.raises(ValueError, match="not both"):
        vllm_model.embed(_vllm_inputs(texts, images))

    # Should still be able to run subsequent requests
    (text_output,) = vllm_model.embed(texts)
    (image_output,) = vllm_model.embed(_vllm_inputs([""], images))
    assert len(text_output.outputs.embedding) == len(image_output.outputs.embedding) == 16
