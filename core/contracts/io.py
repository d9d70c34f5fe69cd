"""The IO processor contract: request data in, prompts out; model outputs in, results out."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .errors import InvalidRequest, PluginError
from .registration import plugin_instance

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from .model import ModelInfo, Tokenizer
    from .params import PoolingParams


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
        attended: how many leading tokens the prompt's tokens attend to; the tokens after them
            attend and have outputs but are not attended to (a ColBERT query's ``[MASK]``
            expansion, as colbert-ai and PyLate run it). ``None``: every token is attended to.
        media: tensors the architecture reads beside ``token_ids`` (a vision-language model's
            image patches, their grid sizes, its multimodal positions), made by the model's media
            IO processor (:attr:`poolkit.Architecture.media_processor`); the engine hands them to
            the forward pass with the sequence (``batch.extras["media"]``) and never truncates
            such a prompt. ``None`` for a prompt of tokens alone.
    """

    text: str | None = None
    text_pair: str | None = None
    token_ids: list[int] | None = None
    params: "PoolingParams | None" = None
    prompt_prefix: str | None = None
    extras: dict = field(default_factory=dict)
    add_special_tokens: bool = True
    keep_suffix: list[int] | None = None
    attended: int | None = None
    media: dict | None = None


class PromptBatch(Sequence[Prompt]):
    """The prompts of one call, held as columns when they are all of one kind.

    Every prompt a text (``texts``, each with the batch's ``prompt_prefix``) or every prompt token
    ids (``token_ids``), all with the batch's ``add_special_tokens``: the engine reads the columns
    without an object per input, which is what keeps its host work per text in microseconds.
    Any other mix (pairs, images, per-prompt parameters) is a batch of :class:`Prompt` objects.

    Indexing or iterating a columnar batch turns it into objects, made once for the whole batch:
    from then on those objects are the batch, so a change made to one of them is what the engine
    sees. Code on the hot path reads the columns (:attr:`columnar`) instead.
    """

    __slots__ = ("texts", "token_ids", "prompt_prefix", "add_special_tokens", "_objects")

    def __init__(
        self,
        texts: list[str] | None = None,
        token_ids: list[list[int]] | None = None,
        *,
        prompt_prefix: str | None = None,
        add_special_tokens: bool = True,
        objects: list[Prompt] | None = None,
    ) -> None:
        if (texts is not None) + (token_ids is not None) + (objects is not None) != 1:
            raise ValueError("a PromptBatch holds texts, token ids or Prompt objects: exactly one of them")
        self.texts = texts
        self.token_ids = token_ids
        self.prompt_prefix = prompt_prefix
        self.add_special_tokens = add_special_tokens
        self._objects = objects

    @classmethod
    def of(cls, prompts: Sequence[Prompt]) -> "PromptBatch":
        """``prompts`` as a batch: the batch itself, or a batch of these objects."""
        return prompts if isinstance(prompts, PromptBatch) else cls(objects=list(prompts))

    @classmethod
    def concat(cls, batches: Sequence["PromptBatch"]) -> "PromptBatch":
        """The prompts of ``batches`` one after another: columns when they all have columns of one
        kind and settings, objects otherwise."""
        first = batches[0]
        if len(batches) == 1:
            return first
        kind = first._kind
        if kind == "objects" or any(
            (b._kind, b.prompt_prefix, b.add_special_tokens) != (kind, first.prompt_prefix, first.add_special_tokens)
            for b in batches
        ):
            return cls(objects=[p for b in batches for p in b])
        joined = [x for b in batches for x in getattr(b, kind)]
        return cls(**{kind: joined}, prompt_prefix=first.prompt_prefix, add_special_tokens=first.add_special_tokens)

    @property
    def _kind(self) -> str:
        """Which column holds the prompts: ``"texts"``, ``"token_ids"`` or ``"objects"``."""
        return "objects" if self._objects is not None else "texts" if self.texts is not None else "token_ids"

    @property
    def columnar(self) -> bool:
        """Whether the batch is still its columns (no :class:`Prompt` object made yet)."""
        return self._objects is None

    def objects(self) -> list[Prompt]:
        """The batch as :class:`Prompt` objects (made on the first call; then they are the batch)."""
        if self._objects is None:
            special = self.add_special_tokens
            if self.texts is not None:
                prefix = self.prompt_prefix
                self._objects = [Prompt(text=t, prompt_prefix=prefix, add_special_tokens=special) for t in self.texts]
            else:
                self._objects = [Prompt(token_ids=ids, add_special_tokens=special) for ids in self.token_ids or ()]
            self.texts = self.token_ids = None
        return self._objects

    def set_prefix(self, prefix: str | None) -> None:
        """Prepend ``prefix`` (an instruction prompt) to every text prompt."""
        if self.columnar:
            if self.texts is not None:
                self.prompt_prefix = prefix
            return
        for p in self.objects():
            if p.text is not None:
                p.prompt_prefix = prefix

    def set_add_special_tokens(self, special: bool) -> None:
        """Tokenize every prompt with (``True``) or without the tokenizer's special tokens."""
        if self.columnar:
            self.add_special_tokens = special
            return
        for p in self.objects():
            p.add_special_tokens = special

    def __len__(self) -> int:
        return len(self._objects if self._objects is not None else getattr(self, self._kind))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice) and self.columnar:
            return PromptBatch(
                **{self._kind: getattr(self, self._kind)[index]}, prompt_prefix=self.prompt_prefix,
                add_special_tokens=self.add_special_tokens,
            )
        if isinstance(index, slice):
            return PromptBatch(objects=self.objects()[index])
        return self.objects()[index]

    def __iter__(self) -> Any:
        return iter(self.objects())

    def __repr__(self) -> str:
        return f"<PromptBatch of {len(self)} ({self._kind})>"


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
    tokenizer: Tokenizer
    config: PretrainedConfig
    max_model_len: int | None
    supported_tasks: tuple[str, ...]

    @classmethod
    def of(cls, model: ModelInfo) -> "IOContext":
        """The context of a loaded model (a :class:`poolkit.PoolingModel`), with its own copies."""
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
    #: For a model's media processor (:attr:`poolkit.Architecture.media_processor`): whether text
    #: prompts without images take this processor's form too (a visual retriever's query template),
    #: so that every prompt of the model reaches it, not only those with images.
    reads_text: bool = False

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
        from .params import PoolingParams

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
    return plugin_instance(name, obj, IOProcessor, "IO processor")


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
