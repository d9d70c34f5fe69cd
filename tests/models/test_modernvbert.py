"""ModernVBERT and ColModernVBERT against transformers on tiny random models.

The reference is transformers' own ``ColModernVBertForRetrieval`` fed by its own
``ColModernVBertProcessor`` (``process_queries`` / ``process_images``: Idefics3's image tiles),
every non-padding token kept, and its ``score_retrieval``; and transformers' ``ModernVBertModel``
fed by the processor's ``__call__`` (text with ``<image>`` placeholders). poolkit builds the
prompts, tiles and pixels itself and scores with its registered ``maxsim`` kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from tolerances import assert_bf16_as_close_as_the_reference
from tiny_models import picture
from tiny_modernvbert import build_colmodernvbert, build_modernvbert
from poolkit import LLM, LoRARequest
from poolkit.builtin_models.modernvbert.processor import ColModernVBertProcessor
from poolkit.contracts.io import Prompt
from poolkit.plugins.lookup import select_kernel

# The ColVision tests' helpers: transformers' vectors of a (model, processor) pair, one input at a
# time (``reference``), page prompts, output vectors and the fp32 parity check.
from test_colvision_families import QUERIES, assert_close, page, reference, vectors  # noqa: E402

#: Pages of 3×3 tiles (37×53 → 56×80 → 96×96; a grey one, an RGBA one), 3×1 (80×20 → 80×20 → 96×32) and 1×3.
PAGES = [picture(37, 53, 0), picture(80, 20, 1), picture(20, 70, 2), picture(30, 30, 3, "L"), picture(45, 40, 4, "RGBA")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny retriever, saved with its processor."""
    return build_colmodernvbert(tmp_path_factory.mktemp("colmodernvbert"))


@pytest.fixture(scope="module")
def llm(model_dir):
    """poolkit's native retriever (in fp32: the suite's default dtype)."""
    return LLM(str(model_dir))


@pytest.fixture(scope="module")
def hf(model_dir):
    """transformers' retriever and processor, the reference."""
    processor = T.ColModernVBertProcessor.from_pretrained(model_dir)
    return T.ColModernVBertForRetrieval.from_pretrained(model_dir, dtype=torch.float32).eval(), processor


def query_prompts(llm, texts: list[str]) -> list[dict]:
    """Queries through the retriever's media processor, as token-id prompts."""
    made = ColModernVBertProcessor().pre_process({"prompts": [Prompt(text=t) for t in texts], "model": llm.model})
    return [{"prompt_token_ids": p.token_ids} for p in made]


def test_a_late_interaction_model_whose_queries_match_transformers(llm, hf):
    """Registered for ``token_embed`` and scored by MaxSim; a query, as text to ``LLM.encode`` or
    through the processor, is ``process_queries``' tokens and transformers' vectors."""
    assert (llm.model.supported_tasks(), llm.score_type) == (["token_embed"], "late-interaction")
    want_ids = [hf[1].process_queries([text])["input_ids"][0].tolist() for text in QUERIES]
    assert [p["prompt_token_ids"] for p in query_prompts(llm, QUERIES)] == want_ids
    outs = llm.encode(QUERIES, pooling_task="token_embed")
    assert [out.prompt_token_ids for out in outs] == want_ids
    for got, want in zip(vectors(outs), reference(hf, queries=QUERIES)):
        assert_close(got, want)


def test_page_tiles_tokens_and_vectors_match_transformers(llm, hf):
    processor = hf[1]
    outs = llm.encode([page(image) for image in PAGES], pooling_task="token_embed")
    for out, image, want in zip(outs, PAGES, reference(hf, images=PAGES)):
        assert out.prompt_token_ids == processor.process_images([image])["input_ids"][0].tolist()
        assert_close(vectors([out])[0], want)


def test_pixels_match_transformers_processor(llm, hf):
    from poolkit.builtin_models.modernvbert.processor import image_tiles, read_tile_settings, tile_pixels

    settings = read_tile_settings(llm.model.path, llm.model.hf_config.vlm_config)
    grids = set()
    for image in PAGES:
        tiles, rows, cols = image_tiles(image.convert("RGB"), settings)
        grids.add((rows, cols))
        want = hf[1].image_processor(images=[[image.convert("RGB")]], return_row_col_info=True, return_tensors="np")
        np.testing.assert_allclose(tile_pixels(tiles, settings), want["pixel_values"][0], atol=1e-6)
        assert (rows, cols) == (want["rows"][0][0], want["cols"][0][0])
    assert grids == {(3, 3), (3, 1), (1, 3)}


def test_maxsim_and_llm_score_match_score_retrieval(llm, hf):
    """The native vectors scored by the registered ``maxsim`` kernel, and ``LLM.score`` of a query
    against vLLM's multimodal documents (each ``{"content": [...]}`` one page), are transformers'
    ``score_retrieval`` of its own vectors."""
    want = hf[1].score_retrieval(reference(hf, queries=QUERIES), reference(hf, images=PAGES)).float()
    queries = vectors(llm.encode(query_prompts(llm, QUERIES), pooling_task="token_embed"))
    pages = vectors(llm.encode([page(image) for image in PAGES], pooling_task="token_embed"))
    offsets = torch.tensor([0] + [len(x) for x in pages]).cumsum(0)
    kernel = select_kernel("maxsim", "cpu")
    torch.testing.assert_close(torch.stack([kernel(q, torch.cat(pages), offsets) for q in queries]), want, atol=1e-4, rtol=1e-5)
    documents = [{"content": [{"type": "image_pil", "image_pil": image}]} for image in PAGES]
    scored = torch.tensor([out.outputs.score for out in llm.score(QUERIES[0], documents)])
    torch.testing.assert_close(scored, want[0], atol=1e-4, rtol=1e-5)


def test_packed_pages_and_queries_equal_one_at_a_time(llm):
    """Pages of different tile grids and queries packed in one batch (twice, pages first) give what
    each gives alone."""
    prompts = [page(image) for image in PAGES] + query_prompts(llm, QUERIES)
    alone = [vectors(llm.encode([prompt], pooling_task="token_embed"))[0] for prompt in prompts]
    packed = vectors(llm.encode(prompts + prompts, pooling_task="token_embed"))
    assert len(packed) == 2 * len(alone)
    for k, got in enumerate(packed):
        assert_close(got, alone[k % len(alone)], atol=None)


def test_score_and_pooling_routes_match_transformers(llm, hf):
    """``/score`` with vLLM's multimodal documents (data URIs) is MaxSim, and ``/pooling`` of a
    query is its token vectors, as offline."""
    import base64
    import io

    from fastapi.testclient import TestClient

    from poolkit.entrypoints.server import create_app

    def uri(image: Image.Image) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    docs = [{"content": [{"type": "image_url", "image_url": {"url": uri(image)}}]} for image in PAGES[:2]]
    with TestClient(create_app(llm, served_model_name="colmodernvbert")) as client:
        scored = client.post("/score", json={"data_1": QUERIES[0], "data_2": docs})
        pooled = client.post("/pooling", json={"input": QUERIES[1], "task": "token_embed"})
    assert scored.status_code == 200, scored.text
    want = hf[1].score_retrieval(reference(hf, queries=QUERIES[:1]), reference(hf, images=PAGES[:2]))[0]
    torch.testing.assert_close(torch.tensor([d["score"] for d in scored.json()["data"]]), want.float(), atol=1e-4, rtol=1e-5)
    assert pooled.status_code == 200, pooled.text
    assert_close(torch.tensor(pooled.json()["data"][0]["data"]), reference(hf, queries=QUERIES[1:2])[0])


def test_bfloat16_as_close_as_transformers_own(model_dir, hf):
    """Every token's bf16 vector as close to the fp32 reference as transformers' own bf16 model."""
    hf16 = (type(hf[0]).from_pretrained(model_dir, dtype=torch.bfloat16).eval(), hf[1])
    llm16 = LLM(str(model_dir), dtype="bfloat16")
    prompts = query_prompts(llm16, QUERIES) + [page(image) for image in PAGES[:2]]
    ours = vectors(llm16.encode(prompts, pooling_task="token_embed"))
    theirs = reference(hf16, queries=QUERIES) + reference(hf16, images=PAGES[:2])
    assert_bf16_as_close_as_the_reference(ours, theirs, reference(hf, queries=QUERIES) + reference(hf, images=PAGES[:2]))


# -- the backbone, ModernVBertModel --------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone_dir(model_dir, tmp_path_factory):
    """The retriever's backbone saved as a ``ModernVBertModel``."""
    return build_modernvbert(model_dir, tmp_path_factory.mktemp("modernvbert"))


def test_backbone_hidden_states_match_transformers(backbone_dir, hf):
    """``ModernVBertModel``'s every hidden state (token_embed) and its CLS embedding (embed), both
    normalised, for a text and texts with images among them, against transformers' class fed by
    the processor's ``__call__``."""
    processor = hf[1]
    model = T.ModernVBertModel.from_pretrained(backbone_dir, dtype=torch.float32).eval()
    llm = LLM(str(backbone_dir), dtype="float32")
    texts = ["paris is the capital", "before <image> after", "<image>"]
    images = [None, [PAGES[0]], [PAGES[2]]]
    prompts = [t if i is None else {"prompt": t, "multi_modal_data": {"image": i}} for t, i in zip(texts, images)]
    outs = llm.encode(prompts, pooling_task="token_embed")
    embedded = llm.embed(prompts)
    for out, pooled, text, image in zip(outs, embedded, texts, images):
        inputs = processor(text=[text], images=None if image is None else [image], return_tensors="pt")
        assert out.prompt_token_ids == inputs["input_ids"][0].tolist()
        with torch.no_grad():
            want = model(**inputs).last_hidden_state[0]
        want = torch.nn.functional.normalize(want, dim=-1)  # token_embed and embed normalise, as vLLM's do
        assert_close(vectors([out])[0], want)
        assert_close(torch.as_tensor(pooled.outputs.embedding)[None], want[:1])


def test_unsplit_and_one_tile_images_match_transformers_processor(llm):
    """Without splitting every image is one tile of the whole image; with it, an image no larger
    than a tile stays one tile: pixels and grid as transformers' Idefics3 processor makes them."""
    import dataclasses

    from poolkit.builtin_models.modernvbert.processor import image_tiles, read_tile_settings, tile_pixels

    settings = read_tile_settings(llm.model.path, llm.model.hf_config.vlm_config)
    for splitting, longest in ((False, 80), (True, 30)):
        ours = dataclasses.replace(settings, do_image_splitting=splitting, longest_edge=longest)
        theirs = T.Idefics3ImageProcessorPil(
            size={"longest_edge": longest}, max_image_size={"longest_edge": settings.tile},
            do_image_splitting=splitting, image_mean=list(settings.mean), image_std=list(settings.std),
        )
        for image in PAGES[:3]:
            tiles, rows, cols = image_tiles(image, ours)
            want = theirs(images=[[image]], return_row_col_info=True, return_tensors="np")
            assert (len(tiles), rows, cols) == (1, want["rows"][0][0], want["cols"][0][0]) == (1, 0, 0)
            np.testing.assert_allclose(tile_pixels(tiles, ours), want["pixel_values"][0], atol=1e-6)


def test_published_merged_tensor_names_load_to_the_same_model(model_dir, llm, tmp_path):
    """The merged checkpoint's tensor names (``model.`` before each part, SigLIP under
    ``vision_model.vision_model.``, the projection ``custom_text_proj``; vLLM's ColModernVBERT
    weights mapper reads them) load to the same retriever."""
    import shutil

    from safetensors.torch import load_file, save_file

    renames = (("vlm.vision_model.", "model.vision_model.vision_model."), ("vlm.", "model."), ("embedding_proj_layer.", "model.custom_text_proj."))
    renamed = {}
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        old, new = next((old, new) for old, new in renames if name.startswith(old))
        renamed[new + name[len(old):]] = tensor
    for f in model_dir.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, tmp_path / f.name)
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    prompts = [QUERIES[0], page(PAGES[1])]
    for got, want in zip(vectors(LLM(str(tmp_path)).encode(prompts, pooling_task="token_embed")), vectors(llm.encode(prompts, pooling_task="token_embed"))):
        assert_close(got, want, atol=1e-6)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"prompt": "no placeholder here", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 0 image placeholders (<image>) for 1 image"),
        ({"prompt": "<image><image>", "multi_modal_data": {"image": "IMG"}}, "prompt 0 has 2 image placeholders (<image>) for 1 image"),
        ({"prompt": "", "multi_modal_data": {"video": ["IMG"]}}, "takes no videos"),
    ],
)
def test_bad_inputs_are_one_line_errors(backbone_dir, prompt, message):
    from poolkit.contracts.errors import InvalidRequest

    media = {k: (picture(16, 16, 7) if v == "IMG" else [picture(16, 16, 7)]) for k, v in prompt["multi_modal_data"].items()}
    with pytest.raises(InvalidRequest) as info:
        LLM(str(backbone_dir)).encode([{**prompt, "multi_modal_data": media}], pooling_task="token_embed")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_lora_adapter_on_the_encoder_matches_peft(model_dir, llm, hf, tmp_path):
    """A PEFT adapter on the ModernBERT encoder's projections (fused ``Wqkv``, ``Wo``, ``Wi``), mixed
    with the bare model in one call, against peft's ``PeftModel`` on transformers' retriever."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(6)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=r".*text_model.*\.(Wqkv|Wo|Wi)")
    peft.get_peft_model(T.ColModernVBertForRetrieval.from_pretrained(model_dir), config).save_pretrained(tmp_path / "adapter")
    adapted = peft.PeftModel.from_pretrained(T.ColModernVBertForRetrieval.from_pretrained(model_dir), tmp_path / "adapter").eval()
    prompts = [QUERIES[0], page(PAGES[1])]
    lora = LLM(str(model_dir), enable_lora=True)
    request = LoRARequest("colmodernvbert", 1, str(tmp_path / "adapter"))
    got = vectors(lora.encode(prompts + prompts[:1], pooling_task="token_embed", lora_request=[request, request, None]))
    want = reference((adapted, hf[1]), queries=QUERIES[:1]) + reference((adapted, hf[1]), images=PAGES[1:2])
    for g, w in zip(got, want):
        assert_close(g, w)
    assert_close(got[2], vectors(llm.encode(QUERIES[:1], pooling_task="token_embed"))[0])
    assert (got[2] - got[0]).abs().max() > 1e-2


def test_lora_adapter_on_the_vision_tower_is_refused(model_dir, tmp_path):
    """Adapters apply to the encoder: one on SigLIP's tower is refused in one line."""
    peft = pytest.importorskip("peft")
    from poolkit.contracts.errors import PoolkitError

    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=r".*vision_model.*\.q_proj")
    peft.get_peft_model(T.ColModernVBertForRetrieval.from_pretrained(model_dir), config).save_pretrained(tmp_path / "adapter")
    lora = LLM(str(model_dir), enable_lora=True)
    with pytest.raises(PoolkitError, match="adapters apply to the language model") as info:
        lora.encode([QUERIES[0]], pooling_task="token_embed", lora_request=LoRARequest("vision", 1, str(tmp_path / "adapter")))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: setattr(c.vlm_config, "pixel_shuffle_factor", 3), "patch grid of a tile does not shuffle by pixel_shuffle_factor 3"),
        (lambda c: setattr(c.vlm_config, "text_config", T.BertConfig()), "runs a ModernBERT text model; a 'bert' one is not supported"),
        (lambda c: setattr(c, "embedding_dim", 0), "embedding_dim must be a positive integer"),
    ],
)
def test_configs_it_cannot_run_are_refused(model_dir, change, message):
    from poolkit.builtin_models.modernvbert import ColModernVBertForRetrieval
    from poolkit.contracts.errors import ModelLoadError

    config = T.AutoConfig.from_pretrained(model_dir)
    change(config)
    with pytest.raises(ModelLoadError, match=message):
        ColModernVBertForRetrieval.check_config(config, None)
