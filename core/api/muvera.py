"""MUVERA fixed-dimensional encodings: one vector per input from its token vectors.

A late-interaction model scores a query against a document by MaxSim over their token vectors,
which a vector index cannot search directly. MUVERA (Dhulipala et al., "MUVERA: Multi-Vector
Retrieval via Fixed Dimensional Encodings", 2024) turns each input's token vectors into one
fixed-size vector whose inner product with another input's approximates their MaxSim, so a plain
single-vector ANN index can fetch candidates for a first stage and MaxSim can rerank them.

Each of ``r_reps`` repetitions splits the space into ``2 ** k_sim`` partitions with ``k_sim``
random hyperplanes (SimHash); a document keeps the mean of its tokens in each partition (an empty
one takes the first token of the nearest occupied partition by Hamming distance of the partition
ids), a query the sum of its tokens in each; every partition's vector is then projected to
``dim_proj`` dimensions with a random ±1 matrix scaled by ``1 / sqrt(dim_proj)`` (none when
``dim_proj == dim``), and the repetitions are concatenated. The parameters, their defaults, and the
order in which the random matrices are drawn from ``numpy.random.default_rng(random_seed)`` are
fastembed's ``Muvera`` (``fastembed.postprocess.muvera``), so the same token vectors and seed give
the same encodings there and here, and an index built with one can be queried with the other.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import scipy.sparse
import torch
from poolkit.contracts.errors import InvalidRequest

#: Token vectors ``[n, dim]`` as a torch tensor (any device, any floating dtype) or a numpy array.
TokenVectors = Union[torch.Tensor, np.ndarray]

#: The most hyperplanes per repetition: 2**16 partitions already make an encoding of 65,536 *
#: dim_proj * r_reps floats per input, and beyond it one input's encoding outgrows memory.
MAX_K_SIM = 16


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (no upper bound when ``high`` is None), else InvalidRequest."""
    valid = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if valid and value >= low and (high is None or value <= high):
        return int(value)
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise InvalidRequest(f"MUVERA's {name} must be an integer {bound}, got {value!r}")


def _popcount(values: np.ndarray, bits: int) -> np.ndarray:
    """The number of set bits among the low ``bits`` bits of each value (numpy < 2 has no bitwise_count)."""
    counts = np.zeros(values.shape, dtype=np.int64)
    for bit in range(bits):
        counts += (values >> bit) & 1
    return counts


class Muvera:
    """MUVERA encoder for token vectors of width ``dim``, with fastembed's parameters and defaults.

    Args:
        dim: the width of the token vectors it takes (the model's token-embedding size).
        k_sim: SimHash hyperplanes per repetition, giving ``2 ** k_sim`` partitions (0 to 16).
        dim_proj: each partition's width after the random projection (1 to ``dim``; ``dim`` means
            no projection).
        r_reps: independent repetitions concatenated into the encoding.
        random_seed: the seed of the hyperplanes and projections; an index and its queries must be
            encoded with the same one.

    Raises:
        InvalidRequest: a parameter out of its range, in one line naming it.

    Example:
        >>> from poolkit import LLM
        >>> from poolkit.api.muvera import Muvera
        >>> llm = LLM("answerdotai/answerai-colbert-small-v1")
        >>> tokens = [o.outputs.data for o in llm.encode(texts, pooling_task="token_embed")]
        >>> muvera = Muvera(dim=tokens[0].shape[1])
        >>> document_encodings = [muvera.process_document(t) for t in tokens]
        >>> muvera.embedding_size  # 20 * 2**5 * 16
        10240
    """

    def __init__(self, dim: int, k_sim: int = 5, dim_proj: int = 16, r_reps: int = 20, random_seed: int = 42) -> None:
        self.dim = _check_int("dim", dim, 1)
        self.k_sim = _check_int("k_sim", k_sim, 0, MAX_K_SIM)
        self.dim_proj = _check_int("dim_proj", dim_proj, 1, self.dim)
        self.r_reps = _check_int("r_reps", r_reps, 1)
        self.random_seed = _check_int("random_seed", random_seed, 0)
        generator = np.random.default_rng(self.random_seed)
        # fastembed draws every repetition's hyperplanes ([dim, k_sim] each, one after another: the
        # same stream as one [r_reps, dim, k_sim] draw), then all the ±1 projections; the projections
        # are drawn even when unused so the stream matches for every dim_proj.
        hyperplanes = generator.normal(size=(self.r_reps, self.dim, self.k_sim))
        self._projections = generator.choice([-1, 1], size=(self.r_reps, self.dim, self.dim_proj)).astype(np.float64)
        # All repetitions' hyperplanes side by side, [dim, r_reps * k_sim]: one matrix product hashes every token.
        self._hyperplanes = hyperplanes.transpose(1, 0, 2).reshape(self.dim, self.r_reps * self.k_sim)
        self._bit_values = 1 << np.arange(self.k_sim, dtype=np.int64)

    @property
    def partitions(self) -> int:
        """The SimHash partitions per repetition, ``2 ** k_sim``."""
        return 1 << self.k_sim

    @property
    def embedding_size(self) -> int:
        """The length of every encoding: ``r_reps * 2 ** k_sim * dim_proj``."""
        return self.r_reps * self.partitions * self.dim_proj

    def process_document(self, vectors: TokenVectors) -> np.ndarray:
        """A document's encoding: per partition the mean of its tokens, empty partitions filled
        from the nearest occupied one, so every part of a query's encoding finds something to match.

        Args:
            vectors: the document's token vectors, ``[n, dim]`` with ``n >= 1``, finite.

        Returns:
            The encoding, 1-D float32 of length :attr:`embedding_size`.

        Raises:
            InvalidRequest: vectors that are empty, of another width, not 2-D, not floating-point or not finite.
        """
        return self._encode(self._as_matrix(vectors), document=True)

    def process_query(self, vectors: TokenVectors) -> np.ndarray:
        """A query's encoding: per partition the sum of its tokens (empty partitions stay zero), so
        its inner product with a document's encoding sums one similarity per query token, as MaxSim does.

        ``vectors`` are the query's token vectors; the shape, the result and the errors are :meth:`process_document`'s.
        """
        return self._encode(self._as_matrix(vectors), document=False)

    def _as_matrix(self, vectors: TokenVectors) -> np.ndarray:
        """``vectors`` as a float64 numpy ``[n, dim]`` array (fastembed's arithmetic is float64), or InvalidRequest."""
        if isinstance(vectors, torch.Tensor):
            if not vectors.dtype.is_floating_point:
                raise InvalidRequest(f"MUVERA takes floating-point token vectors, got {vectors.dtype}")
            array = vectors.detach().to(device="cpu", dtype=torch.float64).numpy()
        elif isinstance(vectors, np.ndarray):
            if vectors.dtype.kind != "f":
                raise InvalidRequest(f"MUVERA takes floating-point token vectors, got {vectors.dtype}")
            array = vectors.astype(np.float64, copy=False)
        else:
            raise InvalidRequest(f"MUVERA takes token vectors as a torch tensor or a numpy array, got {type(vectors).__name__}")
        if array.ndim != 2:
            raise InvalidRequest(f"MUVERA takes one input's token vectors as [n, {self.dim}], got shape {tuple(array.shape)}")
        if array.shape[0] == 0:
            raise InvalidRequest("MUVERA cannot encode an input with no token vectors")
        if array.shape[1] != self.dim:
            raise InvalidRequest(f"MUVERA was built for {self.dim}-wide token vectors, got {array.shape[1]}-wide ones")
        if not np.isfinite(array).all():
            raise InvalidRequest("MUVERA takes finite token vectors, got NaN or infinity")
        return array

    def _encode(self, vectors: np.ndarray, document: bool) -> np.ndarray:
        """The encoding of validated float64 ``[n, dim]`` vectors, all repetitions at once."""
        n, partitions = len(vectors), self.partitions
        # Each token's partition in each repetition: bit i set when it is on hyperplane i's positive side.
        above = (vectors @ self._hyperplanes > 0).reshape(n, self.r_reps, self.k_sim)
        partition = above.astype(np.int64) @ self._bit_values  # [n, r_reps]
        # One row per (repetition, partition): a sparse [rows, n] membership matrix times the tokens
        # sums every partition of every repetition in one product.
        rows = (partition + np.arange(self.r_reps) * partitions).T.ravel()
        tokens = np.tile(np.arange(n), self.r_reps)
        membership = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, tokens)), shape=(self.r_reps * partitions, n))
        centers = membership @ vectors
        if document:
            counts = np.bincount(rows, minlength=len(centers))
            occupied = counts > 0
            centers[occupied] /= counts[occupied, None]
            # Each occupied partition's first token (the lowest index) fills the empty ones.
            first = np.full(len(centers), n)
            np.minimum.at(first, rows, tokens)
            self._fill_empty(
                centers.reshape(self.r_reps, partitions, self.dim),
                occupied.reshape(self.r_reps, partitions),
                first.reshape(self.r_reps, partitions),
                vectors,
            )
        centers = centers.reshape(self.r_reps, partitions, self.dim)
        if self.dim_proj < self.dim:
            centers = centers @ self._projections / math.sqrt(self.dim_proj)
        return centers.reshape(-1).astype(np.float32)

    def _fill_empty(self, centers: np.ndarray, occupied: np.ndarray, first: np.ndarray, vectors: np.ndarray) -> None:
        """Give each repetition's empty partitions (in place) the first token of the occupied partition
        nearest by Hamming distance between partition ids, the lowest id on a tie (fastembed's choice)."""
        ids = np.arange(self.partitions)
        for rep in range(self.r_reps):
            empty_ids, occupied_ids = ids[~occupied[rep]], ids[occupied[rep]]
            if len(empty_ids) == 0:
                continue
            distance = _popcount(empty_ids[:, None] ^ occupied_ids[None, :], self.k_sim)
            nearest = occupied_ids[np.argmin(distance, axis=1)]
            centers[rep, empty_ids] = vectors[first[rep, nearest]]
