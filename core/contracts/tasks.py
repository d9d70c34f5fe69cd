"""The task contract: what a pooling task accepts, how it builds its head, what it returns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .errors import InvalidRequest
from .pooling import Head
from .registration import plugin_instance

if TYPE_CHECKING:
    from .architecture import LoadedModel
    from .io import Prompt
    from .params import PoolingParams, Setting

TASK_GRANULARITIES = ("sequence", "token", "plugin")
#: The granularities by name: one result per input, one row per token, or whatever an IO
#: processor plugin makes of request data.
SEQUENCE, TOKEN, PLUGIN = TASK_GRANULARITIES
#: Parameters every task accepts: they shape tokenization, not pooling.
TOKENIZATION_PARAMS = frozenset({"truncate_prompt_tokens", "truncation_side"})


#: The retrieval sides a multi-vector model encodes a text in (a request's side: its queries or its documents).
ROLES = ("query", "document")


class Task:
    """A pooling task such as ``embed``, ``classify`` or ``token_embed``.

    Tasks are registered through ``poolkit_register_tasks``; the Python API, the CLI and the
    server look them up by name, so a plugin adds a task without touching the core. ``model``
    below is the loaded model (a :class:`poolkit.contracts.architecture.LoadedModel`, which
    :class:`poolkit.loading.model.PoolingModel` is).

    Attributes:
        name: the task name users pass (``pooling_task="embed"``).
        granularity: ``"sequence"`` (one vector per input), ``"token"`` (one row per token)
            or ``"plugin"`` (whatever an IO processor makes of it).
        params: the names of the :class:`PoolingParams` fields a request of this task may set, a
            ``frozenset`` of strings (default ``{"use_activation"}``). :meth:`verify` enforces it
            for every request, after the model's :meth:`param_defaults` are filled in: a field
            counts as set when its value is not ``None`` (``task``, ``extra_kwargs`` and
            ``skip_reading_prefix_cache`` never count), every task also takes
            :data:`TOKENIZATION_PARAMS`, and any other set field is an ``InvalidRequest`` naming
            it. Fields the task takes reach its head in the ``params`` list, one per sequence.
        default_pooling_type: the pooling type used when neither the user, a
            sentence-transformers config nor the architecture names one; ``None`` for a task
            whose head does not pool with :meth:`PoolingModel.poolers` (``sparse_embed`` reads the
            LM head), which ``poolkit info`` then shows without a ``pooling_type``.
    """

    name: ClassVar[str] = ""
    granularity: ClassVar[str] = "sequence"
    params: ClassVar[frozenset[str]] = frozenset({"use_activation"})
    default_pooling_type: ClassVar[str | None] = None
    #: Whether ``enable_chunked_processing`` applies: over-long inputs are split into chunks
    #: whose results are averaged, weighted by their tokens.
    chunkable: ClassVar[bool] = False
    #: The field holding a result in records of the CLI, corpus jobs and Ray datasets.
    output_field: ClassVar[str] = "data"
    #: Where this task stands when a surface picks a model's default task (the server's
    #: ``/pooling`` without ``task``, an IO processor plugin): the supported task with the lowest
    #: rank wins; ``None``: never picked by default.
    default_rank: ClassVar[int | None] = None
    #: Options that shape how results are written (``top_k`` of sparse vectors, say), as opposed
    #: to :attr:`params`, which shape the pooling; see :meth:`render`.
    output_options: ClassVar[frozenset[str]] = frozenset()
    #: Whether results can be sent as raw tensors (base64 / bytes encodings).
    tensor_output: ClassVar[bool] = True
    #: The API a model without this task lacks, in vLLM's words ("Embedding API is not supported
    #: by this model."); ``None``: the task's name.
    api_name: ClassVar[str | None] = None
    #: For a deprecated name of another task (vLLM's ``reward`` for ``token_classify``): the task
    #: it stands for. Requests naming it run that task, with a deprecation warning; it is never
    #: listed among a model's supported tasks.
    alias_of: ClassVar[str | None] = None
    #: Whether :meth:`role_prompts` encodes texts on a retrieval side (one of :data:`ROLES`).
    takes_sides: ClassVar[bool] = False

    def has_roles(self, model: LoadedModel) -> bool:
        """Whether :meth:`role_prompts` encodes ``model``'s texts in retrieval roles (the default: no)."""
        return False

    def role_prompts(self, model: LoadedModel, texts: list[str], side: str) -> list[Prompt] | None:
        """Prompts encoding ``texts`` as ``model``'s queries or documents (``side``, one of
        :data:`ROLES`: the renderer checks it), as its scorer encodes them, or ``None`` where the
        model has no sides; only where :attr:`takes_sides`."""
        raise NotImplementedError

    def build(self, model: LoadedModel) -> Head | None:
        """The head serving this task on ``model``, or ``None`` if the model cannot serve it."""
        raise NotImplementedError

    def own_head(self, head: Head, model: LoadedModel) -> Head:
        """The architecture's own head for this task (:meth:`poolkit.Architecture.task_head`), as the
        task serves it: what the task's parameters do after any head (``token_embed``'s token
        pooling). The default serves it as it is."""
        return head

    def result_width(self, model: LoadedModel) -> int | None:
        """Numbers in one result (a ``sequence`` task) or in one token's row (a ``token`` task) on
        ``model``, at most: what a surface sizes a response by before running it (the server's
        ``--max-response-bytes``). ``None`` (the default): not known ahead, as for sparse results;
        the server then counts the numbers once the results are in."""
        return None

    def check_model(self, model: LoadedModel) -> None:
        """Refuse a model this task would serve wrongly; called once per task right after loading.

        Raises:
            ModelLoadError: the model must not be served at all.
        """

    def render(self, data: torch.Tensor, model: LoadedModel, options: dict[str, Any]) -> Any:
        """One result as JSON-ready data (the ``data`` of vLLM's ``/pooling``).

        Args:
            data: the result tensor of one input.
            model: the model that produced it.
            options: values of :attr:`output_options` the request set (others are refused by
                :meth:`check_options` first).
        """
        return data.tolist()

    def record(self, data: torch.Tensor, model: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        """The fields one result adds to a record of the CLI, a corpus job or a dataset."""
        return {self.output_field: self.render(data, model, options)}

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse values of :attr:`output_options` this task cannot honour (a negative ``top_k``).

        Surfaces refuse options outside :attr:`output_options` before, naming
        :func:`poolkit.plugins.lookup.option_owners`.

        Raises:
            InvalidRequest: with a one-line reason.
        """

    def settings(self, model: LoadedModel) -> dict[str, "Setting"]:
        """The settings this task applies on ``model``, each resolved with its source, for
        ``poolkit info`` (``model.describe()["tasks"][name]``).

        The default is the pooling type (:meth:`PoolingModel.pooling_type`) of a task that pools
        (one with a :attr:`default_pooling_type`); override it, extending ``super().settings``,
        to add what the head applies (its ``activation_fn``, say).
        """
        return {"pooling_type": model.pooling_type(self)} if self.default_pooling_type is not None else {}

    def param_defaults(self, model: LoadedModel, side: str | None = None) -> dict[str, object]:
        """Request parameters a model's configuration fills in when a request leaves them unset;
        ``side``: the retrieval side the request's texts are encoded in (``None``: none named)."""
        return {}

    def verify(self, params: "PoolingParams", model: LoadedModel) -> None:
        """Reject parameters this task does not take (see :attr:`params`); subclasses add
        model-specific checks and call ``super().verify(params, model)`` to keep this one.

        Raises:
            InvalidRequest: with vLLM's wording.
        """
        invalid = params.set_fields() - self.params - TOKENIZATION_PARAMS
        if invalid:
            raise InvalidRequest(
                f"Task {self.name!r} only supports {sorted(self.params)} parameters, "
                f"does not support {sorted(invalid)} parameters"
            )

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


def stray_options(task: Task, options: dict[str, Any]) -> set[str]:
    """The output options set in ``options`` (``None`` and ``False`` count as unset) that ``task`` does not take."""
    return {k for k, v in options.items() if v is not None and v is not False} - task.output_options


def check_task(name: str, obj: object) -> Task:
    """Registry check: a :class:`Task` instance or subclass (instantiated)."""
    obj = plugin_instance(name, obj, Task, "task")
    if obj.granularity not in TASK_GRANULARITIES:
        raise TypeError(f"task '{name}' has granularity {obj.granularity!r}; expected one of {TASK_GRANULARITIES}")
    return obj
