"""SigLIP 2 NaFlex (Siglip2Model) text and image embeddings against transformers' ``Siglip2Model``
(``get_text_features`` / ``get_image_features``, L2-normalised as the embed task does), images of
different sizes and aspect ratios in one batch (each its own patch grid, the positions resized to
it), image-vs-text scores, batch invariance and the checks on NaFlex inputs and configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tiny_models import picture
from tolerances import assert_bf16_as_close_as_the_reference
from poolkit import LLM, InvalidRequest, ModelLoadError
from poolkit.contracts.batch import PackedBatch

pytest.importorskip("PIL")

ATOL = 1e-4
TEXTS = ["a photo of a cat", "hello", "the quick brown fox jumps over the lazy dog", "what is the capital of germany?"]
#: (height, width): wide, tall, square, a thin strip, and one larger (each resized to at most 24 patches).
SIZES = [(20, 60), (64, 24), (16, 16), (8, 90), (100, 70)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_siglip2 import build_siglip2

    return build_siglip2(tmp_path_factory.mktemp("siglip2") / "siglip2")


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), dtype="float32")


@pytest.fixture(scope="module")
def hf(model_dir):
    import transformers as T

    return (
        T.Siglip2Model.from_pretrained(str(model_dir), dtype=torch.float32).eval(),
        T.AutoTokenizer.from_pretrained(str(model_dir)),
        T.AutoImageProcessor.from_pretrained(str(model_dir)),
    )


@pytest.fixture(scope="module")
def images():
    return [picture(h, w, seed) for seed, (h, w) in enumerate(SIZES)]


def hf_texts(hf, texts) -> torch.Tensor:
    model, tok, _ = hf
    with torch.no_grad():
        rows = [model.get_text_features(input_ids=torch.tensor([tok(t)["input_ids"]])).pooler_output[0] for t in texts]
    return F.normalize(torch.stack(rows), dim=-1)


def hf_images(hf, images) -> torch.Tensor:
    """transformers on the images as one padded NaFlex batch (masks and grids as its processor gives)."""
    model, _, processor = hf
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        return F.normalize(model.get_image_features(**inputs).pooler_output, dim=-1)


def vectors(outputs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outputs])


def image_prompt(image):
    return {"prompt": "", "multi_modal_data": {"image": image}}


def test_runs_natively(llm):
    info = llm.model.describe()
    assert (info["architecture"], info["implementation"]) == ("Siglip2Model", "native")
    assert info["architecture_plugin"] == "builtin_siglip2"
    assert info["embedding_size"] == 32


def test_text_embeddings_match_transformers(llm, hf):
    got, ref = vectors(llm.embed(TEXTS)), hf_texts(hf, TEXTS)
    assert (got - ref).abs().max() <= ATOL
    assert (ref @ ref.T)[~torch.eye(len(TEXTS), dtype=torch.bool)].max() < 0.999, "texts must differ"


def test_images_of_different_sizes_in_one_batch_match_transformers(llm, hf, images):
    _, _, processor = hf
    grids = processor(images=images, return_tensors="pt")["spatial_shapes"].tolist()
    assert len({tuple(g) for g in grids}) == len(images), "each image must get its own patch grid"
    assert any(r < 4 for r, _ in grids) and any(r > 4 for r, _ in grids), "the 4x4 positions resized down and up"
    got, ref = vectors(llm.embed([image_prompt(i) for i in images])), hf_images(hf, images)
    assert (got - ref).abs().max() <= ATOL
    alone = torch.cat([hf_images(hf, [i]) for i in images])
    assert (ref - alone).abs().max() <= ATOL, "the reference's padding must not move an image"
    assert (ref @ ref.T)[~torch.eye(len(images), dtype=torch.bool)].max() < 0.999


def test_image_text_scores_match_transformers(llm, hf, images):
    model, tok, processor = hf
    texts = vectors(llm.embed(TEXTS))
    pictures = vectors(llm.embed([image_prompt(i) for i in images]))
    scores = pictures @ texts.T * model.logit_scale.exp() + model.logit_bias
    with torch.no_grad():
        ref = torch.stack([
            model(input_ids=torch.tensor([tok(t)["input_ids"]]), **processor(images=images, return_tensors="pt")).logits_per_image[:, 0]
            for t in TEXTS
        ], dim=1)  # fmt: skip
    assert (scores - ref).abs().max() <= ATOL * 10  # the scale exp(logit_scale) multiplies cosine errors


def test_mixed_batch_keeps_order_and_is_batch_invariant(llm, hf, images):
    prompts = [TEXTS[0], image_prompt(images[0]), TEXTS[1], image_prompt(images[3])]
    got = vectors(llm.embed(prompts))
    expected = torch.stack([hf_texts(hf, [TEXTS[0]])[0], hf_images(hf, [images[0]])[0],
                            hf_texts(hf, [TEXTS[1]])[0], hf_images(hf, [images[3]])[0]])  # fmt: skip
    assert (got - expected).abs().max() <= ATOL
    crowd = vectors(llm.embed([image_prompt(i) for i in images * 3]))[: len(images)]
    single = torch.cat([vectors(llm.embed([image_prompt(i)])) for i in images])
    assert (crowd - single).abs().max() <= 1e-6


def test_bfloat16_is_as_close_as_transformers_own_bfloat16(model_dir, hf, images):
    import transformers as T

    half = LLM(str(model_dir), dtype="bfloat16")
    ours = vectors(half.embed(TEXTS + [image_prompt(i) for i in images]))
    theirs_model = T.Siglip2Model.from_pretrained(str(model_dir), dtype=torch.bfloat16).eval()
    theirs = torch.cat([hf_texts((theirs_model, *hf[1:]), TEXTS), hf_images((theirs_model, *hf[1:]), images)])
    want = torch.cat([hf_texts(hf, TEXTS), hf_images(hf, images)])
    assert torch.isfinite(ours).all()
    assert_bf16_as_close_as_the_reference(list(ours), list(theirs.float()), list(want))


def test_naflex_inputs_that_do_not_agree_are_refused(llm, hf, images):
    processed = hf[2](images=images[:2], return_tensors="pt")
    arch = llm.model.architecture
    batch = lambda **extras: PackedBatch(torch.zeros(2, dtype=torch.long), [1, 1], extras=extras)  # noqa: E731
    with pytest.raises(InvalidRequest, match="need NaFlex patches"):
        arch(batch(pixel_values=processed["pixel_values"]))
    with pytest.raises(InvalidRequest, match="do not fit 24 patches"):
        arch(batch(pixel_values=processed["pixel_values"], spatial_shapes=torch.tensor([[5, 5], [2, 2]])))
    wrong = processed["pixel_attention_mask"].clone()
    wrong[0, 0] = 0
    with pytest.raises(InvalidRequest, match="pixel_attention_mask"):
        arch(batch(pixel_values=processed["pixel_values"], spatial_shapes=processed["spatial_shapes"], pixel_attention_mask=wrong))


def test_positions_that_are_no_square_grid_are_refused(model_dir):
    import transformers as T

    from poolkit.builtin_models.siglip2 import Siglip2Model

    config = T.AutoConfig.from_pretrained(str(model_dir))
    config.vision_config.num_patches = 20
    with pytest.raises(ModelLoadError, match="num_patches 20 is not a square number"):
        Siglip2Model.check_config(config, None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"vision_config": {"num_patches": 20}}, "vision_config.num_patches is 20, but the weights hold 16"),
        ({"vision_config": {"vision_use_head": False}}, "vision_use_head is false"),
    ],
)
def test_config_that_does_not_fit_the_weights_is_refused(model_dir, overrides, message):
    with pytest.raises(ModelLoadError) as info:
        LLM(str(model_dir), hf_overrides=overrides)
    assert message in str(info.value) and "hf_overrides" in str(info.value)


def test_cohere_embed_serves_images_of_different_sizes(llm, hf, images):
    """The server's image route carries the NaFlex grid and mask with the pixels as LLM.embed does."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import base64
    import io

    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    def uri(image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    with TestClient(create_app(llm, served_model_name="siglip2")) as client:
        r = client.post("/v2/embed", json={"model": "siglip2", "images": [uri(i) for i in images[:3]], "embedding_types": ["float"]})
    assert r.status_code == 200, r.text
    got = torch.tensor(r.json()["embeddings"]["float"])
    assert (got - hf_images(hf, images[:3])).abs().max() <= ATOL
