"""Wire formats of responses: JSON bodies, usage blocks and the encodings of result tensors.

``float`` results are JSON numbers; ``base64`` the raw bytes of each tensor cast to
``embed_dtype`` in ``endianness`` order; ``bytes`` / ``bytes_only`` the concatenated raw bytes as
the body, with a ``metadata`` header for ``bytes``. Large bodies are built and serialised off the
event loop. NaN and Infinity are never written: they are a 500.

Routes whose items are rows of one result tensor (``list_response(..., arrays=True)``) are
written by orjson from NumPy rows, checked for NaN once for the whole tensor: no Python float is
made per number. The rows are float64 views of the results, so the numbers read back exactly as
the Python API's lists of floats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from typing import Any, Callable, Iterable

import numpy as np
import orjson
import torch
from fastapi import Request
from fastapi.responses import Response

from ...runtime.columns import Results
from ..encodings import EMBED_DTYPES, tensor_base64, tensor_bytes
from ..serving.errors import ApiError
from ..serving.work import JSON_NUMBER_BYTES

# Bodies built from more numbers than this are built on a worker thread.
_OFF_LOOP = 32768
#: Tensor dtypes NumPy reads as they are.
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
_NON_FINITE = "the model produced a non-finite value (NaN or Infinity); no result was returned"



#: Bytes of one result number in a response, at most about, in each embedding type of Cohere's and
#: Jina's APIs: a JSON number; base64 of a float32 (4 bytes in 16/3 characters); signs packed 8 to a
#: byte written as a JSON integer (``-128,`` for ``binary``, ``255,`` for ``ubinary``: 5/8 and 4/8
#: of a byte a number); ``int8`` / ``uint8`` one JSON integer a number (``-128,``, ``255,``).
TYPE_BYTES = {"float": JSON_NUMBER_BYTES, "base64": 16 / 3, "binary": 5 / 8, "ubinary": 4 / 8, "int8": 5, "uint8": 4}
#: Bytes around one row of numbers in each type: its brackets (or quotes and base64's padding) and comma.
ROW_BYTES = 5


def types_bytes(types: Iterable[str], width: int | None = None) -> float:
    """Bytes of one result number in a response that sends it in each of ``types`` (Cohere's
    ``embedding_types``, Jina's list of ``embedding_type``): every type is written, so their sum,
    with each type's share of what surrounds a row of ``width`` numbers (a vector, or a token's)."""
    types = list(types)
    return sum(TYPE_BYTES[kind] for kind in types) + (len(types) * ROW_BYTES / width if width else 0)


def number_bytes(body: Any) -> float:
    """Bytes of one result number in the response to ``body``: a JSON number, or its
    ``embed_dtype``'s bytes, base64-encoded or raw (the ``bytes`` encodings)."""
    if body.encoding_format == "float":
        return JSON_NUMBER_BYTES
    size = EMBED_DTYPES[body.embed_dtype].itemsize
    return size * 4 / 3 if body.encoding_format == "base64" else size


def request_id(request: Request, prefix: str) -> str:
    """``prefix-<X-Request-Id>`` when the client sent a short printable one, else ``prefix-`` and
    128 random bits in hex (as a uuid4's hex)."""
    given = request.headers.get("x-request-id")
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return f"{prefix}-{given}"
    return f"{prefix}-{random.getrandbits(128):032x}"  # an id, not a secret: no system call for it


def usage(tokens: int) -> dict[str, Any]:
    """The OpenAI ``usage`` block of a pooling request."""
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": None}


def dump(payload: Any) -> bytes:
    """Compact UTF-8 JSON; a 500 for NaN or Infinity."""
    try:
        return json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except ValueError:
        raise ApiError(500, _NON_FINITE) from None


def dump_arrays(payload: Any) -> bytes:
    """Compact UTF-8 JSON of a payload holding NumPy arrays, by orjson; the caller has refused
    NaN and Infinity first (orjson would write them as ``null``)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(payload: Any) -> Response:
    """A small JSON response, built on the loop."""
    return Response(dump(payload), media_type="application/json")


async def respond(
    build: Callable[[], Any], size: int, headers: dict[str, str] | None = None, serialise: Callable[[Any], bytes] = dump
) -> Response:
    """Build and serialise a JSON response; off the event loop when ``size`` (numbers) is large."""

    def render() -> bytes:
        return serialise(build())

    body = await asyncio.to_thread(render) if size > _OFF_LOOP else render()
    return Response(body, media_type="application/json", headers=headers)


def check_finite(results: Results) -> None:
    """Refuse to send results holding NaN or Infinity (a 500: the model, not the client, is at fault)."""
    tensors = [results.data] if isinstance(results.data, torch.Tensor) else results.data
    for tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ApiError(500, _NON_FINITE)


def encode_tensor(tensor: torch.Tensor | np.ndarray, body: Any) -> Any:
    """One result in the request's ``encoding_format``: nested lists (a NumPy row as it is, for
    :func:`dump_arrays`), or a base64 string."""
    if body.encoding_format == "float":
        return tensor if isinstance(tensor, np.ndarray) else tensor.tolist()
    return tensor_base64(tensor, body.embed_dtype, body.endianness)


async def list_response(
    request: Request,
    body: Any,
    prefix: str,
    served: str,
    results: Results,
    item: Callable[[int, Any], dict],
    *,
    arrays: bool = False,
) -> Response:
    """The OpenAI list response (``{"id", "object": "list", "data", "usage"}``) of per-input results.

    Args:
        body: the request; its ``encoding_format``, ``embed_dtype`` and ``endianness`` apply.
        prefix: the response id's prefix (``embd``, ``pool``).
        item: one entry of ``data`` from an input's index and tensor (float or base64 formats);
            ``bytes`` formats send the tensors themselves.
        arrays: ``item`` takes a float64 NumPy row in the ``float`` format (written by orjson,
            checked for NaN once), when the results are one tensor of rows.
    """
    rid = request_id(request, prefix)
    created = int(time.time())
    tokens = results.num_tokens
    if body.encoding_format in ("bytes", "bytes_only"):
        return await bytes_response(rid, created, served, body, results, tokens)
    data = results.data
    rows_of_one_tensor = arrays and body.encoding_format == "float" and isinstance(data, torch.Tensor)

    def build() -> dict:
        if rows_of_one_tensor:
            rows: Any = (data.numpy() if data.dtype in _NUMPY_FLOATS else data.to(torch.float32).numpy()).astype(np.float64)
            if not np.isfinite(rows).all():
                raise ApiError(500, _NON_FINITE)
        else:
            if body.encoding_format != "float":  # JSON numbers are refused by dump()
                check_finite(results)
            rows = results.rows()
        return {
            "id": rid,
            "object": "list",
            "created": created,
            "model": served,
            "data": [item(i, t) for i, t in enumerate(rows)],
            "usage": usage(tokens),
        }

    size = data.numel() if isinstance(data, torch.Tensor) else sum(t.numel() for t in data)
    return await respond(build, size, serialise=dump_arrays if rows_of_one_tensor else dump)


async def bytes_response(request_id: str, created: int, served: str, body: Any, results: Results, tokens: int) -> Response:
    """``encoding_format`` ``bytes`` / ``bytes_only``: the raw tensors as the body (vLLM)."""

    def build() -> tuple[bytes, list[dict]]:
        check_finite(results)
        chunks, meta, offset = [], [], 0
        for i, (t, _) in enumerate(results):
            raw = tensor_bytes(t, body.embed_dtype, body.endianness)
            meta.append({"index": i, "embed_dtype": body.embed_dtype, "endianness": body.endianness,
                         "start": offset, "end": offset + len(raw), "shape": list(t.shape)})
            chunks.append(raw)
            offset += len(raw)
        return b"".join(chunks), meta

    size = sum(t.numel() for t, _ in results)
    payload, meta = await asyncio.to_thread(build) if size > _OFF_LOOP else build()
    headers = {}
    if body.encoding_format == "bytes":
        headers["metadata"] = json.dumps(
            {"id": request_id, "created": created, "model": served, "data": meta,
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
            separators=(",", ":"),
        )
    return Response(payload, media_type="application/octet-stream", headers=headers)


def jsonable(obj: Any, depth: int = 0) -> Any:
    """A plugin's output as JSON-ready data (tensors and arrays as nested lists)."""
    if depth > 64:
        raise ApiError(500, "the IO processor's output is nested too deeply to return")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj)}
    if hasattr(obj, "model_dump"):
        return jsonable(obj.model_dump(), depth + 1)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in obj]
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict(), depth + 1)
    return str(obj)
