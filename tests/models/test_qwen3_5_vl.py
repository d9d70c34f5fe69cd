"""Qwen3.5 as Qwen publishes it (``Qwen3_5ForConditionalGeneration``: the hybrid text decoder behind
Qwen3-VL's vision tower) against transformers' class, on a tiny random checkpoint in the published
layout (``tiny_qwen3_5.build_qwen3_5_vl``).

The reference is transformers' ``model``'s last hidden state at the last token, L2-normalised, fed
by transformers' own image processor and its way of writing placeholders and M-RoPE positions
(``tiny_qwen_vl.hf_embedding``); poolkit pre-processes the images itself.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

from tiny_models import picture
from tiny_qwen3_5 import build_qwen3_5_vl
from tolerances import assert_bf16_as_close_as_the_reference

from poolkit import LLM
from poolkit.builtin_models.qwen3_5 import Qwen3_5ForConditionalGeneration
from poolkit.builtin_models.qwen_vl.processor import QwenVLProcessor, family, load_video, patchify_video

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
ATOL, MIN_COS = 1e-4, 0.99999
CASES = {
    "text": ("is paris the capital of france?", []),
    "image only": ("", [picture(37, 53, 0)]),
    "text and image": (f"what is {IMAGE} this?", [picture(40, 24, 1)]),
    "two images": (f"{IMAGE} and {IMAGE} compared", [picture(20, 70, 2), picture(61, 33, 3)]),
    "large image": ("", [picture(150, 110, 6)]),
}
#: Prompts with videos: a list of frames or a uint8 array ``[T, H, W, C]``, each with its images.
VIDEO_CASES = {
    "video only": ("", [], [[picture(32, 48, 70 + i) for i in range(4)]]),
    "text, image and video": (
        f"{IMAGE} then {VIDEO} end",
        [picture(33, 41, 10)],
        [np.random.default_rng(11).integers(0, 256, (2, 48, 32, 3), dtype=np.uint8)],
    ),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen3_5_vl(tmp_path_factory.mktemp("qwen3_5_vl"))


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> LLM:
    return LLM(str(model_dir), dtype="float32")


def load_reference(model_dir: Path, dtype: torch.dtype) -> tuple:
    model = T.Qwen3_5ForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).eval()
    # transformers' PIL backend, which poolkit's resize reproduces.
    return model, T.AutoTokenizer.from_pretrained(model_dir), T.AutoImageProcessor.from_pretrained(model_dir, backend="pil")


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> tuple:
    return load_reference(model_dir, torch.float32)


def as_prompt(text: str, images: list, videos: tuple = ()) -> object:
    if not images and not videos:
        return text
    media: dict = {}
    if images:
        media["image"] = images if len(images) > 1 else images[0]
    if videos:
        media["video"] = list(videos) if len(videos) > 1 else videos[0]
    return {"prompt": text, "multi_modal_data": media}


class AsQwen3VL:
    """transformers' Qwen3.5 seen by ``hf_embedding`` as a Qwen3-VL model: it then writes a video
    as Qwen3-VL's processor does (each temporal patch after its ``<t seconds>`` timestamp), which is
    the processor Qwen3.5 ships (transformers maps ``qwen3_5`` to ``Qwen3VLProcessor``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.model
        self.config = copy.copy(model.config)
        self.config.model_type = "qwen3_vl"


def reference(hf: tuple, text: str, images: list, videos: tuple = (), llm: LLM | None = None) -> torch.Tensor:
    """transformers' embedding; a video reaches it as poolkit's pixels (its video processors need
    torchvision), those checked frame by frame in ``test_qwen3_vl.py`` for the same processor."""
    from tiny_qwen_vl import hf_embedding

    clips = []
    if videos:
        settings = QwenVLProcessor().settings(llm.model, "video")
        for video in videos:
            frames = load_video(0, video, 10**8, 768)
            pixels, grid = patchify_video(frames, settings, family(llm.model).video_budget)
            clips.append((pixels, grid, frames.shape[0]))
    return hf_embedding((AsQwen3VL(hf[0]), *hf[1:]), text, images, clips)


@pytest.mark.parametrize("case", list(CASES))
def test_embedding_matches_transformers(llm: LLM, hf: tuple, case: str) -> None:
    assert type(llm.model.architecture) is Qwen3_5ForConditionalGeneration
    got = torch.tensor(llm.embed([as_prompt(*CASES[case])])[0].outputs.embedding)
    want = reference(hf, *CASES[case])
    assert (got - want).abs().max() <= ATOL
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) >= MIN_COS


def test_batch_of_mixed_prompts_equals_one_at_a_time(llm: LLM) -> None:
    prompts = [as_prompt(*case) for case in CASES.values()]
    together = [o.outputs.embedding for o in llm.embed(prompts * 2)]
    alone = [llm.embed([p])[0].outputs.embedding for p in prompts]
    for got, want in zip(together, alone * 2):
        assert (torch.tensor(got) - torch.tensor(want)).abs().max() <= 1e-5


def test_bfloat16_as_close_as_transformers_own(model_dir: Path, hf: tuple) -> None:
    hf16 = load_reference(model_dir, torch.bfloat16)
    llm16 = LLM(str(model_dir), dtype="bfloat16")
    cases = list(CASES.values())
    ours = [llm16.embed([as_prompt(*case)])[0].outputs.embedding for case in cases]
    assert_bf16_as_close_as_the_reference(ours, [reference(hf16, *case) for case in cases], [reference(hf, *case) for case in cases])


@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_video_embedding_matches_transformers(llm: LLM, hf: tuple, case: str) -> None:
    text, images, videos = VIDEO_CASES[case]
    got = torch.tensor(llm.embed([as_prompt(text, images, videos)])[0].outputs.embedding)
    want = reference(hf, text, images, videos, llm)
    assert (got - want).abs().max() <= ATOL


def test_no_prefix_sharing_and_last_token_pooling(llm: LLM) -> None:
    assert not llm.model.architecture.shares_prefixes
    assert llm.model.architecture.default_pooling_type == "LAST"
