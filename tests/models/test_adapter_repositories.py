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
    build_colpali_repos,
    build_colqwen2_5_repos,
    build_colqwen2_hf_repos,
    hub_cache,
)
from tiny_models import picture
from poolkit import LLM
from poolkit.contracts.errors import ModelLoadError

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


def _refused(adapter, *needles: str) -> str:
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
    _refused(adapter, f"over the base model '{COLPALI_BASE}', which cannot be found", "HF_HUB_OFFLINE")


@pytest.mark.parametrize("base", [None, ""])
def test_an_adapter_config_without_a_base_is_refused(repos, tmp_path, base):
    adapter = _edited(repos, tmp_path, {"base_model_name_or_path": base})
    _refused(adapter, "names no base model (base_model_name_or_path)")


def test_a_base_of_another_architecture_is_refused(repos, tmp_path, tiny_encoders):
    adapter = _edited(repos, tmp_path, {"base_model_name_or_path": str(tiny_encoders["bert"])})
    _refused(adapter, "does not apply to its base", "has no linear layer for", "model.language_model.model.layers.")


def test_a_colqwen2_5_adapter_names_the_base_architecture_poolkit_lacks(tmp_path, monkeypatch):
    """vidore/colqwen2.5-v0.2 over vidore/colqwen2.5-base: the base is found by hub id, but colpali-engine's
    ``ColQwen2_5`` (Qwen2.5-VL's config at the top, ``custom_text_proj``) has no poolkit architecture yet."""
    from huggingface_hub import constants

    base, adapter = build_colqwen2_5_repos(tmp_path / "repos", base_id=COLQWEN2_5_BASE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_cache(tmp_path / "hub", COLQWEN2_5_BASE, base)
    names = set(load_file(str(adapter / "adapter_model.safetensors")))
    assert {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.custom_text_proj.lora_B.weight"} <= names
    _refused(adapter, "no poolkit architecture for ColQwen2_5")


def test_a_base_of_other_sizes_is_refused(repos, tmp_path):
    """Factors of another width than the base's layers (an adapter trained on a wider PaliGemma)."""
    layer = "base_model.model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight"

    def wider(tensors: dict) -> dict:
        return {**tensors, layer: torch.randn(tensors[layer].shape[0], 96)}

    adapter = _edited(repos, tmp_path, tensors=wider)
    _refused(adapter, "does not apply to its base", "model.language_model.model.layers.0.self_attn.q_proj maps 96 -> 64 features")
