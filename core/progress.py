"""A transient progress bar on stderr, off when stderr is not a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(total: int, enabled: bool = True, label: str = "pooling") -> Iterator[Callable[[int, int], None]]:
    """Yield ``advance(items, tokens)``; draws a rich bar on stderr only when it is a terminal."""
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
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task(label, total=total, tokens=0)
        seen = {"tokens": 0}

        def advance(items: int, tokens: int) -> None:
            seen["tokens"] += tokens
            progress.update(task, advance=items, tokens=seen["tokens"])

        yield advance
