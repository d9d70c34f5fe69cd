"""Encodings of pooled tensors: the HTTP server's wire formats, and how corpus jobs store them.

OpenAI / vLLM: ``float`` (JSON numbers), ``base64`` (the raw bytes of the tensor cast to
``embed_dtype``, in ``endianness`` byte order) and ``bytes`` (the same raw bytes as the whole
response body). Cohere ``/v2/embed``: ``float``, ``base64`` (little-endian float32) and the
bit-packed ``binary`` / ``ubinary`` types (one bit per dimension, ``1`` where the value is
``>= 0``, most significant bit first, 8 dimensions per byte; ``binary`` is the byte minus 128).

Corpus jobs store a vector as one of :data:`STORED_DTYPES` (:func:`stored_values`), with the
same encoders: ``bfloat16`` as the bit patterns of :func:`tensor_bytes` (uint16), ``binary`` /
``ubinary`` as above, and Cohere's ``int8`` / ``uint8`` (:func:`int8`, :func:`uint8`).

Multi-vector responses send a matrix of token vectors a row a token in any of those types
(:func:`token_rows`, :func:`compact_tokens`).
"""

from __future__ import annotations

import base64
import sys

import numpy as np
import torch

from ..api.st_functions import COMPACT_TYPES, compact_tokens, packed_signs, scaled_int8
from ..contracts.errors import InvalidRequest

__all__ = [
    "COMPACT_TYPES", "binary", "check_stored_dtype", "cohere_base64", "compact_tokens", "int8", "stored_values", "tensor_base64",
    "tensor_bytes", "token_rows", "ubinary", "uint8",
]

#: ``embed_dtype`` values and the torch dtypes they cast to (vLLM's set: fp8 as one byte a value).
EMBED_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
ENDIANNESS = ("native", "little", "big")


def tensor_bytes(tensor: torch.Tensor, embed_dtype: str = "float32", endianness: str = "native") -> bytes:
    """The raw bytes of ``tensor`` (row-major) cast to ``embed_dtype``, in the given byte order."""
    if embed_dtype not in EMBED_DTYPES:
        raise InvalidRequest(f"embed_dtype must be one of {', '.join(EMBED_DTYPES)}, got {embed_dtype!r}")
    if endianness not in ENDIANNESS:
        raise InvalidRequest(f"endianness must be one of {', '.join(ENDIANNESS)}, got {endianness!r}")
    t = tensor.detach().to("cpu", EMBED_DTYPES[embed_dtype]).contiguous()
    if t.dtype == torch.bfloat16:
        array = t.view(torch.int16).numpy()  # numpy has no bfloat16: reinterpret the 2-byte words
    elif t.element_size() == 1:
        array = t.view(torch.uint8).numpy()  # nor fp8: one byte a value, no byte order
    else:
        array = t.numpy()
    if endianness != "native" and endianness != sys.byteorder:
        array = array.byteswap()
    return array.tobytes()


def tensor_base64(tensor: torch.Tensor, embed_dtype: str = "float32", endianness: str = "native") -> str:
    """:func:`tensor_bytes`, base64-encoded (what the ``openai`` client decodes as float32)."""
    return base64.b64encode(tensor_bytes(tensor, embed_dtype, endianness)).decode("ascii")


def ubinary(vector: torch.Tensor) -> list[int]:
    """Cohere ``ubinary``: the sign bits packed MSB first, as unsigned bytes (0..255)."""
    return packed_signs(vector)[0].astype(np.int64).tolist()


def binary(vector: torch.Tensor) -> list[int]:
    """Cohere ``binary``: the ``ubinary`` bytes minus 128 (signed, -128..127)."""
    return (packed_signs(vector)[0].astype(np.int64) - 128).tolist()


def cohere_base64(vector: torch.Tensor) -> str:
    """Cohere ``base64``: little-endian float32 bytes."""
    return tensor_base64(vector, "float32", "little")


def int8(vector: torch.Tensor) -> list[int]:
    """Cohere ``int8``: one signed byte per dimension (:func:`scaled_int8`)."""
    return scaled_int8(vector)[0].astype(np.int64).tolist()


def uint8(vector: torch.Tensor) -> list[int]:
    """Cohere ``uint8``: the :func:`int8` bytes plus 128 (1..255), as ``ubinary`` is ``binary`` plus 128."""
    return (scaled_int8(vector)[0].astype(np.int64) + 128).tolist()


def token_rows(matrix: torch.Tensor, kind: str) -> list:
    """A ``[tokens, dim]`` matrix in a multi-vector response's ``embedding_type``: ``float`` (lists of
    numbers), ``base64`` (one string per token, little-endian float32, as Jina's API sends it) or a
    compact type (:func:`compact_tokens`, lists of integers)."""
    if kind == "float":
        return matrix.detach().to("cpu", torch.float32).tolist()
    if kind == "base64":
        return [cohere_base64(row) for row in matrix]
    return compact_tokens(matrix, kind).tolist()


#: How a corpus job stores a vector (``embed_dtype``), and the numpy type of the stored values:
#: ``bfloat16`` as its bit patterns, ``binary`` / ``ubinary`` as 8 dimensions per byte.
STORED_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}

#: The stored types that keep one value per dimension of a float (others quantise a vector).
FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def check_stored_dtype(embed_dtype: str) -> str:
    """``embed_dtype`` itself if it is one of :data:`STORED_DTYPES`.

    Raises:
        InvalidRequest: naming the types there are.
    """
    if embed_dtype not in STORED_DTYPES:
        raise InvalidRequest(f"embed_dtype must be one of {', '.join(STORED_DTYPES)}, got {embed_dtype!r}")
    return embed_dtype


def stored_values(tensor: torch.Tensor, embed_dtype: str) -> list:
    """``tensor`` as the JSON-ready values a corpus job stores for ``embed_dtype``.

    Float types keep the tensor's shape (nested lists of the values rounded to that type;
    ``bfloat16`` as the little-endian uint16 bit patterns :func:`tensor_bytes` sends); the
    quantised types (:func:`int8`, :func:`uint8`, :func:`binary`, :func:`ubinary`) take one
    vector.
    """
    check_stored_dtype(embed_dtype)
    if embed_dtype == "float32":
        return tensor.detach().to("cpu", torch.float32).tolist()
    if embed_dtype == "float16":
        return tensor.detach().to("cpu", torch.float16).tolist()
    if embed_dtype == "bfloat16":
        bits = np.frombuffer(tensor_bytes(tensor, "bfloat16", "little"), dtype="<u2")
        return bits.reshape(tuple(tensor.shape)).tolist()
    return {"int8": int8, "uint8": uint8, "binary": binary, "ubinary": ubinary}[embed_dtype](tensor)
