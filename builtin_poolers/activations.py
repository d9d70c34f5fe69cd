"""The built-in activations applied by task heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from poolkit.contracts.hookspecs import hookimpl


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension."""
    return F.normalize(x, p=2, dim=-1)


def identity(x: torch.Tensor) -> torch.Tensor:
    """Return the input unchanged."""
    return x


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension."""
    return torch.softmax(x, dim=-1)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Element-wise logistic function."""
    return torch.sigmoid(x)


@hookimpl
def poolkit_register_activations(register):
    register("normalize", normalize)
    register("identity", identity)
    register("softmax", softmax)
    register("sigmoid", sigmoid)
