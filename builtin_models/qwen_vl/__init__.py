"""The Qwen-VL family: Qwen2-VL, Qwen2.5-VL and Qwen3-VL as embedders, each model beside the
processor that makes its prompts.

- :mod:`.qwen2_vl`: the design all three share (a vision tower feeding the decoder with M-RoPE)
  and Qwen2-VL's own tower;
- :mod:`.qwen2_5_vl`, :mod:`.qwen3_vl`: their towers (windowed attention; learned positions and
  deepstack) and decoders; Qwen3-VL-Reranker is Qwen3-VL read through its LM head's "yes" and "no" rows;
- :mod:`.processor`: their media processor (images and videos to patches, placeholders expanded,
  multimodal rotary positions), which every family's architecture names as its ``media_processor``;
- :mod:`.jina_reranker_m0`: jina-reranker-m0 (``JinaVLForRanking``), Qwen2-VL as a cross-encoder
  with its score head, score token and pair prompt.
"""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .jina_reranker_m0 import SCORE_TEMPLATE_NAME, JinaVLForRanking, score_template
from .qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from .qwen2_vl import Qwen2VLForConditionalGeneration
from .qwen3_vl import Qwen3VLForConditionalGeneration, Qwen3VLForSequenceClassification

__all__ = [
    "JinaVLForRanking", "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration",
    "Qwen3VLForSequenceClassification",
]


@hookimpl
def poolkit_register_architectures(register):
    register("Qwen2VLForConditionalGeneration", Qwen2VLForConditionalGeneration)
    register("Qwen2_5_VLForConditionalGeneration", Qwen2_5_VLForConditionalGeneration)
    register("Qwen3VLForConditionalGeneration", Qwen3VLForConditionalGeneration)
    register("Qwen3VLForSequenceClassification", Qwen3VLForSequenceClassification)
    register("JinaVLForRanking", JinaVLForRanking)


@hookimpl
def poolkit_register_io_processors(register):
    register(SCORE_TEMPLATE_NAME, score_template())
