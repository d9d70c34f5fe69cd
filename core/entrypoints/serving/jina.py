"""Jina's multi-vector work (``/v1/multi-vector``), whatever door asks for it: Jina's HTTP route
(:mod:`poolkit.entrypoints.server.routes_jina`) parses its JSON into a :class:`MultiVector`, calls
:func:`multi_vector` with the :class:`~poolkit.entrypoints.serving.call.Call` and the served model,
and writes each input's token vectors in the embedding types asked for.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from ...inputs.chat import checked_text
from ...runtime.columns import Results
from .call import Call
from .errors import ApiError
from .inputs import check_bit_width, check_count, check_dimensions, pooling_params
from .state import ModelState
from .work import run_task

if TYPE_CHECKING:
    from ...api.llm import LLM

#: The task the route serves: every token's vector.
TOKEN_EMBED = "token_embed"


@dataclasses.dataclass(frozen=True)
class MultiVector:
    """``/v1/multi-vector``: texts, their retrieval side, the embedding types and width to answer in."""

    #: A text or a list of texts (a list: a refusal names the item, ``input[i]``).
    input: str | list[str] = ""
    #: The retrieval side the texts are encoded in (Jina's default: a document).
    side: str = "document"
    #: The side was asked for, not defaulted: then a model without sides gets it too.
    side_sent: bool = False
    #: One type (the answer holds that type's rows) or a list (the answer is keyed by type).
    embedding_type: str | list[str] = "float"
    dimensions: int | None = None
    token_pool_factor: int | None = None
    cache_salt: str | None = None

    @classmethod
    def of(cls, body: Any, side: str | None) -> MultiVector:
        """The request of a body with the same fields (an HTTP route's parsed JSON) and the side it
        asks for (``None``: Jina's default); an input may be Jina's ``TextDoc``, ``{"text": ...}``
        (an object with ``text``)."""
        fields = {f.name: getattr(body, f.name) for f in dataclasses.fields(cls) if f.name not in ("side", "side_sent")}
        value = body.input
        texts = [_text(item) for item in value] if isinstance(value, list) else _text(value)
        return cls(**{**fields, "input": texts}, side=side or "document", side_sent=side is not None)


def _text(item: Any) -> str:
    return item if isinstance(item, str) else item.text


def _texts(st: ModelState, value: str | list[str]) -> list[str]:
    """The request's texts, checked: a string, or a list of them."""
    items = value if isinstance(value, list) else [value]
    check_count(st, len(items), "input")
    for i, text in enumerate(items):
        checked_text(text, f"input[{i}]" if isinstance(value, list) else "input")
    return list(items)


class MultiVectors(NamedTuple):
    """What ``/v1/multi-vector`` computed: each input's token vectors, and the embedding types to
    write them in (those asked for, each once, in their order)."""

    results: Results
    types: list[str]


async def multi_vector(
    req: MultiVector, call: Call, st: ModelState, llm: LLM, number_bytes: Callable[[list[str], int | None], float]
) -> MultiVectors:
    """``/v1/multi-vector``: the token vectors of the texts, on their retrieval side.

    Args:
        number_bytes: the bytes of one result number in the answer, written in the given embedding
            types with rows of the given width (the response-bytes limit counts every type written).
    """
    if TOKEN_EMBED not in llm.supported_tasks:
        raise ApiError(400, f"model '{st.served}' has no token vectors (it serves {', '.join(llm.supported_tasks)})", param="model")
    types = list(dict.fromkeys([req.embedding_type] if isinstance(req.embedding_type, str) else req.embedding_type))
    if not types:
        raise ApiError(400, "embedding_type must not be empty", param="embedding_type")
    check_dimensions(st, req.dimensions, "dimensions")
    texts = _texts(st, req.input)
    params = pooling_params(dimensions=req.dimensions, token_pool_factor=req.token_pool_factor).with_salt(req.cache_salt)
    width = llm.task(TOKEN_EMBED).result_width(llm.model) if req.dimensions is None else req.dimensions
    check_bit_width(width, types, "embedding_type")
    # Jina's default side is "document": a model without sides encodes its texts as they are then.
    side = req.side if req.side_sent or llm.task(TOKEN_EMBED).has_roles(llm.model) else None
    _, results = await run_task(call, st, llm, TOKEN_EMBED, texts, params, number_bytes=number_bytes(types, width), side=side)
    return MultiVectors(results, types)
