"""ColQwen3.5 and BiQwen3.5, colpali-engine's retrievers on Qwen3.5 (``ColQwen3_5``, ``BiQwen3_5``):
poolkit's :class:`~poolkit.builtin_models.qwen3_5.Qwen3_5ForConditionalGeneration` (the hybrid
decoder behind Qwen3-VL's vision tower, Qwen3.5's M-RoPE for pages, plain positions for queries),
its final hidden states read as colpali-engine's classes read those of transformers' ``Qwen3_5Model``:

- ``ColQwen3_5``: every token's state through ``custom_text_proj`` (``hidden -> dim``, with bias;
  the config's ``dim``, 128 when absent as in colpali-engine) and L2-normalised: one vector per
  token, served as ``token_embed`` and scored by MaxSim (:mod:`.retrieval`);
- ``BiQwen3_5``: the last token's state, L2-normalised (``embed``; colpali-engine's default ``last``
  pooling).

Both configs are the backbone's own (``model_type`` ``qwen3_5``, ``text_config`` and
``vision_config`` at the top), their prompts colpali-engine's (:class:`~.processor.ColQwen3_5Processor`).
Checkpoints hold the backbone as colpali-engine saves a ``Qwen3_5Model``: ``language_model.*``,
``visual.*``, and ``custom_text_proj.*`` for the multi-vector one (``mtp.*`` is dropped). Attention
is causal, as ``Qwen3_5Model`` runs it; a config that declares ``retrieval_attention_contract:
bidirectional`` is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Collection, Iterable, Mapping

import torch
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import load_into
from poolkit.plugins.lookup import kernel_for

from ..blocks.vision_language import CheckpointLayout
from ..qwen3_5 import Qwen3_5ForConditionalGeneration
from .processor import ColQwen3_5Processor
from .retrieval import RetrievalHead, project

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: The width of ``custom_text_proj`` when the config names no ``dim`` (colpali-engine's default).
DEFAULT_DIM = 128


def retrieval_dim(cls: type, config: PretrainedConfig) -> int:
    """The width of the retrieval space: the config's ``dim``, else :data:`DEFAULT_DIM`.

    Raises:
        ModelLoadError: ``dim`` is not a positive integer.
    """
    dim = getattr(config, "dim", None)
    if dim is None:
        return DEFAULT_DIM
    if not isinstance(dim, int) or dim < 1:
        raise ModelLoadError(f"the {cls.__name__} config's dim must be a positive integer, got {dim!r}")
    return dim


def check_causal(cls: type, config: PretrainedConfig) -> None:
    """Refuse a config that declares bidirectional attention (``retrieval_attention_contract``):
    colpali-engine's classes, the reference, run Qwen3.5's causal attention."""
    contract = getattr(config, "retrieval_attention_contract", None)
    if contract not in (None, "causal"):
        raise ModelLoadError(
            f"{cls.__name__} runs causal attention, as colpali-engine does; retrieval_attention_contract '{contract}' is not supported"
        )


class BiQwen3_5(Qwen3_5ForConditionalGeneration):
    """BiQwen3.5: Qwen3.5's last token, L2-normalised, one vector per query or page.

    Example:
        >>> llm = LLM("path/to/biqwen3.5")
        >>> pages = llm.embed([{"prompt": "", "multi_modal_data": {"image": "page.png"}}])
    """

    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"embed"})
    media_processor: ClassVar[type[ColQwen3_5Processor] | str | None] = ColQwen3_5Processor
    #: Whether ``custom_text_proj`` (the config's ``dim`` wide) follows the backbone.
    projected: ClassVar[bool] = False

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        super().check_config(config, shapes, overridden)
        check_causal(cls, config)
        if cls.projected:
            retrieval_dim(cls, config)


class ColQwen3_5(RetrievalHead, BiQwen3_5):
    """ColQwen3.5: Qwen3.5's hidden states projected (``custom_text_proj``) and normalised, one
    vector per token.

    Example:
        >>> llm = LLM("athrael-soju/colqwen3.5-4.5B-v3")
        >>> queries = llm.encode(["what is the revenue in 2023?"], pooling_task="token_embed")
    """

    #: The backbone's layout, and the projection.
    checkpoint_layout: ClassVar[CheckpointLayout] = Qwen3_5ForConditionalGeneration.checkpoint_layout.under(
        "", projection=r"custom_text_proj\."
    )

    projected: ClassVar[bool] = True

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.custom_text_proj = nn.Linear(int(config.text_config.hidden_size), retrieval_dim(type(self), config))

    @property
    def hidden_size(self) -> int:
        return int(self.custom_text_proj.out_features)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        hidden = super().forward(batch)
        return project(hidden, self.custom_text_proj, kernel_for(self, "linear_act", batch.device))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        parts = self.checkpoint_layout.split(weights)
        self.load_parts(parts)
        load_into(self.custom_text_proj, parts["projection"], rename=lambda n: n)
