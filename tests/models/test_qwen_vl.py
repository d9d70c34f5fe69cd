"""Qwen2-VL embeddings of text, images and both, against transformers on a tiny random model.

The reference is transformers' own ``Qwen2VLForConditionalGeneration`` (its ``model``'s last
hidden state at the last token, L2-normalised: what vLLM's Qwen2-VL embedders pool), fed by
transformers' own image processor; poolkit pre-processes the images itself.
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
from poolkit.contracts.errors import InvalidRequest

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
#: fp32 parity (DESIGN.md §7).
ATOL, MIN_COS = 1e-4, 0.99999


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_models import build_qwen2_vl

    return build_qwen2_vl(tmp_path_factory.mktemp("qwen2-vl"))


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), dtype="float32")


@pytest.fixture(scope="module")
def hf(model_dir):
    # The reference pixels are transformers' PIL backend, which poolkit's resize reproduces; its torchvision
    # backend (transformers' default where torchvision is installed) rounds some pixels a level of 255 apart.
    model = T.Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, T.AutoTokenizer.from_pretrained(model_dir), T.AutoImageProcessor.from_pretrained(model_dir, backend="pil")


def reference(hf, text: str, images: list[Image.Image]) -> torch.Tensor:
    """transformers' pooled embedding: placeholders expanded by the image grid, M-RoPE by its own get_rope_index."""
    model, tok, processor = hf
    ids = tok(text or IMAGE * len(images))["input_ids"]
    kwargs = {}
    if images:
        pixels = processor(images=images, return_tensors="pt")
        counts = iter((pixels["image_grid_thw"].prod(-1) // 4).tolist())
        token = model.config.image_token_id
        ids = [x for t in ids for x in ([t] * next(counts) if t == token else [t])]
        kwargs = dict(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
    input_ids = torch.tensor([ids])
    kwargs["mm_token_type_ids"] = (input_ids == model.config.image_token_id).int()
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs).last_hidden_state
    return torch.nn.functional.normalize(hidden[0, -1], dim=-1)


def assert_close(got, want) -> None:
    got = torch.as_tensor(got, dtype=torch.float32)
    assert (got - want).abs().max() <= ATOL
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) >= MIN_COS


CASES = {
    "text": ("is paris the capital of france?", []),
    "image only": ("", [picture(37, 53, 0)]),
    "text and image": (f"what is {IMAGE} this?", [picture(40, 24, 1)]),
    "two images": (f"{IMAGE} and {IMAGE} compared", [picture(20, 70, 2), picture(61, 33, 3)]),
    "grey and transparent": (f"{IMAGE}{IMAGE} yes", [picture(30, 30, 4, "L"), picture(45, 17, 5, "RGBA")]),
}


def as_prompt(text: str, images: list) -> object:
    return text if not images else {"prompt": text, "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}


@pytest.mark.parametrize("case", list(CASES))
def test_embedding_matches_transformers(llm, hf, case):
    text, images = CASES[case]
    (out,) = llm.embed([as_prompt(text, images)])
    assert_close(out.outputs.embedding, reference(hf, text, images))


def test_pixels_match_transformers_processor(llm, hf, model_dir):
    from poolkit.builtin_models.qwen_vl.processor import patchify, read_settings

    settings = read_settings(model_dir, llm.model.hf_config)
    for _, images in CASES.values():
        for image in images:
            flat, grid = patchify(image, settings)
            want = hf[2](images=[image], return_tensors="np")
            np.testing.assert_allclose(flat, want["pixel_values"], atol=1e-6)
            assert list(grid) == want["image_grid_thw"][0].tolist()


def test_pixel_budget_is_the_processor_setting(llm):
    from poolkit.builtin_models.qwen_vl.processor import smart_resize

    big = picture(400, 300, 6)  # resized down to the 48 x 48 pixel budget: at most 36 merged patches
    (out,) = llm.embed([{"prompt": "", "multi_modal_data": {"image": big}}])
    placeholders = sum(1 for t in out.prompt_token_ids if t == llm.model.hf_config.image_token_id)
    h, w = smart_resize(400, 300, 8, 64, 48 * 48)
    assert placeholders == (h // 8) * (w // 8) <= 36


def test_batch_of_mixed_sizes_equals_one_at_a_time(llm):
    prompts = [as_prompt(*case) for case in CASES.values()]
    together = [o.outputs.embedding for o in llm.embed(prompts * 2)]
    alone = [llm.embed([p])[0].outputs.embedding for p in prompts]
    for got, want in zip(together, alone * 2):
        cos = torch.nn.functional.cosine_similarity(torch.tensor(got), torch.tensor(want), dim=0)
        assert cos >= MIN_COS


def test_bfloat16_as_close_as_transformers_own(model_dir, hf):
    """bf16 within the issue's 0.9999, or where transformers' own bf16 model misses that on this tiny
    random model, no further from the fp32 reference than it (tolerances.assert_bf16_as_close_as_the_reference)."""
    hf16 = (type(hf[0]).from_pretrained(model_dir, dtype=torch.bfloat16).eval(), *hf[1:])
    llm16 = LLM(str(model_dir), dtype="bfloat16")
    cases = list(CASES.values())
    ours = [llm16.embed([as_prompt(text, images)])[0].outputs.embedding for text, images in cases]
    assert_bf16_as_close_as_the_reference(ours, [reference(hf16, *case) for case in cases], [reference(hf, *case) for case in cases])


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"prompt": "no placeholder here", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 0 image placeholders (<|image_pad|>) for 1 image"),
        ({"prompt": f"{IMAGE}{IMAGE}", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 2 image placeholders (<|image_pad|>) for 1 image"),
        ({"prompt": IMAGE, "multi_modal_data": {"video": ["IMG"]}}, "prompt 0 has 1 image placeholder (<|image_pad|>) for 0 images"),
        ({"prompt": IMAGE, "multi_modal_data": {"image": "https://example.com/a.png"}}, "remote image URLs are disabled"),
        ({"prompt": IMAGE, "multi_modal_data": {"image": []}}, "empty list of images"),
        ({"prompt": IMAGE, "multi_modal_data": {"audio": b""}}, "unsupported multi_modal_data audio"),
    ],
)
def test_bad_prompts_are_one_line_errors(llm, prompt, message):
    prompt = {**prompt, "multi_modal_data": {k: (picture(16, 16, 7) if v == "IMG" else [picture(16, 16, 7)] if v == ["IMG"] else v) for k, v in prompt["multi_modal_data"].items()}}
    with pytest.raises(InvalidRequest) as info:
        llm.embed([prompt])
    assert message in str(info.value) and "\n" not in str(info.value)


VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
VIDEO_CASES = {
    "video only": ("", [], [[picture(32, 32, 20 + i) for i in range(4)]]),
    "image and video, resized and padded": (
        f"{IMAGE} and {VIDEO} too", [picture(40, 24, 1)],
        [np.random.default_rng(21).integers(0, 256, (3, 30, 21, 3), dtype=np.uint8)],
    ),
}


@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_video_embedding_matches_transformers(llm, hf, case):
    """Videos (frames two at a time as temporal patches, ``<|video_pad|>`` placeholders, video
    M-RoPE positions) against transformers' model fed poolkit's video pixels: its video
    processor needs torchvision (see tests/models/test_qwen3_vl.py for the pixels' own check)."""
    from tiny_qwen_vl import hf_embedding

    from poolkit.builtin_models.qwen_vl.processor import QwenVLProcessor, load_video, patchify_video

    text, images, videos = VIDEO_CASES[case]
    media = {"video": videos[0]} | ({"image": images[0]} if images else {})
    (out,) = llm.embed([{"prompt": text, "multi_modal_data": media}])
    settings = QwenVLProcessor().settings(llm.model, "video")
    inputs = []
    for video in videos:
        frames = load_video(0, video, 10**8, 768)
        inputs.append((*patchify_video(frames, settings), frames.shape[0]))
    assert_close(out.outputs.embedding, hf_embedding(hf, text, images, inputs))


def test_too_many_images_per_prompt(llm, monkeypatch):
    monkeypatch.setenv("POOLKIT_MAX_IMAGES_PER_PROMPT", "1")
    with pytest.raises(InvalidRequest, match="2 images, more than the limit of 1 per prompt"):
        llm.embed([{"prompt": IMAGE * 2, "multi_modal_data": {"image": [picture(16, 16, 8)] * 2}}])


def test_a_prompt_with_images_is_never_truncated(llm):
    prompt = {"prompt": f"{IMAGE} what", "multi_modal_data": {"image": picture(48, 48, 9)}}
    with pytest.raises(InvalidRequest, match="a prompt with images is not truncated"):
        llm.embed([prompt], pooling_params={"truncate_prompt_tokens": 10})
    (out,) = llm.embed([prompt], pooling_params={"truncate_prompt_tokens": 100})
    assert sum(1 for t in out.prompt_token_ids if t == llm.model.hf_config.image_token_id) == 36  # 48 x 48 pixels: 6 x 6 merged patches


def test_video_frames_are_resized_as_torchvision_resizes_uint8(llm):
    """transformers' video processors resize uint8 frames with torchvision, whose bicubic resize runs in
    float32 (antialiased), clamps and rounds back to uint8; torch's native uint8 bicubic kernel differs
    by up to 21 levels. The patches of a resized video are those of frames resized that way."""
    import torch.nn.functional as F

    from poolkit.builtin_models.qwen_vl.processor import QwenVLProcessor, patchify_video

    settings = QwenVLProcessor().settings(llm.model, "video")
    frames = np.random.default_rng(11).integers(0, 256, (2, 61, 83, 3), dtype=np.uint8)
    flat, (t, h, w) = patchify_video(frames, settings)
    size = (h * settings.patch_size, w * settings.patch_size)
    assert size != frames.shape[1:3]
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    want = F.interpolate(video, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 255).round()
    resized = np.ascontiguousarray(want.to(torch.uint8).permute(0, 2, 3, 1).numpy())
    same, _ = patchify_video(resized, settings)  # frames of the target size: no resize
    np.testing.assert_array_equal(flat, same)
