"""Qwen2.5-VL and Qwen3-VL embeddings of text, images, videos and mixes, against transformers on
tiny random models.

The reference is transformers' own ``*ForConditionalGeneration`` (its ``model``'s last hidden
state at the last token, L2-normalised: what vLLM's embedders pool), fed by transformers' own image
processor and its processors' way of writing placeholders, timestamps and ``second_per_grid_ts``;
poolkit pre-processes the media itself. transformers' video processors need torchvision, which is
not installed, so the reference model reads poolkit's video pixels, and those are checked against
transformers' image processor frame by frame.
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
from poolkit.builtin_models.qwen_vl.processor import QwenVLProcessor, family, load_video, patchify_video

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
#: fp32 parity (DESIGN.md §7).
ATOL, MIN_COS = 1e-4, 0.99999
FAMILIES = {
    "qwen2_5_vl": ("build_qwen2_5_vl", T.Qwen2_5_VLForConditionalGeneration),
    "qwen3_vl": ("build_qwen3_vl", T.Qwen3VLForConditionalGeneration),
}


def clip(frames: int, height: int, width: int, seed: int) -> list[Image.Image]:
    return [picture(height, width, seed * 100 + i) for i in range(frames)]


def array_clip(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=list(FAMILIES))
def model_dir(request, tmp_path_factory):
    import tiny_qwen_vl

    return getattr(tiny_qwen_vl, FAMILIES[request.param][0])(tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), dtype="float32")


@pytest.fixture(scope="module")
def hf(model_dir, llm):
    # The reference pixels are transformers' PIL backend, which poolkit's resize reproduces; its torchvision
    # backend (transformers' default where torchvision is installed) rounds some pixels a level of 255 apart.
    cls = FAMILIES[llm.model.hf_config.model_type][1]
    model = cls.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, T.AutoTokenizer.from_pretrained(model_dir), T.AutoImageProcessor.from_pretrained(model_dir, backend="pil")


def video_inputs(llm, videos: list) -> list[tuple]:
    """poolkit's pixels of each video, as ``(pixels, grid, frames)`` for the reference."""
    settings = QwenVLProcessor().settings(llm.model, "video")
    out = []
    for video in videos:
        frames = load_video(0, video, 10**8, 768)
        pixels, grid = patchify_video(frames, settings, family(llm.model).video_budget)
        out.append((pixels, grid, frames.shape[0]))
    return out


def reference(hf, llm, text: str, images: list, videos: list) -> torch.Tensor:
    from tiny_qwen_vl import hf_embedding

    return hf_embedding(hf, text, images, video_inputs(llm, videos))


def as_prompt(text: str, images: list, videos: list) -> object:
    if not images and not videos:
        return text
    media = {}
    if images:
        media["image"] = images if len(images) > 1 else images[0]
    if videos:
        media["video"] = videos if len(videos) > 1 else videos[0]
    return {"prompt": text, "multi_modal_data": media}


def assert_close(got, want) -> None:
    got = torch.as_tensor(got, dtype=torch.float32)
    assert (got - want).abs().max() <= ATOL
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) >= MIN_COS


CASES = {
    "text": ("is paris the capital of france?", [], []),
    "image only": ("", [picture(37, 53, 0)], []),
    "text and image": (f"what is {IMAGE} this?", [picture(40, 24, 1)], []),
    "two images": (f"{IMAGE} and {IMAGE} compared", [picture(20, 70, 2), picture(61, 33, 3)], []),
    "grey and transparent": (f"{IMAGE}{IMAGE} yes", [picture(30, 30, 4, "L"), picture(45, 17, 5, "RGBA")], []),
    "large image": ("", [picture(150, 110, 6)], []),
    "video only": ("", [], [clip(4, 32, 48, 7)]),
    "text and video": (f"the clip {VIDEO} shows", [], [clip(4, 32, 48, 8)]),
    "odd frames, resized": (f"{VIDEO} odd", [], [array_clip(5, 40, 30, 9)]),
    "image and video": (f"{IMAGE} then {VIDEO} end", [picture(33, 41, 10)], [array_clip(2, 48, 32, 11)]),
    "two videos": (f"{VIDEO}{VIDEO}", [], [clip(2, 32, 32, 12), array_clip(6, 16, 64, 13)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_embedding_matches_transformers(llm, hf, case):
    text, images, videos = CASES[case]
    (out,) = llm.embed([as_prompt(text, images, videos)])
    assert_close(out.outputs.embedding, reference(hf, llm, text, images, videos))


def test_pixels_match_transformers_processor(llm, hf, model_dir):
    from poolkit.builtin_models.qwen_vl.processor import patchify

    settings = QwenVLProcessor().settings(llm.model, "image")
    assert settings.patch_size == hf[0].config.vision_config.patch_size
    for _, images, _ in CASES.values():
        for image in images:
            flat, grid = patchify(image, settings)
            want = hf[2](images=[image], return_tensors="np")
            np.testing.assert_allclose(flat, want["pixel_values"], atol=1e-6)
            assert list(grid) == want["image_grid_thw"][0].tolist()


def test_video_pixels_are_the_frames_pixels(llm, hf):
    """A video's temporal patch is its frames' patches side by side: transformers' image processor
    on each frame (frames already at the video's size, so no resize is involved) gives them."""
    frames = clip(4, 32, 32, 14)
    ((pixels, grid, _),) = video_inputs(llm, [frames])
    per_frame = [hf[2](images=[f], return_tensors="np") for f in frames]
    assert [1, *grid[1:]] == per_frame[0]["image_grid_thw"][0].tolist() and grid[0] == 2
    p = hf[0].config.vision_config.patch_size
    single = [f["pixel_values"].reshape(-1, 3, 2, p, p)[:, :, 0] for f in per_frame]  # [patches, C, P, P]
    want = np.stack([np.stack(single[2 * t : 2 * t + 2], axis=2) for t in range(2)]).reshape(pixels.shape)
    np.testing.assert_allclose(pixels, want, atol=1e-5)


def test_batch_of_mixed_sizes_equals_one_at_a_time(llm):
    prompts = [as_prompt(*case) for case in CASES.values()]
    together = [o.outputs.embedding for o in llm.embed(prompts * 2)]
    alone = [llm.embed([p])[0].outputs.embedding for p in prompts]
    for got, want in zip(together, alone * 2):
        cos = torch.nn.functional.cosine_similarity(torch.tensor(got), torch.tensor(want), dim=0)
        assert cos >= MIN_COS


def test_bfloat16_as_close_as_transformers_own(model_dir, hf, llm):
    """bf16 within the issue's 0.9999, or where transformers' own bf16 model misses that on these tiny
    random models (0.99943 / 0.99959 at worst), no further from the fp32 reference than it."""
    hf16 = (type(hf[0]).from_pretrained(model_dir, dtype=torch.bfloat16).eval(), *hf[1:])
    llm16 = LLM(str(model_dir), dtype="bfloat16")
    cases = list(CASES.values())
    ours = [llm16.embed([as_prompt(*case)])[0].outputs.embedding for case in cases]
    theirs = [reference(hf16, llm, *case) for case in cases]
    assert_bf16_as_close_as_the_reference(ours, theirs, [reference(hf, llm, *case) for case in cases])


def test_qwen3_video_has_timestamps(llm):
    if llm.model.hf_config.model_type != "qwen3_vl":
        pytest.skip("only Qwen3-VL writes timestamps")
    (out,) = llm.embed([{"prompt": VIDEO, "multi_modal_data": {"video": clip(4, 32, 48, 15)}}])
    text = llm.model.tokenizer.decode(out.prompt_token_ids)
    assert "<0.0 seconds><|vision_start|>" in text and "<0.1 seconds><|vision_start|>" in text


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"prompt": "no placeholder", "multi_modal_data": {"video": "CLIP"}}, "prompt 0 has 0 video placeholders (<|video_pad|>) for 1 video"),
        ({"prompt": VIDEO + VIDEO, "multi_modal_data": {"video": "CLIP"}}, "prompt 0 has 2 video placeholders (<|video_pad|>) for 1 video"),
        ({"prompt": IMAGE, "multi_modal_data": {"image": "IMG", "video": "CLIP"}}, "prompt 0 has 0 video placeholders"),
        ({"prompt": f"{IMAGE}{IMAGE}", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 2 image placeholders (<|image_pad|>) for 1 image"),
        ({"prompt": VIDEO, "multi_modal_data": {"video": np.zeros((2, 16, 16, 3), dtype=np.float32)}}, "video frames must be uint8"),
        ({"prompt": VIDEO, "multi_modal_data": {"video": [picture(16, 16, 1), picture(24, 16, 2)]}}, "the video's frames differ in size"),
        ({"prompt": VIDEO, "multi_modal_data": {"video": ["frame.png"]}}, "a video frame must be a PIL image or a uint8 array"),
        ({"prompt": VIDEO, "multi_modal_data": {"video": []}}, "empty list of videos"),
    ],
)
def test_bad_prompts_are_one_line_errors(llm, prompt, message):
    def fill(v):
        return picture(16, 16, 7) if isinstance(v, str) and v == "IMG" else clip(2, 16, 16, 7) if isinstance(v, str) and v == "CLIP" else v

    prompt = {**prompt, "multi_modal_data": {k: fill(v) for k, v in prompt["multi_modal_data"].items()}}
    with pytest.raises(InvalidRequest) as info:
        llm.embed([prompt])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_limits_on_videos(llm, model_dir, monkeypatch):
    monkeypatch.setenv("POOLKIT_MAX_VIDEO_FRAMES", "3")
    with pytest.raises(InvalidRequest, match="the video has 4 frames, more than the limit of 3"):
        llm.embed([{"prompt": VIDEO, "multi_modal_data": {"video": clip(4, 16, 16, 16)}}])
    limited = LLM(str(model_dir), dtype="float32", limit_mm_per_prompt={"video": 1})
    with pytest.raises(InvalidRequest, match="2 videos, more than the limit of 1 per prompt"):
        limited.embed([{"prompt": VIDEO * 2, "multi_modal_data": {"video": [clip(2, 16, 16, 17)] * 2}}])


def test_qwen3_needs_two_frames(llm):
    if llm.model.hf_config.model_type != "qwen3_vl":
        pytest.skip("Qwen2.5-VL pads a one-frame video")
    with pytest.raises(InvalidRequest, match="a video needs at least 2 frames, got 1"):
        llm.embed([{"prompt": VIDEO, "multi_modal_data": {"video": clip(1, 32, 32, 18)}}])


def test_default_pooling_is_last(llm):
    assert llm.model.architecture.default_pooling_type == "LAST"


def test_remote_code_models_are_refused_naming_the_alternative(tmp_path):
    """A checkpoint that ships only remote code for an architecture poolkit does not run is refused
    in one line that names what an architecture's ``alternative_for`` suggests (Qwen3-VL named
    Phi-3-Vision's and Llama-Nemotron-VL's until poolkit ran them natively)."""
    import json

    from poolkit import LLM, hookimpl
    from poolkit.builtin_models.qwen_vl.qwen3_vl import Qwen3VLForConditionalGeneration
    from poolkit.contracts.errors import ModelLoadError
    from poolkit.plugins.testing import plugin_registered

    class Suggesting(Qwen3VLForConditionalGeneration):
        alternative_for = {"RemoteOnlyVLModel": "Qwen/Qwen3-VL-Embedding-2B"}

    class Plugin:
        @hookimpl
        def poolkit_register_architectures(self, register):
            register("SuggestingQwen3VL", Suggesting)

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["RemoteOnlyVLModel"], "model_type": "remote_only_vl",
        "auto_map": {"AutoConfig": "configuration.Config", "AutoModel": "modeling.Model"},
    }))
    with pytest.raises(ModelLoadError) as info:
        LLM(str(tmp_path))
    assert "needs remote code" in str(info.value) and "\n" not in str(info.value)
    with plugin_registered(Plugin(), "suggesting"), pytest.raises(ModelLoadError) as info:
        LLM(str(tmp_path))
    message = str(info.value)
    assert "needs remote code" in message and "\n" not in message
    assert "RemoteOnlyVLModel is not supported; use SuggestingQwen3VL instead, such as Qwen/Qwen3-VL-Embedding-2B" in message
