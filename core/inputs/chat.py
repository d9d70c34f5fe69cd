"""Chat messages as a prompt: the checks and the chat template's rendering.

A conversation (OpenAI's chat messages, vLLM's chat-style pooling inputs) is rendered with the
model's chat template (``--chat-template`` / ``LLM.embed(chat_template=...)``, else the
tokenizer's) into one prompt: its token ids, or, with image or video parts, its text with the
media, which the model's media processor reads. The checks run before any work, so a bad message
costs nothing; the rendering itself is work for the thread that tokenizes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Mapping, NamedTuple, Protocol, Sequence

from ..contracts.errors import InvalidRequest, short
from ..contracts.io import Prompt, check_text
from ..runtime.estimates import tokens_of_text

if TYPE_CHECKING:
    from ..contracts.model import Tokenizer

#: ``apply_chat_template`` arguments that the request sets by other fields (or never): not template variables.
RESERVED_TEMPLATE_KWARGS = (
    "conversation", "messages", "chat_template", "tools", "documents", "tokenize", "add_generation_prompt",
    "continue_final_message", "return_dict", "return_tensors", "padding", "truncation", "max_length",
)


def check_template_kwargs(kwargs: Mapping[str, Any] | None) -> None:
    """Refuse ``chat_template_kwargs`` that name :data:`RESERVED_TEMPLATE_KWARGS`, whether or not the
    request has a conversation to render (the request schema states the rule for every request).

    Raises:
        InvalidRequest: naming the reserved keys.
    """
    if not kwargs:  # most requests: nothing to check, on the single-text path's budget
        return
    reserved = sorted(set(kwargs) & set(RESERVED_TEMPLATE_KWARGS))
    if reserved:
        raise InvalidRequest(f"chat_template_kwargs may not set {', '.join(reserved)}", param="chat_template_kwargs")


#: The content part types that carry media, by kind (OpenAI's chat parts, vLLM's ``video_url``, and
#: offline vLLM's ``image_pil``, whose value is the image itself).
MEDIA_PARTS = {"image_url": "image", "video_url": "video", "image_pil": "image"}


@dataclass(frozen=True)
class Chat:
    """One conversation to render as one prompt (vLLM's chat-style pooling input).

    Attributes:
        messages: ``[{"role": ..., "content": str | [parts]}]``; parts are ``{"type": "text", "text": ...}``,
            ``{"type": "image_url", "image_url": {"url": ...}}`` and ``{"type": "video_url", "video_url": {"url": ...}}``.
        add_generation_prompt: end the rendering with the template's assistant header.
        continue_final_message: leave the last message open (not with ``add_generation_prompt``).
        template_kwargs: more variables for the template (vLLM's ``chat_template_kwargs``).
        add_special_tokens: tokenize the rendering with the tokenizer's special tokens (the template
            writes its own, so vLLM's default is no).
        where: the request field the conversation came from, for error messages.
        instead: the field to send instead when the model has no chat template.
        chat_template: the template to render with instead of the renderer's (vLLM's per-call ``chat_template``).
    """

    messages: Sequence[Any]
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool = False
    where: str = "messages"
    instead: str = "input"
    chat_template: str | None = None


#: The chat-style fields of a ``{"messages": [...]}`` input (vLLM's names) and the :class:`Chat` field of each.
CHAT_FIELDS = {
    "add_generation_prompt": "add_generation_prompt",
    "continue_final_message": "continue_final_message",
    "chat_template_kwargs": "template_kwargs",
    "add_special_tokens": "add_special_tokens",
    "chat_template": "chat_template",
}


def chat_of(messages: Any, fields: dict[str, Any], where: str = "messages", instead: str = "input") -> Chat:
    """The :class:`Chat` of ``messages`` with vLLM's chat-style ``fields`` (:data:`CHAT_FIELDS`;
    ``None``: the default), from the request field ``where``; ``instead`` is the field to send
    instead when the model has no chat template.

    Raises:
        InvalidRequest: a field that is not one of them.
    """
    unknown = sorted(set(fields) - set(CHAT_FIELDS))
    if unknown:
        raise InvalidRequest(f"a chat input takes 'messages' and {', '.join(CHAT_FIELDS)}; got {', '.join(unknown)}")
    kwargs = {CHAT_FIELDS[k]: v for k, v in fields.items() if v is not None}
    return Chat(messages, where=where, instead=instead, **kwargs)


def check_chat(chat: Chat, template: str | None, served: str, max_messages: int | None = None, hint: str = "") -> None:
    """Refuse a conversation before any work: no chat template, reserved ``template_kwargs``,
    contradictory flags, no messages (or more than ``max_messages``), a message without a string
    role or with content that is neither a string nor a list of parts. ``hint`` ends the message
    of a model without a template (the server's ``--chat-template``).

    Raises:
        InvalidRequest: naming the field at fault.
    """
    where = chat.where
    if not template:
        raise InvalidRequest(
            f"model '{served}' has no chat template: send '{chat.instead}' instead of '{where}'{hint}",
            param=where,
        )
    check_template_kwargs(chat.template_kwargs)
    if chat.add_generation_prompt and chat.continue_final_message:
        raise InvalidRequest("Cannot set both `continue_final_message` and `add_generation_prompt` to True.", param=where)
    check_count(len(chat.messages), where, max_messages)
    for i, message in enumerate(chat.messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"{where}[{i}] needs a string 'role'", param=f"{where}[{i}].role")
        content = message.get("content")
        if isinstance(content, str):
            if content:
                checked_text(content, f"{where}[{i}].content")
        elif not isinstance(content, list):
            raise InvalidRequest(f"{where}[{i}].content must be a string or a list of parts", param=f"{where}[{i}].content")


def check_count(count: int, where: str, limit: int | None) -> None:
    """Refuse no inputs (messages), and more than ``limit`` (the server's ``--max-inputs-per-request``)."""
    if count == 0:
        raise InvalidRequest(f"{where} must not be empty", param=where)
    if limit is not None and count > limit:
        raise InvalidRequest(f"too many inputs: {count} > {limit} per request (--max-inputs-per-request)", param=where)


def checked_text(text: str, where: str) -> None:
    """:func:`poolkit.contracts.io.check_text` with the field at fault named."""
    try:
        check_text(text, where)
    except InvalidRequest as exc:
        raise InvalidRequest(str(exc), param=where) from None


#: A template loop over a message's content (``for part in message['content']`` / ``message.content``):
#: the template takes OpenAI's list of parts, as vLLM detects its "openai" content format.
_CONTENT_LOOP = re.compile(r"\{%-?\s*for\s+\w+\s+in\s+\w+\s*(?:\[\s*['\"]content['\"]\s*\]|\.content\b)")


def content_as_parts(template: str, messages: Sequence[Any]) -> list[Any]:
    """``messages`` as ``template`` reads them: a string content becomes one text part when the
    template loops over each message's parts (vLLM's "openai" content format), so a plain string
    renders as its text rather than as nothing."""
    if not _CONTENT_LOOP.search(template):
        return list(messages)
    return [
        {**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m, dict) and isinstance(m.get("content"), str) else m
        for m in messages
    ]


def rendering_cost(messages: Sequence[Any]) -> int:
    """Tokens the rendering of chat messages is guessed at (the batcher's cost of the work)."""
    return tokens_of_text(sum(len(json.dumps(m, default=str)) for m in messages))


def renderer(tokenizer: Tokenizer, template: str, chat: Chat, messages: Sequence[Any] | None = None) -> Callable[[], str]:
    """The rendering of ``chat`` (or of ``messages``, its parts already rewritten) as text, to run
    on the thread that tokenizes; string contents given as parts to a template that loops over
    them (:func:`content_as_parts`).

    Raises:
        InvalidRequest: when called, a template that fails on these messages.
    """

    def render() -> str:
        try:
            return tokenizer.apply_chat_template(
                content_as_parts(template, chat.messages if messages is None else messages),
                chat_template=template,
                tokenize=False,
                add_generation_prompt=chat.add_generation_prompt,
                continue_final_message=chat.continue_final_message,
                **(chat.template_kwargs or {}),
            )
        except Exception as exc:  # jinja2 errors, bad message shapes
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InvalidRequest(f"cannot apply the chat template: {short(reason, 200)}") from None

    return render


class Part(NamedTuple):
    """One content part as :func:`content_part` reads it.

    Attributes:
        type: the part's type (``"text"``, ``"image_url"``, ``"video_url"``, ``"image_pil"``, ...; a part
            with an ``image_url`` key and no ``type`` is an ``image_url``), ``None`` for no type at all.
        value: a text part's text, a media part's URL (``{"url": ...}`` or the string itself) or image;
            ``None`` where the part lacks it.
    """

    type: str | None
    value: Any


def content_part(part: Any) -> Part:
    """The one reading of a content part (OpenAI's chat parts, vLLM's ``video_url`` and offline
    ``image_pil``, and a score request's ``{"content": [...]}``), for chat messages and score sides alike;
    each caller words its own refusal of a part it does not take."""
    if not isinstance(part, dict):
        return Part(None, None)
    kind = part.get("type")
    if kind is None and "image_url" in part:
        kind = "image_url"
    if kind == "text":
        return Part(kind, part["text"] if isinstance(part.get("text"), str) else None)
    value = part.get(kind) if isinstance(kind, str) else None
    return Part(kind, value.get("url") if isinstance(value, dict) else value)


def has_media_parts(messages: Sequence[Any]) -> bool:
    """Whether chat messages carry a content part other than text: an image or a video, or a part
    :func:`media_parts` refuses (``input_audio``, ...), which a chat template would otherwise drop
    without a word."""
    return any(
        isinstance(m, dict) and isinstance(m.get("content"), list)
        and any(not _is_text(content_part(p)) for p in m["content"])
        for m in messages
    )


def _is_text(part: Part) -> bool:
    return part.type == "text" and part.value is not None


def _url(part: Part, where: str) -> Any:
    """The URL of an ``image_url`` / ``video_url`` part (``{"image_url": {"url": ...}}`` or
    ``{"image_url": "..."}``), or an ``image_pil`` part's image."""
    if part.type == "image_pil":
        return part.value
    if not isinstance(part.value, str) or not part.value:
        media = MEDIA_PARTS[part.type]
        raise InvalidRequest(f"{where}: an {part.type} part needs '{part.type}': {{'url': 'data:{media}/...;base64,...'}}", param=where)
    return part.value


def media_parts(
    messages: Sequence[dict[str, Any]], where: str, kinds: Sequence[str] = ("image_url",)
) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]], list[str]]:
    """Messages as a chat template reads them (vLLM's "openai" content format: each text part
    ``{"type": "text", "text": ...}``, each image ``{"type": "image"}``, each video ``{"type": "video"}``),
    the media in order as ``(kind, url, field)`` (an ``image_pil`` part's image instead of a URL),
    and the texts of the messages.

    Args:
        kinds: the media part types the model reads (``image_url``, and ``video_url`` for a model of videos).

    Raises:
        InvalidRequest: a part that is neither text nor media of ``kinds``.
    """
    rendered: list[dict[str, Any]] = []
    media: list[tuple[str, str, str]] = []
    texts: list[str] = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            rendered.append(message)
            texts += [content] if isinstance(content, str) and content else []
            continue
        parts = []
        for j, raw in enumerate(content):
            at = f"{where}[{i}].content[{j}]"
            part = content_part(raw)
            kind = part.type
            if kind in kinds:
                media.append((MEDIA_PARTS[kind], _url(part, at), at))
                parts.append({"type": MEDIA_PARTS[kind]})
            elif _is_text(part):
                parts.append({"type": "text", "text": part.value})
                texts += [part.value] if part.value else []
            else:
                allowed = " or ".join(f"{{'type': '{k}', '{k}': {{'url': ...}}}}" for k in kinds)
                raise InvalidRequest(
                    f"{at}: a content part must be {{'type': 'text', 'text': ...}} or {allowed}, got type {short(kind, 30)!r}",
                    param=at,
                )
        rendered.append({**message, "content": parts})
    return rendered, media, texts


def conversations(prompts: Any, messages: Any, chat_template: str | None = None) -> Any:
    """The inputs of a call that takes ``prompts`` or chat ``messages`` (one conversation, a list of
    chat messages, or a list of conversations) as :class:`Chat` inputs, rendered with
    ``chat_template`` if given.

    Raises:
        InvalidRequest: both given, a template without messages, or messages of another shape.
    """
    if messages is None:
        if chat_template is not None:
            raise InvalidRequest("chat_template goes with messages=")
        return prompts
    if prompts is not None:
        raise InvalidRequest("pass either prompts or messages, not both")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidRequest("messages must be a non-empty list of chat messages, or a list of such lists")
    if all(isinstance(m, (list, tuple)) for m in messages):
        return [Chat(list(m), where=f"messages[{i}]", instead="prompts", chat_template=chat_template) for i, m in enumerate(messages)]
    return Chat(list(messages), instead="prompts", chat_template=chat_template)


# -- where conversations render, and telling them from other inputs ------------------------------


class Worker(Protocol):
    """Where a conversation's rendering (its template and tokenizer) runs: the server's runs it on the
    thread that tokenizes, admitted by its cost in tokens."""

    async def run(self, work: Callable[[], Any], cost: int) -> Any:
        """``work()``'s value, run where this worker runs renderings."""


class Inline:
    """The :class:`Worker` of offline renderings: the work runs here, at once."""

    async def run(self, work: Callable[[], Any], cost: int) -> Any:
        return work()


def settled(work: Coroutine[Any, Any, Any]) -> Any:
    """The value of a coroutine that never waits (an offline rendering run inline), without an event loop."""
    try:
        work.send(None)
    except StopIteration as done:
        return done.value
    work.close()
    raise RuntimeError("an offline rendering waited for something")


def as_prompt(item: Any) -> Prompt:
    """An input (a text, ``{"prompt_token_ids": [...]}`` or a prompt) as a prompt, for estimates only."""
    if isinstance(item, Prompt):
        return item
    if isinstance(item, dict) and isinstance(item.get("prompt_token_ids"), list):
        return Prompt(token_ids=item["prompt_token_ids"])
    return Prompt(text=item if isinstance(item, str) else "")


def is_chat(item: Any) -> bool:
    """Whether an input is a conversation: a :class:`Chat`, or ``{"messages": [...]}``."""
    return isinstance(item, Chat) or (isinstance(item, dict) and "messages" in item)


def chat_items(inputs: Any) -> list[Any]:
    """Inputs as a list: one conversation alone, or the items given."""
    return [inputs] if is_chat(inputs) else list(inputs)


def has_chat(inputs: Any) -> bool:
    """Whether ``inputs`` hold a conversation; texts and token ids are told apart in bulk (the hot path)."""
    if not isinstance(inputs, (list, tuple)):
        return is_chat(inputs)
    kinds = {type(item) for item in inputs}
    if not kinds & {dict, Chat}:
        return False
    return any(isinstance(item, Chat) or (isinstance(item, dict) and "messages" in item) for item in inputs)
