"""The IO processor contract: request data in, prompts out; model outputs in, results out."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .config import PoolingParams


@dataclass
class Prompt:
    """One model input after pre-processing.

    Attributes:
        text: the text to tokenize, or ``None`` when ``token_ids`` are given.
        text_pair: the second text of a pair (cross-encoders), or ``None``.
        token_ids: already tokenized input, special tokens included.
        params: per-prompt pooling parameters, or ``None`` for the call's defaults.
        prompt_prefix: an instruction prepended to ``text`` (sentence-transformers prompts);
            poolers leave its tokens out when the model's pooling excludes the prompt.
        add_special_tokens: whether tokenizing ``text`` adds the tokenizer's special tokens
            (``[CLS]``/``[SEP]``, BOS, ...); ``False`` for text that already carries them, such
            as a rendered chat (vLLM's ``add_special_tokens``). Ignored for ``token_ids``.
        keep_suffix: token ids the prompt must end with even when truncation cuts its tail (the
            closing tokens of a chat template, which sentence-transformers writes back over the
            last kept tokens), or ``None``.
    """

    text: str | None = None
    text_pair: str | None = None
    token_ids: list[int] | None = None
    params: "PoolingParams | None" = None
    prompt_prefix: str | None = None
    extras: dict = field(default_factory=dict)
    add_special_tokens: bool = True
    keep_suffix: list[int] | None = None


class IOProcessor:
    """Parses request data into prompts and turns pooled outputs into results.

    Stateless per request: everything a request needs travels in its arguments, never in
    instance attributes, so one processor serves concurrent requests.
    """

    def parse_data(self, data: Any) -> Any:
        """Validate raw request data; raise :class:`poolkit.InvalidRequest` on bad input."""
        return data

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        """Turn parsed data into prompts."""
        raise NotImplementedError

    def merge_pooling_params(self, params: "PoolingParams | None", task: str) -> "PoolingParams":
        """The pooling parameters to run the prompts with, given the caller's (possibly ``None``).

        For ``pooling_task="plugin"``, ``task`` is the model's default task, and the returned
        parameters' ``task`` says which task actually runs (``"embed"``, ``"classify"``, ...).
        """
        from .config import PoolingParams

        if params is None:
            return PoolingParams(task=task)
        return params if params.task is not None else params.model_copy(update={"task": task})

    def post_process(self, outputs: Sequence[Any], request_id: str | None = None, data: Any = None) -> Any:
        """Turn the per-prompt request outputs into the result returned to the caller.

        Args:
            outputs: one :class:`PoolingRequestOutput` per prompt of :meth:`pre_process`, in order.
            request_id: the request's id.
            data: what :meth:`parse_data` returned, so the processor needs no per-request state.
        """
        return list(outputs)


def check_io_processor(name: str, obj: object) -> IOProcessor:
    """Registry check: an :class:`IOProcessor` instance or subclass (instantiated)."""
    if inspect.isclass(obj) and issubclass(obj, IOProcessor):
        obj = obj()
    if not isinstance(obj, IOProcessor):
        raise TypeError(f"IO processor '{name}' must be a poolkit.IOProcessor, got {type(obj).__name__}")
    return obj


def text_problem(text: Any) -> str | None:
    """Why ``text`` cannot be an input, or ``None``: one rule for the server (a 400) and corpus
    jobs (a bad line): no text, not a string, an empty string, invalid Unicode (a lone surrogate)."""
    if text is None:
        return "no text"
    if not isinstance(text, str):
        return "not a string"
    if not text:
        return "an empty string"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid Unicode (a lone surrogate)"
    return None
