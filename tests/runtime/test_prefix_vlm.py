"""Shared prefixes of vision-language prompts (poolkit.runtime.prefix): with sharing on, every
prompt's result is the unshared run's (``enable_prefix_caching=False``), fp32 within 1e-5, and a
prefix never splits a prompt's media: it ends before the first placeholder (text, shared by prompts
with other images) or holds every one (kept apart by the media, so the same token ids with another
image never share it).

The models are the tiny random checkpoints of the families' own tests (tests/support/tiny_llava.py,
tests/support/tiny_models.py, tests/support/tiny_qwen_vl.py, tests/support/tiny_colretrieval.py): LLaVA-NeXT (1-D
positions), Qwen2-VL, Qwen2.5-VL and Qwen3-VL (M-RoPE: the text after an image is not at
``start + i``; Qwen3-VL's deepstack features join the first layers at the image's rows), and
ColQwen2 (every token's vector). ``num_cached_tokens`` says how many of a prompt's tokens' states
came from a shared prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from tiny_models import picture

from poolkit import LLM

ATOL = 1e-5
BLOCK = 16  # poolkit.runtime.prefix.BLOCK: the cache's blocks
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
INSTRUCTION = "Represent the following picture for retrieval of similar pictures: "
AFTER = " Summary above image in one word, please: "


def _llava(out: Path) -> Path:
    from tiny_llava import build_llava_next

    return build_llava_next(out)


def _qwen2_vl(out: Path) -> Path:
    from tiny_models import build_qwen2_vl

    return build_qwen2_vl(out)


def _qwen2_5_vl(out: Path) -> Path:
    from tiny_qwen_vl import build_qwen2_5_vl

    return build_qwen2_5_vl(out)


def _qwen3_vl(out: Path) -> Path:
    from tiny_qwen_vl import build_qwen3_vl

    return build_qwen3_vl(out)


def _colqwen2(out: Path) -> Path:
    from tiny_colretrieval import build_colqwen2

    return build_colqwen2(out)


#: family -> (builder, the image's text in a prompt, the task compared)
FAMILIES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "llava-next": (_llava, "<image>", "embed"),
    "qwen2-vl": (_qwen2_vl, QWEN_IMAGE, "embed"),
    "qwen2.5-vl": (_qwen2_5_vl, QWEN_IMAGE, "embed"),
    "qwen3-vl": (_qwen3_vl, QWEN_IMAGE, "embed"),
    "colqwen2": (_colqwen2, QWEN_IMAGE, "token_embed"),
}


class Family:
    """A tiny model of one family, loaded with sharing (``shared``) and without (``plain``)."""

    def __init__(self, path: Path, image: str, task: str) -> None:
        self.path, self.image, self.task = path, image, task
        self.shared = self.fresh()
        self.plain = LLM(str(path), dtype="float32", enable_prefix_caching=False)
        self.placeholders = self.shared.model.architecture.placeholder_tokens
        assert self.plain.engine.prefixes is None and self.shared.engine.prefixes is not None

    def fresh(self) -> LLM:
        return LLM(str(self.path), dtype="float32")

    def run(self, llm: LLM, prompts: list) -> list:
        return llm.encode(prompts, pooling_task=self.task)

    def rows(self, prompts: list) -> tuple[list, list]:
        """Each prompt's placeholder rows, and its results with and without sharing (one call each)."""
        got = self.run(self.shared, prompts)
        want = self.run(self.plain, prompts)
        assert_same(got, want)
        return [self.placeholder_rows(o) for o in got], got

    def placeholder_rows(self, out: object) -> np.ndarray:
        return np.flatnonzero(np.isin(out.prompt_token_ids, list(self.placeholders)))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Family:
    build, image, task = FAMILIES[request.param]
    return Family(build(tmp_path_factory.mktemp(request.param.replace(".", "_"))), image, task)


def data(out: object) -> torch.Tensor:
    return torch.as_tensor(out.outputs.data).float()


def assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert list(a.prompt_token_ids) == list(b.prompt_token_ids)
        assert data(a).shape == data(b).shape
        assert (data(a) - data(b)).abs().max() <= ATOL, (data(a) - data(b)).abs().max()


def prompt(text: str, image: object) -> dict:
    return {"prompt": text, "multi_modal_data": {"image": image}}


def instructed(f: Family) -> list:
    """(a) an instruction, then a different image per prompt (of different sizes), then text."""
    return [prompt(INSTRUCTION + f.image + tail, picture(30 + 7 * k, 40 - 5 * k, 10 + k))
            for k, tail in enumerate((" a cat", " what is shown here, and where?", " x"))]


def one_image(f: Family) -> list:
    """(b) the same image first, then a shared text, then different texts."""
    image = picture(37, 53, 9)
    return [prompt(f.image + AFTER + tail, image) for tail in ("cat", "a dog on a mat, sleeping", "?")]


def same_tokens(f: Family) -> list:
    """(c) the same token ids, two images of one size."""
    return [prompt(INSTRUCTION + f.image + " what is it? say it in a few words, please.", picture(40, 40, seed)) for seed in (1, 2)]


def assert_differ(a: object, b: object) -> None:
    assert (data(a) - data(b)).abs().max() > 1e-3


def test_an_instruction_before_different_images_is_shared_as_text(family: Family) -> None:
    """(a): the instruction is shared up to the image, never into it; a text-only prompt with the
    same instruction shares it too."""
    prompts = [*instructed(family), INSTRUCTION + "a question without a picture"]
    rows, got = family.rows(prompts)
    for r, out in zip(rows[:3], got):
        assert r.size and 16 <= out.num_cached_tokens <= r[0]  # the instruction, up to the first placeholder at most
    if family.task == "embed":  # (ColQwen2 puts its query template before a text)
        assert got[3].num_cached_tokens >= 16


def test_the_same_image_then_different_texts_shares_the_image(family: Family) -> None:
    """(b): the prefix holds the image (and, for M-RoPE, the text after it sits at the image's
    positions, not at ``start + i``)."""
    rows, got = family.rows(one_image(family))
    for r, out in zip(rows, got):
        assert out.num_cached_tokens > r[-1]


def test_the_same_tokens_with_another_image_do_not_share_it(family: Family) -> None:
    """(c): the placeholders are the same token ids for both images; the prefix that holds the
    image is keyed by the image too, so only the instruction before it is shared."""
    rows, got = family.rows(same_tokens(family))
    assert_differ(*got)
    for r, out in zip(rows, got):
        assert out.num_cached_tokens <= r[0]


def test_single_calls_reuse_the_cached_prefix(family: Family) -> None:
    """(d): one prompt per call, through the cache: the instruction before another image, the image
    before another text; the same token ids with another image read only the text before it."""
    llm = family.fresh()
    for prompts, shared_image in ((instructed(family), False), (one_image(family), True)):
        for k, p in enumerate(prompts):
            (got,), (want,) = family.run(llm, [p]), family.run(family.plain, [p])
            assert_same([got], [want])
            rows = family.placeholder_rows(got)
            if k:
                assert got.num_cached_tokens > (rows[-1] if shared_image else 0)
            if not shared_image:
                assert got.num_cached_tokens <= rows[0]
    first, second = same_tokens(family)
    outs = []
    for p in (first, second):
        (got,), (want,) = family.run(llm, [p]), family.run(family.plain, [p])
        assert_same([got], [want])
        assert 0 < got.num_cached_tokens <= family.placeholder_rows(got)[0]  # the instruction, not the first's image
        outs.append(got)
    assert_differ(*outs)
    (again,) = family.run(llm, [second])  # the same prompt again reads its own image's states
    assert_same([again], family.run(family.plain, [second]))
    assert again.num_cached_tokens > family.placeholder_rows(again)[-1]


def padded(f: Family, make: Callable[[str], object], fits: Callable[[np.ndarray], bool]) -> object:
    """``make(padding)`` with the padding before its image that puts its placeholder rows where
    ``fits`` says (relative to the cache's 16-token blocks)."""
    for k in range(40):
        p = make("x" * k)
        (out,) = f.run(f.plain, [prompt(p, picture(37, 53, 9)) if isinstance(p, str) else p])
        if fits(f.placeholder_rows(out)):
            return p
    raise AssertionError("no padding fits")


def test_a_cached_prefix_never_ends_inside_the_media(family: Family) -> None:
    """The same image, then texts that differ right after it: the cached prefix's last whole
    block ends inside the image, so the second prompt reads none of it (at most the text before)."""
    image = picture(37, 53, 9)
    head = padded(family, lambda pad: pad + INSTRUCTION + family.image + " cat, sitting on a mat in the sun",
                  lambda rows: 0 < (rows[-1] + 1) % BLOCK < 12 and rows[-1] // BLOCK > rows[0] // BLOCK)
    pad = head[: head.index(INSTRUCTION)]
    llm = family.fresh()
    outs = []
    for tail in (" cat, sitting on a mat in the sun", " dog, lying on a rug in the shade"):
        p = prompt(pad + INSTRUCTION + family.image + tail, image)
        (got,), (want,) = family.run(llm, [p]), family.run(family.plain, [p])
        assert_same([got], [want])
        outs.append(got)
    rows = family.placeholder_rows(outs[1])
    assert outs[1].num_cached_tokens <= rows[0]
    assert llm.engine.prefixes.cache.bytes > 0


def test_a_text_prompt_with_placeholder_tokens_leaves_no_states_an_image_reads(family: Family) -> None:
    """A text prompt may carry an image's placeholder token (Qwen's processors keep it as text):
    the states it leaves end at that token for a prompt with an image, whose placeholder rows
    are the image's features."""
    if family.image != QWEN_IMAGE or family.task != "embed":
        pytest.skip("a text prompt with a placeholder token is a Qwen-VL embedder's")
    tail = " what is it? say it in a few words, please."
    text = padded(family, lambda pad: pad + INSTRUCTION + QWEN_IMAGE + tail, lambda rows: rows[0] % BLOCK == BLOCK - 1)
    llm = family.fresh()
    (plain_text,) = family.run(llm, [text])
    assert len(plain_text.prompt_token_ids) > BLOCK * 3 and plain_text.num_cached_tokens == 0
    p = prompt(text, picture(40, 40, 1))
    (got,), (want,) = family.run(llm, [p]), family.run(family.plain, [p])
    assert_same([got], [want])
    assert 0 < got.num_cached_tokens <= family.placeholder_rows(got)[0]


QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


def clip(seed: int, frames: int = 3) -> np.ndarray:
    """A tiny video: ``frames`` uint8 frames of 30 x 21 (a Qwen-VL processor pairs them in time)."""
    return np.random.default_rng(seed).integers(0, 256, (frames, 30, 21, 3), dtype=np.uint8)


def test_videos_share_as_images_do(family: Family) -> None:
    """Videos (the Qwen-VL families: ``<|video_pad|>`` placeholders, video M-RoPE positions): an
    instruction before different videos is shared as text; the same video (with an image) before
    different texts is shared whole; the same token ids with another video share only the text
    before it; one call and single calls through the cache equal the unshared run."""
    if family.image != QWEN_IMAGE or family.task != "embed":
        pytest.skip("videos: the Qwen-VL embedders")

    def video(text: str, v: np.ndarray, image: object = None) -> dict:
        media = {"video": v} | ({"image": image} if image is not None else {})
        return {"prompt": text, "multi_modal_data": media}

    instructed = [video(INSTRUCTION + QWEN_VIDEO + tail, clip(k)) for k, tail in enumerate((" a cat", " what moves here?"))]
    rows, got = family.rows(instructed)
    for r, out in zip(rows, got):
        assert r.size and 16 <= out.num_cached_tokens <= r[0]
    both = clip(7)
    together = [video(QWEN_VIDEO + QWEN_IMAGE + AFTER + tail, both, picture(24, 40, 3)) for tail in ("cat", "a dog on a mat")]
    rows, got = family.rows(together)
    for r, out in zip(rows, got):
        assert out.num_cached_tokens > r[-1]
    apart = [video(INSTRUCTION + QWEN_VIDEO + " what is it? say it in a few words, please.", clip(seed)) for seed in (1, 2)]
    rows, got = family.rows(apart)
    assert_differ(*got)
    for r, out in zip(rows, got):
        assert out.num_cached_tokens <= r[0]
    llm = family.fresh()
    for p in (*together, *apart):
        (one,), (want,) = family.run(llm, [p]), family.run(family.plain, [p])
        assert_same([one], [want])


def test_prompt_media_cuts_text_prefixes_at_media_and_unplain_positions() -> None:
    """A text prefix ends at the first placeholder, or sooner where the positions stop being the
    plain ones; each part reads its own columns of the positions, pixels only where it holds them."""
    from poolkit.runtime.prefix import PromptMedia, media_part

    ids = np.array([5, 6, 7, 9, 9, 8, 4], dtype=np.int64)
    positions = torch.tensor([[0, 1, 2, 3, 3, 5, 6], [0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6]])
    media = {"image_pixels": torch.ones(2, 3), "positions": positions}
    span = PromptMedia.of(ids, media, frozenset({9}))
    assert (span.first, span.last) == (3, 4) and span.keys.shape == (7, 4)
    assert span.holds_media(5) and not span.holds_media(4)
    plain = positions.clone()
    plain[:, 1] = 7
    assert PromptMedia.of(ids, {**media, "positions": plain}, frozenset({9})).first == 1
    other = PromptMedia.of(ids, {**media, "image_pixels": torch.zeros(2, 3)}, frozenset({9}))
    assert other.digest != span.digest and (other.keys == span.keys).all()
    part = media_part(media, 5, None, False)
    assert set(part) == {"positions"} and part["positions"].tolist() == positions[:, 5:].tolist()
    assert media_part({"image_pixels": torch.ones(1)}, 2, None, False) is None
    assert PromptMedia.of(ids[:5], media, frozenset({9})) is None  # positions of another prompt: no sharing


@pytest.mark.parametrize("build", ["phi3v", "nemotron_vl", "colpali"])
def test_models_whose_prefixes_depend_on_more_share_none(build: str, tmp_path: Path) -> None:
    """Phi-3-vision (LongRoPE reads the sequence's length), Nemotron-VL (bidirectional) and ColPali
    (prefix-LM: bidirectional over the image and the prefix) share nothing."""
    if build == "phi3v":
        from tiny_phi3v import build_phi3v as make
    elif build == "nemotron_vl":
        from tiny_nemotron_vl import build_nemotron_vl as make
    else:
        from tiny_colretrieval import build_colpali as make
    llm = LLM(str(make(tmp_path / build)), dtype="float32", enable_prefix_caching=True)
    assert llm.engine.prefixes is None
