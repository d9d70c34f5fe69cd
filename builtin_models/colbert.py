"""ColBERT late-interaction models: an encoder whose token vectors are projected.

The ``HF_ColBERT`` layout (colbert-ai, answerai-colbert-small-v1; vLLM calls it ``ColBERTModel``) keeps the BERT encoder under
``bert.`` and the projection as ``linear.weight``; ``ColBERTModernBertModel`` (chosen with
``hf_overrides={"architectures": [...]}``) does the same on ModernBERT. Without a projection in
the checkpoint, the sentence-transformers / PyLate Dense module (``1_Dense``) projects instead.
The models serve ``token_embed`` only (L2-normalised by the task) and score pairs by MaxSim.
"""

from __future__ import annotations

from typing import ClassVar, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl

from .bert import BertModel
from .modernbert import ModernBertModel

_PROJECTIONS = ("linear.weight", "colbert_linear.weight")


class _ColBERT:
    """Mixin: a bias-free projection of every token vector, read from the checkpoint if present."""

    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"token_embed"})
    score_type: ClassVar[str | None] = "late-interaction"

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        found: dict[str, torch.Tensor] = {}

        def without_projection(stream: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                if name in _PROJECTIONS:
                    found["weight"] = tensor
                else:
                    yield name, tensor

        super().load_weights(without_projection(weights))
        weight = found.get("weight")
        self.linear = None
        if weight is not None:
            if weight.ndim != 2 or weight.shape[1] != self.config.hidden_size:
                raise ModelLoadError(
                    f"the ColBERT projection has shape {tuple(weight.shape)}; it must take the encoder's "
                    f"{self.config.hidden_size} features"
                )
            self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            with torch.no_grad():
                self.linear.weight.copy_(weight)

    @property
    def hidden_size(self) -> int:
        """The width of the vectors :meth:`forward` returns: the projection's outputs where the
        checkpoint has one (what a response holds a number of per token, and its limit counts)."""
        linear = getattr(self, "linear", None)
        return int(linear.out_features) if linear is not None else super().hidden_size

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        hidden = super().forward(batch)
        if self.linear is None:
            return hidden
        return F.linear(hidden, self.linear.weight.to(hidden.dtype))


class ColBERTModel(_ColBERT, BertModel):
    """``HF_ColBERT``: BERT hidden states through ``linear``, one vector per token."""


class ColBERTModernBertModel(_ColBERT, ModernBertModel):
    """ModernBERT ColBERT (GTE-ModernColBERT style): hidden states through the projection."""


@hookimpl
def poolkit_register_architectures(register):
    register("HF_ColBERT", ColBERTModel)
    register("ColBERTModel", ColBERTModel)  # vLLM's name for the same layout
    register("ColBERTModernBertModel", ColBERTModernBertModel)
