"""Waiting for what the code under test guarantees will happen, rather than for a time."""

from __future__ import annotations

import time
from typing import Callable


def until(condition: Callable[[], object], what: str, guard: float = 60.0) -> None:
    """Wait for ``condition()`` to hold; ``guard`` seconds is a hang guard (the test fails naming
    ``what``), not a duration the test relies on."""
    deadline = time.monotonic() + guard
    while not condition():
        assert time.monotonic() < deadline, f"waited {guard:g} s for {what}"
        time.sleep(0.01)


async def until_async(condition: Callable[[], object], what: str, guard: float = 60.0) -> None:
    """:func:`until` inside an event loop: the loop runs while it waits."""
    import asyncio

    deadline = time.monotonic() + guard
    while not condition():
        assert time.monotonic() < deadline, f"waited {guard:g} s for {what}"
        await asyncio.sleep(0.01)
