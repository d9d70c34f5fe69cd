"""Adapter repositories (:mod:`poolkit.lora.repository`): a retriever published as a PEFT adapter over a
base repository, as colpali-engine publishes vidore/colpali-v1.3 over vidore/colpaligemma-3b-pt-448-base,
loaded as the base with the adapter merged into its weights.

The reference is colpali-engine's computation on the same tiny folders: its ``ColPali`` class
(``colpali_engine/models/paligemma/colpali/modeling_colpali.py``, written out in
``tiny_adapter_repos``) loaded as its README loads a retriever, ``ColPali.from_pretrained(<adapter
folder>)``: transformers reads ``adapter_config.json``, builds the base named by
``base_model_name_or_path`` through the class's ``key_mapping``, and peft applies the adapter
(unmerged LoRA layers, ``W x + B A x * alpha / r``). Its forward pass runs PaliGemma, takes the last
hidden states through ``custom_text_proj``, L2-normalises and masks them. Its inputs are transformers'
``ColPaliProcessor``'s, whose prompts poolkit's ColPali processor follows (``test_colvision_families``).
vidore/colqwen2.5-v0.2 over vidore/colqwen2.5-base is checked the same way against colpali-engine
0.3.18's ``ColQwen2_5`` (``colpali_engine/models/qwen2_5/colqwen2_5/modeling_colqwen2_5.py``, written
out in ``tiny_adapter_repos`` over transformers' ``Qwen2_5_VLModel``), ``ColQwen2_5.from_pretrained(<adapter
folder>)`` with peft's adapter, fed by ``ColQwen2_5_Processor``'s ``process_queries`` / ``process_images``
(written out there over transformers' ``Qwen2VLProcessor``), and its MaxSim (``score_multi_vector``).
A LoRA adapter over transformers' own ``-hf`` ColQwen2 is checked the same way against transformers'
``ColQwen2ForRetrieval`` with peft's adapter. Tolerances: DESIGN.md §7 for fp32 embeddings (max |diff| <= 1e-4, cosine >= 0.99999): the merge adds
``B A * scaling`` to the weights once, in float32, where peft adds the product at every call; the two
differ by rounding only.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

from tiny_adapter_repos import (
    COLPALI_BASE,
    COLQWEN2_5_BASE,
    ColPali,
    ColQwen2_5,
    build_colpali_repos,
    build_colqwen2_5_repos,
    build_colqwen2_hf_repos,
    colqwen2_5_process_images,
    colqwen2_5_process_queries,
    colqwen2_5_processor,
    hub_cache,
)
from tiny_models import picture
from poolkit import LLM
from poolkit.builtin_models.colvision import ColQwen2_5 as PoolkitColQwen2_5
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

#: fp32 parity (DESIGN.md §7).
ATOL, MIN_COS = 1e-4, 0.99999
QUERIES = ["is paris the capital of france?", "berlin", "what is the capital of france? no, of germany"]
PAGES = [picture(37, 53, 0), picture(48, 48, 1), picture(30, 30, 3, "L")]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    return build_colpali_repos(tmp_path_factory.mktemp("colpali"))


@pytest.fixture(scope="module")
def llm(repos):
    return LLM(str(repos[1]), dtype="float32")


@pytest.fixture(scope="module")
def engine(repos):
    """colpali-engine's ``ColPali`` from the adapter folder, and transformers' ColPali processor (its PIL images)."""
    model = ColPali.from_pretrained(str(repos[1]), dtype=torch.float32).eval()
    assert sum("lora_B" in name for name, _ in model.named_parameters()) == 15  # 2 layers x 7 projections, and custom_text_proj
    processor = T.ColPaliProcessor.from_pretrained(str(repos[1]))
    processor.image_processor = T.AutoImageProcessor.from_pretrained(str(repos[1]), backend="pil")
    return model, processor


def reference(engine, queries: list[str] | None = None, images: list | None = None) -> list[torch.Tensor]:
    """colpali-engine's token vectors, one input at a time, the padding's rows dropped."""
    model, processor = engine
    out = []
    for item in queries or images:
        inputs = processor.process_queries([item]) if queries else processor.process_images([item])
        inputs.pop("labels", None)
        with torch.no_grad():
            vectors = model(**inputs)[0]
        out.append(vectors[inputs["attention_mask"][0].bool()])
    return out


def vectors(outputs) -> list[torch.Tensor]:
    return [torch.as_tensor(o.outputs.data, dtype=torch.float32) for o in outputs]


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max() <= ATOL
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() >= MIN_COS


def page(image) -> dict:
    return {"prompt": "", "multi_modal_data": {"image": image}}


def test_the_folders_are_laid_out_as_published(repos):
    base, adapter = repos
    assert not (adapter / "config.json").exists()
    assert json.loads((base / "config.json").read_text())["architectures"] == ["ColPali"]
    names = set(load_file(str(adapter / "adapter_model.safetensors")))
    assert "base_model.model.model.language_model.model.layers.1.mlp.down_proj.lora_B.weight" in names
    assert "base_model.model.custom_text_proj.lora_A.weight" in names
    assert "custom_text_proj.bias" in load_file(str(base / "model.safetensors"))


def test_query_vectors_match_colpali_engine(llm, engine):
    outs = llm.encode(QUERIES, pooling_task="token_embed")
    for out, text in zip(outs, QUERIES):
        assert out.prompt_token_ids == engine[1].process_queries([text])["input_ids"][0].tolist()
    for got, want in zip(vectors(outs), reference(engine, queries=QUERIES)):
        assert_close(got, want)


def test_page_vectors_match_colpali_engine(llm, engine):
    outs = llm.encode([page(image) for image in PAGES], pooling_task="token_embed")
    for out, image in zip(outs, PAGES):
        assert out.prompt_token_ids == engine[1].process_images([image])["input_ids"][0].tolist()
    for got, want in zip(vectors(outs), reference(engine, images=PAGES)):
        assert_close(got, want)


def test_scores_are_maxsim_of_colpali_engine_vectors(llm, engine):
    documents = [{"content": [{"type": "image_pil", "image_pil": image}]} for image in PAGES]
    got = [out.outputs.score for out in llm.score(QUERIES[0], documents)]
    want = engine[1].score_retrieval(reference(engine, queries=QUERIES[:1]), reference(engine, images=PAGES))[0]
    torch.testing.assert_close(torch.tensor(got), want.float(), atol=1e-4, rtol=1e-5)


def test_the_adapter_changes_the_base(llm, repos, engine):
    """The base alone (colpali-engine's layout, loaded natively) is colpali-engine's base, and not the retriever."""
    base = LLM(str(repos[0]), dtype="float32")
    base_engine = (ColPali.from_pretrained(str(repos[0]), dtype=torch.float32).eval(), engine[1])
    (alone,) = vectors(base.encode(QUERIES[:1], pooling_task="token_embed"))
    assert_close(alone, reference(base_engine, queries=QUERIES[:1])[0])
    (adapted,) = vectors(llm.encode(QUERIES[:1], pooling_task="token_embed"))
    assert (adapted - alone).abs().max() > 0.05


def test_a_base_named_by_hub_id_is_found_in_the_hugging_face_cache(tmp_path, monkeypatch, llm):
    """As published: ``base_model_name_or_path`` is the base's hub id, found offline in the cache."""
    from huggingface_hub import constants
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    base, adapter = build_colpali_repos(tmp_path / "repos", base_id=COLPALI_BASE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_cache(tmp_path / "hub", COLPALI_BASE, base)
    model = LLM(str(adapter), dtype="float32")
    prompts = QUERIES[:1] + [page(PAGES[0])]
    for got, want in zip(vectors(model.encode(prompts, pooling_task="token_embed")), vectors(llm.encode(prompts, pooling_task="token_embed"))):
        assert torch.equal(got, want)  # the same weights, merged the same way
    layout = model.model.describe()["layout"]
    assert layout["value"] == f"adapter repository over {COLPALI_BASE}"
    assert "base_model_name_or_path" in layout["source"] and "models--vidore--colpaligemma-3b-pt-448-base" in layout["source"]
    result = CliRunner().invoke(app, ["info", str(adapter)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["layout"] == layout


def test_an_adapter_over_a_transformers_colqwen2_matches_peft(tmp_path):
    """A LoRA trained on transformers' ``ColQwen2ForRetrieval`` (an ``-hf`` base), its decoder layers
    and projection (``embedding_proj_layer``) merged, against transformers' model with peft's adapter."""
    base, adapter = build_colqwen2_hf_repos(tmp_path)
    model = T.ColQwen2ForRetrieval.from_pretrained(str(adapter), dtype=torch.float32).eval()
    processor = T.ColQwen2Processor.from_pretrained(str(adapter))
    processor.image_processor = T.AutoImageProcessor.from_pretrained(str(adapter), backend="pil")
    llm = LLM(str(adapter), dtype="float32")
    outs = llm.encode(QUERIES[:2] + [page(image) for image in PAGES[:2]], pooling_task="token_embed")
    inputs = [processor.process_queries([text]) for text in QUERIES[:2]] + [processor.process_images([image]) for image in PAGES[:2]]
    for out, given in zip(outs, inputs):
        assert out.prompt_token_ids == given["input_ids"][0].tolist()
        with torch.no_grad():
            want = model(**given).embeddings[0][given["attention_mask"][0].bool()]
        assert_close(vectors([out])[0], want)
    assert llm.model.describe()["layout"]["value"] == f"adapter repository over {base}"


# -- bad input -----------------------------------------------------------------------------------


def _edited(repos, tmp_path, config: dict | None = None, tensors=None):
    """The adapter folder copied to ``tmp_path`` with its ``adapter_config.json`` updated by
    ``config`` and its tensors passed through ``tensors``."""
    import shutil

    adapter = shutil.copytree(repos[1], tmp_path / "adapter")
    raw = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**raw, **(config or {})}))
    if tensors is not None:
        save_file(tensors(load_file(str(adapter / "adapter_model.safetensors"))), str(adapter / "adapter_model.safetensors"))
    return adapter


def assert_refused(adapter, *needles: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        LLM(str(adapter), dtype="float32")
    message = str(info.value)
    assert "\n" not in message and all(needle in message for needle in needles), message
    return message


def test_a_base_missing_offline_is_named(repos, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = _edited(repos, tmp_path, {"base_model_name_or_path": COLPALI_BASE})
    assert_refused(adapter, f"over the base model '{COLPALI_BASE}', which cannot be found", "HF_HUB_OFFLINE")


@pytest.mark.parametrize("base", [None, ""])
def test_an_adapter_config_without_a_base_is_refused(repos, tmp_path, base):
    adapter = _edited(repos, tmp_path, {"base_model_name_or_path": base})
    assert_refused(adapter, "names no base model (base_model_name_or_path)")


def test_a_base_of_another_architecture_is_refused(repos, tmp_path, tiny_encoders):
    adapter = _edited(repos, tmp_path, {"base_model_name_or_path": str(tiny_encoders["bert"])})
    assert_refused(adapter, "does not apply to its base", "has no linear layer for", "model.language_model.model.layers.")


def test_a_base_of_other_sizes_is_refused(repos, tmp_path):
    """Factors of another width than the base's layers (an adapter trained on a wider PaliGemma)."""
    layer = "base_model.model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight"

    def wider(tensors: dict) -> dict:
        return {**tensors, layer: torch.randn(tensors[layer].shape[0], 96)}

    adapter = _edited(repos, tmp_path, tensors=wider)
    assert_refused(adapter, "does not apply to its base", "model.language_model.model.layers.0.self_attn.q_proj maps 96 -> 64 features")


# -- ColQwen2.5: vidore/colqwen2.5-v0.2 over vidore/colqwen2.5-base ---------------------------------

#: Pages of other shapes: 5x7 and 7x5 merged patches (M-RoPE's height and width differ), 4x4, and a capped one.
COLQWEN2_5_PAGES = [picture(37, 53, 0), picture(53, 37, 1), picture(30, 30, 3, "L"), picture(150, 110, 2)]


@pytest.fixture(scope="module")
def cq_repos(tmp_path_factory):
    """The tiny base and adapter, the adapter naming the base by its hub id, found in a Hugging Face cache."""
    return build_colqwen2_5_repos(tmp_path_factory.mktemp("colqwen2_5") / "repos", base_id=COLQWEN2_5_BASE)


@pytest.fixture(scope="module")
def cq_hub(cq_repos, tmp_path_factory):
    """The Hugging Face cache holding the base under its hub id, offline."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("colqwen2_5_hub")
    hub_cache(cache, COLQWEN2_5_BASE, cq_repos[0])
    patch = pytest.MonkeyPatch()
    patch.setattr(constants, "HF_HUB_CACHE", str(cache))
    patch.setenv("HF_HUB_CACHE", str(cache))
    patch.setenv("HF_HUB_OFFLINE", "1")
    yield cache
    patch.undo()


@pytest.fixture(scope="module")
def cq_llm(cq_repos, cq_hub):
    return LLM(str(cq_repos[1]), dtype="float32")


@pytest.fixture(scope="module")
def cq_engine(cq_repos, cq_hub):
    """colpali-engine's ``ColQwen2_5`` from the adapter folder (the base from the cache, peft's adapter) and its processor."""
    model = ColQwen2_5.from_pretrained(str(cq_repos[1]), dtype=torch.float32).eval()
    assert sum("lora_B" in name for name, _ in model.named_parameters()) == 15  # 2 layers x 7 projections, and custom_text_proj
    return model, colqwen2_5_processor(cq_repos[1])


def cq_reference(engine, item, **forward) -> tuple[list[int], torch.Tensor]:
    """colpali-engine's token ids and vectors of one query (a text) or page (an image), padding rows dropped."""
    model, processor = engine
    given = colqwen2_5_process_queries(processor, [item]) if isinstance(item, str) else colqwen2_5_process_images(processor, [item])
    keep = given["attention_mask"][0].bool()
    with torch.no_grad():
        out = model(**given, **forward)[0]
    return given["input_ids"][0][keep].tolist(), out[keep]


def cq_prompt(item):
    return item if isinstance(item, str) else page(item)


def test_colqwen2_5_folders_are_laid_out_as_published(cq_repos):
    base, adapter = cq_repos
    config = json.loads((base / "config.json").read_text())
    assert config["architectures"] == ["ColQwen2_5"] and config["model_type"] == "qwen2_5_vl"
    assert "text_config" not in config and config["hidden_size"] == 64  # transformers 4.49's flat Qwen2.5-VL config
    tensors = load_file(str(base / "model.safetensors"))
    assert {"model.embed_tokens.weight", "model.norm.weight", "visual.merger.ln_q.weight", "custom_text_proj.bias"} <= set(tensors)
    assert tensors["custom_text_proj.weight"].shape == (128, 64)
    names = set(load_file(str(adapter / "adapter_model.safetensors")))
    assert {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.custom_text_proj.lora_B.weight"} <= names
    assert not any("visual" in name for name in names)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == COLQWEN2_5_BASE


def test_colqwen2_5_is_a_late_interaction_retriever(cq_llm):
    assert type(cq_llm.model.architecture) is PoolkitColQwen2_5
    assert cq_llm.model.supported_tasks() == ["token_embed"] and cq_llm.score_type == "late-interaction"
    assert cq_llm.model.architecture.hidden_size == 128


def test_colqwen2_5_queries_and_pages_match_colpali_engine_packed(cq_llm, cq_engine):
    items = QUERIES + COLQWEN2_5_PAGES
    outs = cq_llm.encode([cq_prompt(item) for item in items], pooling_task="token_embed")
    for out, item in zip(outs, items):
        ids, want = cq_reference(cq_engine, item)
        assert out.prompt_token_ids == ids
        assert_close(vectors([out])[0], want)


def test_colqwen2_5_pages_run_at_multimodal_positions(cq_llm, cq_engine):
    """A 5x7 page's vectors are colpali-engine's at the M-RoPE positions ``Qwen2_5_VLModel`` computes,
    not at plain ones (which would move them)."""
    (out,) = cq_llm.encode([page(COLQWEN2_5_PAGES[0])], pooling_task="token_embed")
    ids, want = cq_reference(cq_engine, COLQWEN2_5_PAGES[0])
    plain = torch.arange(len(ids)).expand(3, 1, -1)
    _, at_plain = cq_reference(cq_engine, COLQWEN2_5_PAGES[0], position_ids=plain)
    assert_close(vectors([out])[0], want)
    assert (vectors([out])[0] - at_plain).abs().max() > 10 * ATOL  # rope_theta 1e6 over 16-wide heads turns slowly


def test_colqwen2_5_scores_are_maxsim_of_colpali_engine_vectors(cq_llm, cq_engine):
    documents = [{"content": [{"type": "image_pil", "image_pil": image}]} for image in COLQWEN2_5_PAGES]
    got = torch.tensor([out.outputs.score for out in cq_llm.score(QUERIES[0], documents)])
    query = cq_reference(cq_engine, QUERIES[0])[1]
    # score_multi_vector: per page, the sum over query vectors of the best dot product with the page's
    want = torch.stack([(query @ cq_reference(cq_engine, image)[1].T).max(dim=1).values.sum() for image in COLQWEN2_5_PAGES])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_colqwen2_5_base_alone_is_colpali_engines_base(cq_repos, cq_llm, cq_engine):
    base = LLM(str(cq_repos[0]), dtype="float32")
    base_engine = (ColQwen2_5.from_pretrained(str(cq_repos[0]), dtype=torch.float32).eval(), cq_engine[1])
    for item in (QUERIES[0], COLQWEN2_5_PAGES[1]):
        (alone,) = vectors(base.encode([cq_prompt(item)], pooling_task="token_embed"))
        assert_close(alone, cq_reference(base_engine, item)[1])
        (adapted,) = vectors(cq_llm.encode([cq_prompt(item)], pooling_task="token_embed"))
        assert (adapted - alone).abs().max() > 0.05


def test_colqwen2_5_base_saved_by_transformers_5_loads_alike(cq_repos, tmp_path):
    """colpali-engine's ``ColQwen2_5`` of the base saved again with transformers 5 (``text_config`` nested,
    the tensors named back through ``key_mapping``) is the same model."""
    import shutil

    ColQwen2_5.from_pretrained(str(cq_repos[0]), dtype=torch.float32).save_pretrained(tmp_path / "resaved")
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(cq_repos[0] / name, tmp_path / "resaved" / name)
    assert "text_config" in json.loads((tmp_path / "resaved" / "config.json").read_text())
    prompts = [QUERIES[0], page(COLQWEN2_5_PAGES[1])]
    resaved = vectors(LLM(str(tmp_path / "resaved"), dtype="float32").encode(prompts, pooling_task="token_embed"))
    for got, want in zip(resaved, vectors(LLM(str(cq_repos[0]), dtype="float32").encode(prompts, pooling_task="token_embed"))):
        assert torch.equal(got, want)


def test_colqwen2_5_info_names_the_layouts(cq_repos, cq_llm):
    """``poolkit info``: the adapter folder as an adapter repository over the base's hub id; the base
    alone as colpali-engine's ColQwen2_5, with its published tensor names."""
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    base, adapter = cq_repos
    shown = {}
    for folder in (adapter, base):
        result = CliRunner().invoke(app, ["info", str(folder)])
        assert result.exit_code == 0, result.stderr
        shown[folder] = json.loads(result.stdout)
    assert shown[adapter]["layout"] == cq_llm.model.describe()["layout"]
    assert shown[adapter]["layout"]["value"] == f"adapter repository over {COLQWEN2_5_BASE}"
    assert "models--vidore--colqwen2.5-base" in shown[adapter]["layout"]["source"]
    assert shown[adapter]["architecture"] == shown[base]["architecture"] == "ColQwen2_5"
    assert shown[base]["layout"] == {
        "value": "colpali-engine ColQwen2_5 (published tensor names: model.*, visual.*, 128-wide custom_text_proj)",
        "source": "config.json architectures (ColQwen2_5), the checkpoint's tensor names",
    }


def test_colqwen2_5_max_num_visual_tokens_caps_pages_as_from_pretrained_does(cq_repos, cq_hub, cq_engine):
    """``mm_processor_kwargs={"max_num_visual_tokens": 2}`` is ``ColQwen2_5_Processor.from_pretrained(...,
    max_num_visual_tokens=2)``: ``max_pixels`` 2 x 28 x 28."""
    few = LLM(str(cq_repos[1]), dtype="float32", mm_processor_kwargs={"max_num_visual_tokens": 2})
    engine = (cq_engine[0], colqwen2_5_processor(cq_repos[1], max_num_visual_tokens=2))
    (out,) = few.encode([page(COLQWEN2_5_PAGES[3])], pooling_task="token_embed")
    ids, want = cq_reference(engine, COLQWEN2_5_PAGES[3])
    assert out.prompt_token_ids == ids and len(ids) < len(cq_reference(cq_engine, COLQWEN2_5_PAGES[3])[0])
    assert_close(vectors([out])[0], want)


def test_colqwen2_5_a_bad_max_num_visual_tokens_is_refused(cq_repos, cq_hub):
    llm = LLM(str(cq_repos[1]), dtype="float32", mm_processor_kwargs={"max_num_visual_tokens": 0})
    with pytest.raises(InvalidRequest, match="max_num_visual_tokens must be a positive integer, got 0"):
        llm.encode([page(COLQWEN2_5_PAGES[0])], pooling_task="token_embed")


def _base_copy(cq_repos, tmp_path, config: dict | None = None, width: int | None = None):
    """The base folder copied, its ``config.json`` updated by ``config``, ``custom_text_proj`` cut to ``width`` rows."""
    import shutil

    base = shutil.copytree(cq_repos[0], tmp_path / "base")
    raw = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**raw, **(config or {})}))
    if width is not None:
        tensors = load_file(str(base / "model.safetensors"))
        for name in ("custom_text_proj.weight", "custom_text_proj.bias"):
            tensors[name] = tensors[name][:width].contiguous()
        save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    return base


@pytest.mark.parametrize(
    "config, width, needles",
    [
        ({"dim": 64}, None, ("ColQwen2_5 config dim is 64", "custom_text_proj.weight has shape (128, 64), not (64, 64)")),
        (None, 96, ("ColQwen2_5 config has no dim (colpali-engine's 128)", "custom_text_proj.weight has shape (96, 64), not (128, 64)")),
        ({"dim": 0}, None, ("the ColQwen2_5 config's dim must be a positive integer, got 0",)),
    ],
    ids=["dim-disagrees", "no-dim-and-not-128", "dim-zero"],
)
def test_colqwen2_5_a_projection_of_another_width_than_dim_is_refused(cq_repos, tmp_path, config, width, needles):
    assert_refused(_base_copy(cq_repos, tmp_path, config, width), *needles)


def test_colqwen2_5_a_dim_that_fits_the_projection_is_read(cq_repos, tmp_path, cq_llm):
    """A config naming the 128 it holds loads as the one without ``dim``."""
    llm = LLM(str(_base_copy(cq_repos, tmp_path, {"dim": 128})), dtype="float32")
    assert llm.model.architecture.hidden_size == 128
