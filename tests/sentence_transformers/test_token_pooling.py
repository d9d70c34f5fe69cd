"""Hierarchical token pooling (``PoolingParams(token_pool_factor=...)``, the ``/pooling`` request's
``token_pool_factor``) against sentence-transformers 6's ``HierarchicalTokenPooling`` on the same
token vectors: the same clusters in the same order, the vectors equal within 1e-5; and its bad
inputs, refused before anything runs."""

from __future__ import annotations

import string

import pytest
import torch

from poolkit import LLM, PoolingParams
from poolkit.builtin_poolers.token_pooling import hierarchical_pool
from poolkit.contracts.errors import InvalidRequest

token_pooling = pytest.importorskip("sentence_transformers.multi_vector_encoder.modules.token_pooling")
HierarchicalTokenPooling = token_pooling.HierarchicalTokenPooling

DOCUMENTS = [
    "Late interaction keeps one vector per token, and an index of them grows with every document it holds.",
    "Clustering a document's token vectors and keeping each cluster's mean stores fewer of them.",
    "short",
    "a b c d e f g h i j k l m n o p q r s t",
]


def _assert_same(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e.to(g.dtype), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pool_factor", [1, 1.5, 2, 3, 1000])
@pytest.mark.parametrize("protected, normalize", [(1, True), (0, True), (2, False)])
def test_the_clustering_equals_sentence_transformers(pool_factor, protected, normalize):
    generator = torch.Generator().manual_seed(int(pool_factor * 10) + protected)
    documents = [torch.nn.functional.normalize(torch.randn(n, 24, generator=generator), dim=-1) for n in (1, 2, 7, 40, 97)]
    # Near-duplicate tokens, as a document's repeated words give: clusters that must come out the same.
    documents.append(torch.cat([documents[3][:10], documents[3][:10] + 1e-3 * torch.randn(10, 24, generator=generator)]))
    reference = HierarchicalTokenPooling(pool_factor, num_protected_tokens=protected, normalize_embeddings=normalize)
    got = [hierarchical_pool(d, pool_factor, protected=protected, normalize=normalize) for d in documents]
    _assert_same(got, reference.pool(documents))


@pytest.fixture(scope="module")
def token_model(minilm_dir):
    return LLM(str(minilm_dir), runner="pooling", pooler_config={"task": "token_embed"})


def _tokens(llm: LLM, texts: list[str], **params) -> list[torch.Tensor]:
    pooling_params = PoolingParams(**params) if params else None
    return [o.outputs.data for o in llm.encode(texts, pooling_task="token_embed", pooling_params=pooling_params, use_tqdm=False)]


@pytest.mark.parametrize("pool_factor", [1, 1.5, 2, 3])
def test_token_pool_factor_pools_as_sentence_transformers(token_model, pool_factor):
    # all-MiniLM-L6-v2's real token vectors, each input pooled by the request, against
    # sentence-transformers' module on the unpooled vectors of the same call.
    full = _tokens(token_model, DOCUMENTS)
    pooled = _tokens(token_model, DOCUMENTS, token_pool_factor=pool_factor)
    _assert_same(pooled, HierarchicalTokenPooling(pool_factor).pool(full))
    if pool_factor > 1:
        assert sum(len(p) for p in pooled) < sum(len(f) for f in full)


def test_a_colbert_pipeline_pools_its_projected_vectors(colbert_mve_dir):
    # A sentence-transformers ColBERT save (punctuation skiplist, 32-wide projection): the pooled
    # vectors are the projected, normalised ones the model returns, less its skiplist tokens'
    # (sentence-transformers' MultiVectorMask drops them before its pooling module runs).
    llm = LLM(str(colbert_mve_dir))
    skip = set(llm.get_tokenizer().convert_tokens_to_ids(list(string.punctuation)))
    outputs = llm.encode(DOCUMENTS, pooling_task="token_embed", use_tqdm=False)
    full = [o.outputs.data[torch.tensor([t not in skip for t in o.prompt_token_ids])] for o in outputs]
    pooled = _tokens(llm, DOCUMENTS, token_pool_factor=2)
    assert full[0].shape[1] == 32 and sum(map(len, full)) < sum(len(o.outputs.data) for o in outputs)
    _assert_same(pooled, HierarchicalTokenPooling(2).pool(full))


def test_requests_that_differ_in_the_factor_share_a_batch(token_model):
    full = _tokens(token_model, DOCUMENTS)
    params = [PoolingParams(token_pool_factor=f) for f in (2, 1, 3, 2)]
    mixed = [o.outputs.data for o in token_model.encode(DOCUMENTS, pooling_task="token_embed", pooling_params=params, use_tqdm=False)]
    _assert_same(mixed, [HierarchicalTokenPooling(p.token_pool_factor).pool([f])[0] for p, f in zip(params, full)])


@pytest.mark.parametrize(
    "factor, message",
    [
        (0.5, "token_pool_factor must be >= 1, got 0.5"),
        (0, "token_pool_factor must be >= 1, got 0.0"),
        (float("inf"), "token_pool_factor must be a number >= 1, got inf"),
        (float("nan"), "token_pool_factor must be a number >= 1, got nan"),
        (10**6, "token_pool_factor 1000000.0 is above the model's 256 tokens: every input would keep one vector"),
    ],
)
def test_bad_factors_are_refused(token_model, factor, message):
    with pytest.raises(InvalidRequest) as raised:
        _tokens(token_model, DOCUMENTS, token_pool_factor=factor)
    assert str(raised.value) == message


def test_a_model_without_token_vectors_refuses_the_factor(minilm):
    with pytest.raises(InvalidRequest, match=r"Task 'embed' only supports .* does not support \['token_pool_factor'\]"):
        minilm.embed(DOCUMENTS, pooling_params=PoolingParams(token_pool_factor=2))
