"""sentence-transformers' functions on embeddings, for the drop-in classes (:mod:`poolkit.api.st_compat`):
the similarity functions a model names (``cosine``, ``dot``, ``euclidean``, ``manhattan``), all
pairs and pairwise, ``quantize_embeddings`` (``precision``), and MaxSim on float and compact token
vectors, by sentence-transformers' rules; Cohere's compact types of a vector's rows
(:func:`compact_tokens`: signs packed to bits, int8 scaled by each row's peak), which the server's
encodings and the late-interaction index use."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..contracts.errors import InvalidRequest

#: ``precision`` values of :meth:`SentenceTransformer.encode`.
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
#: The similarity functions sentence-transformers names.
SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, list) and x and isinstance(x[0], torch.Tensor):
        return torch.stack(x)
    return torch.as_tensor(np.asarray(x))


def _matrix(x: Any) -> torch.Tensor:
    t = _as_tensor(x)
    if t.is_sparse:
        t = t.to_dense()
    return (t.unsqueeze(0) if t.dim() == 1 else t).float()


def cos_sim(a: Any, b: Any) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``: ``[len(a), len(b)]``."""
    a, b = _matrix(a), _matrix(b)
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


def dot_score(a: Any, b: Any) -> torch.Tensor:
    """Dot products of every row of ``a`` with every row of ``b``."""
    return _matrix(a) @ _matrix(b).T


def euclidean_sim(a: Any, b: Any) -> torch.Tensor:
    """Negative euclidean distances (higher is more similar)."""
    return -torch.cdist(_matrix(a), _matrix(b), p=2.0)


def manhattan_sim(a: Any, b: Any) -> torch.Tensor:
    """Negative manhattan distances (higher is more similar)."""
    return -torch.cdist(_matrix(a), _matrix(b), p=1.0)


def pairwise_similarity(fn_name: str, a: Any, b: Any) -> torch.Tensor:
    """The similarity ``fn_name`` of each pair of rows ``(a[i], b[i])``."""
    a, b = _matrix(a), _matrix(b)
    if fn_name == "cosine":
        return (torch.nn.functional.normalize(a, dim=1) * torch.nn.functional.normalize(b, dim=1)).sum(-1)
    if fn_name == "dot":
        return (a * b).sum(-1)
    if fn_name == "euclidean":
        return -torch.sqrt(((a - b) ** 2).sum(-1))
    return -(a - b).abs().sum(-1)


#: The all-pairs similarity functions by name.
SIMILARITY: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "cosine": cos_sim, "dot": dot_score, "euclidean": euclidean_sim, "manhattan": manhattan_sim,
}


def similarity_name(value: Any) -> str:
    """A similarity function's name (or sentence-transformers' ``SimilarityFunction``) as one of :data:`SIMILARITY_FUNCTIONS`."""
    name = getattr(value, "value", value)  # sentence-transformers' SimilarityFunction enum, or its name
    name = {"cos_sim": "cosine", "dot_product": "dot", "dot_score": "dot"}.get(name, name)
    if name not in SIMILARITY_FUNCTIONS:
        raise InvalidRequest(f"similarity_fn_name '{name}' is not one of {', '.join(SIMILARITY_FUNCTIONS)}")
    return name


def quantize_embeddings(
    embeddings: Any, precision: str, ranges: np.ndarray | None = None, calibration_embeddings: np.ndarray | None = None
) -> Any:
    """Float embeddings in a lower ``precision``, by sentence-transformers' rules: ``int8`` / ``uint8``
    split each dimension's range (over ``ranges``, the calibration embeddings, or the embeddings
    themselves) into 256 buckets; ``binary`` / ``ubinary`` pack the signs into bits (``binary``
    shifted into int8)."""
    if precision not in PRECISIONS:
        raise InvalidRequest(f"Precision {precision!r} is not supported, must be one of {PRECISIONS}")
    if isinstance(embeddings, list) and embeddings and getattr(embeddings[0], "ndim", 0) == 2:
        matrices = [m.float().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m) for m in embeddings]
        if precision.endswith("int8") and ranges is None:  # one set of buckets for every matrix
            source = np.concatenate(matrices) if calibration_embeddings is None else np.asarray(calibration_embeddings)
            ranges = np.vstack((source.min(axis=0), source.max(axis=0)))
        return [quantize_embeddings(m, precision, ranges) for m in matrices]
    array = embeddings.float().cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
    if array.dtype in (np.int8, np.uint8):
        raise InvalidRequest("Embeddings to quantize must be float rather than int8 or uint8.")
    if precision == "float32":
        return array.astype(np.float32)
    if precision.endswith("int8"):
        if ranges is None:
            source = array if calibration_embeddings is None else np.asarray(calibration_embeddings)
            if calibration_embeddings is None and (source.ndim == 1 or source.shape[0] == 1):
                raise InvalidRequest(
                    f"Cannot compute {precision} quantization ranges from a single embedding. Call "
                    "`quantize_embeddings` with `ranges` or `calibration_embeddings` from a representative set of embeddings instead."
                )
            ranges = np.vstack((source.min(axis=0), source.max(axis=0)))
        ranges = np.asarray(ranges, dtype=np.float32)
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        levels = np.clip(np.floor((array - starts) / steps), 0, 255)
        return levels.astype(np.uint8) if precision == "uint8" else (levels - 128).astype(np.int8)
    packed = np.packbits(array > 0, axis=-1)
    return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)


#: sentence-transformers' score of a document with no token to match (below every real one).
EMPTY_DOCUMENT_SCORE = -1e9
#: The similarity functions of multi-vector (late-interaction) embeddings.
MULTI_VECTOR_FUNCTIONS = ("maxsim", "meanmaxsim")


def _token_matrices(x: Any, mask: Any = None) -> list[torch.Tensor]:
    """One side of a MaxSim call as one ``[tokens, dim]`` float tensor per item: a list of
    matrices, a padded ``[n, tokens, dim]`` tensor or array (all-zero rows are padding unless
    ``mask`` says which rows count), or one ``[tokens, dim]`` matrix (an item)."""
    if isinstance(x, (list, tuple)):
        items = [_as_tensor(m) for m in x]
    else:
        t = _as_tensor(x)
        items = [t] if t.dim() == 2 else list(t.unbind(0))
        if mask is None and t.dim() == 3:
            mask = [m.any(dim=-1) for m in items]
    items = [m.float() for m in items]
    if mask is None:
        return items
    if isinstance(mask, (list, tuple)):
        masks = [_as_tensor(np.asarray(m)) if not isinstance(m, torch.Tensor) else m for m in mask]
    else:
        whole = _as_tensor(mask if isinstance(mask, torch.Tensor) else np.asarray(mask))
        masks = [whole] if whole.dim() == 1 else list(whole.unbind(0))
    if len(masks) != len(items):
        raise InvalidRequest(f"the mask has {len(masks)} rows for {len(items)} embeddings")
    return [m[k.bool()[: len(m)]] for m, k in zip(items, masks)]


def maxsim(
    a: Any, b: Any, a_mask: Any = None, b_mask: Any = None, chunk_elements: int | None = None,
    length_normalize: bool = False, device: Any = None,
) -> torch.Tensor:
    """MaxSim of every query in ``a`` with every document in ``b`` (``[len(a), len(b)]``, float32):
    per query token its best dot product with a document token, summed (divided by the query's
    tokens when ``length_normalize``). A document without tokens scores :data:`EMPTY_DOCUMENT_SCORE`.
    ``chunk_elements`` and ``device`` are accepted as sentence-transformers takes them."""
    from ..plugins.lookup import select_kernel

    queries, docs = _token_matrices(a, a_mask), _token_matrices(b, b_mask)
    scores = torch.zeros(len(queries), len(docs), dtype=torch.float32)
    if not queries or not docs:
        return scores
    kernel = select_kernel("maxsim", "cpu")
    packed = torch.cat([d.cpu() for d in docs])
    cu = torch.tensor([0] + [len(d) for d in docs]).cumsum(0)
    for i, q in enumerate(queries):
        scores[i] = kernel(q.cpu(), packed, cu).float()
        if length_normalize:
            scores[i] /= max(len(q), 1)
    empty = torch.tensor([len(d) == 0 for d in docs])
    return scores.masked_fill(empty.unsqueeze(0), EMPTY_DOCUMENT_SCORE)


def maxsim_pairwise(
    a: Any, b: Any, a_mask: Any = None, b_mask: Any = None, chunk_elements: int | None = None,
    length_normalize: bool = False, device: Any = None,
) -> torch.Tensor:
    """MaxSim of each pair ``(a[i], b[i])`` (``[len(a)]``, float32)."""
    queries, docs = _token_matrices(a, a_mask), _token_matrices(b, b_mask)
    if len(queries) != len(docs):
        raise InvalidRequest(
            f"`a` and `b` must hold the same number of items to score as pairs, got {len(queries)} and {len(docs)}."
        )
    return torch.tensor(
        [maxsim([q], [d], length_normalize=length_normalize)[0, 0].item() for q, d in zip(queries, docs)], dtype=torch.float32
    )


def multi_vector_similarity_name(value: Any) -> str:
    """A multi-vector similarity function's name: ``maxsim`` or ``meanmaxsim``."""
    name = getattr(value, "value", value)
    if name not in MULTI_VECTOR_FUNCTIONS:
        raise InvalidRequest(
            f"MultiVectorEncoder only supports {MULTI_VECTOR_FUNCTIONS}, got {name!r}. Cosine / dot / euclidean / "
            "manhattan are defined on single vectors and don't compose with ragged per-token embeddings."
        )
    return name


def _rows(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as float32 rows (a vector is one row)."""
    values = tensor.detach().to("cpu", torch.float32).numpy()
    return values.reshape(1, -1) if values.ndim < 2 else values.reshape(-1, values.shape[-1])


def packed_signs(tensor: torch.Tensor) -> np.ndarray:
    """Each row's sign bits (``1`` where ``>= 0``) packed most significant bit first: ``[rows, dim / 8]``
    unsigned bytes, Cohere's ``ubinary``.

    Raises:
        InvalidRequest: a width that is not a multiple of 8.
    """
    rows = _rows(tensor)
    if rows.shape[-1] % 8:
        raise InvalidRequest(
            f"Embedding dimension must be a multiple of 8 for binary embedding types, but got {rows.shape[-1]}."
        )
    return np.packbits(rows >= 0, axis=-1, bitorder="big")


def scaled_int8(tensor: torch.Tensor) -> np.ndarray:
    """Each row scaled so that its largest magnitude is 127, then rounded: ``[rows, dim]`` int8
    (-127..127), Cohere's ``int8``; a row of zeros (or with a non-finite peak) stays zeros.

    Cohere does not publish its calibration ranges; scaling each vector by its own largest value
    needs none and keeps the vector's direction, so cosine similarity is preserved (its length is
    not: compare int8 vectors by cosine).
    """
    rows = _rows(tensor)
    peak = np.abs(rows).max(axis=-1, keepdims=True) if rows.size else np.zeros((rows.shape[0], 1), np.float32)
    usable = (peak > 0) & np.isfinite(peak)
    scale = np.where(usable, 127.0 / np.where(usable, peak, 1.0), 0.0)
    return np.clip(np.rint(np.nan_to_num(rows) * scale), -127, 127).astype(np.int8)


#: The compact types of token vectors (Cohere's and Jina's ``embedding_type`` names) as arrays of
#: ``[tokens, width]`` from a ``[tokens, dim]`` matrix: bits packed 8 to a byte (``binary`` the
#: ``ubinary`` byte minus 128), or one byte per dimension (``uint8`` the ``int8`` byte plus 128).
COMPACT_TYPES = ("binary", "ubinary", "int8", "uint8")


def compact_tokens(matrix: torch.Tensor, kind: str) -> np.ndarray:
    """A ``[tokens, dim]`` matrix of token vectors as one of :data:`COMPACT_TYPES`, a row a token.

    Raises:
        InvalidRequest: an unknown type; a width not a multiple of 8 for the bit types.
    """
    if kind in ("binary", "ubinary"):
        bits = packed_signs(matrix)
        return (bits.astype(np.int16) - 128).astype(np.int8) if kind == "binary" else bits
    if kind in ("int8", "uint8"):
        values = scaled_int8(matrix)
        return values if kind == "int8" else (values.astype(np.int16) + 128).astype(np.uint8)
    raise InvalidRequest(f"compact token types are {', '.join(COMPACT_TYPES)}, got {kind!r}")


def maxsim_compact(a: Any, b: Any, precision: str, ranges: np.ndarray | None = None) -> torch.Tensor:
    """MaxSim of every query in ``a`` with every document in ``b`` (``[len(a), len(b)]``, float32)
    on compact token vectors, each side a list of ``[tokens, width]`` arrays of ``precision``:

    - ``binary`` / ``ubinary`` (signs packed 8 to a byte): a token pair's similarity is the dot
      product of the ``±1`` vectors, ``dim - 2 * hamming``, counted with XOR and popcount;
    - ``int8`` / ``uint8`` with ``ranges`` (:func:`quantize_embeddings`' per-dimension buckets):
      the dot product of the bucket centres;
    - ``int8`` / ``uint8`` without: the cosine of the rows, each scaled by its own peak as the
      server's ``embedding_type`` ``int8`` sends them (``uint8`` is ``int8`` plus 128).

    Raises:
        InvalidRequest: an unknown precision; sides of different widths.
    """
    if precision not in PRECISIONS or precision == "float32":
        raise InvalidRequest(f"compact MaxSim takes one of {PRECISIONS[1:]}, got {precision!r}")
    queries, docs = [np.asarray(m) for m in a], [np.asarray(m) for m in b]
    widths = {m.shape[-1] for m in queries + docs}
    if len(widths) > 1:
        raise InvalidRequest(f"the token vectors have different widths: {sorted(widths)}")
    if precision.endswith("binary"):
        as_bytes = [(m.astype(np.int16) + (128 if precision == "binary" else 0)).astype(np.uint8) for m in queries + docs]
        qs, ds = as_bytes[: len(queries)], as_bytes[len(queries):]
        return _hamming_maxsim(qs, ds, widths.pop() if widths else 0)
    levels = [m.astype(np.float32) + (128.0 if precision == "int8" else 0.0) for m in queries + docs]
    if ranges is not None:
        ranges = np.asarray(ranges, dtype=np.float32)
        steps = np.where(ranges[1] == ranges[0], 1, (ranges[1] - ranges[0]) / 255)
        values = [ranges[0] + (level + 0.5) * steps for level in levels]
    else:
        values = [level - 128.0 for level in levels]
        values = [v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12) for v in values]
    return maxsim([torch.from_numpy(v) for v in values[: len(queries)]], [torch.from_numpy(v) for v in values[len(queries):]])


#: Document tokens scored against a query at once by :func:`_hamming_maxsim` (bounds its memory).
_HAMMING_BLOCK = 4096


def _hamming_maxsim(queries: list[np.ndarray], docs: list[np.ndarray], width: int) -> torch.Tensor:
    """MaxSim on sign bits (``[tokens, width]`` uint8 each): every query token against every document
    token of the corpus at once, in blocks, ``8 * width - 2 * popcount(q ^ d)``; then each
    document's best per query token (``maximum.reduceat`` over its tokens), summed."""
    scores = torch.full((len(queries), len(docs)), EMPTY_DOCUMENT_SCORE, dtype=torch.float32)
    filled = [j for j, d in enumerate(docs) if len(d)]
    if not queries or not filled:
        return scores
    corpus = np.concatenate([docs[j] for j in filled])
    starts = np.cumsum([0] + [len(docs[j]) for j in filled[:-1]])
    dim = 8 * width
    for i, q in enumerate(queries):
        sims = np.empty((len(q), len(corpus)), dtype=np.int32)
        for at in range(0, len(corpus), _HAMMING_BLOCK):
            block = corpus[at : at + _HAMMING_BLOCK]
            sims[:, at : at + len(block)] = dim - 2 * np.bitwise_count(q[:, None, :] ^ block[None, :, :]).sum(-1, dtype=np.int32)
        best = np.maximum.reduceat(sims, starts, axis=1) if len(q) else np.zeros((0, len(filled)), np.int32)
        scores[i, filled] = torch.from_numpy(best.sum(0, dtype=np.int64).astype(np.float32))
    return scores
