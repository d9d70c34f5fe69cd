"""ColBERT late-interaction models: a BERT encoder whose token vectors are projected.

The ``HF_ColBERT`` layout (colbert-ai, answerai-colbert-small-v1) keeps the BERT encoder under
``bert.`` and the projection as ``linear.weight``. Its output width comes from the config
(``dim``, ``colbert_dim`` or ``projection_dim``) or from the weight itself. The model serves
``token_embed`` only (projected, then L2-normalised by the task), and scores pairs by MaxSim.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.batch import PackedBatch
from poolkit.builtin_models.bert import BertModel
from poolkit.errors import ModelLoadError
from poolkit.hookspecs import hookimpl

_DIM_KEYS = ("dim", "colbert_dim", "projection_dim")


class ColBERTModel(BertModel):
    """``HF_ColBERT``: BERT hidden states through ``linear`` (no bias), one vector per token."""

    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"token_embed"})
    score_type: ClassVar[str | None] = "late-interaction"
    head_prefixes: ClassVar[tuple[str, ...]] = ("linear.",)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        dim = next((int(getattr(config, k)) for k in _DIM_KEYS if getattr(config, k, None)), config.hidden_size)
        self.linear = nn.Linear(config.hidden_size, dim, bias=False)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        def resize_linear(stream: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                if name in ("linear.weight", "colbert_linear.weight"):
                    if tensor.ndim != 2 or tensor.shape[1] != self.config.hidden_size:
                        raise ModelLoadError(
                            f"ColBERT projection '{name}' has shape {tuple(tensor.shape)}; it must take the "
                            f"encoder's {self.config.hidden_size} features"
                        )
                    if tensor.shape[0] != self.linear.out_features:
                        self.linear = nn.Linear(tensor.shape[1], tensor.shape[0], bias=False)
                    name = "linear.weight"
                yield name, tensor

        super().load_weights(resize_linear(weights))

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        hidden = super().forward(batch)
        return F.linear(hidden, self.linear.weight.to(hidden.dtype))


@hookimpl
def poolkit_register_architectures(register):
    register("HF_ColBERT", ColBERTModel)
