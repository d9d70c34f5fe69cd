# Port of sentence-transformers tests/util/test_similarity.py
# Upstream tests sentence_transformers.util.similarity's functions on hand-made dense arrays and on
# sparse COO tensors. A model reaches them through similarity / similarity_pairwise; the dense ones
# are ported through SentenceTransformer in test_util.py (tests/test_util.py has the same tests), so
# here both halves go through poolkit's SparseEncoder, whose inputs are sparse tensors.
# DEPARTURE (everywhere): ``<fn>(a, b)`` becomes ``model.similarity[_pairwise](a, b)`` with
# ``model.similarity_fn_name = <fn's name>``; the sparse tensors stay on the CPU (upstream moves them to
# CUDA when there is one). test_performance_with_large_vectors times sentence-transformers' own
# functions on 500 x 100,000 tensors: not ported.
from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics
import torch
from st_port_utils import dense


def _sim(model, name: str, a, b) -> torch.Tensor:
    model.similarity_fn_name = name
    return dense(model.similarity(a, b))


def _pairwise(model, name: str, a, b) -> torch.Tensor:
    model.similarity_fn_name = name
    return dense(model.similarity_pairwise(a, b))


def test_pytorch_cos_sim(splade_model) -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((50, 100))
    b = rng.standard_normal((50, 100))
    sklearn_pairwise = sklearn.metrics.pairwise.cosine_similarity(a, b)
    pytorch_cos_scores = _sim(splade_model, "cosine", a, b).numpy()
    assert np.abs(sklearn_pairwise - pytorch_cos_scores).max() < 0.001


def test_pairwise_cos_sim(splade_model) -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 100))
    b = rng.standard_normal((50, 100))
    sklearn_pairwise = 1 - sklearn.metrics.pairwise.paired_cosine_distances(a, b)
    assert np.allclose(sklearn_pairwise, _pairwise(splade_model, "cosine", a, b).numpy(), atol=1e-6)


def test_pairwise_euclidean_sim(splade_model) -> None:
    a = np.array([[1, 0], [1, 1]], dtype=np.float32)
    b = np.array([[0, 0], [0, 0]], dtype=np.float32)
    assert np.allclose(np.array([-1.0, -np.sqrt(2.0)]), _pairwise(splade_model, "euclidean", a, b).numpy())


def test_pairwise_manhattan_sim(splade_model) -> None:
    a = np.array([[1, 0], [1, 1]], dtype=np.float32)
    b = np.array([[0, 0], [0, 0]], dtype=np.float32)
    assert np.allclose(np.array([-1.0, -2.0]), _pairwise(splade_model, "manhattan", a, b).numpy())


def test_pairwise_dot_score_cos_sim(splade_model) -> None:
    a = np.array([[1, 0], [1, 0], [1, 0]], dtype=np.float32)
    b = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    expected = np.array([1.0, 0.0, -1.0])
    assert np.allclose(_pairwise(splade_model, "cosine", a, b).numpy(), expected)
    assert np.allclose(_pairwise(splade_model, "dot", a, b).numpy(), expected)


def test_euclidean_sim(splade_model) -> None:
    a = np.array([[1, 0], [0, 1]], dtype=np.float32)
    b = np.array([[0, 0], [0, 1]], dtype=np.float32)
    expected = np.array([[-1.0, -np.sqrt(2.0)], [-1.0, 0.0]])
    assert np.allclose(expected, _sim(splade_model, "euclidean", a, b).numpy())


def test_manhattan_sim(splade_model) -> None:
    a = np.array([[1, 0], [0, 1]], dtype=np.float32)
    b = np.array([[0, 0], [0, 1]], dtype=np.float32)
    expected = np.array([[-1.0, -2.0], [-1.0, 0]])
    assert np.allclose(expected, _sim(splade_model, "manhattan", a, b).numpy())


def test_dot_score_cos_sim(splade_model) -> None:
    a = np.array([[1, 0]], dtype=np.float32)
    b = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    expected = np.array([[1.0, 0.0, -1.0]])
    assert np.allclose(_sim(splade_model, "cosine", a, b).numpy(), expected)
    assert np.allclose(_sim(splade_model, "dot", a, b).numpy(), expected)


def create_sparse_tensor(rows: int, cols: int, num_nonzero: int, seed: int) -> torch.Tensor:
    """(rows, cols) sparse COO tensor with ``num_nonzero`` random entries per row (duplicates summed)."""
    generator = torch.Generator().manual_seed(seed)
    row_index = torch.arange(rows).repeat_interleave(num_nonzero)
    col_index = torch.randint(0, cols, (rows * num_nonzero,), generator=generator)
    values = torch.randn(rows * num_nonzero, generator=generator)
    return torch.sparse_coo_tensor(torch.stack([row_index, col_index]), values, (rows, cols)).coalesce()


@pytest.fixture
def sparse_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    return create_sparse_tensor(50, 1000, 10, seed=42), create_sparse_tensor(50, 1000, 10, seed=1337)


def _check_sparse_matches_dense(model, fn_name: str, pairwise: bool, tensors) -> None:
    tensor1, tensor2 = tensors
    call = _pairwise if pairwise else _sim
    sim_sparse = call(model, fn_name, tensor1, tensor2)
    sim_dense = call(model, fn_name, tensor1.to_dense(), tensor2.to_dense())
    assert torch.allclose(sim_sparse, sim_dense, rtol=1e-5, atol=1e-5)


def test_cos_sim_sparse(splade_model, sparse_tensors) -> None:
    _check_sparse_matches_dense(splade_model, "cosine", False, sparse_tensors)


def test_dot_score_sparse(splade_model, sparse_tensors) -> None:
    _check_sparse_matches_dense(splade_model, "dot", False, sparse_tensors)


def test_manhattan_sim_sparse(splade_model, sparse_tensors) -> None:
    _check_sparse_matches_dense(splade_model, "manhattan", False, sparse_tensors)


def test_euclidean_sim_sparse(splade_model, sparse_tensors) -> None:
    _check_sparse_matches_dense(splade_model, "euclidean", False, sparse_tensors)


def test_pairwise_cos_sim_sparse(splade_model, sparse_tensors) -> None:
    _check_sparse_matches_dense(splade_model, "cosine", True, sparse_tensors)


def test_pairwise_dot_score_sparse(splade_model, sparse_tensors) -> None:
    _check_sparse_matches_dense(splade_model, "dot", True, sparse_tensors)


def test_pairwise_manhattan_sim_sparse(splade_model, sparse_tensors) -> None:
    _check_sparse_matches_dense(splade_model, "manhattan", True, sparse_tensors)


def test_pairwise_euclidean_sim_sparse(splade_model, sparse_tensors) -> None:
    _check_sparse_matches_dense(splade_model, "euclidean", True, sparse_tensors)
