"""What the ColVision retrievers share: a vision-language backbone (its config the retriever's
``vlm_config``) whose every token's hidden state is projected to ``embedding_dim``
(``embedding_proj_layer``, with bias) and L2-normalised: one vector per token, served as
``token_embed`` and scored by MaxSim (``late-interaction``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.io import Prompt
from poolkit.loading.weights import load_into
from poolkit.plugins.lookup import kernel_for

from ..blocks.linear import linear

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.architecture import LoadedModel

#: The projection to the retrieval space, read by the retriever itself: transformers' name, or
#: colpali-engine's (``custom_text_proj``, the name its classes, checkpoints and adapters use).
PROJECTION = r"(?:embedding_proj_layer|custom_text_proj)\."
_PROJECTION_MODULES = ("embedding_proj_layer", "custom_text_proj")
_PROJECTION_LAYER = re.compile(rf"(?:^|\.)(?:{'|'.join(_PROJECTION_MODULES)})$")


def vlm_config(cls: type, config: PretrainedConfig) -> Any:
    """The retriever's backbone config.

    Raises:
        ModelLoadError: the config has none.
    """
    vlm = getattr(config, "vlm_config", None)
    if vlm is None:
        raise ModelLoadError(f"the {cls.__name__} config has no vlm_config")
    return vlm


def check_embedding_dim(cls: type, config: PretrainedConfig) -> None:
    """Refuse an ``embedding_dim`` that is not a positive integer."""
    dim = getattr(config, "embedding_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise ModelLoadError(f"the {cls.__name__} config's embedding_dim must be a positive integer, got {dim!r}")


def project(hidden: torch.Tensor, layer: nn.Linear, linear_act: Callable) -> torch.Tensor:
    """Every token's vector in the retrieval space: projected, then L2-normalised (in float32)."""
    projected = linear(hidden, layer, linear_act)
    return F.normalize(projected.float(), dim=-1).to(projected.dtype)


class RetrievalHead:
    """What the retrievers are: a ``token_embed`` model of text and images scored by MaxSim, whose
    outputs are ``embedding_dim`` wide and whose decoder is its backbone's (``vlm_config.text_config``,
    or ``text_config`` where the config is the backbone's own, as ColQwen3.5's)."""

    default_pooling_type: ClassVar[str | None] = None
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"token_embed"})
    score_type: ClassVar[str | None] = "late-interaction"
    config: PretrainedConfig

    @property
    def text_config(self) -> Any:
        return (getattr(self.config, "vlm_config", None) or self.config).text_config

    @property
    def hidden_size(self) -> int:
        return int(self.config.embedding_dim)

    @property
    def num_labels(self) -> int:
        return 0

    def adapter_target(self, layer: str) -> tuple[str, int, int] | None:
        """The projection under either name (colpali-engine's adapters train ``custom_text_proj``),
        where the retriever keeps it under either; the backbone's layers as the backbone places them."""
        if _PROJECTION_LAYER.search(layer):
            own = next((name for name in _PROJECTION_MODULES if isinstance(getattr(self, name, None), nn.Linear)), None)
            if own is not None:
                return own, 0, 1
        return super().adapter_target(layer)  # type: ignore[misc]

    def role_prompts(self, texts: list[str], side: str, model: LoadedModel) -> list[Prompt]:
        """A query is the text as the media processor writes a text without an image (the query
        prefix and augmentation); a text document is the text as the tokenizer encodes it, as
        colpali-engine's ``process_texts`` does for a corpus of texts (no prefix, no augmentation)."""
        if side == "query":
            return [Prompt(text=text) for text in texts]
        return [Prompt(token_ids=list(model.tokenizer(text)["input_ids"])) for text in texts]


class ProjectedRetriever(RetrievalHead):
    """A retriever whose backbone is the architecture after it in its bases, built from the
    ``vlm_config`` (checked as that architecture checks it), with the projection
    (``embedding_proj_layer``) after it; the checkpoint's tensors go to the backbone's
    ``load_parts`` and its ``projection`` part to the projection."""

    embedding_proj_layer: nn.Linear

    def __init__(self, config: PretrainedConfig) -> None:
        vlm = vlm_config(type(self), config)
        super().__init__(vlm)
        self.config = config
        self.embedding_proj_layer = nn.Linear(int(vlm.text_config.hidden_size), int(config.embedding_dim))

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        super().check_config(vlm_config(cls, config), None, ())
        check_embedding_dim(cls, config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        parts = self.checkpoint_layout.split(weights)
        self.load_parts(parts)
        load_into(self.embedding_proj_layer, parts["projection"], rename=lambda n: n)


class ProjectedTokens(RetrievalHead):
    """A retriever whose backbone is the architecture after it in its bases, every token's final state
    through its projection (the module :attr:`projection_name`) and L2-normalised; its checkpoint's
    ``projection`` part loads into that module, and ``poolkit info`` names the tensor names found
    (:meth:`found_names`) in :attr:`layout` (formatted with ``names`` and ``width``)."""

    #: The projection's module name (``custom_text_proj``, ``embedding_proj_layer``).
    projection_name: ClassVar[str]
    #: ``poolkit info``'s layout: its text (``{names}``, ``{width}``) and what recognised it.
    layout: ClassVar[tuple[str, str]]
    #: The tensor names :meth:`load_weights` found.
    tensor_names: str = "none loaded"

    @property
    def projection(self) -> nn.Linear:
        return getattr(self, self.projection_name)

    @property
    def hidden_size(self) -> int:
        return int(self.projection.out_features)

    def found_names(self, tops: set[str]) -> str:
        """The checkpoint's names in words, from the first parts of its tensor names."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        text, source = self.layout
        return {"layout": {"value": text.format(names=self.tensor_names, width=self.hidden_size), "source": source}}

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        hidden = super().forward(batch)  # type: ignore[misc]
        return project(hidden, self.projection, kernel_for(self, "linear_act", batch.device))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        tops: set[str] = set()

        def noting(stream: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                tops.add(name.partition(".")[0])
                yield name, tensor

        parts = self.checkpoint_layout.split(noting(weights))  # type: ignore[attr-defined]
        self.load_parts(parts)  # type: ignore[attr-defined]
        load_into(self.projection, parts["projection"], rename=lambda n: n)
        self.tensor_names = self.found_names(tops)
