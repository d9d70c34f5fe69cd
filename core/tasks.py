"""The task contract: what a pooling task accepts, how it builds its head, what it returns."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, ClassVar, Protocol, Sequence

import torch

from .batch import PackedBatch
from .errors import InvalidRequest

if TYPE_CHECKING:
    from .config import PoolingParams
    from .model import PoolingModel

TASK_GRANULARITIES = ("sequence", "token", "plugin")
#: Parameters every task accepts: they shape tokenization, not pooling.
TOKENIZATION_PARAMS = frozenset({"truncate_prompt_tokens", "truncation_side"})


class Head(Protocol):
    """Turns the hidden states of one packed batch into one result tensor per sequence."""

    def __call__(
        self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence["PoolingParams"]
    ) -> list[torch.Tensor]: ...


class Task:
    """A pooling task such as ``embed``, ``classify`` or ``token_embed``.

    Tasks are registered through ``poolkit_register_tasks``; the Python API, the CLI and the
    server look them up by name, so a plugin adds a task without touching the core.

    Attributes:
        name: the task name users pass (``pooling_task="embed"``).
        granularity: ``"sequence"`` (one vector per input), ``"token"`` (one row per token)
            or ``"plugin"`` (whatever an IO processor makes of it).
        params: the :class:`PoolingParams` fields a request of this task may set.
        default_pooling_type: the pooling type used when neither the user, a
            sentence-transformers config nor the architecture names one.
    """

    name: ClassVar[str] = ""
    granularity: ClassVar[str] = "sequence"
    params: ClassVar[frozenset[str]] = frozenset({"use_activation"})
    default_pooling_type: ClassVar[str | None] = None
    #: Whether ``enable_chunked_processing`` applies: over-long inputs are split into chunks
    #: whose results are averaged, weighted by their tokens.
    chunkable: ClassVar[bool] = False

    def build(self, model: "PoolingModel") -> Head | None:
        """The head serving this task on ``model``, or ``None`` if the model cannot serve it."""
        raise NotImplementedError

    def param_defaults(self, model: "PoolingModel") -> dict[str, object]:
        """Request parameters a model's configuration fills in when a request leaves them unset."""
        return {}

    def verify(self, params: "PoolingParams", model: "PoolingModel") -> None:
        """Reject parameters this task does not take; subclasses add model-specific checks.

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


def check_task(name: str, obj: object) -> Task:
    """Registry check: a :class:`Task` instance or subclass (instantiated)."""
    if inspect.isclass(obj) and issubclass(obj, Task):
        obj = obj()
    if not isinstance(obj, Task):
        raise TypeError(f"task '{name}' must be a poolkit.Task, got {type(obj).__name__}")
    if obj.granularity not in TASK_GRANULARITIES:
        raise TypeError(f"task '{name}' has granularity {obj.granularity!r}; expected one of {TASK_GRANULARITIES}")
    return obj
