"""The sentence-transformers drop-in's own rules (issue 31), beside the ported tests in
tests/sentence_transformers/: what poolkit refuses or does differently, and ``from_llm``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poolkit import LLM, CrossEncoder, InvalidRequest, SentenceTransformer, SparseEncoder


@pytest.fixture(scope="module")
def model(minilm_dir):
    return SentenceTransformer(str(minilm_dir), model_kwargs={"dtype": torch.float32})


def test_the_swapped_import_gives_sentence_transformers_results(model, minilm_st):
    """fp32: the same vectors as sentence-transformers to 1e-5, long inputs cut silently, one
    string a 1-D array, the same prompts, dimension, limit and similarity."""
    texts = ["Hello world", "the weather in Paris " * 200, "x"]
    got, want = model.encode(texts), minilm_st.encode(texts)
    assert isinstance(got, np.ndarray) and got.shape == want.shape == (3, 384)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert model.encode("Hello world").shape == (384,)
    assert model.get_embedding_dimension() == minilm_st.get_embedding_dimension() == 384
    with pytest.warns(FutureWarning, match="renamed to `get_embedding_dimension`"):
        assert model.get_sentence_embedding_dimension() == 384
    assert model.max_seq_length == minilm_st.max_seq_length == 256
    assert model.similarity_fn_name == "cosine"
    torch.testing.assert_close(model.similarity(got, got), minilm_st.similarity(want, want), atol=1e-5, rtol=0)


def test_the_default_dtype_is_poolkits_within_its_tolerance(minilm_dir, minilm_st):
    texts = ["Hello world", "A sentence about the weather in Paris", "x"]
    got = torch.from_numpy(SentenceTransformer(str(minilm_dir)).encode(texts))
    assert torch.nn.functional.cosine_similarity(got, torch.from_numpy(minilm_st.encode(texts))).min() >= 0.9999


def test_tensors_come_back_as_sentence_transformers_returns_them(model, minilm_dir):
    """``convert_to_tensor`` results sit on the model's device in the dtype the user chose
    (``bfloat16()``, ``half()``, ``model_kwargs``), as sentence-transformers leaves its model's
    output; under poolkit's own ``auto`` default they are float32, sentence-transformers' default."""
    texts = ["a first text", "and a second one"]
    chosen = model.encode(texts, convert_to_tensor=True)
    assert chosen.dtype == torch.float32 and chosen.device == model.device
    assert all(row.device == model.device for row in model.encode(texts, convert_to_numpy=False))
    half = SentenceTransformer(str(minilm_dir), model_kwargs={"dtype": torch.float32}).bfloat16()
    got = half.encode(texts, convert_to_tensor=True)
    assert got.dtype == torch.bfloat16 and got.device == half.device
    assert torch.nn.functional.cosine_similarity(got.float().cpu(), chosen.cpu()).min() >= 0.999
    assert half.encode([], convert_to_tensor=True).device == half.device
    auto = SentenceTransformer(str(minilm_dir)).encode(texts, convert_to_tensor=True)
    assert auto.dtype == torch.float32


def test_from_llm_wraps_a_loaded_model_without_loading_it_again(minilm, minilm_st):
    wrapped = SentenceTransformer.from_llm(minilm, truncate_dim=32)
    assert wrapped.llm is minilm
    assert wrapped.encode(["Hello world"]).shape == (1, 32) and wrapped.get_embedding_dimension() == 32


@pytest.mark.parametrize("cls", [SentenceTransformer, CrossEncoder, SparseEncoder])
def test_what_poolkit_refuses_is_one_line(cls, minilm_dir):
    path = str(minilm_dir)
    with pytest.raises(InvalidRequest, match=r"^.*trust_remote_code=True\): poolkit never runs code shipped with a model$"):
        cls(path, trust_remote_code=True)
    with pytest.raises(InvalidRequest, match=rf"^{cls.__name__}\(\) got arguments poolkit does not take: learning_rate$"):
        cls(path, learning_rate=1e-5)
    with pytest.raises(InvalidRequest, match=r"backend='onnx'"):
        cls(path, backend="onnx")
    with pytest.raises(InvalidRequest, match=r"poolkit takes dtype \(or torch_dtype\) only, not quantization_config$"):
        cls(path, model_kwargs={"quantization_config": {}})


def test_training_points_to_sentence_transformers(model):
    with pytest.raises(InvalidRequest, match=r"runs inference only: train with sentence-transformers"):
        model.fit(train_objectives=[])
    with pytest.raises(InvalidRequest, match=r"does not save models"):
        model.save("/tmp/nowhere")


def test_bad_encode_arguments_are_value_errors(model):
    """sentence-transformers raises ValueError for these; InvalidRequest is one."""
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got 0\.$"):
        model.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match=r"^Precision 'float16' is not supported"):
        model.encode(["a"], precision="float16")
    with pytest.raises(ValueError, match=r"additional keyword arguments that this model does not use: \['foo'\]"):
        model.encode(["a"], foo=1)
    with pytest.raises(ValueError, match=r"^Prompt name 'title' not found"):
        model.encode(["a"], prompt_name="title")
    with pytest.raises(InvalidRequest, match=r"^max_seq_length 1000 is longer than the model's limit, 256 tokens$"):
        model.max_seq_length = 1000


def test_max_seq_length_cuts_as_sentence_transformers_does(minilm_dir, minilm_st):
    model = SentenceTransformer(str(minilm_dir), model_kwargs={"dtype": torch.float32})
    model.max_seq_length = 8
    minilm_st.max_seq_length = 8
    try:
        text = ["one two three four five six seven eight nine ten eleven twelve"]
        np.testing.assert_allclose(model.encode(text), minilm_st.encode(text), atol=1e-5)
        assert model.encode(text, output_value="token_embeddings")[0].shape == (8, 384)
    finally:
        minilm_st.max_seq_length = 256
