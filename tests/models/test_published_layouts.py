"""Checkpoints laid out as their publishers ship them, where that differs from what transformers'
``save_pretrained`` writes (builders in ``tests/support/tiny_published.py``, each citing its sources).

Qwen/Qwen3-Embedding-0.6B: ``config.json`` names ``Qwen3ForCausalLM`` over a ``Qwen3Model``'s tensors
(no ``model.`` prefix, no ``lm_head``), its tokenizer appends ``<|endoftext|>`` (also the pad token),
and its sentence-transformers files ask for last-token pooling, normalisation and a ``query`` prompt.
The reference is sentence-transformers loading the same folder.

openai/clip-vit-base-patch32: CLIP's ``<|startoftext|>`` / ``<|endoftext|>`` at the end of the
vocabulary and the legacy ``eos_token_id`` 2, with which transformers pools each text at its largest
token id. The reference is transformers' ``CLIPModel.get_text_features``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from poolkit import LLM

ATOL = 1e-4
TEXTS = ["paris is the capital of france", "hello", "the quick brown fox jumps over the lazy dog " * 3, "yes"]


@pytest.fixture(scope="module")
def qwen3_embedding(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_published import build_qwen3_embedding

    return build_qwen3_embedding(tmp_path_factory.mktemp("published") / "qwen3-embedding")


def test_qwen3_embedding_fixture_is_laid_out_as_published(qwen3_embedding: Path) -> None:
    """The differences from a plain save are there, so the tests below exercise them."""
    import transformers as T

    config = json.loads((qwen3_embedding / "config.json").read_text())
    assert (config["architectures"], config["model_type"]) == (["Qwen3ForCausalLM"], "qwen3")
    with safe_open(str(qwen3_embedding / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "embed_tokens.weight" in names and "norm.weight" in names
    assert not any(n.startswith(("model.", "lm_head.")) for n in names)
    tok = T.AutoTokenizer.from_pretrained(str(qwen3_embedding))
    assert tok("hello")["input_ids"][-1] == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token == "<|im_end|>"


@pytest.mark.parametrize("prompt_name", [None, "query"])
def test_qwen3_embedding_matches_sentence_transformers(qwen3_embedding: Path, prompt_name: str | None) -> None:
    """Last-token pooling reads the appended ``<|endoftext|>``, though it is the pad token too."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(qwen3_embedding), device="cpu")
    ref = torch.tensor(st.encode(TEXTS, prompt_name=prompt_name))
    llm = LLM(str(qwen3_embedding))
    info = llm.model.describe()
    assert (info["architecture"], info["implementation"]) == ("Qwen3ForCausalLM", "native")
    assert info["tasks"]["embed"]["pooling_type"]["value"] == "LAST"
    outs = llm.embed(TEXTS, prompt_name=prompt_name) if prompt_name else llm.embed(TEXTS)
    got = torch.tensor([o.outputs.embedding for o in outs])
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= ATOL
    assert F.cosine_similarity(got, ref).min().item() >= 0.99999
    end = json.loads((qwen3_embedding / "tokenizer.json").read_text())["post_processor"]["special_tokens"]["<|endoftext|>"]
    assert all(o.prompt_token_ids[-1] == end["ids"][0] for o in outs)


@pytest.fixture(scope="module")
def openai_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_published import build_openai_clip

    return build_openai_clip(tmp_path_factory.mktemp("published") / "clip")


def test_openai_clip_texts_pool_at_the_end_of_text_token(openai_clip: Path) -> None:
    """With the legacy ``eos_token_id`` 2 transformers pools at the largest id, ``<|endoftext|>``;
    poolkit's ``LAST`` pooling of unpadded texts reads the same token."""
    import transformers as T

    model = T.CLIPModel.from_pretrained(str(openai_clip)).eval()
    tok = T.AutoTokenizer.from_pretrained(str(openai_clip))
    assert model.config.text_config.eos_token_id == 2
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.eos_token_id == len(tok) - 1
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        features = model.get_text_features(**enc)
    ref = F.normalize(getattr(features, "pooler_output", features), dim=-1)
    got = torch.tensor([o.outputs.embedding for o in LLM(str(openai_clip)).embed(TEXTS)])
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= ATOL
