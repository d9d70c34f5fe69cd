"""What the server tests send and how close a served result must be to the offline Python API's."""

from __future__ import annotations

import torch

ATOL = 1e-5
TEXTS = ["Hello, my name is", "The capital of France is Paris.", "A man is eating food.", "ünïcödé ✓ text"]


def _close(a, b, atol: float = ATOL) -> float:
    diff = float((torch.tensor(a, dtype=torch.float32) - torch.tensor(b, dtype=torch.float32)).abs().max())
    assert diff <= atol, diff
    return diff
