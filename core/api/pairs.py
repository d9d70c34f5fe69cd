"""A score request's two sides: checked, paired and cut, with vLLM's rules and wording.

``LLM.score``, ``LLM.rerank`` and the server's score routes take their sides through these
functions, so pairing (1:1, 1:N, N:N) and the per-side token limits (``max_tokens_per_query`` /
``max_tokens_per_doc``) have one home.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..contracts.errors import InvalidRequest
from ..contracts.scoring import score_extra

if TYPE_CHECKING:
    from ..runtime.engine import Engine

#: The per-side limits a score request may set in ``PoolingParams.extra_kwargs`` (vLLM's names).
SIDE_LIMITS = ("max_tokens_per_query", "max_tokens_per_doc")


def score_side(data: Any, what: str) -> list[str]:
    """One side of a score request as a list of strings (a string is a list of one).

    Raises:
        InvalidRequest: not a string or a list of strings, or an empty list (vLLM's wording).
    """
    items = [data] if isinstance(data, str) else data
    if items is None or not isinstance(items, (list, tuple)):
        raise InvalidRequest(f"score inputs must be a string or a list of strings, got {type(data).__name__}")
    if not items:
        raise InvalidRequest(f"At least one {what} element must be given")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidRequest(f"{what} {i} must be a string, got {type(item).__name__}")
    return list(items)


def pair(first: Any, second: Any) -> tuple[list[str], list[str]]:
    """Both sides as equal-length lists: 1:1, one against N (1:N), or N:N.

    Raises:
        InvalidRequest: with vLLM's wording, for an empty side or lengths that do not pair.
    """
    first = score_side(first, "text")
    second = score_side(second, "text_pair")
    if len(first) != 1 and len(first) != len(second):
        raise InvalidRequest("Input lengths must be either 1:1, 1:N or N:N")
    return (first * len(second) if len(first) == 1 else first), second


def check_side_limit(name: str, limit: Any, max_model_len: int | None) -> None:
    """Check a ``max_tokens_per_query`` / ``max_tokens_per_doc`` value (vLLM's wording).

    Raises:
        InvalidRequest: not a positive integer, or not below the model's ``max_model_len``.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidRequest(f"{name} must be a positive integer, got {limit!r}")
    if max_model_len is not None and limit >= max_model_len:
        raise InvalidRequest(f"{name} ({limit}) must be less than max_model_len ({max_model_len})")


def cut_sides(engine: Engine, first: list[str], second: list[str], pooling_params: Any) -> tuple[list[str], list[str]]:
    """Queries and documents cut to ``max_tokens_per_query`` / ``max_tokens_per_doc`` tokens of
    their own (``PoolingParams.extra_kwargs``, as in vLLM), before any template or pairing.

    Raises:
        InvalidRequest: a limit that is not a positive integer below ``max_model_len``.
    """
    extra = score_extra(pooling_params)
    out = []
    for name, texts in zip(SIDE_LIMITS, (first, second)):
        limit = extra.get(name)
        if limit is None:
            out.append(texts)
            continue
        check_side_limit(name, limit, engine.model.max_model_len.value)
        out.append([engine.cut_text(text, limit) for text in texts])
    return out[0], out[1]
