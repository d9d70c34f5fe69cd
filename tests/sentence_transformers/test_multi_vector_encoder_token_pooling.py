# Port of sentence-transformers tests/multi_vector_encoder/test_token_pooling.py
# Two stored versions were read (20,282 and 22,556 characters); the newer one's TestEncodeWithPooling
# (token_pooling= per encode call, the 6.2 keyword) is the part that calls a model. The rest tests the
# pooling modules on hand-made tensors (INVENTORY.md). The poolings passed to poolkit are
# sentence-transformers' own HierarchicalTokenPooling / LambdaTokenPooling, as a user passes them.
# Stand-in: stsb-bert-tiny converted to a MultiVectorEncoder -> all-MiniLM-L6-v2 converted by
# sentence-transformers and saved (``mve_model``; ``mve_reference`` on the same save). Where upstream
# compares two calls of one model with torch.equal, the port holds them to 1e-6.
from __future__ import annotations

import pytest
import torch
from st_port_utils import ATOL, assert_close
from torch import Tensor


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _assert_same_vectors(got, ref, atol: float = ATOL) -> None:
    assert len(got) == len(ref)
    for got_item, ref_item in zip(got, ref):
        assert tuple(got_item.shape) == tuple(ref_item.shape), f"{tuple(got_item.shape)} != reference {tuple(ref_item.shape)}"
        assert_close(got_item, ref_item, atol)


class TestEncodeWithPooling:
    # DEPARTURE (every test): upstream loads a fresh model per test; the port uses the session model.

    def test_encode_document_with_pooling_kwarg(self, mve_model, mve_reference) -> None:
        from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

        text = "a fairly long document with plenty of distinct tokens for clustering here"
        without = mve_model.encode_document([text])[0]
        with_pooling = mve_model.encode_document([text], token_pooling=HierarchicalTokenPooling(pool_factor=2))[0]
        assert with_pooling.shape[0] < without.shape[0]
        # POOLKIT (beyond upstream): the cluster means are sentence-transformers'.
        reference = mve_reference.encode_document([text], token_pooling=HierarchicalTokenPooling(pool_factor=2))
        _assert_same_vectors([with_pooling], reference)

    def test_encode_document_with_lambda_pooling(self, mve_model, mve_reference) -> None:
        from sentence_transformers.multi_vector_encoder.modules import LambdaTokenPooling

        def keep_first_two(emb: Tensor) -> Tensor:
            return emb[:2]

        text = "some longer text with multiple tokens"
        out = mve_model.encode_document([text], token_pooling=LambdaTokenPooling(pool_fn=keep_first_two))[0]
        assert out.shape[0] == 2
        reference = mve_reference.encode_document([text], token_pooling=LambdaTokenPooling(pool_fn=keep_first_two))
        _assert_same_vectors([out], reference)

    def test_pooling_skips_queries(self, mve_model, mve_reference) -> None:
        from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

        text = "a fairly long query text with many tokens"
        without = mve_model.encode_query([text])[0]
        with_pooling = mve_model.encode_query([text], token_pooling=HierarchicalTokenPooling(pool_factor=2))[0]
        # Queries pass through unchanged: shape AND values must match (guards against silent mutation).
        assert with_pooling.shape == without.shape
        assert torch.allclose(with_pooling, without, atol=1e-6)
        _assert_same_vectors([with_pooling], mve_reference.encode_query([text], token_pooling=HierarchicalTokenPooling(pool_factor=2)))

    def test_pooling_pools_queries_when_opted_in(self, mve_model, mve_reference) -> None:
        from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

        text = "a fairly long query text with many tokens"
        without = mve_model.encode_query([text])[0]
        pooling = HierarchicalTokenPooling(pool_factor=2, tasks=["query", "document"])
        pooled = mve_model.encode_query([text], token_pooling=pooling)[0]
        assert pooled.shape[0] < without.shape[0]
        _assert_same_vectors([pooled], mve_reference.encode_query([text], token_pooling=pooling))

    def test_encode_document_with_pooling_shrinks_token_counts(self, mve_model, mve_reference) -> None:
        from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

        texts = [
            "a fairly long document with plenty of distinct tokens for clustering here",
            "a much shorter text",
        ]
        without = mve_model.encode_document(texts)
        with_pooling = mve_model.encode_document(texts, token_pooling=HierarchicalTokenPooling(pool_factor=2))
        assert all(pooled.shape[0] < plain.shape[0] for pooled, plain in zip(with_pooling, without))
        _assert_same_vectors(with_pooling, mve_reference.encode_document(texts, token_pooling=HierarchicalTokenPooling(pool_factor=2)))
