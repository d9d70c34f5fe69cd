# Port of sentence-transformers tests/test_util.py
# The stored version read (9,741 characters) has 19 tests of sentence_transformers.util's functions on hand-made arrays.
# Only the parts that reach a model are in scope; a model reaches these functions through
# SentenceTransformer.similarity / similarity_pairwise (cos_sim, dot_score, euclidean_sim,
# manhattan_sim and their pairwise forms), so the similarity tests are ported through poolkit's
# SentenceTransformer: DEPARTURE (everywhere): ``util.<fn>(a, b)`` becomes
# ``model.similarity[_pairwise](a, b)`` with ``model.similarity_fn_name = <fn's name>``.
# test_paraphrase_mining is ported in test_util_retrieval.py (its newer home, tests/util/test_retrieval.py).
# semantic_search, normalize_embeddings and community_detection never call a model: not ported.
from __future__ import annotations

import numpy as np
import sklearn.metrics
from st_port_utils import dense


def _sim(model, name: str, a, b):
    model.similarity_fn_name = name
    return dense(model.similarity(a, b)).numpy()


def _pairwise(model, name: str, a, b):
    model.similarity_fn_name = name
    return dense(model.similarity_pairwise(a, b)).numpy()


def test_pytorch_cos_sim(minilm_model) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 100))
    b = rng.standard_normal((50, 100))
    sklearn_pairwise = sklearn.metrics.pairwise.cosine_similarity(a, b)
    pytorch_cos_scores = _sim(minilm_model, "cosine", a, b)
    for i in range(len(sklearn_pairwise)):
        for j in range(len(sklearn_pairwise[i])):
            assert abs(sklearn_pairwise[i][j] - pytorch_cos_scores[i][j]) < 0.001


def test_pairwise_cos_sim(minilm_model) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((50, 100))
    b = rng.standard_normal((50, 100))
    sklearn_pairwise = 1 - sklearn.metrics.pairwise.paired_cosine_distances(a, b)
    assert np.allclose(sklearn_pairwise, _pairwise(minilm_model, "cosine", a, b), atol=1e-6)


def test_pairwise_euclidean_sim(minilm_model) -> None:
    a = np.array([[1, 0], [1, 1]], dtype=np.float32)
    b = np.array([[0, 0], [0, 0]], dtype=np.float32)
    assert np.allclose(np.array([-1.0, -np.sqrt(2.0)]), _pairwise(minilm_model, "euclidean", a, b))


def test_pairwise_manhattan_sim(minilm_model) -> None:
    a = np.array([[1, 0], [1, 1]], dtype=np.float32)
    b = np.array([[0, 0], [0, 0]], dtype=np.float32)
    assert np.allclose(np.array([-1.0, -2.0]), _pairwise(minilm_model, "manhattan", a, b))


def test_pairwise_dot_score_cos_sim(minilm_model) -> None:
    a = np.array([[1, 0], [1, 0], [1, 0]], dtype=np.float32)
    b = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    expected = np.array([1.0, 0.0, -1.0])
    assert np.allclose(_pairwise(minilm_model, "cosine", a, b), expected)
    assert np.allclose(_pairwise(minilm_model, "dot", a, b), expected)


def test_euclidean_sim(minilm_model) -> None:
    a = np.array([[1, 0], [0, 1]], dtype=np.float32)
    b = np.array([[0, 0], [0, 1]], dtype=np.float32)
    expected = np.array([[-1.0, -np.sqrt(2.0)], [-1.0, 0.0]])
    assert np.allclose(expected, _sim(minilm_model, "euclidean", a, b))


def test_manhattan_sim(minilm_model) -> None:
    a = np.array([[1, 0], [0, 1]], dtype=np.float32)
    b = np.array([[0, 0], [0, 1]], dtype=np.float32)
    expected = np.array([[-1.0, -2.0], [-1.0, 0]])
    assert np.allclose(expected, _sim(minilm_model, "manhattan", a, b))


def test_dot_score_cos_sim(minilm_model) -> None:
    a = np.array([[1, 0]], dtype=np.float32)
    b = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    expected = np.array([[1.0, 0.0, -1.0]])
    assert np.allclose(_sim(minilm_model, "cosine", a, b), expected)
    assert np.allclose(_sim(minilm_model, "dot", a, b), expected)
