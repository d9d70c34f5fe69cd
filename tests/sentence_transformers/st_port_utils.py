"""Helpers shared by the ports of sentence-transformers' tests (tests/sentence_transformers).

Every port compares poolkit's drop-in classes (``poolkit.SentenceTransformer``, ``CrossEncoder``,
``SparseEncoder``) with the real sentence-transformers on the same offline weights; these helpers
turn both sides' outputs into dense float tensors and hold them to the fp32 tolerances.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

#: fp32 parity: largest absolute difference, and the smallest cosine between two rows.
ATOL = 1e-4
MIN_COSINE = 0.99999

#: The model state the ports change; the session models get it back after every test.
MODEL_STATE = ("prompts", "default_prompt_name", "similarity_fn_name", "truncate_dim", "max_seq_length", "max_active_dims")

_MISSING = object()


@contextlib.contextmanager
def restored(model: Any, names: Sequence[str] = MODEL_STATE) -> Iterator[Any]:
    """Yield ``model``; afterwards put back the attributes in ``names`` that it had."""
    saved = {}
    for name in names:
        try:
            value = getattr(model, name)
        except Exception:  # an attribute the class does not have (or cannot give) is not restored
            continue
        saved[name] = dict(value) if isinstance(value, dict) else value
    try:
        yield model
    finally:
        for name, value in saved.items():
            with contextlib.suppress(Exception):
                setattr(model, name, value)


def dense(x: Any) -> torch.Tensor:
    """A float64 CPU tensor from a tensor (sparse or dense), an ndarray, a number, or a list of those."""
    if isinstance(x, torch.Tensor):
        if x.is_sparse or x.layout != torch.strided:
            x = x.to_dense()
        return x.detach().cpu().to(torch.float64)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x, dtype=np.float64))
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            return torch.zeros(0, dtype=torch.float64)
        return torch.stack([dense(item) for item in x])
    return torch.tensor(float(x), dtype=torch.float64)


def assert_close(got: Any, ref: Any, atol: float = ATOL) -> None:
    """Same shape, every element within ``atol``; rows of 2-D (or 1-D) embeddings also by cosine."""
    got_t, ref_t = dense(got), dense(ref)
    assert got_t.shape == ref_t.shape, f"shape {tuple(got_t.shape)} != reference {tuple(ref_t.shape)}"
    if got_t.numel() == 0:
        return
    diff = (got_t - ref_t).abs().max().item()
    assert diff <= atol, f"max |diff| {diff:.3g} > {atol}"
    if got_t.ndim in (1, 2) and got_t.shape[-1] > 8:
        rows_got, rows_ref = got_t.reshape(-1, got_t.shape[-1]), ref_t.reshape(-1, ref_t.shape[-1])
        nonzero = (rows_ref.norm(dim=-1) > 0) & (rows_got.norm(dim=-1) > 0)
        if nonzero.any():
            cos = torch.nn.functional.cosine_similarity(rows_got[nonzero], rows_ref[nonzero], dim=-1)
            assert cos.min().item() >= MIN_COSINE, f"min cosine {cos.min().item():.7f} < {MIN_COSINE}"


def assert_same_quantized(got: Any, ref: Any, precision: str) -> None:
    """Quantized embeddings of the same float embeddings (equal to fp32 rounding): int8/uint8 values
    may differ by one step where a float lands on a bucket edge, packed binary bits may flip where a
    value is within rounding of zero (at most 1 bit in 200)."""
    got_a = got.cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    ref_a = ref.cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert got_a.shape == ref_a.shape
    assert got_a.dtype == ref_a.dtype, f"dtype {got_a.dtype} != reference {ref_a.dtype}"
    if precision in ("binary", "ubinary"):
        bits_got = np.unpackbits(got_a.astype(np.uint8).reshape(-1))
        bits_ref = np.unpackbits(ref_a.astype(np.uint8).reshape(-1))
        assert (bits_got != bits_ref).mean() <= 1 / 200
    elif precision in ("int8", "uint8"):
        assert np.abs(got_a.astype(np.int32) - ref_a.astype(np.int32)).max() <= 1
    else:
        assert_close(got_a, ref_a)


def sparse_rows_equal_support(got: torch.Tensor, ref: torch.Tensor) -> None:
    """SPLADE outputs: same values within ATOL and the same active dimensions, row by row."""
    got_t, ref_t = dense(got), dense(ref)
    assert got_t.shape == ref_t.shape
    assert_close(got_t, ref_t)
    for row_got, row_ref in zip(got_t.reshape(-1, got_t.shape[-1]), ref_t.reshape(-1, ref_t.shape[-1])):
        assert torch.equal(row_got.nonzero().flatten(), row_ref.nonzero().flatten())


class SequenceColumn(Sequence):
    """A read-only sequence that is not a ``list``: what ``datasets`` hands out as a column
    (``datasets.Column`` since datasets 4). Stands in for ``Dataset.from_dict(...)["text"]``."""

    def __init__(self, values: Sequence[Any]) -> None:
        self._values = list(values)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return SequenceColumn(self._values[index])
        return self._values[index]

    def __len__(self) -> int:
        return len(self._values)


def encode_reference_or_error(call):
    """Run ``call``; return ``("ok", value)`` or ``("error", exception type)``."""
    try:
        return "ok", call()
    except Exception as exc:  # noqa: BLE001 - the port compares outcomes, whatever they are
        return "error", type(exc)


# -- the MultiVectorEncoder ports (test_multi_vector_encoder*.py) ---------------------------------


def _assert_same_vectors(got, ref, atol: float = ATOL) -> None:
    """Per-input token vectors: the same number of inputs, of rows per input, and the same values."""
    assert len(got) == len(ref)
    for got_item, ref_item in zip(got, ref):
        assert tuple(got_item.shape) == tuple(ref_item.shape), f"{tuple(got_item.shape)} != reference {tuple(ref_item.shape)}"
        assert_close(got_item, ref_item, atol)


def _rows(embeddings) -> list[int]:
    return [int(e.shape[0]) for e in embeddings]
