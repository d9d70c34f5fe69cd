"""The seam between the runtime and what it runs for: what the batcher needs of an engine and of
the model that owns it.

The batcher (``runtime/``) runs merged batches on the model's engine and never calls up into the
API (the :class:`poolkit.LLM` sits above it); the server (``entrypoints/``) prepares requests with the
``LLM`` and hands them to the batcher. A front process's remote engine
(``poolkit.entrypoints.server.processes.RemoteEngine``) fits the same place as
:class:`poolkit.runtime.engine.Engine`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from .io import Prompt
from .params import PoolingParams
from .tasks import Task


class PoolingEngine(Protocol):
    """What runs prepared prompts: :class:`poolkit.runtime.engine.Engine` and what stands in for it."""

    @property
    def asynchronous(self) -> bool:
        """Whether a run returns before the device finishes (an accelerator's engine): then the
        batcher tokenizes the next batch while this one runs (:meth:`staged`)."""

    def run(
        self, task: Task, prompts: Sequence[Prompt], params: Sequence[PoolingParams],
        progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """The results (:class:`poolkit.runtime.columns.Results`) of ``prompts`` for ``task``, in order;
        ``progress`` is called with ``(items done, tokens done)`` after each batch."""

    def staged(self, task: Task, prompts: Sequence[Prompt], params: Sequence[PoolingParams]) -> Callable[[], Any]:
        """``prompts`` tokenized now, run when the returned callable is called."""


class EngineOwner(Protocol):
    """What the batcher needs of the model it serves: its engine, read at each batch (a front
    process swaps in a remote one after the batcher is made)."""

    engine: PoolingEngine
