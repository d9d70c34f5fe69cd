"""The IO processor contract: request data in, prompts out; model outputs in, results out."""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .errors import InvalidRequest, PluginError

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


@dataclass(frozen=True)
class IOContext:
    """What an IO processor may know about the model it serves: built once per loaded model.

    The tokenizer and the config are deep copies made for the context, so nothing a processor
    does to them (a truncation side, added tokens, a config attribute) reaches the model or
    another model's processors. They are shared by that model's requests: treat them as
    read-only. The fields themselves cannot be reassigned.

    Attributes:
        model_name: the model as it was loaded (``LLM(model=...)``).
        tokenizer: a copy of the model's fast Hugging Face tokenizer, for the text behind an
            output's ``prompt_token_ids`` (``convert_ids_to_tokens``, ``decode``).
        config: a copy of the model's Hugging Face config (``transformers.PretrainedConfig``,
            ``hf_overrides`` applied).
        max_model_len: the longest input the model takes, in tokens, or ``None`` for no limit.
        supported_tasks: the tasks the model runs, which :meth:`IOProcessor.merge_pooling_params`
            may choose (the plugin task itself is not among them).

    Example:
        >>> class Tokens(IOProcessor):
        ...     def post_process(self, outputs, request_id=None, data=None):
        ...         return [self.context.tokenizer.convert_ids_to_tokens(o.prompt_token_ids) for o in outputs]
    """

    model_name: str
    tokenizer: Any
    config: Any
    max_model_len: int | None
    supported_tasks: tuple[str, ...]

    @classmethod
    def of(cls, model: Any) -> "IOContext":
        """The context of a loaded :class:`poolkit.PoolingModel`, with its own copies."""
        return cls(
            model_name=model.name,
            tokenizer=copy.deepcopy(model.tokenizer),
            config=copy.deepcopy(model.hf_config),
            max_model_len=model.max_model_len.value,
            supported_tasks=tuple(model.supported_tasks()),
        )


class IOProcessor:
    """Parses request data into prompts and turns pooled outputs into results.

    Stateless per request: everything a request needs travels in its arguments, never in
    instance attributes, so one processor serves concurrent requests.

    The registered instance is shared by every model and has no :attr:`context`; a model runs
    the processor that :meth:`bind` returns for it, whose :attr:`context` describes that model.
    """

    #: The model this processor serves (an :class:`IOContext`); ``None`` until :meth:`bind`.
    context: IOContext | None = None

    def bind(self, context: IOContext) -> "IOProcessor":
        """The processor to run for the model that ``context`` describes.

        Called once per model and processor, before the model's first request through it. The
        default returns a shallow copy of this processor with :attr:`context` set, leaving the
        registered instance untouched; override it to prepare per-model state (a lookup table
        built from the tokenizer's vocabulary, ...) and return a new processor.
        """
        bound = copy.copy(self)
        bound.context = context
        return bound

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


def bind_io_processor(name: str, processor: IOProcessor, context: IOContext) -> IOProcessor:
    """``processor.bind(context)``, checked: a plugin's ``bind`` must return an IO processor."""
    bound = processor.bind(context)
    if not isinstance(bound, IOProcessor):
        raise PluginError(f"IO processor '{name}': bind() must return a poolkit.IOProcessor, got {type(bound).__name__}")
    return bound


def check_text(text: Any, where: str) -> None:
    """Refuse an input text by :func:`text_problem`'s rule, naming it (``TEXT argument 2``, ``input[3]``).

    Raises:
        InvalidRequest: ``text`` is missing, not a string, empty, or not valid Unicode.
    """
    problem = text_problem(text)
    if problem:
        raise InvalidRequest(f"{where} is not a valid text: {problem}")


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
