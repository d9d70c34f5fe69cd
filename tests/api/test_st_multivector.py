"""poolkit.MultiVectorEncoder against sentence-transformers' MultiVectorEncoder on the same weights.

Four checkpoint layouts, each loaded by both classes: PyLate's (the real all-MiniLM-L6-v2 with a
128-wide projection, [unused0]/[unused1] markers, 32-token queries expanded with [MASK]), colbert-ai's
HF_ColBERT with an artifact.metadata and without one (colbert-ai's defaults), and
sentence-transformers' own save (MultiVectorMask, text prompts). In float32 every token vector and
score equals sentence-transformers'; the default dtype keeps each token vector's cosine near 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import poolkit
from poolkit.contracts.errors import InvalidRequest

FP32 = {"dtype": torch.float32}
QUERIES = ["what is the capital of france?", "who wrote the iliad"]
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "The Iliad is an ancient Greek epic poem attributed to Homer.",
    "Berlin, Germany's capital; (a city-state) -- and more!",
    "hello",
]


@pytest.fixture(scope="module")
def layouts(minilm_dir, tmp_path_factory):
    from sentence_transformers import MultiVectorEncoder
    from tiny_models import build_encoder, build_pylate_colbert, build_stanford_colbert

    root = tmp_path_factory.mktemp("multi-vector")
    meta = {"query_token_id": "<s>", "doc_token_id": "</s>", "query_maxlen": 12, "doc_maxlen": 9}
    dirs = {
        "pylate-minilm": build_pylate_colbert(
            root / "pylate-minilm", minilm_dir, dim=128,
            query_prefix="[unused0] ", document_prefix="[unused1] ", query_length=32, document_length=180,
        ),
        "colbert-ai": build_stanford_colbert(root / "colbert-ai", {**meta, "attend_to_mask_tokens": True}),
        "colbert-ai-defaults": build_stanford_colbert(root / "colbert-ai-defaults"),
    }
    backbone = build_encoder(root / "backbone", "bert")
    pylate = build_pylate_colbert(
        root / "pylate", backbone, query_prefix="<s> ", document_prefix="</s> ", query_length=12, skiplist_words=[",", "!"]
    )
    MultiVectorEncoder(str(pylate), device="cpu").save(str(root / "native"))
    dirs["native"] = root / "native"
    return dirs


@pytest.fixture(scope="module", params=["pylate-minilm", "colbert-ai", "colbert-ai-defaults", "native"])
def pair(request, layouts):
    """(poolkit's MultiVectorEncoder in float32, sentence-transformers' on the same directory)."""
    from sentence_transformers import MultiVectorEncoder

    path = str(layouts[request.param])
    return poolkit.MultiVectorEncoder(path, model_kwargs=FP32), MultiVectorEncoder(path, device="cpu")


def cpu(vectors):
    """poolkit's tensors, which sit on the model's device as sentence-transformers' do, on the CPU
    beside the reference's (a list of them, or one)."""
    return [v.cpu() for v in vectors] if isinstance(vectors, list) else vectors.cpu()


def assert_same_vectors(got, expected, atol=1e-4):
    assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
    for g, e in zip(got, expected):
        assert torch.allclose(torch.as_tensor(g).cpu(), torch.as_tensor(e).float(), atol=atol)


def test_token_vectors_equal_sentence_transformers(pair):
    ours, ref = pair
    assert ours.prompts == ref.prompts
    assert ours.get_embedding_dimension() == ref.get_embedding_dimension()
    texts = QUERIES + DOCUMENTS
    assert_same_vectors(ours.encode_query(texts), ref.encode_query(texts))
    assert_same_vectors(ours.encode_document(texts), ref.encode_document(texts))
    assert_same_vectors(ours.encode(texts), ref.encode(texts))
    assert_same_vectors(ours.encode_query(texts, prompt=""), ref.encode_query(texts, prompt=""))


def test_scores_equal_sentence_transformers(pair):
    ours, ref = pair
    queries, documents = cpu(ours.encode_query(QUERIES)), cpu(ours.encode_document(DOCUMENTS))
    expected = ref.similarity(ref.encode_query(QUERIES), ref.encode_document(DOCUMENTS))
    assert torch.allclose(ours.similarity(queries, documents), expected, atol=1e-4)
    # The functions themselves agree on the same inputs: lists, padded tensors, numpy arrays, pairs.
    padded = torch.nn.utils.rnn.pad_sequence(documents, batch_first=True)
    for a, b in ((queries, documents), (queries[0], padded), ([q.numpy() for q in queries], documents)):
        assert torch.allclose(ours.similarity(a, b), ref.similarity(a, b), atol=1e-5)
    pairs = (queries * 2, documents)
    assert torch.allclose(ours.similarity_pairwise(*pairs), ref.similarity_pairwise(*pairs), atol=1e-5)
    mean = ours.similarity(queries, documents, length_normalize=True)
    assert torch.allclose(mean, ref.similarity(queries, documents, length_normalize=True), atol=1e-5)
    assert torch.allclose(mean * torch.tensor([[len(q)] for q in queries]), ours.similarity(queries, documents), atol=1e-4)


def test_meanmaxsim_by_name(layouts):
    from sentence_transformers import MultiVectorEncoder

    path = str(layouts["colbert-ai"])
    ours = poolkit.MultiVectorEncoder(path, model_kwargs=FP32, similarity_fn_name="meanmaxsim")
    ref = MultiVectorEncoder(path, device="cpu", similarity_fn_name="meanmaxsim")
    got = ours.similarity(cpu(ours.encode_query(QUERIES)), cpu(ours.encode_document(DOCUMENTS)))
    assert torch.allclose(got, ref.similarity(ref.encode_query(QUERIES), ref.encode_document(DOCUMENTS)), atol=1e-5)
    assert got.abs().max() <= 1.0 + 1e-5  # normalised token vectors: a mean of cosines


def test_llm_scores_are_the_same_maxsim(layouts):
    """LLM.score on a late-interaction checkpoint is the drop-in's MaxSim (markers, expansion, skiplist)."""
    path = str(layouts["pylate-minilm"])
    model = poolkit.MultiVectorEncoder(path, model_kwargs=FP32)
    expected = model.similarity(model.encode_query(QUERIES[:1]), model.encode_document(DOCUMENTS))[0].cpu()
    got = [s.outputs.score for s in poolkit.LLM(path, dtype="float32").score(QUERIES[0], DOCUMENTS)]
    assert got == pytest.approx(expected.tolist(), abs=1e-4)


def test_default_dtype_keeps_the_vectors(layouts):
    """The default dtype (bf16 where the CPU has it) against sentence-transformers' fp32, real MiniLM weights."""
    from sentence_transformers import MultiVectorEncoder

    path = str(layouts["pylate-minilm"])
    ours, ref = poolkit.MultiVectorEncoder(path), MultiVectorEncoder(path, device="cpu")
    for got, expected in zip(cpu(ours.encode_document(QUERIES + DOCUMENTS)), ref.encode_document(QUERIES + DOCUMENTS)):
        cos = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
        assert got.dtype == torch.float32 and cos.min() >= 0.9995 and cos.mean() >= 0.9999


def test_return_types(layouts):
    model = poolkit.MultiVectorEncoder(str(layouts["colbert-ai"]), model_kwargs=FP32)
    one = model.encode_query(QUERIES[0])
    assert isinstance(one, torch.Tensor) and one.shape == (12, 16) and one.device == model.device  # the query expanded to query_maxlen
    arrays = model.encode_document(DOCUMENTS, convert_to_numpy=True)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays)
    (raw,) = model.encode_document(DOCUMENTS[2:3], output_value=None)
    assert set(raw) == {"input_ids", "token_embeddings", "attention_mask", "modality"}
    assert raw["attention_mask"].sum() < len(raw["input_ids"])  # the punctuation is not scored
    assert torch.equal(raw["token_embeddings"][raw["attention_mask"]].cpu(), model.encode_document(DOCUMENTS[2]).cpu())
    plain = model.encode_document(DOCUMENTS, normalize_embeddings=True)
    assert all(torch.allclose(v.norm(dim=-1).cpu(), torch.ones(len(v)), atol=1e-5) for v in plain)
    assert model.encode_document([]) == []


def test_refusals(layouts):
    model = poolkit.MultiVectorEncoder(str(layouts["colbert-ai"]), model_kwargs=FP32)
    with pytest.raises(InvalidRequest, match="has no `convert_to_tensor`"):
        model.encode(DOCUMENTS, convert_to_tensor=True)
    with pytest.raises(InvalidRequest, match='output_value must be "token_embeddings" or None'):
        model.encode(DOCUMENTS, output_value="sentence_embedding")
    with pytest.raises(InvalidRequest, match="batch_size must be a positive integer"):
        model.encode(DOCUMENTS, batch_size=0)
    with pytest.raises(InvalidRequest, match="additional keyword arguments"):
        model.encode(DOCUMENTS, precision="int8")
    with pytest.raises(InvalidRequest, match="task must be"):
        model.encode(DOCUMENTS, task="passage")
    with pytest.raises(InvalidRequest, match="only supports"):
        model.similarity_fn_name = "cosine"
    with pytest.raises(InvalidRequest, match="same number of items"):
        model.similarity_pairwise(model.encode_query(QUERIES), model.encode_document(DOCUMENTS))
    with pytest.raises(ValueError):  # InvalidRequest is a ValueError, as sentence-transformers raises
        model.encode(DOCUMENTS, convert_to_tensor=True)
