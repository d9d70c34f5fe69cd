"""The scorer contract: how ``LLM.score`` and ``LLM.rerank`` compare a query with documents.

A scorer is registered through ``poolkit_register_scorers`` like any other plugin object. The
built-ins are a cross-encoder (a one-output classifier reads each pair together), a bi-encoder
(cosine of two embeddings) and late interaction (MaxSim of token vectors, ColBERT); a plugin adds
another kind the same way, and the API, the CLI and the server use it without edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence

from .errors import InvalidRequest
from .registration import plugin_instance

if TYPE_CHECKING:
    from .architecture import LoadedModel
    from .io import Prompt
    from .params import PoolingParams
    from .tasks import Task

#: ``chat_template_kwargs`` keys that are no template variables: a sentence-transformers
#: CrossEncoder export reads them when it renders a pair (its prompt, by text or saved name, and
#: whether a truncated render gets the template's closing tokens back), as in vLLM.
CROSS_ENCODER_KEYS = ("prompt", "prompt_name", "restore_suffix")
#: ``apply_chat_template`` arguments a request may not set: the call's own (vLLM refuses
#: ``chat_template``, ``tools``, ``tokenize``), and the sizes, which truncation settings own.
RESERVED_TEMPLATE_KWARGS = frozenset(
    {"chat_template", "tools", "tokenize", "conversation", "messages", "documents", "return_dict",
     "return_tensors", "padding", "truncation", "max_length"}
)


class ScoreRunner(Protocol):
    """What a scorer runs its work with: the loaded model, its tasks, parameter checks, prompt
    preparation and the engine; not the :class:`poolkit.LLM` (``LLM.score`` builds one per call).
    """

    @property
    def model(self) -> LoadedModel:
        """The loaded model, a :class:`poolkit.loading.model.PoolingModel` (read it, don't change it)."""
        ...

    def task(self, name: str) -> Task:
        """The registered task ``name``, checked against what the model supports."""
        ...

    def check_params(
        self,
        pooling_params: Any,
        count: int,
        task_name: str,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[PoolingParams]:
        """One verified :class:`PoolingParams` per prompt, the task's defaults filled in
        (``pooling_params``: ``None``, one object or dict for all, or one per prompt;
        ``tokenization_kwargs``: ``truncate_prompt_tokens`` / ``truncation_side`` defaults and vLLM's
        ``truncation`` switch).

        Raises:
            InvalidRequest: a parameter the task does not take, or a value it cannot honour.
        """
        ...

    def prepare(
        self,
        texts: Sequence[str],
        pooling_params: Any,
        task_name: str,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> tuple[Task, Sequence[Prompt], list[PoolingParams]]:
        """Texts made into prompts as ``LLM.encode`` makes them (the model's default
        sentence-transformers prompt; ``tokenization_kwargs`` may also name a retrieval side and
        ``add_special_tokens``), with the checked task and one verified parameter set per prompt.

        Raises:
            InvalidRequest: as :meth:`check_params`, or a task the model does not support.
        """
        ...

    def pair_prompts(
        self, first: list[str], second: list[str], chat_template: str | None, instruction: str | None, kwargs: dict[str, Any] | None
    ) -> list[Prompt]:
        """Prompts of (query, document) pairs read together, as the model's renderer makes them: a
        score template (``chat_template``, ``instruction``), a CrossEncoder export's chat template and
        prompt, or tokenizer pairs; ``kwargs`` are the request's ``chat_template_kwargs``.

        Raises:
            InvalidRequest: settings that do not go together, or that the model's way of pairing ignores.
        """
        ...

    def role_prompts(self, texts: list[str], kind: str) -> list[Prompt]:
        """Texts as the model's queries or documents (``kind``), as the renderer makes them for a
        request's side: a late-interaction model's markers, lengths and query expansion."""
        ...

    def skiplist(self, kind: str) -> Any:
        """The token ids whose vectors a late-interaction model leaves out of MaxSim for ``kind``
        (``"query"`` / ``"document"``), as a tensor, or ``None``."""
        ...

    def run(self, task: Task, prompts: Sequence[Prompt], params: list[PoolingParams], *, use_tqdm: bool = False) -> Any:
        """Run prepared prompts through the engine: a ``Results``, whose item ``i`` is prompt ``i``'s
        ``(result, prompt token ids)``; ``results.truncated`` says which prompts were cut."""
        ...


@dataclass(frozen=True)
class ScoreCall:
    """The arguments of one :meth:`Scorer.score` call, as :meth:`Scorer.score_pairs` reads them."""

    runner: ScoreRunner
    first: list[str]
    second: list[str]
    pooling_params: Any
    use_tqdm: bool
    tokenization_kwargs: dict[str, Any] | None
    chat_template: str | None
    instruction: str | None


class Scorer:
    """One way of scoring (query, document) pairs with a loaded model.

    The model's scorer is the one its architecture names in ``score_type``, else the supporting
    scorer with the highest :attr:`priority` (:func:`poolkit.plugins.lookup.select_scorer`). ``model``
    below is the loaded model (a :class:`poolkit.contracts.architecture.LoadedModel`), ``runner`` the
    :class:`ScoreRunner` that runs a score call's work on it.

    Attributes:
        name: the key users see (``llm.score_type``, the server's ``/v1/models``).
        priority: which scorer wins when several support a model; higher first.
        takes_template: whether score templates (``chat_template``, ``instruction``) apply.
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    takes_template: ClassVar[bool] = False

    def supports(self, model: LoadedModel) -> bool:
        """Whether this scorer can score with ``model``."""
        raise NotImplementedError

    def refusal(self, model: LoadedModel) -> str | None:
        """Why ``model`` cannot score, when this scorer knows better than the generic message."""
        return None

    def score(
        self,
        runner: ScoreRunner,
        first: list[str],
        second: list[str],
        pooling_params: Any,
        *,
        use_tqdm: bool,
        tokenization_kwargs: dict[str, Any] | None,
        chat_template: str | None,
        instruction: str | None,
    ) -> list[tuple[float, list[int]]] | list[tuple[float, list[int], bool]]:
        """One ``(score, prompt token ids)`` per pair ``(first[i], second[i])``, in order, or
        ``(score, prompt token ids, truncated)``: whether the pair's inputs were cut to a limit
        (``Results.truncated`` of the runs; ``ScoringRequestOutput.truncated`` reports it).

        ``first`` and ``second`` have the same length (the API has paired them already). The work
        runs through ``runner`` (:class:`ScoreRunner`): ``runner.task``, ``runner.check_params`` or
        ``runner.prepare``, then ``runner.run``. A scorer overrides this or :meth:`score_pairs`,
        which gets the same arguments as one :class:`ScoreCall`.
        """
        call = ScoreCall(runner, first, second, pooling_params, use_tqdm, tokenization_kwargs, chat_template, instruction)
        return self.score_pairs(call)

    def score_pairs(self, call: ScoreCall) -> list[tuple[float, list[int]]] | list[tuple[float, list[int], bool]]:
        """:meth:`score`, its arguments as one record."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Scorer {self.name}>"


def check_scorer(name: str, obj: object) -> Scorer:
    """Registry check: a :class:`Scorer` instance or subclass (instantiated)."""
    return plugin_instance(name, obj, Scorer, "scorer")


def score_extra(pooling_params: Any) -> dict[str, Any]:
    """The ``extra_kwargs`` of a score call's pooling parameters (one object or dict), or ``{}``."""
    if isinstance(pooling_params, dict):
        extra = pooling_params.get("extra_kwargs")
    else:
        extra = getattr(pooling_params, "extra_kwargs", None)
    return extra if isinstance(extra, dict) else {}


def template_kwargs(pooling_params: Any) -> dict[str, Any] | None:
    """The ``chat_template_kwargs`` of a score call (``PoolingParams.extra_kwargs``, as in vLLM),
    checked; ``None`` when none are given.

    Raises:
        InvalidRequest: not an object with string keys, a reserved key, or a CrossEncoder key
            (:data:`CROSS_ENCODER_KEYS`) of the wrong type.
    """
    kwargs = score_extra(pooling_params).get("chat_template_kwargs")
    if kwargs is None:
        return None
    check_template_kwargs(kwargs)
    return dict(kwargs)


def check_template_kwargs(kwargs: Any) -> None:
    """Check a score request's ``chat_template_kwargs`` before any model reads them.

    Raises:
        InvalidRequest: as :func:`template_kwargs`.
    """
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidRequest(f"chat_template_kwargs must be an object with string keys, got {type(kwargs).__name__}")
    reserved = sorted(set(kwargs) & RESERVED_TEMPLATE_KWARGS)
    if reserved:
        raise InvalidRequest(f"chat_template_kwargs may not set {', '.join(reserved)}")
    prompt, name, restore = (kwargs.get(key) for key in CROSS_ENCODER_KEYS)
    for key, value in (("prompt", prompt), ("prompt_name", name)):
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"CrossEncoder {key} must be a string, got {type(value).__name__} (chat_template_kwargs {key})")
    if restore is not None and not isinstance(restore, bool):
        raise InvalidRequest(f"restore_suffix must be true or false, got {restore!r} (chat_template_kwargs restore_suffix)")
