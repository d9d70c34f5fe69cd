"""Qwen3.5 as Qwen publishes it: ``Qwen3_5ForConditionalGeneration``, the hybrid text decoder of
:mod:`.model` behind Qwen3-VL's vision tower, on the Qwen-VL routes of
:mod:`poolkit.builtin_models.qwen_vl`.

The tower is Qwen3-VL's (patches, interpolated learned positions, 2-D rotary attention within each
image, the 2x2 merger) without deepstack taps: Qwen3.5's vision config names none. The decoder's
attention layers read interleaved M-RoPE over their rotated dimensions (``mrope_section`` splits
the first ``partial_rotary_factor`` of each head); its delta-net layers read no positions. Images
and videos are written and pre-processed as Qwen3-VL's (:mod:`~poolkit.builtin_models.qwen_vl.processor`:
Qwen3.5 ships Qwen3-VL's processor), each temporal patch of a video after its ``<t seconds>`` timestamp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..qwen_vl.qwen3_vl import Qwen3VLForConditionalGeneration
from .model import Qwen3_5TextModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class Qwen3_5ForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """Qwen3.5 (text, images, videos) as an embedder: media features in the placeholders' rows, the
    Qwen3.5 decoder over the whole prompt, the last token pooled. Checkpoints keep the decoder under
    ``model.language_model.``, the tower under ``model.visual.``; ``lm_head`` and the
    multi-token-prediction block (``mtp.*``) are dropped.

    Example:
        >>> llm = LLM("Qwen/Qwen3.5-0.8B")
        >>> llm.embed({"prompt": "<|vision_start|><|image_pad|><|vision_end|>What is shown?",
        ...            "multi_modal_data": {"image": "page.png"}})
    """

    #: Not a Qwen2-family decoder, but the same surface: ``embed``, ``decode``, ``head_dim`` (the
    #: rotated width), ``_rotary_parameters``, ``check_config``, ``load_weights``.
    language_model_class: ClassVar[type[Qwen3_5TextModel]] = Qwen3_5TextModel  # type: ignore[assignment]
    #: No filler sequences, as for the text model: each would cost the delta rule a whole chunk.
    accepts_filler: ClassVar[bool] = False

    def __init__(self, config: PretrainedConfig) -> None:
        # Qwen3-VL's tower reads its deepstack taps off the vision config; Qwen3.5's has none.
        if getattr(config.vision_config, "deepstack_visual_indexes", None) is None:
            config.vision_config.deepstack_visual_indexes = []
        super().__init__(config)
