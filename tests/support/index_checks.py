"""Helpers of the late-interaction index's tests (tests/api/test_index_integrity.py,
tests/cli/test_index_job_safety.py): another model under the same name, what the disk still holds,
and a writer holding an index."""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file


def retrained(src: Path, dst: Path) -> Path:
    """A copy of the ColBERT at ``src`` with other projection weights: the same name, width and
    config (so the same vector width), another model."""
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    state["linear.weight"] = torch.flip(state["linear.weight"], dims=[1]).contiguous()
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def files_holding(folder: Path, needle: bytes) -> list[Path]:
    """The files under ``folder`` whose bytes contain ``needle`` (what is left of a document on disk)."""
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


@contextlib.contextmanager
def held_by_another_writer(path: Path) -> Iterator[None]:
    """The index at ``path`` held (``index_lock``) by another thread, as a running job holds it,
    until the block ends: no timing, the holder waits for the block."""
    from poolkit.api.index import index_lock

    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with index_lock(path):
            taken.set()
            release.wait(120)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(120), "the holder never took the lock"
        yield
    finally:
        release.set()
        holder.join()
