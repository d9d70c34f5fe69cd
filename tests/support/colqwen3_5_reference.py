"""The parity reference for ColQwen3.5 and BiQwen3.5: colpali-engine 0.3.18's classes (PyPI
``colpali-engine==0.3.18``), written out because colpali-engine is not installed here (it needs
torchvision):

- :class:`ColQwen3_5` is ``colpali_engine/models/qwen3_5/colqwen3_5/modeling_colqwen3_5.py``'s
  ``ColQwen3_5(Qwen3_5Model)``: transformers' ``Qwen3_5Model`` (M-RoPE positions as it computes
  them from ``image_grid_thw``, ``mm_token_type_ids`` and the attention mask), ``custom_text_proj =
  nn.Linear(hidden, config.dim)`` (``dim`` 128 when absent), ``proj / proj.norm(-1)`` times the
  attention mask; ``mask_non_image_embeddings`` left at its default (off);
- :class:`BiQwen3_5` is ``models/qwen3_5/biqwen3_5/modeling_biqwen3_5.py``'s ``BiQwen3_5``: the
  last position's state (its default ``pooling_strategy="last"``), L2-normalised;
- their processors (``processing_colqwen3_5.py``, ``utils/processing_utils.py``): a page is
  ``visual_prompt_prefix`` with its image through transformers' ``Qwen3VLProcessor``
  (``process_images``), a query ``query_prefix`` ("") + the text + ten ``query_augmentation_token``
  (``<|endoftext|>``) tokenized plainly (``process_queries`` -> ``process_texts``), padded on the left.

colpali-engine pads ``pixel_values`` per image in ``process_images`` and unpads them in ``forward``;
one page per call, as these tests run it, makes that a no-op, so it is not written out.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from PIL import Image
from torch import nn

#: ``ColQwen3_5Processor.visual_prompt_prefix``.
VISUAL_PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
#: ``query_augmentation_token * 10`` (``BaseVisualRetrieverProcessor.process_queries``' suffix).
QUERY_SUFFIX = "<|endoftext|>" * 10


class ColQwen3_5(T.Qwen3_5Model):  # noqa: N801 - colpali-engine's name, which config.json's architectures carry
    """colpali-engine's ``ColQwen3_5``: ``Qwen3_5Model``, ``custom_text_proj``, L2 norm, attention mask."""

    def __init__(self, config: T.Qwen3_5Config) -> None:
        super().__init__(config)
        self.dim = getattr(config, "dim", 128)
        self.custom_text_proj = nn.Linear(config.text_config.hidden_size, self.dim)
        self.post_init()

    def forward(self, **kwargs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        hidden = super().forward(**kwargs, use_cache=False, return_dict=True).last_hidden_state
        proj = self.custom_text_proj(hidden)
        proj = proj / proj.norm(dim=-1, keepdim=True)
        return proj * kwargs["attention_mask"].unsqueeze(-1)


class BiQwen3_5(T.Qwen3_5Model):  # noqa: N801
    """colpali-engine's ``BiQwen3_5``: ``Qwen3_5Model``'s last position, L2-normalised."""

    def forward(self, **kwargs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        hidden = super().forward(**kwargs, use_cache=False, return_dict=True).last_hidden_state
        pooled = hidden[:, -1]
        return pooled / pooled.norm(dim=-1, keepdim=True)


class ImageQwen3VLProcessor(T.Qwen3VLProcessor):
    """transformers' ``Qwen3VLProcessor`` (the base of colpali-engine's ``ColQwen3_5Processor``)
    without a video processor: building one needs torchvision, so the class check of that absent
    argument is skipped; pages and queries never read it."""

    def check_argument_for_proper_class(self, argument_name: str, argument: object) -> None:
        if argument is not None:
            super().check_argument_for_proper_class(argument_name, argument)


def load_processor(model_dir: Path) -> ImageQwen3VLProcessor:
    """The checkpoint's tokenizer (padding on the left, as ``ColQwen3_5Processor`` sets it) and
    Pillow image processor in transformers' ``Qwen3VLProcessor``."""
    tok = T.AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    images = T.AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    return ImageQwen3VLProcessor(image_processor=images, tokenizer=tok, video_processor=None)


def process_images(processor: ImageQwen3VLProcessor, images: list[Image.Image]) -> dict:
    """``ColQwen3_5Processor.process_images``: the visual prompt, one per image."""
    return processor(
        text=[VISUAL_PROMPT] * len(images), images=[i.convert("RGB") for i in images], padding="longest", return_tensors="pt"
    )


def process_queries(processor: ImageQwen3VLProcessor, texts: list[str]) -> dict:
    """``process_queries``: the text and its augmentation, tokenized plainly (``process_texts``)."""
    return processor(text=[t + QUERY_SUFFIX for t in texts], padding="longest", return_tensors="pt")


def encode(model: nn.Module, inputs: dict) -> torch.Tensor:
    """The model's output for processed ``inputs`` (no gradient)."""
    with torch.no_grad():
        return model(**inputs)
