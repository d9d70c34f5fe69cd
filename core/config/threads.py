"""How many threads torch runs a block's operations on: the engine's policy for small CPU batches,
and a plugin's own for work too small to split (a static model's gather and mean)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


@contextlib.contextmanager
def one_thread() -> Any:
    """Run the block's torch operations on the calling thread alone. The count is the calling
    thread's own (OpenMP's per-thread setting): other threads keep theirs."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
