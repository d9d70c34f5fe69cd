# Port of vllm tests/models/language/pooling/test_scoring.py
# cross-encoder/ms-marco-MiniLM-L-6-v2 (BERT) -> a tiny one-label BertForSequenceClassification;
# BAAI/bge-reranker-v2-m3 (XLM-R) -> the tiny one-label XLMRobertaForSequenceClassification
# (conftest ``bge_reranker_dir``); sentence-transformers/all-MiniLM-L12-v2 -> all-MiniLM-L6-v2.
# hf_runner(is_cross_encoder=True) -> sentence-transformers' CrossEncoder, is_sentence_transformer
# -> SentenceTransformer, both in half as vLLM's DTYPE. vLLM loads the model in every test; the port
# loads each once per module. ``task="score"`` / ``task="embed"`` are vLLM's old LLM argument.
import math

import pytest
import torch
import torch.nn.functional as F

from poolkit import LLM

TEXTS_1 = ["What is the capital of France?", "What is the capital of Germany?"]
TEXTS_2 = ["The capital of France is Paris.", "The capital of Germany is Berlin."]

DTYPE = "half"

_llms: dict = {}


@pytest.fixture(scope="module")
def model_dirs(vllm_models_root, bge_reranker_dir, minilm_dir):
    from tiny_models import build_classifier

    return {
        "ms-marco-MiniLM-L-6-v2": build_classifier(vllm_models_root / "ms-marco", "bert", num_labels=1, init_range=0.3),
        "bge-reranker-v2-m3": bge_reranker_dir,
        "all-MiniLM-L12-v2": minilm_dir,
    }


def vllm_runner(path, task):
    key = (str(path), task)
    if key not in _llms:
        _llms[key] = LLM(str(path), task=task, dtype=DTYPE, max_model_len=None)
    return _llms[key]


@pytest.fixture(scope="module", params=["ms-marco-MiniLM-L-6-v2", "bge-reranker-v2-m3"])
def model_name(request):
    yield request.param


@pytest.fixture(scope="module")
def hf_cross_encoder(model_name, model_dirs):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(model_dirs[model_name]), device="cpu", model_kwargs={"dtype": torch.float16})


def test_cross_encoder_1_to_1(model_dirs, hf_cross_encoder, model_name):
    text_pair = [TEXTS_1[0], TEXTS_2[0]]
    hf_outputs = hf_cross_encoder.predict([text_pair]).tolist()
    vllm_outputs = [o.outputs.score for o in vllm_runner(model_dirs[model_name], "score").score(text_pair[0], text_pair[1])]

    assert len(vllm_outputs) == 1
    assert len(hf_outputs) == 1
    assert math.isclose(hf_outputs[0], vllm_outputs[0], rel_tol=0.01)


def test_cross_encoder_1_to_N(model_dirs, hf_cross_encoder, model_name):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[0], TEXTS_2[1]]]
    hf_outputs = hf_cross_encoder.predict(text_pairs).tolist()
    vllm_outputs = [o.outputs.score for o in vllm_runner(model_dirs[model_name], "score").score(TEXTS_1[0], TEXTS_2)]

    assert len(vllm_outputs) == 2
    assert len(hf_outputs) == 2
    assert math.isclose(hf_outputs[0], vllm_outputs[0], rel_tol=0.01)
    assert math.isclose(hf_outputs[1], vllm_outputs[1], rel_tol=0.01)


def test_cross_encoder_N_to_N(model_dirs, hf_cross_encoder, model_name):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]
    hf_outputs = hf_cross_encoder.predict(text_pairs).tolist()
    vllm_outputs = [o.outputs.score for o in vllm_runner(model_dirs[model_name], "score").score(TEXTS_1, TEXTS_2)]

    assert len(vllm_outputs) == 2
    assert len(hf_outputs) == 2
    assert math.isclose(hf_outputs[0], vllm_outputs[0], rel_tol=0.01)
    assert math.isclose(hf_outputs[1], vllm_outputs[1], rel_tol=0.01)


@pytest.fixture(scope="module", params=["all-MiniLM-L12-v2"])
def emb_model_name(request):
    yield request.param


@pytest.fixture(scope="module")
def hf_st(emb_model_name, model_dirs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dirs[emb_model_name]), device="cpu", model_kwargs={"dtype": torch.float16})


def test_embedding_1_to_1(model_dirs, hf_st, emb_model_name):
    text_pair = [TEXTS_1[0], TEXTS_2[0]]
    hf_embeddings = hf_st.encode(text_pair)
    hf_outputs = [F.cosine_similarity(*map(torch.tensor, hf_embeddings), dim=0)]
    vllm_outputs = [o.outputs.score for o in vllm_runner(model_dirs[emb_model_name], "embed").score(text_pair[0], text_pair[1])]

    assert len(vllm_outputs) == 1
    assert len(hf_outputs) == 1
    assert math.isclose(hf_outputs[0], vllm_outputs[0], rel_tol=0.01)


def test_embedding_1_to_N(model_dirs, hf_st, emb_model_name):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[0], TEXTS_2[1]]]
    hf_embeddings = [hf_st.encode(text_pair) for text_pair in text_pairs]
    hf_outputs = [F.cosine_similarity(*map(torch.tensor, pair), dim=0) for pair in hf_embeddings]
    vllm_outputs = [o.outputs.score for o in vllm_runner(model_dirs[emb_model_name], "embed").score(TEXTS_1[0], TEXTS_2)]

    assert len(vllm_outputs) == 2
    assert len(hf_outputs) == 2
    assert math.isclose(hf_outputs[0], vllm_outputs[0], rel_tol=0.01)
    assert math.isclose(hf_outputs[1], vllm_outputs[1], rel_tol=0.01)


def test_embedding_N_to_N(model_dirs, hf_st, emb_model_name):
    text_pairs = [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]
    hf_embeddings = [hf_st.encode(text_pair) for text_pair in text_pairs]
    hf_outputs = [F.cosine_similarity(*map(torch.tensor, pair), dim=0) for pair in hf_embeddings]
    vllm_outputs = [o.outputs.score for o in vllm_runner(model_dirs[emb_model_name], "embed").score(TEXTS_1, TEXTS_2)]

    assert len(vllm_outputs) == 2
    assert len(hf_outputs) == 2
    assert math.isclose(hf_outputs[0], vllm_outputs[0], rel_tol=0.01)
    assert math.isclose(hf_outputs[1], vllm_outputs[1], rel_tol=0.01)
