# Port of sentence-transformers tests/test_sentence_transformer.py
# Two stored versions were read: the 5.x file (44,573 characters: prompts, quantization, truncation,
# similarity, encode_query/encode_document, plus test_encode_with_dataset_column from the later patch)
# and the 6.x file (87,490 characters: preprocess, device, dtype, numpy inputs, model paths). The inference
# tests of both are ported here, under their upstream names; INVENTORY.md lists the rest and why not.
# Stand-ins: sentence-transformers-testing/stsb-bert-tiny-safetensors -> the real all-MiniLM-L6-v2
# (``minilm_model``, poolkit; ``minilm_reference``, sentence-transformers on the same weights).
# Inputs are passed positionally (upstream 5.x names them ``sentences=``, 6.x ``inputs=``), and the
# 5.x get_sentence_embedding_dimension() is called by its 6.x name get_embedding_dimension() (the old
# name, which warns, is kept in test_torch_dtype).
# Where upstream compares two calls of one model with array_equal, the port holds them to 1e-6.
from __future__ import annotations

import logging
from functools import partial
from typing import Literal

import numpy as np
import pytest
import torch
from sentence_transformers import util as st_util
from st_port_utils import ATOL, SequenceColumn, assert_close, assert_same_quantized, dense, restored

TEXTS = ["How to bake a chocolate cake", "Symptoms of the flu"]


def _same(a, b, atol: float = 1e-6) -> bool:
    a_t, b_t = dense(a), dense(b)
    return a_t.shape == b_t.shape and (a_t.numel() == 0 or (a_t - b_t).abs().max().item() <= atol)


@pytest.fixture(scope="module")
def pk_minilm_truncated(minilm_dir):
    """upstream builds ``SentenceTransformer(..., truncate_dim=dim // 4)`` inside test_encode_truncate."""
    from poolkit import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), truncate_dim=384 // 4, model_kwargs={"dtype": torch.float32})


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA must be available to test moving devices effectively.")


@CUDA
def test_to(minilm_dir) -> None:
    # DEPARTURE: the ``_target_device`` backwards-compatibility half (a private attribute) is left out.
    from poolkit import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu", model_kwargs={"dtype": torch.float32})
    test_device = torch.device("cuda")
    assert model.device.type == "cpu"
    model.to(test_device)
    assert model.device.type == "cuda", "The model device should have updated"
    model.encode("Test sentence")
    assert model.device.type == "cuda", "Encoding shouldn't change the device"


@pytest.mark.parametrize("dtype", ["auto", "float32", torch.bfloat16])
def test_torch_dtype(minilm_dir, dtype) -> None:
    # DEPARTURE: upstream runs only on CUDA with a hub model; the port loads all-MiniLM-L6-v2 on
    # poolkit's default device, with sentence-transformers 6's ``dtype`` key (upstream ``torch_dtype``).
    from poolkit import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), model_kwargs={"dtype": dtype})
    embedding = model.encode("Test sentence")
    # the 5.x name, deprecated in sentence-transformers 6 (FutureWarning)
    assert embedding.shape[-1] == model.get_sentence_embedding_dimension()


def test_load_local_without_normalize_directory(minilm_dir, minilm_model, minilm_reference) -> None:
    # DEPARTURE: upstream saves a model with a Normalize module and deletes its empty 2_Normalize
    # folder. all-MiniLM-L6-v2 already is such a directory (modules.json names 2_Normalize, no folder),
    # so the port checks that it loads and that the Normalize module is applied.
    from poolkit import SentenceTransformer

    assert not (minilm_dir / "2_Normalize").exists()
    assert isinstance(minilm_model, SentenceTransformer)
    embeddings = minilm_model.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert_close(embeddings, minilm_reference.encode(TEXTS))


def test_prompts(minilm_model, minilm_reference, caplog: pytest.LogCaptureFixture) -> None:
    model = minilm_model
    # The model's saved config has no prompts: sentence-transformers 6 fills in empty query/document ones.
    assert model.prompts == minilm_reference.prompts == {"query": "", "document": ""}
    assert model.default_prompt_name is None
    no_prompt_embedding = model.encode(TEXTS)
    prompt_embedding = model.encode([f"query: {text}" for text in TEXTS])
    assert not _same(no_prompt_embedding, prompt_embedding)
    assert_close(prompt_embedding, minilm_reference.encode([f"query: {text}" for text in TEXTS]))

    for query in ["query: ", "query:", "query:   "]:
        model.prompts = {"query": "", "document": ""}
        assert _same(model.encode(TEXTS, prompt=query), prompt_embedding)

        model.prompts = {"query": query, "document": ""}
        assert _same(model.encode(TEXTS, prompt_name="query"), prompt_embedding)

        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert _same(model.encode(TEXTS, prompt=query, prompt_name="query"), prompt_embedding)
            # DEPARTURE: upstream matches sentence-transformers' wording; the port asks for one
            # warning that says the prompt_name is ignored in favour of the prompt.
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "prompt" in r.getMessage()]
            assert len(warnings) == 1
            assert "prompt_name" in warnings[0].getMessage()

        # DEPARTURE: the error type and the names in it, not sentence-transformers' exact sentence.
        with pytest.raises(ValueError, match="invalid_prompt_name"):
            model.encode(TEXTS, prompt_name="invalid_prompt_name")


def test_save_load_prompts(minilm_dir) -> None:
    # DEPARTURE: the save/reload half is out of scope (poolkit refuses save); the constructor half is ported.
    from poolkit import SentenceTransformer

    with pytest.raises(ValueError, match="invalid_prompt_name"):
        SentenceTransformer(str(minilm_dir), prompts={"query": "query: "}, default_prompt_name="invalid_prompt_name")

    model = SentenceTransformer(str(minilm_dir), prompts={"query": "query: "}, default_prompt_name="query")
    assert model.prompts == {"query": "query: ", "document": ""}
    assert model.default_prompt_name == "query"


def test_prompt_output_value_None(minilm_model, minilm_reference) -> None:
    outputs = minilm_model.encode(["Text one", "Text two"], prompt="query: ", output_value=None)
    assert len(outputs) == 2
    assert isinstance(outputs, list)
    expected_keys = {"input_ids", "token_type_ids", "attention_mask", "sentence_embedding", "token_embeddings", "prompt_length"}
    # sentence-transformers 6 adds a "modality" entry; it is allowed, not required.
    assert set(outputs[0].keys()) - {"modality"} == expected_keys
    assert set(outputs[1].keys()) - {"modality"} == expected_keys
    reference = minilm_reference.encode(["Text one", "Text two"], prompt="query: ", output_value=None)
    for got, ref in zip(outputs, reference):
        assert int(got["prompt_length"]) == int(ref["prompt_length"])
        assert_close(got["sentence_embedding"], ref["sentence_embedding"])
        assert torch.equal(dense(got["input_ids"]).long(), dense(ref["input_ids"]).long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA must be available to test float16 support.")
def test_encode_fp16(minilm_dir) -> None:
    from poolkit import SentenceTransformer

    tiny_model = SentenceTransformer(str(minilm_dir), device="cuda", model_kwargs={"dtype": torch.float32})
    tiny_model.half()
    embeddings = tiny_model.encode(["Hello there!"], convert_to_tensor=True)
    assert embeddings.dtype == torch.float16


@pytest.mark.parametrize("convert_to_tensor", [True, False])
@pytest.mark.parametrize("convert_to_numpy", [True, False])
@pytest.mark.parametrize(
    ("precision", "expected_torch_dtype", "expected_numpy_dtype"),
    [
        (None, torch.float32, np.float32),
        ("float32", torch.float32, np.float32),
        ("int8", torch.int8, np.int8),
        ("uint8", torch.uint8, np.uint8),
        ("binary", torch.int8, np.int8),
        ("ubinary", torch.uint8, np.uint8),
    ],
)
def test_encode_quantization(
    minilm_model, minilm_reference, convert_to_tensor, convert_to_numpy, precision, expected_torch_dtype, expected_numpy_dtype
) -> None:
    sentences = ["One sentence", "Another sentence"]
    kwargs = dict(convert_to_tensor=convert_to_tensor, convert_to_numpy=convert_to_numpy)
    if precision is not None:
        kwargs["precision"] = precision
    embeddings = minilm_model.encode(sentences, **kwargs)
    if convert_to_tensor:
        assert embeddings[0].dtype == expected_torch_dtype
        assert isinstance(embeddings, torch.Tensor)
    elif convert_to_numpy:
        assert embeddings[0].dtype == expected_numpy_dtype
        assert isinstance(embeddings, np.ndarray)
    else:
        assert embeddings[0].dtype == expected_torch_dtype
        assert isinstance(embeddings, list)
    # POOLKIT (beyond upstream): the values are sentence-transformers' on the same weights.
    reference = minilm_reference.encode(sentences, precision=precision or "float32")
    got = embeddings if isinstance(embeddings, np.ndarray) else np.stack([np.asarray(e.cpu()) for e in embeddings])
    assert_same_quantized(got, reference, precision or "float32")


@pytest.mark.parametrize("sentences", ("Single sentence", ["One sentence", "Another sentence"]))
@pytest.mark.parametrize("convert_to_tensor", [True, False])
@pytest.mark.parametrize("convert_to_numpy", [True, False])
@pytest.mark.parametrize("normalize_embeddings", [True, False])
@pytest.mark.parametrize("output_value", ["sentence_embedding", None])
def test_encode_truncate(
    minilm_model,
    minilm_reference,
    pk_minilm_truncated,
    sentences: str | list[str],
    convert_to_tensor: bool,
    convert_to_numpy: bool,
    normalize_embeddings: bool,
    output_value: Literal["sentence_embedding"] | None,
) -> None:
    model = minilm_model
    embeddings_full_unnormalized = dense(model.encode(sentences, convert_to_numpy=False, convert_to_tensor=True)).float()
    # POOLKIT (beyond upstream): the untruncated reference itself is sentence-transformers'.
    assert_close(embeddings_full_unnormalized, minilm_reference.encode(sentences, convert_to_tensor=True))

    def check(model, expected_dim: int) -> None:
        outputs = model.encode(
            sentences,
            output_value=output_value,
            convert_to_tensor=convert_to_tensor,
            convert_to_numpy=convert_to_numpy,
            normalize_embeddings=normalize_embeddings,
        )
        if output_value is None:
            if not isinstance(outputs, list):
                embeddings = outputs["sentence_embedding"]
            else:
                embeddings = [out_features["sentence_embedding"] for out_features in outputs]
        else:
            embeddings = outputs

        if isinstance(embeddings, list):
            embeddings_shape = (len(embeddings), embeddings[0].shape[-1])
        else:
            embeddings_shape = tuple(embeddings.shape)
        expected_shape = (expected_dim,) if isinstance(sentences, str) else (len(sentences), expected_dim)
        assert embeddings_shape == expected_shape
        assert model.get_embedding_dimension() == expected_dim

        embeddings = dense(embeddings).float()
        truncated = st_util.truncate_embeddings(embeddings_full_unnormalized, expected_dim)
        if normalize_embeddings:
            if output_value is not None:  # output_value=None hands back the forward pass, unnormalized
                normalize = partial(torch.nn.functional.normalize, p=2, dim=-1)
                assert torch.allclose(embeddings, normalize(truncated), atol=ATOL)
        else:
            assert torch.allclose(embeddings, truncated, atol=ATOL)

    original_output_dim: int = model.get_embedding_dimension()
    check(model, expected_dim=original_output_dim)

    # DEPARTURE: upstream constructs a new model with truncate_dim here; the port shares one (module fixture).
    truncate_dim = original_output_dim // 4
    with restored(pk_minilm_truncated) as model:
        assert model.truncate_dim == truncate_dim
        check(model, expected_dim=truncate_dim)

        new_truncate_dim = 2 * truncate_dim
        model.truncate_dim = new_truncate_dim
        check(model, expected_dim=new_truncate_dim)

        final_truncate_dim = original_output_dim // 8
        with model.truncate_sentence_embeddings(final_truncate_dim):
            check(model, expected_dim=final_truncate_dim)
        check(model, expected_dim=new_truncate_dim)  # the context is over

        model.truncate_dim = 2 * original_output_dim  # larger than the model's: no truncation
        check(model, expected_dim=original_output_dim)


# sentence-transformers 6 adds the multi-vector "maxsim" / "meanmaxsim" to possible_values(); upstream
# (and a single-vector model) has these four.
@pytest.mark.parametrize("similarity_fn_name", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_score(minilm_model, minilm_reference, similarity_fn_name: str) -> None:
    model = minilm_model
    model.similarity_fn_name = similarity_fn_name
    sentences = [
        "The weather is so nice!",
        "It's so sunny outside.",
        "He's driving to the movie theater.",
        "She's going to the cinema.",
    ]
    embeddings = model.encode(sentences, normalize_embeddings=True)
    scores = model.similarity(embeddings, embeddings)
    assert tuple(scores.shape) == (len(sentences), len(sentences))
    if similarity_fn_name in ("cosine", "dot"):
        expected = np.ones(4, dtype=float)
    else:
        expected = np.zeros(4, dtype=float)
    np.testing.assert_almost_equal(np.diag(scores), expected, decimal=4)
    # all-MiniLM-L6-v2 is a trained model: upstream's orderings hold on it as on stsb-bert-tiny.
    assert scores[1][0] > scores[2][0]
    assert scores[1][0] > scores[3][0]
    assert scores[2][3] > scores[2][0]
    assert scores[2][3] > scores[2][1]

    pairwise_scores = model.similarity_pairwise(embeddings[::2], embeddings[1::2])
    assert tuple(pairwise_scores.shape) == (len(sentences) // 2,)
    if similarity_fn_name in ("cosine", "dot"):
        assert (pairwise_scores > 0.5).all()

    # POOLKIT (beyond upstream): the same scores as sentence-transformers' similarity on these embeddings.
    minilm_reference.similarity_fn_name = similarity_fn_name
    assert_close(scores, minilm_reference.similarity(embeddings, embeddings))
    assert_close(pairwise_scores, minilm_reference.similarity_pairwise(embeddings[::2], embeddings[1::2]))


def test_similarity_score_save(minilm_model) -> None:
    # DEPARTURE: the save/reload of similarity_fn_name is out of scope (poolkit refuses save).
    model = minilm_model
    embeddings = model.encode(["Sentence 1", "Sentence 2"])
    assert model.similarity_fn_name == "cosine"
    cosine_scores = model.similarity(embeddings, embeddings)
    assert model.similarity_fn_name == "cosine"

    model.similarity_fn_name = "euclidean"
    assert model.similarity_fn_name == "euclidean"
    euclidean_scores = model.similarity(embeddings, embeddings)
    assert np.not_equal(np.asarray(cosine_scores), np.asarray(euclidean_scores)).all()


def test_empty_encode(minilm_model) -> None:
    embeddings = minilm_model.encode([])
    assert embeddings.shape == (0,)


@pytest.mark.parametrize("sentences", ["Hello world", ["Hello world", "This is a test"], [], [""]])
@pytest.mark.parametrize("prompt_name", [None, "query", "custom"])
@pytest.mark.parametrize("prompt", [None, "Custom prompt: "])
@pytest.mark.parametrize("convert_to_numpy", [True, False])
@pytest.mark.parametrize("convert_to_tensor", [True, False])
def test_encode_query(minilm_model, sentences, prompt_name, prompt, convert_to_numpy, convert_to_tensor) -> None:
    # DEPARTURE: upstream mocks encode and checks the arguments encode_query hands it (prompt_name
    # defaulting to "query", task "query"); the port checks the result against encode with those arguments.
    model = minilm_model
    model.prompts = {"query": "query: ", "custom": "custom: "}
    kwargs = dict(batch_size=32, convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor)
    got = model.encode_query(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)
    expected_prompt_name = prompt_name if prompt_name else "query"
    expected = model.encode(sentences, prompt_name=expected_prompt_name, prompt=prompt, **kwargs)
    assert type(got) is type(expected)
    assert _same(got, expected)


@pytest.mark.parametrize("sentences", ["Hello world", ["Hello world", "This is a test"], [], [""]])
@pytest.mark.parametrize("prompt_name", [None, "document", "passage", "corpus", "custom"])
@pytest.mark.parametrize("prompt", [None, "Custom prompt: "])
@pytest.mark.parametrize("convert_to_numpy", [True, False])
@pytest.mark.parametrize("convert_to_tensor", [True, False])
def test_encode_document(minilm_model, sentences, prompt_name, prompt, convert_to_numpy, convert_to_tensor) -> None:
    # DEPARTURE: as in test_encode_query, results instead of a mocked encode's arguments.
    model = minilm_model
    model.prompts = {"document": "document: ", "passage": "passage: ", "corpus": "corpus: ", "custom": "custom: "}
    kwargs = dict(batch_size=32, convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor)
    got = model.encode_document(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)
    expected_prompt_name = prompt_name if prompt_name else "document"
    expected = model.encode(sentences, prompt_name=expected_prompt_name, prompt=prompt, **kwargs)
    assert type(got) is type(expected)
    assert _same(got, expected)


def test_encode_document_prompt_priority(minilm_model) -> None:
    # DEPARTURE: results instead of a mocked encode's prompt_name.
    model = minilm_model
    model.prompts = {"document": "document: ", "passage": "passage: ", "corpus": "corpus: "}
    assert _same(model.encode_document("test"), model.encode("test", prompt="document: "))

    model.prompts = {"passage": "passage: ", "corpus": "corpus: "}
    assert _same(model.encode_document("test"), model.encode("test", prompt="passage: "))

    model.prompts = {"corpus": "corpus: "}
    assert _same(model.encode_document("test"), model.encode("test", prompt="corpus: "))

    model.prompts = {"query": "query: "}
    assert _same(model.encode_document("test"), model.encode("test"))


def test_encode_advanced_parameters(minilm_model, minilm_reference) -> None:
    # DEPARTURE: results instead of a mocked encode's arguments; chunk_size (multi-process pools) and
    # an unknown custom_param are left out: sentence-transformers 6 itself refuses unknown keywords.
    kwargs = dict(
        normalize_embeddings=True,
        batch_size=64,
        show_progress_bar=False,
        output_value="token_embeddings",
        precision="uint8",
        truncate_dim=128,
    )
    got = minilm_model.encode_query("test", **kwargs)
    assert _same(got, minilm_model.encode("test", prompt_name="query", **kwargs))
    reference = minilm_reference.encode_query("test", **kwargs)
    # truncate_dim does not cut token embeddings in sentence-transformers 6: (3 tokens, 384).
    assert tuple(got.shape) == tuple(reference.shape) == (3, 384)
    assert_same_quantized(got, reference, "uint8")


@pytest.mark.parametrize("inputs", ["test sentence", ["test sentence"]])
def test_encode_query_document_vs_encode(minilm_model, inputs) -> None:
    model = minilm_model
    model.prompts = {"query": "query: ", "document": "document: "}

    query_embeddings = model.encode_query(inputs)
    document_embeddings = model.encode_document(inputs)
    encode_query_embeddings = model.encode(inputs, prompt_name="query")
    encode_document_embeddings = model.encode(inputs, prompt_name="document")
    np.testing.assert_allclose(query_embeddings, encode_query_embeddings, atol=1e-6)
    np.testing.assert_allclose(document_embeddings, encode_document_embeddings, atol=1e-6)

    query_embeddings_without_prompt = model.encode(inputs)
    document_embeddings_without_prompt = model.encode(inputs)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(query_embeddings_without_prompt, query_embeddings)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(document_embeddings_without_prompt, document_embeddings)


def test_encode_with_dataset_column(minilm_model) -> None:
    # DEPARTURE: ``datasets`` is not installed; a read-only Sequence that is not a list stands in for
    # ``Dataset.from_dict(...)["text"]`` (a ``datasets.Column`` since datasets 4).
    column = SequenceColumn(["This is a test.", "Another sentence."])
    embeddings = minilm_model.encode(column, convert_to_tensor=True)
    assert tuple(embeddings.shape) == (2, minilm_model.get_embedding_dimension())
    assert_close(embeddings, minilm_model.encode(list(column), convert_to_tensor=True), atol=1e-6)


# -- from the 6.x file -----------------------------------------------------------------------------


class TestSentenceTransformerPreprocess:
    # DEPARTURE: sentence-transformers 6 renamed tokenize() to preprocess(); the drop-in offers
    # tokenize(), so the port calls that and compares the ids with the reference's preprocess().
    inputs = ["This is a test.", "Another test sentence."]

    def test_preprocess(self, minilm_model, minilm_reference) -> None:
        features = minilm_model.tokenize(self.inputs)
        assert isinstance(features, dict)
        for value in features.values():
            if isinstance(value, torch.Tensor):
                assert value.size(0) == len(self.inputs)
        reference = minilm_reference.preprocess(self.inputs)
        assert torch.equal(features["input_ids"].cpu(), reference["input_ids"])
        assert torch.equal(features["attention_mask"].cpu(), reference["attention_mask"])


class TestCrossEncoderPreprocess:
    # DEPARTURE: tokenize() for preprocess(), as above; the tiny random reranker stands in.
    inputs = [("This is a test.", "This is a test."), ("Another test sentence.", "Yet another sentence.")]

    def test_preprocess(self, reranker_model, reranker_reference) -> None:
        features = reranker_model.tokenize(self.inputs)
        assert isinstance(features, dict)
        for value in features.values():
            if isinstance(value, torch.Tensor):
                assert value.size(0) == len(self.inputs)
        reference = reranker_reference.preprocess(self.inputs)
        assert torch.equal(features["input_ids"].cpu(), reference["input_ids"])


class TestSparseEncoderPreprocess:
    # DEPARTURE: tokenize() for preprocess(), as above; SPLADE-tiny stands in.
    inputs = ["This is a test.", "Another test sentence."]

    def test_preprocess(self, splade_model, splade_reference) -> None:
        features = splade_model.tokenize(self.inputs)
        assert isinstance(features, dict)
        for value in features.values():
            if isinstance(value, torch.Tensor):
                assert value.size(0) == len(self.inputs)
        reference = splade_reference.preprocess(self.inputs)
        assert torch.equal(features["input_ids"].cpu(), reference["input_ids"])


def test_preprocess_passes_supported_modality(minilm_model) -> None:
    # DEPARTURE: tokenize() for preprocess(), as above.
    features = minilm_model.tokenize(["Hello world"])
    assert isinstance(features, dict)
    assert "input_ids" in features


@pytest.mark.parametrize("model_class", ["SentenceTransformer", "CrossEncoder", "SparseEncoder"])
def test_model_path_pointing_to_a_file_is_rejected(tmp_path, model_class: str) -> None:
    # DEPARTURE: upstream wants NotADirectoryError ("is a file, not a directory") and patches the hub
    # downloads to fail; the hub is off here (HF_HUB_OFFLINE), and poolkit may answer with its own
    # PoolkitError (ModelLoadError). Either way the file must be refused, not looked up on the hub.
    import poolkit

    collision = tmp_path / "bert-base-uncased"
    collision.write_text("not a model")
    with pytest.raises((NotADirectoryError, poolkit.PoolkitError)):
        getattr(poolkit, model_class)(str(collision))


def test_device_property(minilm_model, minilm_reference) -> None:
    dev = minilm_model.device
    assert isinstance(dev, torch.device)
    assert dev.type in ("cpu", "cuda")


@pytest.mark.parametrize("spelling", ["type", "type_and_index", "device_object"])
def test_encode_recognises_every_spelling_of_the_device_it_is_on(minilm_model, spelling: str) -> None:
    # DEPARTURE: upstream asserts that encode(device=...) does not call model.to() when the model is
    # already there (a torch module); the port checks that each spelling of the model's own device is
    # accepted and changes nothing.
    device = minilm_model.device
    requested = {"type": device.type, "type_and_index": f"{device.type}:{device.index or 0}", "device_object": device}[spelling]
    expected = minilm_model.encode(["hello"])
    assert np.allclose(minilm_model.encode(["hello"], device=requested), expected, atol=1e-6)
    assert minilm_model.device == device


@CUDA
def test_encode_cpu_cuda_round_trip(minilm_model, minilm_reference) -> None:
    # DEPARTURE: upstream runs every model family and also checks that no parameter became an
    # inference tensor; the port checks the outputs of encode(device=...) on both devices.
    expected = minilm_reference.encode(["hello"])
    for device in ("cuda", "cpu"):
        actual = minilm_model.encode(["hello"], device=device)
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_get_max_seq_length(minilm_model, minilm_reference) -> None:
    max_seq = minilm_model.get_max_seq_length()
    assert isinstance(max_seq, int)
    assert max_seq > 0
    # POOLKIT (beyond upstream): the model's sentence_bert_config.json value, as sentence-transformers reads it.
    assert max_seq == minilm_model.max_seq_length == minilm_reference.get_max_seq_length() == 256


def test_dtype_property(minilm_model) -> None:
    dtype = minilm_model.dtype
    assert isinstance(dtype, torch.dtype)
    assert dtype == torch.float32  # model_kwargs={"dtype": torch.float32}


def test_encode_numpy_1d_string_array(minilm_model) -> None:
    texts = np.array(["Access Management", "Press Coordination", "Financial Reports"])
    embeddings = minilm_model.encode(texts, show_progress_bar=False)
    expected = minilm_model.encode(texts.tolist(), show_progress_bar=False)
    assert embeddings.shape[0] == 3
    assert np.allclose(embeddings, expected, atol=1e-6)


def test_encode_numpy_2d_string_array(minilm_model, minilm_reference) -> None:
    pairs = np.array([["what is AI?", "AI is artificial intelligence."], ["what is ML?", "ML is machine learning."]])
    embeddings = minilm_model.encode(pairs, show_progress_bar=False)
    expected = minilm_model.encode(pairs.tolist(), show_progress_bar=False)
    assert embeddings.shape[0] == 2
    assert np.allclose(embeddings, expected, atol=1e-6)
    # POOLKIT (beyond upstream): a pair is encoded as sentence-transformers encodes it.
    assert_close(embeddings, minilm_reference.encode(pairs.tolist()))


def test_encode_numpy_empty(minilm_model) -> None:
    embeddings = minilm_model.encode(np.array([], dtype=str), show_progress_bar=False)
    expected = minilm_model.encode([], show_progress_bar=False)
    assert np.array_equal(embeddings, expected)
