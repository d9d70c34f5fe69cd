"""Wire encodings of pooled tensors for the HTTP server.

OpenAI / vLLM: ``float`` (JSON numbers), ``base64`` (the raw bytes of the tensor cast to
``embed_dtype``, in ``endianness`` byte order) and ``bytes`` (the same raw bytes as the whole
response body). Cohere ``/v2/embed``: ``float``, ``base64`` (little-endian float32) and the
bit-packed ``binary`` / ``ubinary`` types (one bit per dimension, ``1`` where the value is
``>= 0``, most significant bit first, 8 dimensions per byte; ``binary`` is the byte minus 128).
"""

from __future__ import annotations

import base64
import sys

import numpy as np
import torch

from .errors import InvalidRequest

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


def _bits(vector: torch.Tensor) -> np.ndarray:
    values = vector.detach().to("cpu", torch.float32).numpy().reshape(-1)
    if values.size % 8:
        raise InvalidRequest(
            f"Embedding dimension must be a multiple of 8 for binary embedding types, but got {values.size}."
        )
    return np.packbits(values >= 0, bitorder="big")


def ubinary(vector: torch.Tensor) -> list[int]:
    """Cohere ``ubinary``: the sign bits packed MSB first, as unsigned bytes (0..255)."""
    return _bits(vector).astype(np.int64).tolist()


def binary(vector: torch.Tensor) -> list[int]:
    """Cohere ``binary``: the ``ubinary`` bytes minus 128 (signed, -128..127)."""
    return (_bits(vector).astype(np.int64) - 128).tolist()


def cohere_base64(vector: torch.Tensor) -> str:
    """Cohere ``base64``: little-endian float32 bytes."""
    return tensor_base64(vector, "float32", "little")
