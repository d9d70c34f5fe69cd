# Port of sentence-transformers tests/cross_encoder/test_cross_encoder.py
# The stored 6.x version (51,908 characters) was read; its inference tests are ported under upstream's
# names, the rest (hub pushes, saving, deprecated-argument shims, chat templates, Qwen3 rerankers on
# CUDA, module stacks) are listed in INVENTORY.md. tests/test_cross_encoder.py is the older path of
# this file. Stand-ins (conftest.py): cross-encoder-testing/reranker-bert-tiny-gooaq-bce -> a tiny
# random BERT classifier, 1 label (``reranker_model``); cross-encoder/stsb-distilroberta-base -> a
# tiny random RoBERTa classifier, 1 label (``stsb_ce_model``); the NLI MiniLM cross-encoder -> a tiny
# random XLM-R classifier, 3 labels (``nli_model``). Each has its sentence-transformers twin
# (``*_reference``) on the same weights.
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from st_port_utils import SequenceColumn, assert_close

FP32 = {"dtype": torch.float32}
QUERY = "A man is eating pasta."
CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
]
INPUTS = [["Hello there!", "Hello, World!"], ["A cat is sleeping.", "An animal is resting."]]


@pytest.mark.parametrize(argnames="return_documents", argvalues=[True, False], ids=["return-docs", "no-return-docs"])
def test_rank(stsb_ce_model, stsb_ce_reference, return_documents: bool) -> None:
    # ADAPTED: upstream's expected_ranking ([0, 1, 3, 6, 2, 5, 7, 4, 8]) is the trained
    # stsb-distilroberta-base's; here it is sentence-transformers' ranking on the same random weights.
    expected_ranking = [rank["corpus_id"] for rank in stsb_ce_reference.rank(QUERY, CORPUS)]
    ranks = stsb_ce_model.rank(query=QUERY, documents=CORPUS, return_documents=return_documents)
    if return_documents:
        assert {*CORPUS} == {rank.get("text") for rank in ranks}
    else:  # POOLKIT (beyond upstream): no documents unless asked for
        assert all("text" not in rank for rank in ranks)
    assert [rank["corpus_id"] for rank in ranks] == expected_ranking
    # POOLKIT (beyond upstream): the scores too.
    reference = {rank["corpus_id"]: rank["score"] for rank in stsb_ce_reference.rank(QUERY, CORPUS)}
    for rank in ranks:
        assert abs(rank["score"] - reference[rank["corpus_id"]]) < 1e-4


def test_rank_scores_are_floats(reranker_model) -> None:
    ranks = reranker_model.rank("A man is eating pasta.", ["A man is eating food.", "A monkey is playing."])
    assert [type(rank["score"]) for rank in ranks] == [float, float]
    json.dumps(ranks)


@pytest.mark.parametrize("kwarg", ["convert_to_numpy", "convert_to_tensor"])
def test_rank_convert_kwargs_deprecated(reranker_model, kwarg: str, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        ranks = reranker_model.rank("A man is eating pasta.", ["A man is eating food."], **{kwarg: True})
    assert kwarg in caplog.text
    assert type(ranks[0]["score"]) is float


def test_rank_multiple_labels(nli_model) -> None:
    # DEPARTURE: the error type, not sentence-transformers' sentence.
    with pytest.raises(ValueError):
        nli_model.rank(query=QUERY, documents=CORPUS[:3])


def test_predict_softmax(nli_model, nli_reference) -> None:
    pairs = [(QUERY, doc) for doc in CORPUS[:4]]
    scores = nli_model.predict(pairs, apply_softmax=True, convert_to_tensor=True)
    assert torch.isclose(scores.sum(1), torch.ones(4, device=scores.device)).all()
    assert_close(scores, nli_reference.predict(pairs, apply_softmax=True, convert_to_tensor=True))
    scores = nli_model.predict(pairs, apply_softmax=False, convert_to_tensor=True)
    assert not torch.isclose(scores.sum(1), torch.ones(4, device=scores.device)).all()
    assert_close(scores, nli_reference.predict(pairs, apply_softmax=False, convert_to_tensor=True))


@pytest.fixture(scope="module")
def reranker_bf16(reranker_dir):
    from poolkit import CrossEncoder

    return CrossEncoder(str(reranker_dir), model_kwargs={"dtype": torch.bfloat16})


@pytest.mark.xfail(
    strict=True,
    reason="DEPARTURE (open): on this tiny random reranker (weights drawn at +-0.5) poolkit's bfloat16 logits over "
    "the corpus are up to 0.50 off fp32, sentence-transformers' bfloat16 up to 0.28: more than the half again allowed",
)
def test_predict_low_precision_logits_upcast_to_float32(reranker_bf16, reranker_reference, reranker_dir) -> None:
    # DEPARTURE: upstream casts the loaded model (model.model.to(torch.bfloat16)); poolkit's model is
    # loaded in bfloat16 (model_kwargs={"dtype": torch.bfloat16}). ADAPTED: upstream holds a trained
    # reranker's bf16 scores to 1e-2 of fp32; on these random weights (drawn at +-0.5, logits up to ~5)
    # bf16 rounding moves a logit by up to ~0.3 in either library, pair by pair in no common pattern, so
    # the bound is sentence-transformers' own bf16 error over the whole corpus (logits, before the
    # sigmoid), with half again as much room. poolkit's bf16 misses it (the xfail); on real weights
    # (all-MiniLM-L6-v2) its bf16 keeps cosine >= 0.9999 to sentence-transformers fp32.
    from sentence_transformers import CrossEncoder

    pairs = [(QUERY, doc) for doc in CORPUS]
    identity = torch.nn.Identity()
    reference = reranker_reference.predict(pairs, activation_fn=identity, convert_to_tensor=True)
    assert reference.dtype == torch.float32
    reference_bf16 = CrossEncoder(str(reranker_dir), device="cpu", model_kwargs={"dtype": torch.bfloat16})
    peer_error = (reference_bf16.predict(pairs, activation_fn=identity, convert_to_tensor=True) - reference).abs().max().item()

    scores = reranker_bf16.predict(pairs, activation_fn=identity, convert_to_tensor=True)
    assert scores.dtype == torch.float32
    assert (scores.cpu() - reference).abs().max().item() <= max(1e-2, 1.5 * peer_error)


@pytest.mark.parametrize("model_fixture", ["reranker_model", "nli_model"])
def test_predict_single_input(model_fixture: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(model_fixture)
    nested_pair_score = model.predict([["A man is eating pasta.", "A man is eating food."]])
    assert isinstance(nested_pair_score, np.ndarray)
    if model.num_labels == 1:
        assert nested_pair_score.shape == (1,)
    else:
        assert nested_pair_score.shape == (1, model.num_labels)

    pair_score = model.predict(["A man is eating pasta.", "A man is eating food."])
    if model.num_labels == 1:
        assert isinstance(pair_score, np.float32)
    else:
        assert isinstance(pair_score, np.ndarray)
        assert pair_score.shape == (model.num_labels,)


def test_predict_numpy_empty(reranker_model) -> None:
    scores = reranker_model.predict(np.array([], dtype=str), show_progress_bar=False)
    expected = reranker_model.predict([], show_progress_bar=False)
    assert scores.shape == (0,)
    assert np.array_equal(scores, expected)


def test_predict_numpy_1d_pair(reranker_model, reranker_reference) -> None:
    pair = np.array(["what is AI?", "AI is artificial intelligence."])
    score = reranker_model.predict(pair, show_progress_bar=False)
    expected = reranker_model.predict(tuple(pair.tolist()), show_progress_bar=False)
    assert isinstance(score, np.float32)
    assert np.allclose(score, expected)
    assert abs(float(score) - float(reranker_reference.predict(tuple(pair.tolist())))) < 1e-4


def test_predict_numpy_2d_pairs(reranker_model) -> None:
    pairs = np.array([["what is AI?", "AI is artificial intelligence."], ["what is ML?", "ML is machine learning."]])
    scores = reranker_model.predict(pairs, show_progress_bar=False)
    expected = reranker_model.predict(pairs.tolist(), show_progress_bar=False)
    assert scores.shape == (2,)
    assert np.allclose(scores, expected)


def test_predict_batch_size_1(reranker_model, reranker_reference) -> None:
    # DEPARTURE: upstream patches forward() to drop the trailing score dimension (as some remote-code
    # rerankers do) to hit the squeeze of a batch of one; poolkit's forward is not a module to patch,
    # so the port runs batch_size=1 as is.
    pairs = [["A man is eating pasta.", "A man is eating food."], ["The girl is carrying a baby.", "A man is riding a horse."]]
    scores = reranker_model.predict(pairs, batch_size=1)
    assert isinstance(scores, np.ndarray)
    assert scores.shape == (2,)
    assert_close(scores, reranker_reference.predict(pairs, batch_size=1))


@pytest.mark.parametrize("convert_to_numpy", [True, False])
@pytest.mark.parametrize("convert_to_tensor", [True, False])
def test_empty_predict(reranker_model, convert_to_numpy: bool, convert_to_tensor: bool) -> None:
    result = reranker_model.predict([], convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor)
    if convert_to_tensor:
        assert isinstance(result, torch.Tensor)
        assert result.numel() == 0
        # DEPARTURE: upstream compares with model.model.device (the transformers model); poolkit's model.device.
        assert result.device == reranker_model.device
    elif convert_to_numpy:
        assert isinstance(result, np.ndarray)
        assert result.size == 0
    else:
        assert result == []


@pytest.mark.parametrize("convert_to_tensor", [True, False])
@pytest.mark.parametrize("convert_to_numpy", [True, False])
def test_predict_output_types(reranker_model, convert_to_tensor: bool, convert_to_numpy: bool) -> None:
    embeddings = reranker_model.predict(
        [["One sentence", "Another sentence"]], convert_to_tensor=convert_to_tensor, convert_to_numpy=convert_to_numpy
    )
    if convert_to_tensor:
        assert embeddings[0].dtype == torch.float32
        assert isinstance(embeddings, torch.Tensor)
    elif convert_to_numpy:
        assert embeddings[0].dtype == np.float32
        assert isinstance(embeddings, np.ndarray)
    else:
        assert embeddings[0].dtype == torch.float32
        assert isinstance(embeddings, list)


def test_bfloat16(reranker_bf16) -> None:
    # DEPARTURE: upstream loads with automodel_args={"torch_dtype": torch.bfloat16} (deprecated);
    # sentence-transformers 6's model_kwargs={"dtype": torch.bfloat16} (module fixture).
    score = reranker_bf16.predict([["Hello there!", "Hello, World!"]])
    assert isinstance(score, np.ndarray)
    ranking = reranker_bf16.rank("Hello there!", ["Hello, World!", "Heya!"])
    assert isinstance(ranking, list)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA must be available"))],
)
def test_device_assignment(reranker_dir, device: str) -> None:
    # DEPARTURE: upstream skips the whole test without CUDA; the cpu case runs everywhere here.
    from poolkit import CrossEncoder

    model = CrossEncoder(str(reranker_dir), device=device, model_kwargs=FP32)
    assert model.device.type == device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA must be available to test moving devices effectively.")
def test_device_switching(reranker_dir) -> None:
    # DEPARTURE: upstream also reads model.model.device (the transformers model); poolkit has model.device.
    from poolkit import CrossEncoder

    model = CrossEncoder(str(reranker_dir), device="cpu", model_kwargs=FP32)
    assert model.device.type == "cpu"
    model.to("cuda")
    assert model.device.type == "cuda"
    del model
    torch.cuda.empty_cache()


def test_predict_with_falsey_activation_override(reranker_model) -> None:
    raw_scores = reranker_model.predict(INPUTS, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    torch.testing.assert_close(reranker_model.predict(INPUTS, activation_fn=torch.nn.Sequential(), convert_to_tensor=True), raw_scores)
    torch.testing.assert_close(reranker_model.predict(INPUTS, convert_to_tensor=True), torch.sigmoid(raw_scores))


@pytest.mark.parametrize(
    ["fixture_dir", "num_labels", "activation_fn", "expected_activation_fn"],
    [
        ["reranker_dir", 1, torch.nn.Tanh(), torch.nn.Tanh()],
        ["reranker_dir", 1, None, torch.nn.Sigmoid()],
        ["nli_dir", 3, None, torch.nn.Identity()],
    ],
)
def test_load_activation_fn_from_kwargs(
    request: pytest.FixtureRequest, fixture_dir: str, num_labels: int, activation_fn, expected_activation_fn
) -> None:
    # DEPARTURE: upstream loads the headless stsb-bert-tiny with num_labels= (a fresh random head);
    # the port loads the tiny classifiers that already have 1 and 3 labels. The save/reload half is
    # out of scope (poolkit refuses save); the per-call override half is kept.
    from poolkit import CrossEncoder

    path = request.getfixturevalue(fixture_dir)
    model = CrossEncoder(str(path), activation_fn=activation_fn, model_kwargs=FP32)
    assert model.num_labels == num_labels
    raw_scores = model.predict(INPUTS, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    expected_scores = expected_activation_fn(raw_scores.reshape(len(INPUTS), num_labels))
    torch.testing.assert_close(model.predict(INPUTS, convert_to_tensor=True).reshape_as(expected_scores), expected_scores)

    # A per-call override must not change subsequent predictions.
    torch.testing.assert_close(model.predict(INPUTS, activation_fn=torch.nn.Identity(), convert_to_tensor=True), raw_scores)
    torch.testing.assert_close(model.predict(INPUTS, convert_to_tensor=True).reshape_as(expected_scores), expected_scores)


def _tanh_copy(src: Path, dst: Path, where: str) -> Path:
    if where == "v3":  # sentence-transformers < 4: the activation in config.json's "sentence_transformers" entry
        shutil.copytree(src, dst)
        config = json.loads((dst / "config.json").read_text())
        config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Tanh"}
        (dst / "config.json").write_text(json.dumps(config))
    else:  # sentence-transformers >= 4: saved by sentence-transformers itself (config_sentence_transformers.json)
        from sentence_transformers import CrossEncoder as RefCrossEncoder

        RefCrossEncoder(str(src), device="cpu", activation_fn=torch.nn.Tanh()).save_pretrained(str(dst))
    return dst


@pytest.mark.parametrize("tanh_model_name", ["v3", "v4"])
def test_load_activation_fn_from_config(reranker_dir, tmp_path, tanh_model_name: str) -> None:
    # ADAPTED: cross-encoder-testing/reranker-bert-tiny-gooaq-bce-tanh-v3 / -v4 are the hub reranker
    # with Tanh saved in its config (config.json's "sentence_transformers" entry, or
    # config_sentence_transformers.json); the port writes the first into a copy of the tiny reranker and
    # has sentence-transformers save the second (CrossEncoder(..., activation_fn=Tanh()).save_pretrained).
    # The save/reload half is out of scope.
    from sentence_transformers import CrossEncoder as RefCrossEncoder

    from poolkit import CrossEncoder

    path = _tanh_copy(reranker_dir, tmp_path / f"reranker-tanh-{tanh_model_name}", tanh_model_name)
    assert isinstance(RefCrossEncoder(str(path), device="cpu").activation_fn, torch.nn.Tanh)  # the stand-in holds
    model = CrossEncoder(str(path), model_kwargs=FP32)
    raw_scores = model.predict(INPUTS, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    torch.testing.assert_close(model.predict(INPUTS, convert_to_tensor=True), torch.tanh(raw_scores))


def test_bge_reranker_max_length(reranker_dir, reranker_reference) -> None:
    # ADAPTED: BAAI/bge-reranker-base (512) -> the tiny reranker, whose tokenizer allows 128 tokens, as
    # sentence-transformers reads it. max_length is deprecated in sentence-transformers 6 (max_seq_length).
    from poolkit import CrossEncoder

    model = CrossEncoder(str(reranker_dir), model_kwargs=FP32)
    assert model.max_length == reranker_reference.max_length == 128
    assert model.tokenizer.model_max_length == 128

    model.max_length = 64
    assert model.max_length == 64
    # DEPARTURE: sentence-transformers writes the limit into its tokenizer; poolkit's tokenizer is the
    # engine's, shared by every call, so the limit is the drop-in's own (the truncation below is the same).
    # POOLKIT (beyond upstream): the shorter limit truncates as sentence-transformers' does.
    long_pair = [(" ".join(["paris is the capital of france"] * 20), "berlin is the capital of germany")]
    reranker_reference.max_length = 64
    assert_close(model.predict(long_pair), reranker_reference.predict(long_pair))


def test_predict_with_dataset_column(reranker_model) -> None:
    # DEPARTURE: ``datasets`` is not installed; a read-only Sequence stands in for the dataset column.
    column = SequenceColumn(
        [
            ["This is the start of a pair.", "And this the end."],
            ["This is a second pair.", "And this the end of the second pair."],
        ]
    )
    embeddings = reranker_model.predict(column, convert_to_tensor=True)
    assert tuple(embeddings.shape) == (2,)
    assert_close(embeddings, reranker_model.predict(list(column), convert_to_tensor=True), atol=1e-6)
