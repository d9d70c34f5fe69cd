"""Task heads: pooler -> projector -> matryoshka truncation -> activation, in fp32."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from poolkit.batch import PackedBatch
from poolkit.config import PoolingParams
from poolkit.pooling import Pooler


class VectorHead:
    """Pools, projects, truncates and activates, for sequence or token granularity.

    Args:
        poolers: one or more poolers of the head's granularity; several are concatenated
            (sentence-transformers pooling with several modes on).
        projector: applied to the pooled vectors (sentence-transformers Dense layers), or None.
        activation: applied where a request's ``use_activation`` (default below) is true.
        use_activation: the default when a request leaves ``use_activation`` unset.
        dimensions: the default matryoshka width when a request leaves ``dimensions`` unset.
    """

    def __init__(
        self,
        poolers: Sequence[Pooler],
        projector: torch.nn.Module | None,
        activation: Callable[[torch.Tensor], torch.Tensor],
        use_activation: bool,
        dimensions: int | None = None,
    ) -> None:
        self.poolers = list(poolers)
        self.granularity = self.poolers[0].granularity
        self.projector = projector
        self.activation = activation
        self.use_activation = use_activation
        self.dimensions = dimensions

    def _pool(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor | list[torch.Tensor]:
        if self.granularity == "sequence":
            pooled = [p(hidden, batch).float() for p in self.poolers]
            return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)
        return [t.float() for t in self.poolers[0](hidden, batch)]

    def _finish(self, x: torch.Tensor, dims: int | None, activate: bool) -> torch.Tensor:
        if dims is not None:
            x = x[..., :dims]
        return self.activation(x) if activate else x

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        pooled = self._pool(hidden, batch)
        settings = [
            (p.dimensions or self.dimensions, self.use_activation if p.use_activation is None else p.use_activation)
            for p in params
        ]
        if self.granularity == "sequence":
            if self.projector is not None:
                pooled = self.projector(pooled)
            if len(set(settings)) == 1:
                return list(self._finish(pooled, *settings[0]).unbind(0))
            return [self._finish(row, *s) for row, s in zip(pooled.unbind(0), settings)]
        if self.projector is not None:
            pooled = [self.projector(t) for t in pooled]
        return [self._finish(t, *s) for t, s in zip(pooled, settings)]
