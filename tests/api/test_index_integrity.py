"""LateInteractionIndex keeps what it should and nothing else (issue 80, items 3 and 6).

- what a document stores is what ``LLM.score`` scores for it: the skiplist's (punctuation) tokens
  left out, as sentence-transformers' MultiVectorEncoder (the PyLate / colbert-ai reference) leaves
  them out, so the search score of a (query, document) is ``LLM.score``'s;
- the index records which model built it (its folder and a digest of its files), so the same name
  typed in another folder, for other weights of the same width, is an ``IndexMismatch``;
- an overwrite replaces the index's own table only, and leaves nothing of the old documents on disk
  (no older LanceDB version); a table of that name poolkit did not write is never replaced;
- one writer at a time (``index_lock``): another is refused in one line.

The ColBERT is test_index.py's tiny HF_ColBERT with colbert-ai's ``artifact.metadata``, whose
``mask_punctuation`` default gives documents the punctuation skiplist.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from index_checks import files_holding, held_by_another_writer, retrained

pytest.importorskip("lancedb", reason="pip install 'poolkit[index]'")

from poolkit import LLM, InvalidRequest, LateInteractionIndex  # noqa: E402
from poolkit.api.index import IndexBusy, IndexMismatch  # noqa: E402
from poolkit.kernels.token_pool import hierarchical_pool  # noqa: E402

from test_index import MARKERS, QUERIES, stored  # noqa: E402

PUNCTUATED = [
    "paris, the capital; of france!",
    "(berlin) - germany's capital.",
    "rome: italy's capital, on the tiber?",
    "the quick brown fox jumps over the lazy dog",
    "hello... world!!",
]


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory) -> Path:
    from tiny_models import build_stanford_colbert

    return build_stanford_colbert(tmp_path_factory.mktemp("integrity") / "colbert", metadata=MARKERS)


@pytest.fixture(scope="module")
def colbert(colbert_dir) -> LLM:
    return LLM(str(colbert_dir), dtype="float32")


def test_a_document_stores_and_scores_what_llm_score_does(colbert, colbert_dir, tmp_path):
    from sentence_transformers import MultiVectorEncoder

    index = LateInteractionIndex.build(tmp_path / "idx", colbert, PUNCTUATED)
    ids, vectors = stored(index)
    reference = MultiVectorEncoder(str(colbert_dir), device="cpu").encode_document(PUNCTUATED)
    every = colbert.encode(PUNCTUATED, pooling_task="token_embed", tokenization_kwargs={"input_type": "document"})
    assert sum(len(v) for v in reference) < sum(len(o.prompt_token_ids) for o in every)  # the skiplist drops tokens here
    for got, want in zip(vectors, reference):
        assert got.shape == want.shape  # exactly the vectors PyLate / sentence-transformers keep
        assert torch.allclose(got, torch.nn.functional.normalize(want.float(), dim=-1), atol=1e-5)
    for query in QUERIES:
        scores = {h.id: h.score for h in index.search(query, top_k=len(PUNCTUATED), exact=True)[0]}
        expected = [out.outputs.score for out in colbert.score(query, PUNCTUATED)]
        assert [scores[i] for i in ids] == pytest.approx(expected, abs=1e-4)
    # pooled, the skiplist goes first (sentence-transformers' MultiVectorMask, then its pooling module)
    pooled = LateInteractionIndex.build(tmp_path / "pooled", colbert, PUNCTUATED, token_pool_factor=2)
    for got, want in zip(stored(pooled)[1], reference):
        assert torch.allclose(got, hierarchical_pool(torch.nn.functional.normalize(want.float(), dim=-1), 2), atol=1e-5)


def test_the_same_name_for_another_model_is_a_mismatch(colbert_dir, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copytree(colbert_dir, tmp_path / "a" / "enc")
    retrained(colbert_dir, tmp_path / "b" / "enc")
    monkeypatch.chdir(tmp_path / "a")
    built = LateInteractionIndex.build(tmp_path / "idx", LLM("enc", dtype="float32"), PUNCTUATED)
    assert built.identity.model == "enc" and built.identity.source["path"] == str((tmp_path / "a" / "enc").resolve())
    monkeypatch.chdir(tmp_path / "b")
    other = LLM("enc", dtype="float32")
    assert other.model.name == "enc" and other.encode("x", pooling_task="token_embed")[0].outputs.data.shape[-1] == 16
    with pytest.raises(IndexMismatch) as err:
        LateInteractionIndex.open(tmp_path / "idx", other)
    assert "was built with model 'enc'" in str(err.value) and "\n" not in str(err.value)
    copy = shutil.copytree(colbert_dir, tmp_path / "copy")  # the same files elsewhere: the same model
    assert len(LateInteractionIndex.open(tmp_path / "idx", LLM(str(copy), dtype="float32"))) == len(PUNCTUATED)


def test_an_overwrite_leaves_nothing_of_the_old_documents(colbert, tmp_path):
    import lancedb

    path = tmp_path / "db"
    lancedb.connect(str(path)).create_table("users", data=[{"name": "ada", "age": 36}])
    old = LateInteractionIndex.build(path, colbert, PUNCTUATED, [f"secret-old-{i}" for i in range(len(PUNCTUATED))])
    assert files_holding(path, b"secret-old-")
    index = LateInteractionIndex.build(path, colbert, PUNCTUATED[:2], ["new-0", "new-1"], overwrite=True)
    assert index.ids() == ["new-0", "new-1"] and len(old.table.list_versions()) == 1
    assert files_holding(path, b"secret-old-") == []  # no older version keeps the replaced ids (or their vectors)
    assert lancedb.connect(str(path)).open_table("users").to_arrow().to_pylist() == [{"name": "ada", "age": 36}]


def test_a_table_poolkit_did_not_write_or_a_file_is_never_replaced(colbert, tmp_path):
    import lancedb

    theirs = lancedb.connect(str(tmp_path / "db")).create_table("documents", data=[{"id": 1, "text": "keep me"}])
    with pytest.raises(InvalidRequest, match=r"holds a 'documents' table that poolkit did not write; refusing"):
        LateInteractionIndex.build(tmp_path / "db", colbert, PUNCTUATED, overwrite=True)
    assert theirs.to_arrow().to_pylist() == [{"id": 1, "text": "keep me"}]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": 1, "text": "keep me"}\n')
    with pytest.raises(InvalidRequest, match=r"^'.*corpus.jsonl' is a file, not an index directory"):
        LateInteractionIndex.build(corpus, colbert, PUNCTUATED, overwrite=True)
    assert corpus.read_text() == '{"id": 1, "text": "keep me"}\n'


def test_one_writer_at_a_time(colbert, tmp_path):
    with held_by_another_writer(tmp_path / "idx"):
        with pytest.raises(IndexBusy, match=r"^index '.*idx' is being written by another process \(pid \d+\)"):
            LateInteractionIndex.build(tmp_path / "idx", colbert, PUNCTUATED)
        assert not LateInteractionIndex.exists(tmp_path / "idx")
    assert len(LateInteractionIndex.build(tmp_path / "idx", colbert, PUNCTUATED)) == len(PUNCTUATED)
    assert not (tmp_path / "idx.lock").exists()  # released and removed
    np.testing.assert_array_equal(LateInteractionIndex.open(tmp_path / "idx", colbert).ids(), list(range(len(PUNCTUATED))))
