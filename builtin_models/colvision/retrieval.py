"""What the ColVision retrievers share: a vision-language backbone (its config the retriever's
``vlm_config``) whose every token's hidden state is projected to ``embedding_dim``
(``embedding_proj_layer``, with bias) and L2-normalised: one vector per token, served as
``token_embed`` and scored by MaxSim (``late-interaction``)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.errors import ModelLoadError

from ..blocks.linear import linear

#: The projection to the retrieval space, read by the retriever itself.
PROJECTION = r"embedding_proj_layer\."


def vlm_config(cls: type, config: Any) -> Any:
    """The retriever's backbone config.

    Raises:
        ModelLoadError: the config has none.
    """
    vlm = getattr(config, "vlm_config", None)
    if vlm is None:
        raise ModelLoadError(f"the {cls.__name__} config has no vlm_config")
    return vlm


def check_embedding_dim(cls: type, config: Any) -> None:
    """Refuse an ``embedding_dim`` that is not a positive integer."""
    dim = getattr(config, "embedding_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise ModelLoadError(f"the {cls.__name__} config's embedding_dim must be a positive integer, got {dim!r}")


def project(hidden: torch.Tensor, layer: nn.Linear, linear_act: Callable) -> torch.Tensor:
    """Every token's vector in the retrieval space: projected, then L2-normalised (in float32)."""
    projected = linear(hidden, layer, linear_act)
    return F.normalize(projected.float(), dim=-1).to(projected.dtype)


class RetrievalHead:
    """What both retrievers are: a ``token_embed`` model of text and images scored by MaxSim, whose
    outputs are ``embedding_dim`` wide and whose decoder is its backbone's (``vlm_config.text_config``)."""

    default_pooling_type: ClassVar[str | None] = None
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"token_embed"})
    score_type: ClassVar[str | None] = "late-interaction"
    config: Any

    @property
    def text_config(self) -> Any:
        return self.config.vlm_config.text_config

    @property
    def hidden_size(self) -> int:
        return int(self.config.embedding_dim)

    @property
    def num_labels(self) -> int:
        return 0
