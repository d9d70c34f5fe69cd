"""ColQwen3 as tomoro-ai publishes it (``ColQwen3``: TomoroAI/tomoro-colqwen3-embed-4b and -8b):
poolkit's Qwen3-VL (:class:`~poolkit.builtin_models.qwen_vl.qwen3_vl.Qwen3VLForConditionalGeneration`:
deepstack, interleaved M-RoPE for pages, plain positions for texts), every token's final hidden state
projected (``embedding_proj_layer``, ``hidden -> embed_dim``, with bias) and L2-normalised: one vector
per token, served as ``token_embed`` and scored by MaxSim (:mod:`.retrieval`).

The checkpoints ship this model as remote code (``auto_map``), which poolkit never runs; what is read
from each file instead:

- ``config.json``: ``architectures: ["ColQwen3"]`` and ``model_type: colqwen3`` (the remote
  ``ColQwen3Config``, a ``Qwen3VLConfig`` subclass, so read here as Qwen3-VL's config), the backbone's
  ``text_config``, ``vision_config`` and token ids at the top, and ``embed_dim``, the projection's
  width (``ColQwen3Config``'s default 320 where absent); ``padding_side`` means nothing to packed batches;
- ``model.safetensors``: what ``modeling_colqwen3.py``'s ``ColQwen3`` saves, Qwen3-VL under ``vlm.``
  (``vlm.model.visual.*``, ``vlm.model.language_model.*``; ``vlm.lm_head.*`` is not read) and
  ``embedding_proj_layer.{weight,bias}``; the names its ``_checkpoint_conversion_mapping`` maps from a
  bare ``Qwen3VLModel`` (``model.visual.*``, ``language_model.*``, ``custom_text_proj.*``) load too.
  A projection whose width is not ``embed_dim`` is refused at load;
- ``preprocessor_config.json`` and the tokenizer: Qwen3-VL's, as :class:`ColQwen3Processor` reads them.

``modeling_colqwen3.py``'s ``forward`` runs ``Qwen3VLModel`` (causal attention, the M-RoPE it computes
from the image grids), the projection, ``x / max(|x|, eps)`` and the attention mask; its
``mask_non_image_embeddings`` (a constructor argument, off by default and in no config) is not ported.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Mapping, Sequence

from torch import nn

from poolkit.contracts.capabilities import BorrowsConfig
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.contracts.io import Prompt

from ..blocks.vision_language import CheckpointLayout
from ..decoders.rerankers import LLMReranker
from ..qwen_vl.qwen2_vl import CHECKPOINT
from ..qwen_vl.processor import MEDIA_TOKENS, VisionSettings
from ..qwen_vl.qwen3_vl import Qwen3VLForConditionalGeneration
from .processor import ColQwen3_5Processor, query_ids
from .retrieval import PROJECTION, ProjectedTokens

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.architecture import LoadedModel
    from poolkit.contracts.model import ModelInfo

#: ``ColQwen3Config``'s ``embed_dim`` where ``config.json`` names none.
DEFAULT_EMBED_DIM = 320
#: ``ColQwen3Processor.from_pretrained``'s ``max_num_visual_tokens``: a page's budget of merged patches.
MAX_VISUAL_TOKENS = 1280
#: The projection, under tomoro's name or the one its ``_checkpoint_conversion_mapping`` renames.
PROJECTION_WEIGHT = re.compile(PROJECTION + "weight")
#: ``embed_dim`` against the projection the checkpoint holds (Qwen-VL's own checks read no shapes).
PROJECTION_CHECKS = ConfigChecks(
    sizes=("embed_dim",),
    shapes={name: ("embed_dim", "text_config.hidden_size") for name in ("embedding_proj_layer.weight", "custom_text_proj.weight")},
)


class ColQwen3Processor(ColQwen3_5Processor):
    """The prompts of tomoro's ``ColQwen3Processor`` (``processing_colqwen3.py``): a text, query or
    text document alike (``process_texts``), is its ``query_prefix`` (empty), the text stripped and
    ten of the tokenizer's padding token (``query_augmentation_token``); a page is the visual prompt
    ``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>``,
    a page's own text after ``Describe the image.`` and a space.

    Images are Qwen3-VL's (``preprocessor_config.json``) at Qwen3-VL's multimodal rotary positions,
    their pixel budget ``from_pretrained``'s: at most ``max_num_visual_tokens`` (1280) merged patches,
    whatever the config's ``longest_edge``. The load setting ``mm_processor_kwargs`` may give another
    ``max_num_visual_tokens``, or ``max_pixels`` itself."""

    def query_token_ids(self, model: ModelInfo, prompt: Prompt) -> list[int]:
        """The text stripped, augmented with the tokenizer's padding token (``query_augmentation_token``)."""
        prefix = f"{prompt.prompt_prefix or ''}{self.query_prefix}"
        return query_ids(model, prefix, (prompt.text or "").strip(), prompt.add_special_tokens, end="")

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        """ColQwen3.5's prompts, where a page has text of its own as ``__call__`` writes it:
        ``visual_prompt_prefix``, a space, the text stripped, ``visual_prompt_suffix`` (a text with
        its own ``<|image_pad|>`` placeholders is the caller's layout, kept)."""
        data = self.parse_data(data)
        template, image = self.visual_prompt
        prompts = []
        for prompt in data["prompts"]:
            given = prompt.extras.get("image")
            text = (prompt.text or "").strip()
            if given is not None and MEDIA_TOKENS["image"] not in text:
                count = len(given) if isinstance(given, (list, tuple)) else 1
                page = template.format(images=image * count).replace("<|im_end|>", f" {text}<|im_end|>", 1)
                prompt = dataclasses.replace(prompt, text=page if text else "")
            prompts.append(prompt)
        return super().pre_process({**data, "prompts": prompts}, request_id)

    def settings(self, model: ModelInfo, kind: str = "image") -> VisionSettings:
        """The Qwen3-VL settings, ``max_pixels`` the budget of ``max_num_visual_tokens`` merged patches.

        Raises:
            InvalidRequest: ``mm_processor_kwargs`` gives a ``max_num_visual_tokens`` that is not a positive integer.
        """
        found = super().settings(model, kind)
        given = getattr(model, "mm_processor_kwargs", None) or {}
        if given.get("max_pixels") is not None:
            return found
        tokens = given.get("max_num_visual_tokens", MAX_VISUAL_TOKENS)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise InvalidRequest(f"mm_processor_kwargs max_num_visual_tokens must be a positive whole number, got {tokens!r}")
        return dataclasses.replace(found, max_pixels=tokens * found.factor**2)


class ColQwen3(ProjectedTokens, Qwen3VLForConditionalGeneration, BorrowsConfig):
    """tomoro's ColQwen3: Qwen3-VL's hidden states projected (``embedding_proj_layer``) and
    normalised, one vector per token.

    Example:
        >>> llm = LLM("TomoroAI/tomoro-colqwen3-embed-4b")
        >>> pages = llm.encode([{"prompt": "", "multi_modal_data": {"image": "page.png"}}], pooling_task="token_embed")
        >>> llm.score("Retrieve the city of Singapore", [{"content": [{"type": "image_url", "image_url": {"url": "page.png"}}]}])
    """

    #: ``model_type: colqwen3`` is the remote ``ColQwen3Config``, a ``Qwen3VLConfig`` (:class:`~poolkit.contracts.capabilities.BorrowsConfig`).
    config_model_type: ClassVar[str | None] = "qwen3_vl"
    media_processor: ClassVar[type[ColQwen3Processor] | str | None] = ColQwen3Processor
    #: A retriever: never recognised as Qwen3-VL-Reranker.
    llm_rerankers: ClassVar[tuple[LLMReranker, ...]] = ()
    #: Qwen3-VL's layout under ``vlm.`` (or bare), and the projection.
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT.under(r"(?:vlm\.)?", projection=PROJECTION)
    projection_name: ClassVar[str] = "embedding_proj_layer"
    layout: ClassVar[tuple[str, str]] = (
        "tomoro-colqwen3 ({names} tensor names, {width}-wide projection)",
        "config.json architectures (ColQwen3), the checkpoint's tensor names",
    )

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        dim = getattr(config, "embed_dim", None) or DEFAULT_EMBED_DIM
        self.embedding_proj_layer = nn.Linear(int(config.text_config.hidden_size), int(dim))

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """Qwen3-VL's checks, and the projection's width against ``embed_dim`` (its default where absent).

        Raises:
            ModelLoadError: one line naming ``embed_dim`` and the projection's shape.
        """
        super().check_config(config, shapes, overridden)
        PROJECTION_CHECKS.check(config, shapes, overridden)
        if getattr(config, "embed_dim", None) is not None:
            return
        for name, shape in (shapes or {}).items():
            if PROJECTION_WEIGHT.fullmatch(name) and len(shape) == 2 and shape[0] != DEFAULT_EMBED_DIM:
                raise ModelLoadError(
                    f"config.json has no embed_dim, so the projection is ColQwen3Config's default "
                    f"{DEFAULT_EMBED_DIM} wide, but the weights hold {shape[0]} ('{name}' has shape {tuple(shape)})"
                )

    def role_prompts(self, texts: list[str], side: str, model: LoadedModel) -> list[Prompt]:
        """Queries and text documents alike: the processor's text prompt (``process_texts``)."""
        return [Prompt(text=text) for text in texts]

    def found_names(self, tops: set[str]) -> str:
        backbone = "vlm.model.*" if "vlm" in tops else "bare Qwen3VLModel"
        return f"{backbone} and {'embedding_proj_layer' if 'embedding_proj_layer' in tops else 'custom_text_proj'}"
