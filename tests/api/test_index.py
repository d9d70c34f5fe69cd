"""LateInteractionIndex: a collection's token vectors in LanceDB, searched by MaxSim.

The search is checked against brute-force MaxSim (``poolkit.api.st_functions.maxsim``) over the
vectors the table stores, and the stored vectors against ``LLM.encode`` on the document side. The
ColBERT is the tiny HF_ColBERT of ``tiny_models.build_stanford_colbert`` with colbert-ai's
``artifact.metadata`` keys (``query_token_id``, ``doc_token_id``, ``query_maxlen``, ``doc_maxlen``:
the keys vLLM's ColBERT processing reads, as in tests/vllm/test_colbert_input_type.py), so its
queries and documents get their markers and the queries their expansion to 32 tokens.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("lancedb", reason="pip install 'poolkit[index]'")

from poolkit import LLM, InvalidRequest, LateInteractionIndex, PoolingParams  # noqa: E402
from poolkit.api import index as index_module  # noqa: E402
from poolkit.api.index import ANN_MIN_ROWS, METADATA_KEY, IndexMismatch  # noqa: E402
from poolkit.api.st_functions import maxsim  # noqa: E402

MARKERS = {"query_token_id": "<s>", "doc_token_id": "</s>", "query_maxlen": 32, "doc_maxlen": 64}
WORDS = "paris is the capital of france rome italy berlin germany quick brown fox jumps over lazy dog".split()
DOCS = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(3 + i % 9)) for i in range(30)]
QUERIES = ["capital of france", "the lazy dog", "berlin"]


@pytest.fixture(scope="module")
def colbert(tmp_path_factory):
    from tiny_models import build_stanford_colbert

    return LLM(str(build_stanford_colbert(tmp_path_factory.mktemp("index") / "colbert", metadata=MARKERS)), dtype="float32")


def stored(index: LateInteractionIndex) -> tuple[list, list[torch.Tensor]]:
    table = index.table.to_arrow()
    return table.column("id").to_pylist(), [torch.tensor(np.asarray(v, dtype=np.float32)) for v in table.column("vector").to_pylist()]


def brute_force(llm: LLM, index: LateInteractionIndex, queries: list[str], top_k: int) -> list[list[tuple]]:
    """Every stored document scored by MaxSim with each query's query-side vectors, best first."""
    ids, docs = stored(index)
    kwargs = {"input_type": "query"} if index.identity.sides else None
    outs = llm.encode(queries, pooling_task="token_embed", tokenization_kwargs=kwargs)
    results = []
    for out in outs:
        scores = maxsim(torch.nn.functional.normalize(out.outputs.data.float(), dim=-1), docs)[0].tolist()
        results.append(sorted(zip(ids, scores), key=lambda pair: -pair[1])[:top_k])
    return results


def assert_same_hits(found, expected):
    for hits, want in zip(found, expected, strict=True):
        assert [h.id for h in hits] == [i for i, _ in want]
        assert np.allclose([h.score for h in hits], [s for _, s in want], atol=1e-5, rtol=0)


def test_search_equals_brute_force_maxsim_on_the_document_and_query_sides(colbert, tmp_path):
    ids = [f"doc-{i}" for i in range(len(DOCS))]
    index = LateInteractionIndex.build(tmp_path / "idx", colbert, DOCS, ids, token_pool_factor=2, batch_size=8)
    assert len(index) == len(DOCS) and index.identity.sides
    # the stored vectors are the document side's, pooled by 2
    want = colbert.encode(
        DOCS, PoolingParams(token_pool_factor=2), pooling_task="token_embed", tokenization_kwargs={"input_type": "document"}
    )
    got_ids, got = stored(index)
    assert got_ids == ids
    for vectors, out in zip(got, want):
        assert torch.allclose(vectors, torch.nn.functional.normalize(out.outputs.data.float(), dim=-1), atol=1e-6)
    whole = colbert.encode(DOCS[:1], pooling_task="token_embed", tokenization_kwargs={"input_type": "document"})[0]
    assert len(got[0]) < len(whole.prompt_token_ids)  # pooling kept fewer vectors than tokens
    found = index.search(QUERIES, top_k=5)
    assert_same_hits(found, brute_force(colbert, index, QUERIES, 5))
    assert all(h.score > 0 for hits in found for h in hits)
    # the query side: 32 tokens (ColBERT's query expansion), and the score its MaxSim
    (q,) = colbert.encode(QUERIES[:1], pooling_task="token_embed", tokenization_kwargs={"input_type": "query"})
    assert len(q.prompt_token_ids) == 32
    meta = json.loads(index.table.schema.metadata[METADATA_KEY])
    assert meta["dim"] == 16 and meta["token_pool_factor"] == 2 and meta["sides"] is True
    assert meta["model"] == colbert.model.name and meta["load"] == colbert.args.identity()


def test_add_appends_and_opening_again_finds_the_new_documents(colbert, tmp_path):
    LateInteractionIndex.build(tmp_path / "idx", colbert, DOCS[:10])
    index = LateInteractionIndex.open(tmp_path / "idx", colbert)
    assert index.add(["rome is the capital of italy", "berlin is in germany"]) == 12
    ids, _ = stored(index)
    assert ids == list(range(12))
    found = index.search(["capital of italy", "germany"], top_k=4)
    assert_same_hits(found, brute_force(colbert, index, ["capital of italy", "germany"], 4))
    assert index.ids() == list(range(12))
    with pytest.raises(InvalidRequest, match="the index's ids are integers"):
        index.add(["x"], ["a-string"])
    with pytest.raises(InvalidRequest, match="id 3 is in the index already"):
        index.add(["x"], [3])
    with pytest.raises(InvalidRequest, match="the ids repeat"):
        index.add(["x", "y"], [20, 20])
    assert len(index) == 12


def test_a_model_without_sides_real_minilm(minilm, tmp_path):
    index = LateInteractionIndex.build(tmp_path / "idx", minilm, DOCS[:12], token_pool_factor=3)
    assert not index.identity.sides and index.identity.dim == 384
    assert_same_hits(index.search(QUERIES, top_k=3), brute_force(minilm, index, QUERIES, 3))


def test_another_model_or_width_is_refused_in_one_line(colbert, minilm, tmp_path):
    index = LateInteractionIndex.build(tmp_path / "idx", colbert, DOCS[:4])
    with pytest.raises(IndexMismatch) as err:
        LateInteractionIndex.open(tmp_path / "idx", minilm)
    assert "was built with model" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(IndexMismatch, match="16-wide token vectors, these are 17 wide"):
        index.add_vectors(["x"], [np.ones((3, 17), dtype=np.float32)])
    wide = LateInteractionIndex.open(tmp_path / "idx", colbert)
    wide.identity = dataclasses.replace(index.identity, dim=32)  # as if the table held 32-wide vectors
    with pytest.raises(IndexMismatch, match="32-wide token vectors, the model gives 16"):
        wide.search("paris")


def test_bad_input_one_line_errors(colbert, tmp_path):
    with pytest.raises(InvalidRequest, match="index '.*nowhere' does not exist"):
        LateInteractionIndex.open(tmp_path / "nowhere", colbert)
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(InvalidRequest, match="is not a poolkit index"):
        LateInteractionIndex.open(tmp_path / "empty-dir", colbert)
    with pytest.raises(InvalidRequest, match="no documents to index"):
        LateInteractionIndex.build(tmp_path / "idx", colbert, [])
    with pytest.raises(InvalidRequest, match=r"^token_pool_factor must be >= 1, got 0.5$"):
        LateInteractionIndex.build(tmp_path / "idx", colbert, DOCS[:2], token_pool_factor=0.5)
    LateInteractionIndex.build(tmp_path / "idx", colbert, DOCS[:2])
    with pytest.raises(InvalidRequest, match="already exists; pass overwrite=True"):
        LateInteractionIndex.build(tmp_path / "idx", colbert, DOCS[:2])
    assert len(LateInteractionIndex.build(tmp_path / "idx", colbert, DOCS[:3], overwrite=True)) == 3
    with pytest.raises(InvalidRequest, match="top_k must be a positive integer"):
        LateInteractionIndex.open(tmp_path / "idx", colbert).search("paris", top_k=0)


def test_ann_index_on_request_and_automatically(colbert, tmp_path, monkeypatch):
    index = LateInteractionIndex.build(tmp_path / "idx", colbert, DOCS[:5])
    with pytest.raises(InvalidRequest, match=f"at least {ANN_MIN_ROWS} documents"):
        index.create_ann_index()
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal((int(rng.integers(2, 9)), 16)).astype(np.float32) for _ in range(ANN_MIN_ROWS + 44)]
    monkeypatch.setattr(index_module, "AUTO_ANN_ROWS", ANN_MIN_ROWS)  # the automatic rule, at a test's size
    index.auto_ann = False  # --no-ann
    index.add_vectors(list(range(5, 5 + len(vectors) - 1)), vectors[:-1])
    assert not index.has_ann_index()
    index.auto_ann = True
    index.add_vectors([4 + len(vectors)], vectors[-1:])
    assert index.has_ann_index()
    assert_same_hits(index.search(QUERIES, top_k=5, exact=True), brute_force(colbert, index, QUERIES, 5))
    ids, docs = stored(index)
    by_id = dict(zip(ids, docs))
    (q,) = colbert.encode(QUERIES[:1], pooling_task="token_embed", tokenization_kwargs={"input_type": "query"})
    query = torch.nn.functional.normalize(q.outputs.data.float(), dim=-1)
    for hit in index.search(QUERIES[:1], top_k=5)[0]:  # approximate ranking, exact scores
        assert hit.score == pytest.approx(maxsim(query, [by_id[hit.id]])[0, 0].item(), abs=1e-5)


@pytest.mark.parametrize("precision", ["binary", "int8"])
def test_a_compact_index_scores_by_compact_maxsim(colbert, tmp_path, precision):
    # Item 3 of the index: tokens stored as Cohere's binary (a 32nd of the float bytes) or int8 (a
    # quarter), searched exhaustively by maxsim_compact (Hamming / int8 cosine) over the same
    # document-side vectors, which the float index stores.
    from poolkit.api.st_functions import compact_tokens, maxsim_compact

    floats = LateInteractionIndex.build(tmp_path / "float", colbert, DOCS)
    compact = LateInteractionIndex.build(tmp_path / precision, colbert, DOCS, precision=precision)
    assert compact.identity.precision == precision and LateInteractionIndex.read_identity(tmp_path / precision).precision == precision
    ids, vectors = stored(floats)
    codes = [np.asarray(v, dtype=np.int8) for v in compact.table.to_arrow().column("vector").to_pylist()]
    for code, vector in zip(codes, vectors):
        np.testing.assert_array_equal(code, compact_tokens(vector, precision))
    assert codes[0].nbytes == vectors[0].numel() * 4 // (32 if precision == "binary" else 4)
    queries = [out.outputs.data for out in colbert.encode(QUERIES, pooling_task="token_embed", tokenization_kwargs={"input_type": "query"})]
    expected = maxsim_compact([compact_tokens(torch.nn.functional.normalize(q.float(), dim=-1), precision) for q in queries], codes, precision)
    hits = LateInteractionIndex.open(tmp_path / precision, colbert).search(QUERIES, top_k=5)
    for found, row in zip(hits, expected):
        best = torch.topk(row, 5)
        assert np.allclose([h.score for h in found], best.values.tolist(), atol=1e-5, rtol=0)
        assert [row[ids.index(h.id)].item() for h in found] == pytest.approx(best.values.tolist(), abs=1e-5)
    with pytest.raises(InvalidRequest, match="an ANN index is for float32 token vectors"):
        compact.create_ann_index()
    with pytest.raises(InvalidRequest, match="precision must be one of float32, binary, int8, got 'int4'"):
        LateInteractionIndex.create(tmp_path / "bad", colbert, precision="int4")
