# Port of sentence-transformers tests/test_compute_embeddings.py
# Two stored versions were read: the one with the int8/uint8 precision tests (7,399 characters) and the
# 6.x one (5,950 characters: preprocess, module-call and flattened-input tests). Their inference tests
# are ported under upstream's names; the forward-hook and flattening tests are not (INVENTORY.md).
# Stand-in: paraphrase-distilroberta-base-v1 (768 dimensions, hub) -> the real all-MiniLM-L6-v2
# (384 dimensions). ADAPTED throughout: upstream's sums of the hub model's embeddings and its token
# counts (RoBERTa's tokenizer) are replaced by sentence-transformers' own results on the same weights.
from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from st_port_utils import assert_close, assert_same_quantized, encode_reference_or_error

SENTENCES = ["Hello Word, a test sentence", "Here comes another sentence", "My final sentence"]
DIM = 384


def test_encode_token_embeddings(minilm_model, minilm_reference) -> None:
    sent = [
        "Hello Word, a test sentence",
        "Here comes another sentence",
        "My final sentence",
        "Sentences",
        "Sentence five five five five five five five",
    ]
    emb = minilm_model.encode(sent, output_value="token_embeddings", batch_size=2)
    assert len(emb) == len(sent)
    # DEPARTURE: upstream counts tokens with tokenize() (5.x) / preprocess() (6.x); the drop-in's tokenize().
    for s, e in zip(sent, emb):
        assert len(minilm_model.tokenize([s])["input_ids"][0]) == e.shape[0]
    for got, ref in zip(emb, minilm_reference.encode(sent, output_value="token_embeddings", batch_size=2)):
        assert_close(got, ref)


def test_encode_single_sentences(minilm_model, minilm_reference) -> None:
    # ADAPTED: upstream's sums (7.9811716, 22.968266) are paraphrase-distilroberta's; here the sums
    # and the values are sentence-transformers' on all-MiniLM-L6-v2.
    emb = minilm_model.encode("Hello Word, a test sentence")
    ref = minilm_reference.encode("Hello Word, a test sentence")
    assert emb.shape == (DIM,)
    assert abs(np.sum(emb) - np.sum(ref)) < 0.002
    assert_close(emb, ref)

    emb = minilm_model.encode(["Hello Word, a test sentence"])
    assert emb.shape == (1, DIM)
    assert abs(np.sum(emb) - np.sum(ref)) < 0.002

    emb = minilm_model.encode(SENTENCES)
    ref = minilm_reference.encode(SENTENCES)
    assert emb.shape == (3, DIM)
    assert abs(np.sum(emb) - np.sum(ref)) < 0.007
    assert_close(emb, ref)


def test_encode_normalize(minilm_model) -> None:
    emb = minilm_model.encode(SENTENCES, normalize_embeddings=True)
    assert emb.shape == (3, DIM)
    for norm in np.linalg.norm(emb, axis=1):
        assert abs(norm - 1) < 0.001


def test_encode_tuple_sentences(minilm_model, minilm_reference) -> None:
    # ADAPTED: upstream's sums (9.503508, 32.14627) -> sentence-transformers' on the same weights.
    pairs = [("Hello Word, a test sentence", "Second input for model")]
    emb = minilm_model.encode(pairs)
    ref = minilm_reference.encode(pairs)
    assert emb.shape == (1, DIM)
    assert abs(np.sum(emb) - np.sum(ref)) < 0.002
    assert_close(emb, ref)

    pairs = [
        ("Hello Word, a test sentence", "Second input for model"),
        ("My second tuple", "With two inputs"),
        ("Final tuple", "final test"),
    ]
    emb = minilm_model.encode(pairs)
    ref = minilm_reference.encode(pairs)
    assert emb.shape == (3, DIM)
    assert abs(np.sum(emb) - np.sum(ref)) < 0.002
    assert_close(emb, ref)


def _int_precision_case(model, reference, inputs, output_value, precision):
    """ADAPTED: sentence-transformers 6.2 refuses int8/uint8 calibration from a single embedding (one
    sentence embedding, or output_value=None), which upstream's version of these tests expected to
    work. Where the reference raises, poolkit may raise a ValueError too, or return what upstream
    expected; where it answers, poolkit must answer the same. Returns poolkit's result, or None when
    poolkit (like the reference) refused."""
    status, ref = encode_reference_or_error(lambda: reference.encode(inputs, output_value=output_value, precision=precision))
    if status == "error":
        try:
            return model.encode(inputs, output_value=output_value, precision=precision), None
        except ValueError:
            return None, None
    return model.encode(inputs, output_value=output_value, precision=precision), ref


@pytest.mark.parametrize("precision", ("int8", "uint8"))
def test_encode_sentence_embedding_int_precision(
    minilm_model, minilm_reference, precision: Literal["float32", "int8", "uint8", "binary", "ubinary"]
) -> None:
    emb, ref = _int_precision_case(minilm_model, minilm_reference, SENTENCES[0], "sentence_embedding", precision)
    if emb is not None:
        assert emb.shape == (DIM,)
        assert emb.dtype == np.dtype(precision)

    emb, ref = _int_precision_case(minilm_model, minilm_reference, SENTENCES[:1], "sentence_embedding", precision)
    if emb is not None:
        assert isinstance(emb, np.ndarray)
        assert emb.shape == (1, DIM)
        assert emb.dtype == np.dtype(precision)

    emb, ref = _int_precision_case(minilm_model, minilm_reference, SENTENCES, "sentence_embedding", precision)
    assert ref is not None, "sentence-transformers quantizes three embeddings"
    assert isinstance(emb, np.ndarray)
    assert emb.shape == (3, DIM)
    assert emb.dtype == np.dtype(precision)
    assert_same_quantized(emb, ref, precision)


@pytest.mark.parametrize("precision", ("int8", "uint8"))
def test_encode_token_embeddings_int_precision(
    minilm_model, minilm_reference, precision: Literal["float32", "int8", "uint8", "binary", "ubinary"]
) -> None:
    # ADAPTED: upstream's token counts (8, 6, 5) are RoBERTa's; the reference's counts on MiniLM's tokenizer.
    emb, ref = _int_precision_case(minilm_model, minilm_reference, SENTENCES[0], "token_embeddings", precision)
    assert ref is not None
    assert emb.shape == ref.shape and emb.shape[1] == DIM
    assert emb.dtype == np.dtype(precision)
    assert_same_quantized(emb, ref, precision)

    emb, ref = _int_precision_case(minilm_model, minilm_reference, SENTENCES[:1], "token_embeddings", precision)
    assert isinstance(emb, list)
    assert emb[0].shape == ref[0].shape
    assert emb[0].dtype == np.dtype(precision)

    emb, ref = _int_precision_case(minilm_model, minilm_reference, SENTENCES, "token_embeddings", precision)
    assert isinstance(emb, list)
    for got, expected in zip(emb, ref):
        assert got.shape == expected.shape
        assert got.dtype == np.dtype(precision)
        assert_same_quantized(got, expected, precision)


@pytest.mark.parametrize("precision", ("int8", "uint8"))
def test_encode_output_value_none_int_precision(
    minilm_model, minilm_reference, precision: Literal["float32", "int8", "uint8", "binary", "ubinary"]
) -> None:
    ref_tokens = [len(t) for t in minilm_reference.encode(SENTENCES, output_value="token_embeddings")]

    emb, _ = _int_precision_case(minilm_model, minilm_reference, SENTENCES[0], None, precision)
    if emb is not None:
        assert isinstance(emb, dict)
        assert emb["sentence_embedding"].shape == (DIM,)
        assert emb["sentence_embedding"].dtype == np.dtype(precision)
        assert emb["token_embeddings"].shape == (ref_tokens[0], DIM)
        assert emb["token_embeddings"].dtype == np.dtype(precision)

    emb, _ = _int_precision_case(minilm_model, minilm_reference, SENTENCES[:1], None, precision)
    if emb is not None:
        assert isinstance(emb, list)
        assert isinstance(emb[0], dict)
        assert emb[0]["sentence_embedding"].shape == (DIM,)
        assert emb[0]["sentence_embedding"].dtype == np.dtype(precision)

    emb, _ = _int_precision_case(minilm_model, minilm_reference, SENTENCES, None, precision)
    if emb is not None:
        assert isinstance(emb, list)
        assert all(isinstance(e, dict) for e in emb)
        for e in emb:
            assert e["sentence_embedding"].shape == (DIM,)
            assert e["sentence_embedding"].dtype == np.dtype(precision)
            # upstream expects the padded length of the batch (8) for every row
            assert e["token_embeddings"].shape == (max(ref_tokens), DIM)
            assert e["token_embeddings"].dtype == np.dtype(precision)
