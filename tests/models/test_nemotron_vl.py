"""Llama-Nemotron-VL (``LlamaNemotronVLModel``) embeddings of text, images and both, against a
reference built from transformers' own classes on a tiny random checkpoint (``tiny_nemotron_vl``).

The reference is transformers' ``LlamaModel`` run bidirectionally (``is_causal: false``) and
``SiglipVisionModel`` (its last hidden state, post-LayerNorm), with what the published
description adds around them written out here: InternVL-style dynamic tiling (the closest tile
grid by aspect ratio, weighted by the area kept up to 60%; tiles row by row, then a thumbnail),
SigLIP's normalisation, the pixel shuffle (0.5: each 2x2 block of patches one feature, ``v2``),
``mlp1``, the ``<img>`` / ``<IMG_CONTEXT>`` / ``</img>`` expansion of ``<image>``, mean pooling and
L2 normalisation. fp32: max |diff| <= 1e-4 and cosine >= 0.99999 (DESIGN.md §7).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tiny_models import picture
from tolerances import assert_bf16_as_close_as_the_reference
from poolkit import LLM
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

IMAGE, IMG_CONTEXT = "<image>", "<IMG_CONTEXT>"
ATOL, MIN_COS = 1e-4, 0.99999
TILE, FEATURES_PER_TILE, MAX_TILES = 16, 4, 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_nemotron_vl import build_nemotron_vl

    return build_nemotron_vl(tmp_path_factory.mktemp("nemotron-vl") / "model")


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), dtype="float32")


@pytest.fixture(scope="module")
def hf(model_dir):
    import transformers as T
    from tiny_nemotron_vl import load_parts

    # not AutoTokenizer: config.json's auto_map would have it ask whether to run the remote code
    return (*load_parts(model_dir), T.PreTrainedTokenizerFast.from_pretrained(model_dir))


# -- the reference, from the published description ----------------------------------------------


def reference_tiles(image: Image.Image, size: int = TILE, max_tiles: int = MAX_TILES) -> torch.Tensor:
    """InternVL's dynamic tiling as the published processor runs it, SigLIP-normalised: ``[tiles, 3, S, S]``."""
    ratios = sorted(
        {(i, j) for n in range(1, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1) if 1 <= i * j <= max_tiles},
        key=lambda r: r[0] * r[1],
    )
    image = image.convert("RGB")
    width, height = image.size
    aspect = width / height
    best, best_factor = (1, 1), float("-inf")
    for cols, rows in ratios:
        factor = min((cols * rows * size * size) / (width * height), 0.6) * min((cols / rows) / aspect, aspect / (cols / rows))
        if factor > best_factor:
            best, best_factor = (cols, rows), factor
    cols, rows = best
    resized = image.resize((cols * size, rows * size))
    tiles = [resized.crop(((i % cols) * size, (i // cols) * size, (i % cols + 1) * size, (i // cols + 1) * size)) for i in range(cols * rows)]
    if len(tiles) != 1:
        tiles.append(image.resize((size, size)))
    pixels = torch.stack([torch.from_numpy(np.array(t)).permute(2, 0, 1).float().div(255) for t in tiles])
    return (pixels - 0.5) / 0.5


def reference_shuffle(x: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """The published ``pixel_shuffle`` (``ps_version`` v2) on ``[n, w, h, c]``."""
    n, w, h, c = x.shape
    x = x.view(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()


def reference_features(hf, pixels: torch.Tensor) -> torch.Tensor:
    """``[tiles · features, hidden]``: SigLIP's last hidden state, shuffled, through ``mlp1``."""
    _, vision, mlp1, _ = hf
    with torch.no_grad():
        patches = vision(pixel_values=pixels.to(vision.dtype)).last_hidden_state
        side = int(patches.shape[1] ** 0.5)
        shuffled = reference_shuffle(patches.reshape(patches.shape[0], side, side, -1))
        return mlp1(shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1])).reshape(-1, mlp1[-1].out_features)


def reference_ids(hf, text: str, images: list[Image.Image]) -> list[int]:
    """The prompt's token ids: each ``<image>`` as ``<img>``, its features' ``<IMG_CONTEXT>``, ``</img>``."""
    tok = hf[3]
    text = text or IMAGE * len(images)
    for image in images:
        count = reference_tiles(image).shape[0] * FEATURES_PER_TILE
        text = text.replace(IMAGE, "<img>" + IMG_CONTEXT * count + "</img>", 1)
    return tok(text)["input_ids"]


def reference(hf, text: str, images: list[Image.Image], pooling: str = "avg") -> torch.Tensor:
    """The normalised embedding: image features in the ``<IMG_CONTEXT>`` rows, the bidirectional
    Llama over the prompt, mean-pooled (``avg``) or its last token (``last``)."""
    llama, _, _, tok = hf
    ids = torch.tensor([reference_ids(hf, text, images)])
    with torch.no_grad():
        embeds = llama.embed_tokens(ids)
        if images:
            features = reference_features(hf, torch.cat([reference_tiles(image) for image in images]))
            mask = ids[0] == tok.convert_tokens_to_ids(IMG_CONTEXT)
            assert int(mask.sum()) == features.shape[0]
            embeds[0, mask] = features.to(embeds.dtype)
        hidden = llama(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).last_hidden_state[0].float()
    pooled = hidden.mean(0) if pooling == "avg" else hidden[-1]
    return F.normalize(pooled, dim=-1)


# -- the cases ------------------------------------------------------------------------------------

CASES = {
    "query": ("query: is paris the capital of france?", []),
    "passage text": ("passage: paris is the capital and largest city of france.", []),
    "wide image, 3 tiles and a thumbnail": ("passage: <image> the annual report", [picture(16, 40, 0)]),
    "tall image, 2x3 tiles and a thumbnail": ("passage: <image> ", [picture(70, 41, 1)]),
    "image only, one tile": ("", [picture(12, 10, 2)]),
    "two images and grey": (f"passage: {IMAGE} compared with {IMAGE} yes", [picture(33, 61, 3), picture(45, 20, 4, "L")]),
}


def as_prompt(text: str, images: list) -> object:
    return text if not images else {"prompt": text, "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}


def measure(got, want: torch.Tensor) -> tuple[float, float]:
    got = torch.as_tensor(got, dtype=torch.float32)
    return float((got - want).abs().max()), float(F.cosine_similarity(got, want, dim=0))


def assert_close(got, want: torch.Tensor) -> None:
    diff, cos = measure(got, want)
    assert diff <= ATOL and cos >= MIN_COS, (diff, cos)


def test_cases_tile_into_several_grids():
    from poolkit.builtin_models.nemotron_vl.processor import TileSettings, best_grid

    settings = TileSettings(tile=TILE, max_tiles=MAX_TILES, features=FEATURES_PER_TILE)
    grids = [best_grid(im.width, im.height, settings) for _, images in CASES.values() for im in images]
    assert {(3, 1), (2, 3), (1, 1)} <= set(grids)
    assert [reference_tiles(im).shape[0] for im in CASES["wide image, 3 tiles and a thumbnail"][1]] == [4]


@pytest.mark.parametrize("case", list(CASES))
def test_embedding_matches_the_reference(llm, hf, case):
    text, images = CASES[case]
    (out,) = llm.embed([as_prompt(text, images)])
    assert_close(out.outputs.embedding, reference(hf, text, images))


def test_mixed_batch_matches_the_reference(llm, hf):
    """Text-only and image prompts packed into one batch, each as it is alone."""
    cases = list(CASES.values()) * 2
    outs = llm.embed([as_prompt(text, images) for text, images in cases])
    for out, (text, images) in zip(outs, cases):
        assert_close(out.outputs.embedding, reference(hf, text, images))


def test_placeholders_expand_as_the_published_processor(llm, hf):
    token = hf[3].convert_tokens_to_ids(IMG_CONTEXT)
    for text, images in CASES.values():
        (out,) = llm.embed([as_prompt(text, images)])
        want = reference_ids(hf, text, images)
        assert list(out.prompt_token_ids) == want
        assert sum(1 for t in want if t == token) == sum(reference_tiles(im).shape[0] for im in images) * FEATURES_PER_TILE


def test_tiles_match_the_published_tiling(llm, model_dir):
    from poolkit.builtin_models.nemotron_vl.processor import read_settings, tile_image

    settings = read_settings(model_dir, llm.model.hf_config)
    assert (settings.tile, settings.max_tiles, settings.features, settings.thumbnail) == (TILE, MAX_TILES, FEATURES_PER_TILE, True)
    for _, images in CASES.values():
        for image in images:
            np.testing.assert_allclose(tile_image(image, settings), reference_tiles(image).numpy(), atol=1e-6)


def test_the_native_model_reads_the_published_config(llm):
    info = llm.model.describe()
    assert info["implementation"] == "native" and info["architecture"] == "LlamaNemotronVLModel"
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "MEAN"
    assert not llm.model.architecture.language_model.causal
    assert llm.model.architecture.hidden_size == 64


def test_bfloat16_as_close_as_transformers_own(model_dir, tmp_path):
    """bf16 within the bar of 0.9999, or no further from the fp32 reference than the reference's
    own modules in bf16 (tiny random models amplify rounding), over the cases on two checkpoints:
    which one rounds worst is chance."""
    import transformers as T
    from tiny_nemotron_vl import build_nemotron_vl, load_parts

    ours, theirs, want = [], [], []
    for path in (model_dir, build_nemotron_vl(tmp_path / "seed-1", seed=1)):
        tok = T.PreTrainedTokenizerFast.from_pretrained(path)
        fp32, bf16 = (*load_parts(path), tok), (*(m.to(torch.bfloat16) for m in load_parts(path)), tok)
        llm16 = LLM(str(path), dtype="bfloat16")
        for text, images in CASES.values():
            ours.append(llm16.embed([as_prompt(text, images)])[0].outputs.embedding)
            theirs.append(reference(bf16, text, images))
            want.append(reference(fp32, text, images))
    assert_bf16_as_close_as_the_reference(ours, theirs, want)


def test_pooling_from_the_config(model_dir, hf, tmp_path):
    """The top-level ``pooling`` wins (vLLM's rule); without it, ``llm_config``'s."""
    text, images = CASES["wide image, 3 tiles and a thumbnail"]
    last = LLM(str(model_dir), dtype="float32", hf_overrides={"pooling": "last"})
    assert_close(last.embed([as_prompt(text, images)])[0].outputs.embedding, reference(hf, text, images, "last"))
    copy = tmp_path / "llm-pooling"
    shutil.copytree(model_dir, copy)
    raw = json.loads((copy / "config.json").read_text())
    del raw["pooling"]
    raw["llm_config"]["pooling"] = "last"
    (copy / "config.json").write_text(json.dumps(raw))
    assert LLM(str(copy), dtype="float32").model.describe()["tasks"]["embed"]["pooling_type"]["value"] == "LAST"
    with pytest.raises(ModelLoadError, match="pooling 'weighted' of a LlamaNemotronVLModel config is not supported"):
        LLM(str(model_dir), hf_overrides={"pooling": "weighted"})


def test_the_flat_checkpoint_layout_loads(llm, model_dir, tmp_path):
    """The vision tower without transformers' inner ``vision_model.``, the decoder under ``model.``."""
    from tiny_nemotron_vl import relayout

    moved = LLM(str(relayout(model_dir, tmp_path / "flat")), dtype="float32")
    prompt = as_prompt(*CASES["two images and grey"])
    np.testing.assert_allclose(moved.embed([prompt])[0].outputs.embedding, llm.embed([prompt])[0].outputs.embedding, atol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"select_layer": -2}, "select_layer -2 is not supported"),
        ({"downsample_ratio": 0.3}, "downsample_ratio 0.3 must be 1/n"),
        ({"ps_version": "v3"}, "ps_version 'v3' is not one of v1, v2"),
        ({"force_image_size": 32}, "force_image_size 32 differs from vision_config.image_size 16"),
        ({"vision_config": {"model_type": "clip_vision_model"}}, "a 'clip_vision_model' vision tower is not supported"),
        ({"img_context_token_id": 3}, "img_context_token_id 3 is not the tokenizer's <IMG_CONTEXT>"),
    ],
)
def test_configs_it_cannot_run_are_refused(model_dir, overrides, message):
    with pytest.raises(ModelLoadError) as info:
        LLM(str(model_dir), hf_overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"prompt": "passage: no placeholder", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 0 image placeholders (<image>) for 1 image"),
        ({"prompt": f"{IMAGE} {IMAGE}", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 2 image placeholders (<image>) for 1 image"),
        ({"prompt": IMAGE, "multi_modal_data": {"image": ["IMG", "IMG"]}}, "prompt 0 has 1 image placeholder (<image>) for 2 images"),
        ({"prompt": f"{IMAGE} {IMG_CONTEXT}", "multi_modal_data": {"image": "IMG"}}, f"prompt 0 has 1 {IMG_CONTEXT} tokens of its own"),
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


def test_a_prompt_with_images_is_never_truncated(llm):
    prompt = {"prompt": f"passage: {IMAGE} what", "multi_modal_data": {"image": picture(16, 40, 11)}}
    with pytest.raises(InvalidRequest, match="a prompt with images is not truncated"):
        llm.embed([prompt], pooling_params={"truncate_prompt_tokens": 10})
