"""Batches in flight on an accelerator: what :meth:`poolkit.runtime.engine.Engine.staged` returns,
and the batch whose results the engine has not read back yet.

On a GPU (or the CPU stand-in for one) the engine queues a batch before it reads the previous
one's results, across the slices of one call and, in a server, across merged batches: a
:class:`Staged` call's :meth:`~Staged.launch` queues its batches behind another's last one, so
the device runs the next merged batch while the host answers the last.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..contracts.params import PoolingParams
from .columns import Collector, Results, Tokens


class InFlight:
    """A batch queued on the device whose results are not read back yet; :meth:`read` waits for
    them and puts them in their part's collector, once."""

    __slots__ = ("collector", "members", "fetch", "tokens", "progress")

    def __init__(
        self, collector: Collector, members: np.ndarray, fetch: Callable[[], Any], tokens: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.collector, self.members, self.fetch, self.tokens, self.progress = collector, members, fetch, tokens, progress

    def read(self) -> None:
        if self.collector is not None:
            collector, self.collector = self.collector, None
            collector.add(self.members, self.fetch, self.tokens, self.progress)


class Launcher(Protocol):
    """What a :class:`Staged` call needs of its engine (:meth:`poolkit.runtime.engine.Engine.launch`):
    a protocol, as the engine module imports this one."""

    def launch(
        self, head: Callable, tokens: Tokens, params: Sequence[PoolingParams], progress: Callable[[int, int], None] | None,
        behind: InFlight | None = None,
    ) -> tuple[Collector, InFlight | None]:
        """Queue the batches of ``tokens`` on the device; the part's collector and its last batch in flight."""
        ...


class Staged:
    """Prompts tokenized by :meth:`Engine.staged`: calling it runs their batches and gives their
    :class:`Results`; :meth:`launch` only queues the batches, behind another staged call's last
    batch still in flight, so that a server's device thread can answer one merged batch while
    the device runs the next."""

    def __init__(self, engine: Launcher, head: Callable, tokens: Tokens, params: Sequence[PoolingParams]) -> None:
        self.engine, self.head, self.tokens, self.params = engine, head, tokens, params
        self._collected: Collector | None = None
        self._last: InFlight | None = None

    def __call__(self) -> Results:
        return self.launch().finish()

    def launch(self, behind: Staged | None = None) -> Staged:
        """Queue the batches on the device (``behind``'s last one read once the first is queued)."""
        self._collected, self._last = self.engine.launch(
            self.head, self.tokens, self.params, None, behind._last if behind is not None else None
        )
        return self

    def finish(self) -> Results:
        """Wait for the launched batches and give their results."""
        if self._collected is None:
            raise RuntimeError("finish() before launch()")
        if self._last is not None:
            self._last.read()
        return Results(self._collected.result(), self.tokens.ids, self.tokens.truncated)
