"""The shapes of a request's inputs as a server receives them: an ``input`` field (a text, texts,
token ids, or lists of them) or chat ``messages`` (one conversation or a batch of them), checked
against the server's limits (:class:`~poolkit.inputs.request.InputLimits`) with the field at fault
named, before anything is rendered. The renderer's :meth:`~poolkit.inputs.Renderer.accept` applies
them to every request that carries limits.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..contracts.errors import InvalidRequest, short
from . import chat as chats
from .chat import Chat, checked_text
from .request import InputLimits


def check_token_ids(ids: Sequence[int], vocab: int | None, where: str) -> None:
    """Refuse a token id outside the vocabulary (``vocab`` ids; ``None``: any non-negative id)."""
    bad = next((t for t in ids if t < 0 or (vocab is not None and t >= vocab)), None)
    if bad is not None:
        known = f" (0..{vocab - 1})" if vocab is not None else ""
        raise InvalidRequest(f"{where}: token id {short(bad, 24)} is out of vocabulary{known}", param=where)


def input_items(value: Any, limits: InputLimits, where: str = "input") -> list[Any]:
    """The prompts of an ``input`` field, checked: strings, or ``{"prompt_token_ids": [...]}`` of
    each list of token ids.

    Raises:
        InvalidRequest: no input, too many, an empty or unreadable text, an empty list of token
            ids, an id outside the vocabulary.
    """
    if value is None:
        raise InvalidRequest(f"{where} is required", param=where)
    if isinstance(value, str):
        items: list[Any] = [value]
    elif value and all(isinstance(v, int) for v in value):
        items = [value]
    else:
        items = list(value)
    chats.check_count(len(items), where, limits.max_inputs)
    prompts: list[Any] = []
    for i, item in enumerate(items):
        name = f"{where}[{i}]" if len(items) > 1 or not isinstance(value, str) else where
        if isinstance(item, str):
            checked_text(item, name)
            prompts.append(item)
            continue
        if not item:
            raise InvalidRequest(f"{name} is an empty list of token ids", param=name)
        check_token_ids(item, limits.vocab, name)
        prompts.append({"prompt_token_ids": item})
    return prompts


def is_content(item: Any) -> bool:
    """Whether an input is a list of chat content parts (``{"type": "text", ...}``, ``image_url``, ...)."""
    return isinstance(item, list) and bool(item) and all(isinstance(part, dict) for part in item)


def message_chats(messages: Any, options: dict[str, Any], limits: InputLimits) -> list[Chat]:
    """The conversations of a ``messages`` field (one conversation, or a list of them), each with
    vLLM's chat fields ``options``.

    Raises:
        InvalidRequest: no conversation, or too many.
    """
    batched = bool(messages) and all(isinstance(m, list) for m in messages)
    conversations = messages if batched else [messages]
    chats.check_count(len(conversations), "messages", limits.max_inputs)
    return [chats.chat_of(m, options, f"messages[{i}]" if batched else "messages") for i, m in enumerate(conversations)]
