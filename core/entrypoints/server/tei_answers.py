"""What each of TEI's HTTP routes answers with 200, as JSON schemas for ``/openapi.json`` (TEI's
``router/src/http/types.rs``)."""

from __future__ import annotations

from typing import Any

_NUMBERS = {"type": "array", "items": {"type": "number"}}
_SPARSE = {
    "type": "array",
    "items": {"type": "object", "required": ["index", "value"],
              "properties": {"index": {"type": "integer", "minimum": 0}, "value": {"type": "number"}}},
}
_PREDICTIONS = {
    "type": "array",
    "items": {"type": "object", "required": ["score", "label"], "properties": {"score": {"type": "number"}, "label": {"type": "string"}}},
}
_TOKEN = {
    "type": "object",
    "required": ["id", "text", "special", "start", "stop"],
    "properties": {
        "id": {"type": "integer"}, "text": {"type": "string"}, "special": {"type": "boolean"},
        "start": {"type": ["integer", "null"]}, "stop": {"type": ["integer", "null"]},
    },
}
_RANKS = {
    "type": "array",
    "items": {"type": "object", "required": ["index", "score"],
              "properties": {"index": {"type": "integer", "minimum": 0}, "text": {"type": "string"}, "score": {"type": "number"}}},
}
_INFO = {
    "type": "object",
    "required": ["model_id", "model_dtype", "model_type", "max_input_length", "max_client_batch_size", "auto_truncate", "version"],
    "properties": {"model_type": {"type": "object"}, "max_input_length": {"type": ["integer", "null"]}},
}
#: What each TEI operation answers with 200 (TEI's ``router/src/http/types.rs``).
ANSWERS = {
    "/embed": {"type": "array", "items": _NUMBERS},
    "/embed_all": {"type": "array", "items": {"type": "array", "items": _NUMBERS}},
    "/embed_sparse": {"type": "array", "items": _SPARSE},
    "/predict": {"anyOf": [_PREDICTIONS, {"type": "array", "items": _PREDICTIONS}]},
    "/tei/rerank": _RANKS,
    "/similarity": _NUMBERS,
    "/tei/tokenize": {"type": "array", "items": {"type": "array", "items": _TOKEN}},
    "/decode": {"type": "array", "items": {"type": "string"}},
    "/info": _INFO,
}


def answer(path: str) -> dict[str, Any]:
    """The operation's ``openapi_extra``: its 200's schema."""
    return {"responses": {"200": {"description": "Successful Response", "content": {"application/json": {"schema": ANSWERS[path]}}}}}
