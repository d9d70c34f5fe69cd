"""Progress on stderr: a transient bar on a terminal; optionally a periodic line elsewhere."""

from __future__ import annotations

import datetime
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

#: Seconds between two progress lines of a corpus job when stderr is not a terminal.
LOG_EVERY = 10.0


class Meter:
    """Rows done out of a total, with the rates and ETA of the rows computed here.

    Call it as ``meter(rows, tokens)``. Rows reported with no tokens were done before (a
    resumed job's finished chunks): they count towards the total but not towards the rates,
    so the ETA is that of the work left. ``set_total`` gives the total once it is known.
    """

    def __init__(self, total: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self.computed = 0
        self.tokens = 0
        self._clock = clock
        self._start = clock()

    def set_total(self, total: int | None) -> None:
        self.total = total

    def __call__(self, rows: int, tokens: int) -> None:
        if tokens:
            self.computed += rows
            self.tokens += tokens
        elif not self.computed:
            self._start = self._clock()  # the clock of the rates starts with the first computed row
        self.done += rows

    @property
    def elapsed(self) -> float:
        return max(self._clock() - self._start, 1e-9)

    @property
    def rate(self) -> float:
        """Rows computed per second."""
        return self.computed / self.elapsed

    @property
    def token_rate(self) -> float:
        return self.tokens / self.elapsed

    @property
    def shown_total(self) -> int | None:
        """The total, never below the rows done (a total counted from lines is an estimate)."""
        return None if self.total is None else max(self.total, self.done)

    @property
    def percent(self) -> float | None:
        total = self.shown_total
        if total is None:
            return None
        return 100.0 if total == 0 else 100.0 * self.done / total

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, or ``None`` while unknown."""
        total = self.shown_total
        if total is None or not self.computed:
            return None
        return (total - self.done) / max(self.rate, 1e-9)

    def eta_text(self) -> str:
        eta = self.eta
        return "?" if eta is None else str(datetime.timedelta(seconds=round(eta)))

    def line(self, label: str) -> str:
        """One line of progress: ``embedding: 500/1000 rows (50%), 10.0 rows/s, 500 tok/s, ETA 0:00:50``."""
        total = self.shown_total
        done = f"{self.done}/{total} rows ({self.percent:.0f}%)" if total is not None else f"{self.done} rows"
        parts = [done, f"{self.rate:.1f} rows/s", f"{self.token_rate:.0f} tok/s"]
        if total is not None:
            parts.append(f"ETA {self.eta_text()}")
        return f"{label}: {', '.join(parts)}"


@contextmanager
def progress_bar(
    total: int | None, enabled: bool = True, label: str = "pooling", every: float | None = None,
    stream: TextIO | None = None,
) -> Iterator[Meter]:
    """Yield a :class:`Meter` to call as ``advance(items, tokens)``, drawn on ``stream`` (stderr).

    On a terminal: a rich bar with the count, the percentage, tokens, rates and the ETA
    (``total=None``, a corpus of unknown size, shows counts and rates until ``set_total``).
    Elsewhere, with ``every`` seconds: one line of :meth:`Meter.line` at most that often, for
    logs; without ``every``, nothing.
    """
    out = sys.stderr if stream is None else stream
    if not enabled:
        yield Meter(total)
        return
    if not out.isatty():
        if every is None:
            yield Meter(total)
            return
        yield _Lines(total, label, every, out)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[tokens]} tokens"),
        TextColumn("{task.fields[rate]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"),
        console=Console(file=out) if stream is not None else Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task(label, total=total, tokens=0, rate=0, eta="?")
        yield _Bar(total, progress, task)


class _Lines(Meter):
    """A meter that prints :meth:`Meter.line` at most every ``every`` seconds."""

    def __init__(self, total: int | None, label: str, every: float, out: TextIO) -> None:
        super().__init__(total)
        self._label, self._every, self._out = label, every, out
        self._last = self._clock()

    def __call__(self, rows: int, tokens: int) -> None:
        super().__call__(rows, tokens)
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            print(self.line(self._label), file=self._out, flush=True)


class _Bar(Meter):
    """A meter that drives a rich progress bar."""

    def __init__(self, total: int | None, progress: object, task: object) -> None:
        super().__init__(total)
        self._progress, self._task = progress, task

    def set_total(self, total: int | None) -> None:
        super().set_total(total)
        self._refresh()

    def __call__(self, rows: int, tokens: int) -> None:
        super().__call__(rows, tokens)
        self._refresh()

    def _refresh(self) -> None:
        self._progress.update(  # type: ignore[attr-defined]
            self._task, total=self.shown_total, completed=self.done, tokens=self.tokens, rate=int(self.token_rate),
            eta=self.eta_text(),
        )
