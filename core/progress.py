"""A transient progress bar on stderr, off when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(total: int | None, enabled: bool = True, label: str = "pooling") -> Iterator[Callable[[int, int], None]]:
    """Yield ``advance(items, tokens)``; draws a rich bar on stderr only when it is a terminal.

    ``total=None`` (a streamed corpus of unknown size) shows counts and rates without an ETA.
    """
    if not enabled or not sys.stderr.isatty():
        yield lambda items, tokens: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tokens]} tokens"),
        TextColumn("{task.fields[rate]} tok/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task(label, total=total, tokens=0, rate=0)
        seen = {"tokens": 0, "start": time.monotonic()}

        def advance(items: int, tokens: int) -> None:
            seen["tokens"] += tokens
            rate = int(seen["tokens"] / max(time.monotonic() - seen["start"], 1e-9))
            progress.update(task, advance=items, tokens=seen["tokens"], rate=rate)

        yield advance
