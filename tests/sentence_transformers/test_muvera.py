"""MUVERA fixed-dimensional encodings (``poolkit.api.muvera.Muvera``) against fastembed's
``Muvera`` on the same token vectors and seed: the same encodings within 1e-5, on random unit vectors
and on all-MiniLM-L6-v2's real token vectors, for several parameter settings; a query's and a
document's encodings score as their MaxSim does; and its bad inputs, refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poolkit import LLM
from poolkit.api.muvera import Muvera
from poolkit.contracts.errors import InvalidRequest

fastembed_muvera = pytest.importorskip("fastembed.postprocess.muvera")

#: (k_sim, dim_proj, r_reps, random_seed): fastembed's defaults; few partitions without a projection
#: (dim_proj = dim, filled in per test); many partitions, so short documents leave most of them empty.
SETTINGS = [(5, 16, 20, 42), (3, None, 4, 7), (7, 8, 3, 2024)]

DOCUMENTS = [
    "Late interaction keeps one vector per token, and an index of them grows with every document it holds.",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose in plants.",
    "The stock market fell sharply on Monday as investors worried about interest rates.",
    "A recipe for chocolate cake needs flour, sugar, cocoa, eggs and butter.",
    "short",
]
QUERIES = [
    "how tall is the tower in Paris",
    "how do plants make sugar from light",
    "why did stocks drop",
    "how to bake a chocolate cake",
    "multi-vector retrieval index size",
]


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _pair(dim: int, setting: tuple[int, int | None, int, int]) -> tuple[Muvera, object]:
    k_sim, dim_proj, r_reps, seed = setting
    params = dict(k_sim=k_sim, dim_proj=dim_proj or dim, r_reps=r_reps, random_seed=seed)
    return Muvera(dim, **params), fastembed_muvera.Muvera(dim, **params)


def _assert_same_encodings(ours: Muvera, reference: object, documents: list, queries: list) -> None:
    assert ours.embedding_size == reference.embedding_size
    for process in ("process_document", "process_query"):
        for vectors in documents if process == "process_document" else queries:
            got = getattr(ours, process)(vectors)
            expected = getattr(reference, process)(np.asarray(vectors))
            assert got.dtype == np.float32 and got.shape == (ours.embedding_size,)
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=process)


def _maxsim_correlation(ours: Muvera, documents: list, queries: list) -> float:
    maxsim, encoded = [], []
    for query in queries:
        for document in documents:
            maxsim.append(float((np.asarray(query) @ np.asarray(document).T).max(axis=1).sum()))
            encoded.append(float(ours.process_query(query) @ ours.process_document(document)))
    return float(np.corrcoef(maxsim, encoded)[0, 1])


@pytest.fixture(scope="module")
def random_vectors() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Unit documents of 1 to 90 tokens, and queries made of a few of one document's tokens plus noise,
    so their MaxSim with that document stands out."""
    rng = np.random.default_rng(68)
    documents = [_unit(rng.normal(size=(n, 64))) for n in (1, 2, 9, 33, 90, 47)]
    queries = []
    for source in (documents[i] for i in (0, 2, 3, 4, 5)):
        picked = source[rng.choice(len(source), size=min(5, len(source)), replace=False)]
        queries.append(_unit(picked + 0.04 * rng.normal(size=picked.shape)))
    return documents, queries


@pytest.mark.parametrize("setting", SETTINGS)
def test_random_vectors_encode_as_fastembed(random_vectors, setting):
    documents, queries = random_vectors
    _assert_same_encodings(*_pair(64, setting), documents, queries)


def test_torch_and_numpy_inputs_encode_alike(random_vectors):
    documents, queries = random_vectors
    muvera = Muvera(64)
    for document in documents:
        tensor = torch.from_numpy(document)
        np.testing.assert_array_equal(muvera.process_document(tensor), muvera.process_document(document))
        np.testing.assert_array_equal(muvera.process_document(tensor.double()), muvera.process_document(document))
    np.testing.assert_array_equal(muvera.process_query(torch.from_numpy(queries[0])), muvera.process_query(queries[0]))


@pytest.mark.parametrize("setting", SETTINGS)
def test_encodings_score_as_maxsim_on_random_vectors(random_vectors, setting):
    ours, _ = _pair(64, setting)
    assert _maxsim_correlation(ours, *random_vectors) > 0.6


@pytest.fixture(scope="module")
def real_vectors(minilm_dir) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    llm = LLM(str(minilm_dir), pooler_config={"task": "token_embed"})
    outputs = [o.outputs.data for o in llm.encode(DOCUMENTS + QUERIES, pooling_task="token_embed", use_tqdm=False)]
    return outputs[: len(DOCUMENTS)], outputs[len(DOCUMENTS) :]


@pytest.mark.parametrize("setting", SETTINGS)
def test_minilm_token_vectors_encode_as_fastembed(real_vectors, setting):
    documents, queries = real_vectors
    assert documents[0].shape[1] == 384
    _assert_same_encodings(*_pair(384, setting), documents, queries)


@pytest.mark.parametrize("setting", SETTINGS)
def test_encodings_score_as_maxsim_on_minilm_token_vectors(real_vectors, setting):
    ours, _ = _pair(384, setting)
    assert _maxsim_correlation(ours, *real_vectors) > 0.6


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(dim=0), "MUVERA's dim must be an integer >= 1, got 0"),
        (dict(dim=8.0), "MUVERA's dim must be an integer >= 1, got 8.0"),
        (dict(dim=8, dim_proj=4, k_sim=-1), "MUVERA's k_sim must be an integer in [0, 16], got -1"),
        (dict(dim=8, dim_proj=4, k_sim=17), "MUVERA's k_sim must be an integer in [0, 16], got 17"),
        (dict(dim=8, dim_proj=9), "MUVERA's dim_proj must be an integer in [1, 8], got 9"),
        (dict(dim=8, dim_proj=0), "MUVERA's dim_proj must be an integer in [1, 8], got 0"),
        (dict(dim=8, dim_proj=4, r_reps=0), "MUVERA's r_reps must be an integer >= 1, got 0"),
        (dict(dim=8, dim_proj=4, r_reps=True), "MUVERA's r_reps must be an integer >= 1, got True"),
        (dict(dim=8, dim_proj=4, random_seed=-1), "MUVERA's random_seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(InvalidRequest) as raised:
        Muvera(**params)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "vectors, message",
    [
        (np.zeros((0, 8), dtype=np.float32), "MUVERA cannot encode an input with no token vectors"),
        (torch.zeros(0, 8), "MUVERA cannot encode an input with no token vectors"),
        (np.ones((3, 16), dtype=np.float32), "MUVERA was built for 8-wide token vectors, got 16-wide ones"),
        (np.ones(8, dtype=np.float32), "MUVERA takes one input's token vectors as [n, 8], got shape (8,)"),
        (torch.ones(2, 3, 8), "MUVERA takes one input's token vectors as [n, 8], got shape (2, 3, 8)"),
        (np.array([[0.5] * 7 + [np.nan]]), "MUVERA takes finite token vectors, got NaN or infinity"),
        (torch.tensor([[float("inf")] + [0.5] * 7]), "MUVERA takes finite token vectors, got NaN or infinity"),
        (np.ones((2, 8), dtype=np.int64), "MUVERA takes floating-point token vectors, got int64"),
        (torch.ones(2, 8, dtype=torch.int32), "MUVERA takes floating-point token vectors, got torch.int32"),
        ([[0.5] * 8], "MUVERA takes token vectors as a torch tensor or a numpy array, got list"),
    ],
)
@pytest.mark.parametrize("process", ["process_document", "process_query"])
def test_bad_vectors_are_refused(vectors, message, process):
    with pytest.raises(InvalidRequest) as raised:
        getattr(Muvera(8, dim_proj=4), process)(vectors)
    assert str(raised.value) == message
