# Port of sentence-transformers tests/sparse_encoder/test_pretrained.py
# DEPARTURE: upstream loads sentence-transformers/all-MiniLM-L6-v2 as a SparseEncoder, which makes it a
# CSR model (a randomly initialised SparseAutoEncoder on top of the dense model): poolkit does not serve
# CSR models. The load / encode / decode / progress-bar checks run on SPLADE-tiny instead, against
# sentence-transformers on the same weights.
from __future__ import annotations

import pytest
import torch
from st_port_utils import sparse_rows_equal_support
from torch import Tensor


@pytest.mark.parametrize("model_name", ["splade-tiny"])
def test_load_and_encode(splade_dir, splade_reference, model_name: str) -> None:
    from poolkit import SparseEncoder

    try:
        model = SparseEncoder(str(splade_dir), model_kwargs={"dtype": torch.float32})
    except Exception as e:  # noqa: BLE001 - as upstream, a failed load fails the test with its reason
        pytest.fail(f"Failed to load SparseEncoder with {model_name}: {e}")

    sentences = ["This is a test sentence.", "Another example sentence here.", "Sparse encoders are interesting."]
    embeddings = model.encode(sentences)
    assert embeddings is not None
    assert isinstance(embeddings, Tensor), "Embeddings should be a tensor for sparse encoders"
    assert len(embeddings) == len(sentences)
    sparse_rows_equal_support(embeddings, splade_reference.encode(sentences))

    decoded_embeddings = model.decode(embeddings)
    assert len(decoded_embeddings) == len(sentences)
    assert all(isinstance(emb, list) for emb in decoded_embeddings)

    # ADAPTED: upstream expects a list here; sentence-transformers 6.2 returns one (sparse) tensor for a
    # single sentence with convert_to_tensor=False. The port asks for the reference's type.
    single_sentence_emb = model.encode("A single sentence.", convert_to_tensor=False)
    reference_single = splade_reference.encode("A single sentence.", convert_to_tensor=False)
    assert type(single_sentence_emb) is type(reference_single)
    assert len(single_sentence_emb) > 0

    embeddings_with_progress = model.encode(sentences, show_progress_bar=True)
    assert len(embeddings_with_progress) == len(sentences)
