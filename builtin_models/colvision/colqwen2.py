"""ColQwen2 (``ColQwen2ForRetrieval``): poolkit's Qwen2-VL
(:mod:`~poolkit.builtin_models.qwen_vl.qwen2_vl`) over the ``vlm_config``, every token's hidden
state projected and normalised (:mod:`.retrieval`). transformers runs its decoder without
multimodal rotary positions (every token, image tokens too, at its plain position), so its
processor (:class:`~.processor.ColQwen2Processor`) gives plain positions.

Checkpoints load in transformers 5's layout (``vlm.visual.*``, ``vlm.language_model.*``) and the
published one (vidore's ``-hf`` checkpoints: ``vlm.model.*``); ``lm_head`` is not read. The
projection is ``embedding_proj_layer``, or ``custom_text_proj`` as colpali-engine's classes name it;
a LoRA adapter (:mod:`poolkit.lora`) may train it under either name.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from poolkit.contracts.batch import PackedBatch
from poolkit.plugins.lookup import kernel_for

from ..qwen_vl.qwen2_vl import Qwen2VLForConditionalGeneration
from ..blocks.vision_language import CheckpointLayout
from .processor import ColQwen2Processor
from .retrieval import PROJECTION, ProjectedRetriever, project


class ColQwen2ForRetrieval(ProjectedRetriever, Qwen2VLForConditionalGeneration):
    """ColQwen2: Qwen2-VL's hidden states projected and normalised, one vector per token.

    Example:
        >>> llm = LLM("vidore/colqwen2-v1.0-hf")
        >>> pages = llm.encode([{"prompt": "", "multi_modal_data": {"image": "page.png"}}], pooling_task="token_embed")
    """

    media_processor: ClassVar[type[ColQwen2Processor] | str | None] = ColQwen2Processor
    #: Qwen2-VL's layout under ``vlm.``, and the projection.
    checkpoint_layout: ClassVar[CheckpointLayout] = Qwen2VLForConditionalGeneration.checkpoint_layout.under(
        r"(?:vlm\.)?", projection=PROJECTION
    )


    def forward(self, batch: PackedBatch) -> torch.Tensor:
        hidden = super().forward(batch)
        return project(hidden, self.embedding_proj_layer, kernel_for(self, "linear_act", batch.device))
