"""ColQwen2.5 as colpali-engine publishes it (``ColQwen2_5``: vidore/colqwen2.5-base, and the
retrievers trained over it, as vidore/colqwen2.5-v0.2, published as PEFT adapters that
:mod:`poolkit.lora.repository` merges into the base at load): poolkit's Qwen2.5-VL
(:class:`~poolkit.builtin_models.qwen_vl.qwen2_5_vl.Qwen2_5_VLForConditionalGeneration`), every
token's final hidden state through ``custom_text_proj`` (``hidden -> dim``, with bias) and
L2-normalised: one vector per token, served as ``token_embed`` and scored by MaxSim (:mod:`.retrieval`).

What is read from each file (``colpali_engine/models/qwen2_5/colqwen2_5/`` of illuin-tech/colpali):

- ``config.json``: the backbone's own config at the top level (``"architectures": ["ColQwen2_5"]``,
  ``model_type`` ``qwen2_5_vl``; the decoder's keys flat, as transformers 4.4x wrote Qwen2.5-VL's, or
  under ``text_config``), and ``dim``, the projection's width, where it has one (``modeling_colqwen2_5.py``
  fixes ``self.dim = 128``, the width used where it has none). A ``custom_text_proj`` of another
  width is refused at load, in one line;
- ``model.safetensors``: what ``ColQwen2_5`` saved, the names its ``_checkpoint_conversion_mapping``
  reads: the decoder as ``model.layers.*`` / ``model.embed_tokens`` / ``model.norm`` (the February
  2025 class was a ``Qwen2_5_VLForConditionalGeneration``; transformers 5 saves these names back)
  or as ``Qwen2_5_VLModel`` names it (``language_model.*``), the vision tower ``visual.*``, and
  ``custom_text_proj.{weight,bias}``; a tied ``lm_head`` is not read;
- ``preprocessor_config.json`` and the tokenizer: Qwen2.5-VL's, read by
  :class:`~.processor.ColQwen2_5Processor` (``processing_colqwen2_5.py``'s prompts).

Positions: ``modeling_colqwen2_5.py``'s ``forward`` runs ``Qwen2_5_VLModel.forward``, which computes
the M-RoPE positions of a page from its image grid (``get_rope_index``; transformers 5 from the
processor's ``mm_token_type_ids``); the class of February 2025, which trained colqwen2.5-v0.2, called
``get_rope_index`` itself. A page runs at those multimodal positions, a query (text only) at plain
ones, as both run it. Attention is causal; the projection is L2-normalised (``proj / |proj|``) and,
packed, needs no attention mask; ``mask_non_image_embeddings`` (a constructor argument, off by
default and in no config) is not ported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Collection, Mapping

from torch import nn

from poolkit.contracts.errors import ModelLoadError

from ..blocks.vision_language import CheckpointLayout
from ..qwen_vl.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from .colqwen3_5 import DEFAULT_DIM, retrieval_dim
from .processor import ColQwen2_5Processor
from .retrieval import ProjectedTokens

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: colpali-engine's projection, at the top of the checkpoint and in its adapters.
PROJECTION = "custom_text_proj"


class ColQwen2_5(ProjectedTokens, Qwen2_5_VLForConditionalGeneration):
    """colpali-engine's ColQwen2.5: Qwen2.5-VL's hidden states projected (``custom_text_proj``) and
    normalised, one vector per token.

    Example:
        >>> llm = LLM("vidore/colqwen2.5-v0.2")  # the adapter, merged into vidore/colqwen2.5-base
        >>> pages = llm.encode([{"prompt": "", "multi_modal_data": {"image": "page.png"}}], pooling_task="token_embed")
        >>> llm.score("what is the revenue in 2023?", [{"content": [{"type": "image_url", "image_url": {"url": "page.png"}}]}])
    """

    media_processor: ClassVar[type[ColQwen2_5Processor] | str | None] = ColQwen2_5Processor
    projection_name: ClassVar[str] = PROJECTION
    layout: ClassVar[tuple[str, str]] = (
        f"colpali-engine ColQwen2_5 ({{names}}, {{width}}-wide {PROJECTION})",
        "config.json architectures (ColQwen2_5), the checkpoint's tensor names",
    )
    #: Qwen2.5-VL's layouts (published ``model.`` / ``visual.``, transformers 5's), and the projection.
    checkpoint_layout: ClassVar[CheckpointLayout] = Qwen2_5_VLForConditionalGeneration.checkpoint_layout.under(
        "", projection=rf"{PROJECTION}\."
    )

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.custom_text_proj = nn.Linear(int(config.text_config.hidden_size), retrieval_dim(type(self), config))

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """Qwen2.5-VL's checks, and ``custom_text_proj``'s shape against ``dim`` (128 where absent).

        Raises:
            ModelLoadError: one line naming ``dim`` and the projection's shape.
        """
        super().check_config(config, shapes, overridden)
        dim = retrieval_dim(cls, config)
        held = (shapes or {}).get(f"{PROJECTION}.weight")
        wanted = (dim, int(config.text_config.hidden_size))
        if held is not None and tuple(held) != wanted:
            given = f"dim is {dim}" if getattr(config, "dim", None) is not None else f"has no dim (colpali-engine's {DEFAULT_DIM})"
            raise ModelLoadError(
                f"the {cls.__name__} config {given}, but the weights' {PROJECTION}.weight has shape {tuple(held)}, not {wanted}"
            )

    def found_names(self, tops: set[str]) -> str:
        if "language_model" in tops:
            return "Qwen2_5_VLModel's tensor names: language_model.*, visual.*"
        return "published tensor names: model.*, visual.*" if "visual" in tops else "transformers 5 tensor names: model.*"
