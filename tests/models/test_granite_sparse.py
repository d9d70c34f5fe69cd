"""SPLADE on a RoBERTa masked LM: ibm-granite/granite-embedding-30m-sparse (``RobertaForMaskedLM``
saved by sentence-transformers as ``MLMTransformer`` + ``SpladePooling``; tests/support/tiny_sparse.py),
against sentence-transformers 6.2's ``SparseEncoder.encode`` on the same folder and against the
publisher's computation written out here: transformers' ``RobertaForMaskedLM`` logits (its
``RobertaLMHead``: dense, ``gelu``, ``layer_norm``, decoder + bias; transformers/models/roberta/
modeling_roberta.py) pooled by ``SpladePooling.forward`` (``log1p(relu(x))``, max over the unpadded
tokens; sentence_transformers/sparse_encoder/modules/splade_pooling.py).

fp32, DESIGN.md §7: ``atol=1e-4`` with the same non-zero indices.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_sparse import build_granite_sparse

from poolkit import LLM, ModelLoadError

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")  # SparseEncoder's

ATOL = 1e-4
TEXTS = ["what is the capital of germany?", "berlin is the capital of germany", "hello", "the lazy dog"]


@pytest.fixture(scope="module")
def granite(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("granite")
    return {
        "tied": build_granite_sparse(root / "tied"),
        "untied": build_granite_sparse(root / "untied", seed=1, tie_word_embeddings=False),
    }


def reference(path: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(str(path)).eval()
    enc = AutoTokenizer.from_pretrained(str(path))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    return torch.log1p(torch.relu(logits * enc["attention_mask"].unsqueeze(-1))).amax(dim=1)


def assert_same_sparse(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape and (got - ref).abs().max().item() <= ATOL
    for row_got, row_ref in zip(got, ref):
        assert torch.equal(row_got.nonzero().flatten(), row_ref.nonzero().flatten())
        assert int((row_ref != 0).sum()) > 0


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_granite_matches_sparse_encoder(granite, kind):
    from sentence_transformers import SparseEncoder

    path = granite[kind]
    names = load_file(str(path / "model.safetensors")).keys()
    assert {"lm_head.dense.weight", "lm_head.layer_norm.weight", "lm_head.bias"} <= set(names)
    assert ("lm_head.decoder.weight" in names) == (kind == "untied")
    ref = SparseEncoder(str(path), device="cpu").encode(TEXTS, convert_to_tensor=True).to_dense().float()
    assert_same_sparse(ref, reference(path, TEXTS))

    llm = LLM(str(path))
    assert llm.model.architecture_name == "RobertaForMaskedLM"
    assert (llm.model.architecture.mlm_head.decoder is None) == (kind == "tied")
    embedded = torch.stack([torch.tensor(o.outputs.embedding) for o in llm.embed(TEXTS)])
    assert_same_sparse(embedded, ref)
    assert torch.equal(torch.stack([o.outputs.data for o in llm.encode(TEXTS, pooling_task="sparse_embed")]), embedded)
    # XLM-R's masked LM is the same head under its own name.
    xlmr = LLM(str(path), hf_overrides={"architectures": ["XLMRobertaForMaskedLM"]})
    assert xlmr.model.architecture_name == "XLMRobertaForMaskedLM"
    assert torch.equal(torch.stack([torch.tensor(o.outputs.embedding) for o in xlmr.embed(TEXTS)]), embedded)


def test_without_the_sentence_transformers_files_embed_is_the_hidden_state(granite, tmp_path):
    """A plain RobertaForMaskedLM (no SpladePooling) embeds as RobertaModel did; sparse_embed is SPLADE."""
    path = tmp_path / "plain"
    shutil.copytree(granite["tied"], path)
    for name in ("modules.json", "1_SpladePooling", "config_sentence_transformers.json", "sentence_bert_config.json"):
        target = path / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    llm = LLM(str(path))
    bare = LLM(str(path), hf_overrides={"architectures": ["RobertaModel"]})
    assert llm.model.architecture_name == "RobertaForMaskedLM"
    assert torch.equal(
        torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS)]), torch.tensor([o.outputs.embedding for o in bare.embed(TEXTS)])
    )
    sparse = torch.stack([o.outputs.data for o in llm.encode(TEXTS, pooling_task="sparse_embed")])
    assert_same_sparse(sparse, reference(path, TEXTS))


def test_an_mlm_head_missing_a_tensor_is_refused(granite, tmp_path):
    path = tmp_path / "broken"
    shutil.copytree(granite["tied"], path)
    file = path / "model.safetensors"
    tensors = {k: v for k, v in load_file(str(file)).items() if k != "lm_head.layer_norm.bias"}
    save_file(tensors, str(file), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"checkpoint lacks weights for lm_head.layer_norm.bias \(the MLM head\)") as caught:
        LLM(str(path))
    assert "\n" not in str(caught.value)
