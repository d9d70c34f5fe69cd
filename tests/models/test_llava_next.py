"""LLaVA-NeXT (E5-V) embeddings of text, images and both, against transformers on a tiny random model.

The reference is transformers' own ``LlavaNextForConditionalGeneration`` (its ``model``'s last
hidden state at the last token, L2-normalised: what vLLM's E5-V pools), fed by transformers' own
``LlavaNextProcessor`` (Pillow image processor, its placeholder count); poolkit tiles the images and
counts the placeholders itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from tolerances import assert_bf16_as_close_as_the_reference
from tiny_models import picture
from poolkit import LLM
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

IMAGE = "<image>"
#: E5-V's image prompt (its model card), in the tiny tokenizer's Llama-3 chat tokens.
E5V_IMAGE = (
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nSummary above image in one word: "
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)
#: fp32 parity (DESIGN.md §7).
ATOL, MIN_COS = 1e-4, 0.99999


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_llava import build_llava_next

    return build_llava_next(tmp_path_factory.mktemp("llava-next"))


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), dtype="float32")


def load_reference(model_dir):
    from tiny_llava import image_processor

    model = T.LlavaNextForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = T.AutoTokenizer.from_pretrained(model_dir)
    processor = T.LlavaNextProcessor(
        image_processor=image_processor(model.config.image_grid_pinpoints), tokenizer=tok, patch_size=4,
        vision_feature_select_strategy="default", image_token=IMAGE, num_additional_image_tokens=1,
    )
    return model, tok, processor


@pytest.fixture(scope="module")
def hf(model_dir):
    return load_reference(model_dir)


def reference(hf, text: str, images: list[Image.Image]) -> torch.Tensor:
    """transformers' pooled embedding: placeholders expanded by its processor, tiles by its model."""
    model, tok, processor = hf
    if images:
        inputs = dict(processor(text=[text or IMAGE * len(images)], images=images, return_tensors="pt"))
    else:
        inputs = dict(tok([text], return_tensors="pt"))
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
    return torch.nn.functional.normalize(hidden[0, -1], dim=-1)


def measure(got, want) -> tuple[float, float]:
    got = torch.as_tensor(got, dtype=torch.float32)
    return float((got - want).abs().max()), float(torch.nn.functional.cosine_similarity(got, want, dim=0))


def assert_close(got, want) -> None:
    diff, cos = measure(got, want)
    assert diff <= ATOL and cos >= MIN_COS, (diff, cos)


CASES = {
    "text": ("is paris the capital of france?", []),
    "image only, wide": ("", [picture(37, 53, 0)]),
    "e5-v template, tall": (E5V_IMAGE, [picture(40, 24, 1)]),
    "two images, long and tall": (f"{IMAGE} and {IMAGE} compared", [picture(20, 70, 2), picture(61, 33, 3)]),
    "grey and transparent": (f"{IMAGE}{IMAGE} yes", [picture(30, 30, 4, "L"), picture(45, 17, 5, "RGBA")]),
    "small and large": (f"a {IMAGE} b {IMAGE}", [picture(5, 9, 6), picture(120, 90, 7)]),
}


def as_prompt(text: str, images: list) -> object:
    return text if not images else {"prompt": text, "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}


def test_cases_cover_several_tilings(hf):
    from poolkit.builtin_models.llava_next.processor import best_resolution

    pinpoints = hf[0].config.image_grid_pinpoints
    layouts = {best_resolution(im.height, im.width, pinpoints) for _, images in CASES.values() for im in images}
    assert len(layouts) >= 4  # 1x2, 2x1, 2x2 and 1x3 tiles


@pytest.mark.parametrize("case", list(CASES))
def test_embedding_matches_transformers(llm, hf, case):
    text, images = CASES[case]
    (out,) = llm.embed([as_prompt(text, images)])
    assert_close(out.outputs.embedding, reference(hf, text, images))


def test_placeholders_expand_as_transformers_processor(llm, hf):
    token = llm.model.hf_config.image_token_id
    for text, images in CASES.values():
        if not images:
            continue
        (out,) = llm.embed([as_prompt(text, images)])
        want = hf[2](text=[text or IMAGE * len(images)], images=images)["input_ids"][0]
        assert list(out.prompt_token_ids) == list(want)
        assert sum(1 for t in out.prompt_token_ids if t == token) > 16 * len(images)


def test_pixels_match_transformers_processor(llm, hf, model_dir):
    from poolkit.builtin_models.llava_next.processor import read_settings, tile_image

    settings = read_settings(model_dir, llm.model.hf_config)
    processor = hf[2].image_processor
    for _, images in CASES.values():
        for image in images:
            pixels, grid, size = tile_image(image, settings)
            want = processor(images=[image], return_tensors="np")
            assert pixels.shape[0] == 1 + grid[0] * grid[1]
            np.testing.assert_allclose(pixels, want["pixel_values"][0][: pixels.shape[0]], atol=1e-6)
            assert list(size) == want["image_sizes"][0].tolist()


def test_batch_of_mixed_sizes_equals_one_at_a_time(llm):
    prompts = [as_prompt(*case) for case in CASES.values()]
    together = [o.outputs.embedding for o in llm.embed(prompts * 2)]
    alone = [llm.embed([p])[0].outputs.embedding for p in prompts]
    for got, want in zip(together, alone * 2):
        cos = torch.nn.functional.cosine_similarity(torch.tensor(got), torch.tensor(want), dim=0)
        assert cos >= MIN_COS


def test_bfloat16_as_close_as_transformers_own(model_dir, hf):
    """bf16 within the issue's 0.9999, or where transformers' own bf16 model misses that on this tiny
    random model (0.99958 at worst), no further from the fp32 reference than it."""
    hf16 = (type(hf[0]).from_pretrained(model_dir, dtype=torch.bfloat16).eval(), *hf[1:])
    llm16 = LLM(str(model_dir), dtype="bfloat16")
    cases = list(CASES.values())
    ours = [llm16.embed([as_prompt(text, images)])[0].outputs.embedding for text, images in cases]
    assert_bf16_as_close_as_the_reference(ours, [reference(hf16, *case) for case in cases], [reference(hf, *case) for case in cases])


@pytest.mark.parametrize("layout", ["transformers5", "original"])
def test_both_checkpoint_layouts_load(llm, model_dir, tmp_path, layout):
    from tiny_llava import relayout

    moved = LLM(str(relayout(model_dir, tmp_path / layout, layout)), dtype="float32")
    prompt = as_prompt(*CASES["two images, long and tall"])
    got = moved.embed([prompt])[0].outputs.embedding
    want = llm.embed([prompt])[0].outputs.embedding
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("family, layers", [("mistral", [-3, -1]), ("qwen2", -1)])
def test_other_text_models_and_feature_layers(tmp_path, family, layers):
    from tiny_llava import build_llava_next

    model_dir = build_llava_next(tmp_path / family, seed=1, text_family=family, vision_feature_layer=layers)
    llm = LLM(str(model_dir), dtype="float32")
    hf = load_reference(model_dir)
    for case in ("text", "e5-v template, tall", "small and large"):
        text, images = CASES[case]
        (out,) = llm.embed([as_prompt(text, images)])
        assert_close(out.outputs.embedding, reference(hf, text, images))


def test_full_feature_strategy_is_refused(model_dir):
    with pytest.raises(ModelLoadError, match="vision_feature_select_strategy 'full' is not supported"):
        LLM(str(model_dir), hf_overrides={"vision_feature_select_strategy": "full"})


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"prompt": "no placeholder here", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 0 image placeholders (<image>) for 1 image"),
        ({"prompt": f"{IMAGE}{IMAGE}", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 2 image placeholders (<image>) for 1 image"),
        ({"prompt": IMAGE, "multi_modal_data": {"image": ["IMG", "IMG"]}}, "prompt 0 has 1 image placeholder (<image>) for 2 images"),
        ({"prompt": IMAGE, "multi_modal_data": {"video": ["IMG"]}}, "takes no videos"),
        ({"prompt": IMAGE, "multi_modal_data": {"image": "https://example.com/a.png"}}, "remote image URLs are disabled"),
        ({"prompt": IMAGE, "multi_modal_data": {"image": b"not an image"}}, "prompt 0"),
        ({"prompt": IMAGE, "multi_modal_data": {"image": []}}, "empty list of images"),
    ],
)
def test_bad_prompts_are_one_line_errors(llm, prompt, message):
    def fill(v):
        return picture(16, 16, 8) if v == "IMG" else [fill(x) for x in v] if isinstance(v, list) else v

    prompt = {**prompt, "multi_modal_data": {k: fill(v) for k, v in prompt["multi_modal_data"].items()}}
    with pytest.raises(InvalidRequest) as info:
        llm.embed([prompt])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_too_many_images_per_prompt(llm, monkeypatch):
    monkeypatch.setenv("POOLKIT_MAX_IMAGES_PER_PROMPT", "1")
    with pytest.raises(InvalidRequest, match="2 images, more than the limit of 1 per prompt"):
        llm.embed([{"prompt": IMAGE * 2, "multi_modal_data": {"image": [picture(16, 16, 9)] * 2}}])


def test_limit_mm_per_prompt_load_setting(model_dir):
    limited = LLM(str(model_dir), dtype="float32", limit_mm_per_prompt={"image": 1})
    with pytest.raises(InvalidRequest, match="2 images, more than the limit of 1 per prompt"):
        limited.embed([{"prompt": IMAGE * 2, "multi_modal_data": {"image": [picture(16, 16, 10)] * 2}}])


def test_a_prompt_with_images_is_never_truncated(llm):
    prompt = {"prompt": f"{IMAGE} what", "multi_modal_data": {"image": picture(32, 32, 11)}}
    with pytest.raises(InvalidRequest, match="a prompt with images is not truncated"):
        llm.embed([prompt], pooling_params={"truncate_prompt_tokens": 10})
    (out,) = llm.embed([prompt], pooling_params={"truncate_prompt_tokens": 200})
    # a square image on 2x2 tiles: the 16 base features, an 8x8 grid and 8 newlines
    assert sum(1 for t in out.prompt_token_ids if t == llm.model.hf_config.image_token_id) == 16 + 64 + 8
