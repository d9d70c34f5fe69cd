"""The pooler, head and activation contracts."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol, Sequence

import torch

from .batch import PackedBatch

if TYPE_CHECKING:
    from .params import PoolingParams

GRANULARITIES = ("sequence", "token")


class Pooler:
    """Reduces packed hidden states ``[T, H]`` to what a task needs.

    A ``"sequence"`` pooler returns ``[B, H']`` (one row per sequence); a ``"token"`` pooler
    returns a list of ``[n_i, H']`` tensors. Poolers honour ``batch.pool_mask`` (tokens left
    out of pooling) where that makes sense.

    Example:
        >>> class FirstLastAvg(Pooler):
        ...     def __call__(self, hidden, batch):
        ...         return (hidden[batch.first_indices] + hidden[batch.last_indices]) / 2
    """

    #: ``"sequence"`` (one row per sequence) or ``"token"`` (one tensor of rows per sequence).
    granularity: ClassVar[str] = "sequence"

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor | list[torch.Tensor]:
        """Pool ``hidden`` (``[T, H]``, the model's dtype) for the packed ``batch``.

        Called once per batch by a task's head, under ``torch.inference_mode()``; one instance
        serves every model and thread, so keep no state between calls.
        """
        raise NotImplementedError

    def output_size(self, hidden_size: int) -> int:
        """Width of the pooled vectors for a model of ``hidden_size``."""
        return hidden_size


class Head(Protocol):
    """Turns the hidden states of one packed batch into one result per sequence: a list of
    tensors, or one ``[B, ...]`` tensor whose row ``i`` is sequence ``i``'s result (what a head
    whose results all have one shape returns: the engine then keeps a run's results as one tensor,
    with no object per input)."""

    def __call__(
        self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence["PoolingParams"]
    ) -> torch.Tensor | list[torch.Tensor]: ...


class FunctionPooler(Pooler):
    """A pooler made from a plain function ``fn(hidden, batch)``."""

    def __init__(self, fn: Callable, granularity: str = "sequence") -> None:
        if granularity not in GRANULARITIES:
            raise TypeError(f"pooler granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.fn = fn
        self.granularity = granularity  # type: ignore[misc]
        self.__doc__ = fn.__doc__

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor | list[torch.Tensor]:
        return self.fn(hidden, batch)

    def __repr__(self) -> str:
        return f"FunctionPooler({getattr(self.fn, '__qualname__', self.fn)!r})"


def check_pooler(name: str, obj: object) -> Pooler:
    """Registry check: a Pooler instance, a Pooler subclass (instantiated), or a callable."""
    if inspect.isclass(obj) and issubclass(obj, Pooler):
        obj = obj()
    elif not isinstance(obj, Pooler) and callable(obj) and not inspect.isclass(obj):
        obj = FunctionPooler(obj)
    if not isinstance(obj, Pooler):
        raise TypeError(f"pooler '{name}' must be a poolkit.Pooler or a function, got {type(obj).__name__}")
    if obj.granularity not in GRANULARITIES:
        raise TypeError(f"pooler '{name}' has granularity {obj.granularity!r}; expected one of {GRANULARITIES}")
    return obj


def check_activation(name: str, obj: object) -> Callable[[torch.Tensor], torch.Tensor]:
    """Registry check: any callable tensor -> tensor (not a class)."""
    if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
        obj = obj()
    if not callable(obj) or inspect.isclass(obj):
        raise TypeError(f"activation '{name}' must be a callable tensor -> tensor, got {type(obj).__name__}")
    return obj
