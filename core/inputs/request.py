"""The request record: what a request asks, whatever surface it came from.

Every surface builds one from its own wire format (``LLM.embed``'s arguments, a route's JSON body, an
RPC's message, a CLI's options, a corpus job's rows) and hands it to the renderer's one door,
:meth:`poolkit.inputs.Renderer.render`, which turns it into prompts and verified pooling
parameters: sides, prompt names, instructions, special tokens, chat templates, media, truncation,
the adapter and the salt are settled there, once, for every surface.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

from ..contracts.errors import InvalidRequest

if TYPE_CHECKING:
    from ..contracts.io import Prompt
    from ..contracts.params import PoolingParams
    from ..contracts.tasks import Task


class InputLimits(NamedTuple):
    """A server's limits on a request's inputs, checked before any is rendered
    (:mod:`poolkit.inputs.shapes`): how many (``--max-inputs-per-request``), and the token ids the
    model's vocabulary has (``None``: not known)."""

    max_inputs: int | None
    vocab: int | None


@dataclasses.dataclass(frozen=True)
class PoolRequest:
    """One request, as asked.

    Attributes:
        inputs: texts, token ids, ``{"prompt": ...}`` / ``{"prompt_token_ids": ...}`` dicts,
            prompts with media, :class:`~poolkit.inputs.chat.Chat` conversations.
        task: the pooling task that runs them (``"embed"``, ``"token_embed"``, ...).
        params: ``None``, one :class:`~poolkit.contracts.params.PoolingParams` (or dict) for every
            input, or one each.
        messages: chat messages instead of ``inputs`` (one conversation, or a list of them).
        chat_template: the template ``messages`` are rendered with instead of the tokenizer's.
        prompt_name: a prompt of the model's sentence-transformers config to put before each input.
        prefix: a prompt's text given as it is instead (``""``: none, not even the model's default).
        side: the retrieval side the texts are encoded in (``"query"`` / ``"document"``), or a
            request's ``input_type`` naming one of the model's prompts (:meth:`poolkit.inputs.Renderer.side`).
        add_special_tokens: ``False``: texts tokenized without the tokenizer's special tokens.
        truncation: ``truncate_prompt_tokens`` / ``truncation_side`` defaults, and vLLM's
            ``truncation`` switch (``tokenization_kwargs``' other keys).
        lora_request: the LoRA adapter of every input, or one each (``None``: the base model, or the
            adapter the checkpoint carries for the prompt name).

    A server's request carries more, which :meth:`poolkit.inputs.Renderer.accept` reads before the
    door: ``input_type`` as the wire gives it (a prompt name, an instruction's name or a retrieval
    side: :meth:`poolkit.inputs.Renderer.side`) and ``input_aliases`` (the names that say the same in a
    sentence-transformers config: Cohere's ``search_query``, ``query``), ``where`` (the field its
    inputs came in, as its errors name it), ``chat_options`` (vLLM's chat fields of its
    ``messages``), the ``salt`` of its prompts' shared prefixes, and the ``limits`` its inputs are
    checked against.
    """

    inputs: Any = None
    task: str | None = None
    params: Any = None
    messages: Any = None
    chat_template: str | None = None
    prompt_name: str | None = None
    prefix: str | None = None
    side: str | None = None
    add_special_tokens: bool | None = None
    truncation: dict[str, Any] | None = None
    lora_request: Any = None
    input_type: str | None = None
    input_aliases: tuple[str, ...] = ()
    where: str = "inputs"
    chat_options: dict[str, Any] | None = None
    salt: str | None = None
    limits: InputLimits | None = None

    @classmethod
    def of(cls, inputs: Any, params: Any = None, *, tokenization_kwargs: dict[str, Any] | None = None, **fields: Any) -> "PoolRequest":
        """The record of ``LLM``'s arguments: ``tokenization_kwargs`` read into the side, the special
        tokens and the truncation they hold."""
        kwargs = dict(tokenization_kwargs or {})
        side, special = kwargs.pop("input_type", None), kwargs.pop("add_special_tokens", None)
        return cls(inputs, params=params, side=side, add_special_tokens=special, truncation=kwargs or None, **fields)


def side_kwargs(side: str, sides: bool = True) -> dict[str, Any] | None:
    """``tokenization_kwargs`` encoding texts on the retrieval ``side`` (what :meth:`PoolRequest.of`
    reads back); ``sides=False``, a model without sides: ``None``, the texts as they are."""
    return {"input_type": side} if sides else None


class Reads(NamedTuple):
    """What a loaded model reads, as its renderer says (:attr:`poolkit.inputs.Renderer.reads`).

    Attributes:
        media: text and media in one prompt (a vision-language model).
        images: images at all (a vision-language model, or a dual encoder such as CLIP).
        videos: videos (its media processor says so).
        part_types: the chat content part types of the media it reads.
        chat_template: the template conversations are rendered with (the override, else the
            tokenizer's), or ``None``.
        prompt_names: the names a request may give the prompt its inputs are read with, besides
            the retrieval sides: the model's prompt names and its config's ``task_instructions``.
        prompts: the model's prompts (sentence-transformers' ``prompts``: name -> text).
        default_prompt_name: the prompt put before every input that names none, or ``None``.
    """

    media: bool
    images: bool
    videos: bool
    part_types: tuple[str, ...]
    chat_template: str | None
    prompt_names: list[str]
    prompts: Mapping[str, str]
    default_prompt_name: str | None

    def prefix(self, prompt_name: str | None) -> str | None:
        """The text a prompt name puts before each input; with none, the default prompt's.

        Raises:
            InvalidRequest: a name the model does not have.
        """
        if prompt_name is None:
            return self.prompts.get(self.default_prompt_name) if self.default_prompt_name else None
        if prompt_name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise InvalidRequest(f"unknown prompt_name '{prompt_name}'; the model's prompts: {known}", param="input_type")
        return self.prompts[prompt_name]


@dataclasses.dataclass(frozen=True, eq=False)
class MediaItem:
    """One input of a score request with images: a document (or query) of ``images`` and,
    optionally, ``text`` (vLLM's ``ScoreMultiModalParam`` content). Hashed by identity, so a
    scorer that embeds each distinct input once embeds a broadcast query once.

    Attributes:
        text: the text parts, joined by new lines, or ``None``. With images, a vision-language
            model reads it as the prompt, which then carries its image placeholders.
        images: the images, each what ``multi_modal_data["image"]`` takes.
    """

    text: str | None
    images: tuple[Any, ...]

    def prompt(self) -> dict[str, Any]:
        """The input as ``LLM.embed`` takes it: ``{"prompt", "multi_modal_data": {"image": [...]}}``."""
        return {"prompt": self.text or "", "multi_modal_data": {"image": list(self.images)}}

    def __repr__(self) -> str:
        return f"MediaItem(text={self.text!r}, images={len(self.images)})"


class Accepted(NamedTuple):
    """A server's request as the renderer accepted it (:meth:`poolkit.inputs.Renderer.accept`), ready
    for the door: its inputs checked and rendered where they needed it, the prompt it names, its
    retrieval side, its parameters (under its salt) and whether its texts keep the tokenizer's
    special tokens (``False``: they do not; ``None`` or ``True``: they do)."""

    task: str
    inputs: list[Any]
    params: Any
    prompt_name: str | None
    side: str | None
    add_special_tokens: bool | None


class Rendered(NamedTuple):
    """What the renderer's door made of a :class:`PoolRequest`: the task, its prompts and one
    verified :class:`~poolkit.contracts.params.PoolingParams` each."""

    task: Task
    prompts: Sequence[Prompt]
    params: list[PoolingParams]


class Side(NamedTuple):
    """A request's ``input_type`` as what runs it (:meth:`poolkit.inputs.Renderer.side`): a prompt
    name of the model's, a task instruction's text to put before each text, or a retrieval side;
    ``text``, what goes before each input: the instruction's text or the named prompt's."""

    prompt_name: str | None
    prefix: str | None
    side: str | None
    text: str | None = None

    def instructed(self, inputs: list[Any]) -> list[Any]:
        """Text inputs with the task instruction (:attr:`prefix`) before each, where there is one.

        Raises:
            InvalidRequest: an input of token ids or a conversation, which a text instruction cannot go before.
        """
        if self.prefix is None:
            return inputs
        if not all(isinstance(item, str) for item in inputs):
            raise InvalidRequest("input_type names a task instruction, which goes before texts: send texts", param="input_type")
        return [self.prefix + item for item in inputs]
