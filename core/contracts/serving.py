"""The seams between the layers that run requests: what the batcher and the server need of an engine
and of the :class:`poolkit.LLM`.

The batcher (``runtime/``) runs merged batches on the model's engine and never calls up into the
API; the server (``entrypoints/``) prepares requests with the ``LLM`` and runs them on the batcher.
Both are written against these protocols, so a front process's remote engine
(``poolkit.entrypoints.server.processes.RemoteEngine``) and the stand-in engine of the bench fit
the same places as :class:`poolkit.runtime.engine.Engine`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from .io import Prompt
from .params import PoolingParams
from .tasks import Task


@runtime_checkable
class PoolingEngine(Protocol):
    """What runs prepared prompts: :class:`poolkit.runtime.engine.Engine` and what stands in for it."""

    @property
    def asynchronous(self) -> bool:
        """Whether a run returns before the device finishes (an accelerator's engine): then the
        batcher tokenizes the next batch while this one runs (:meth:`staged`)."""

    def run(
        self, task: Task, prompts: Sequence[Prompt], params: Sequence[PoolingParams], progress: Callable[[int], None] | None = None
    ) -> Any:
        """The results (:class:`poolkit.runtime.columns.Results`) of ``prompts`` for ``task``, in order."""

    def staged(self, task: Task, prompts: Sequence[Prompt], params: Sequence[PoolingParams]) -> Callable[[], Any]:
        """``prompts`` tokenized now, run when the returned callable is called."""


class EngineOwner(Protocol):
    """What the batcher needs of the model it serves: its engine, read at each batch (a front
    process swaps in a remote one after the batcher is made)."""

    engine: PoolingEngine


class ServedModel(EngineOwner, Protocol):
    """What the server needs of a loaded :class:`poolkit.LLM`: the model and its renderer, the
    request checks, the preparation of a request into prompts, and scoring."""

    model: Any
    renderer: Any

    @property
    def supported_tasks(self) -> list[str]:
        """The tasks the model serves."""

    def get_tokenizer(self) -> Any:
        """The model's tokenizer."""

    def prepare(
        self, prompts: Any, pooling_params: Any = None, *, pooling_task: str, tokenization_kwargs: dict[str, Any] | None = None,
        prompt_name: str | None = None,
    ) -> tuple[Task, Any, list[PoolingParams]]:
        """A request checked and turned into prompts by the renderer, without running it."""

    def estimate_tokens(self, prompts: Sequence[Prompt], params: Sequence[PoolingParams]) -> int:
        """Tokens of prepared prompts, estimated before tokenizing."""

    def check_truncation(self, truncate_prompt_tokens: int | None) -> None:
        """Refuse a truncation longer than the model's limit."""

    def run(self, task: Task, prompts: list[Prompt], params: list[PoolingParams]) -> Any:
        """Prepared prompts run on the engine."""
