"""jina-reranker-m0 (``JinaVLForRanking``): Qwen2-VL read as a cross-encoder, on packed batches.

Jina publishes the reranker as a Qwen2-VL checkpoint (``"model_type": "qwen2_vl"``, the decoder
under ``model.``, the vision tower under ``visual.``) whose remote code replaces the LM head with
a score MLP, ``score`` = ``Linear(H, H)``, ReLU, ``Linear(H, 1)`` (tensors ``score.0.*`` and
``score.2.*``), read at the prompt's last token. Every prompt ends with the *score token*, id 100,
which the publisher's ``compute_score`` appends after the processor's tokens and its ``forward``
appends where the last token is another (vLLM appends it to score prompts too); the score is
``sigmoid(logit - 2.65)``, the publisher's ``LOGIT_BIAS``, which vLLM sets as the pooler's
``logit_bias`` (here the architecture's default ``logit_mean``, which ``pooler_config`` may change).

A (query, document) pair is one prompt, the publisher's ``formatting_prompts_func`` (and vLLM's
``get_score_template``): ``**Document**:\\n{document}\\n**Query**:\\n{query}``, the document first.
An image side is ``<|vision_start|><|image_pad|><|vision_end|>``, so the document's images come
before the query's, as the publisher's ``compute_score`` orders them. A score request's
``instruction`` is the publisher's ``prefix_str``: a line before the pair.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch
from torch import nn

from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.contracts.io import Prompt
from poolkit.loading.weights import load_into

from ...io_processors.templates import ScoreTemplateProcessor
from ..blocks.vision_language import CheckpointLayout, Weights
from .processor import QwenVLProcessor
from .qwen2_vl import CHECKPOINT, Qwen2VLForConditionalGeneration

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import ModelInfo, Tokenizer

#: The token every prompt is scored at (the publisher's ``score_token_id``; vLLM's ``post_process_tokens``).
SCORE_TOKEN_ID = 100
#: Subtracted from the score head's logit before the sigmoid (the publisher's ``LOGIT_BIAS``).
LOGIT_BIAS = 2.65
#: The registered name of the pair prompt (an IO processor), which the architecture sets as the
#: config's ``score_template`` unless the config names one.
SCORE_TEMPLATE_NAME = "jina_reranker_m0"
#: The publisher's pair prompt, its ``prefix_str`` the request's instruction.
SCORE_TEMPLATE = (
    "{% if instruction %}{{ instruction }}\n{% endif %}"
    "**Document**:\n{{ document }}\n**Query**:\n{{ query }}"
)


def score_template() -> ScoreTemplateProcessor:
    """The IO processor that renders a pair as the publisher's prompt (its text exactly)."""
    return ScoreTemplateProcessor(SCORE_TEMPLATE, keep_trailing_newline=True)


class JinaRerankerM0Processor(QwenVLProcessor):
    """Qwen2-VL's prompts with images (no videos: the publisher's model and vLLM's take images
    only), each ending with the score token: text prompts are tokenized here and the token appended
    (kept when truncation cuts the prompt); a prompt with images gets it after its tokens, at the
    next multimodal position."""

    reads_text = True
    reads_videos = False

    def text_prompt(self, index: int, prompt: Prompt, model: ModelInfo) -> Prompt:
        if prompt.text_pair is not None:
            raise InvalidRequest(f"prompt {index}: model '{model.name}' reads a (query, document) pair as one prompt; use LLM.score")
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
        elif prompt.text is not None:
            text = f"{prompt.prompt_prefix or ''}{prompt.text}"
            ids = model.tokenizer(text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
        else:
            return prompt
        if not ids or ids[-1] != SCORE_TOKEN_ID:
            ids.append(SCORE_TOKEN_ID)
        return dataclasses.replace(prompt, text=None, prompt_prefix=None, token_ids=ids, keep_suffix=[SCORE_TOKEN_ID])

    def media_prompt(
        self, index: int, prompt: Prompt, given: Mapping[str, list[Any]], model: ModelInfo, allow_files: bool
    ) -> Prompt:
        made = super().media_prompt(index, prompt, given, model, allow_files)
        ids = list(made.token_ids or [])
        if ids and ids[-1] == SCORE_TOKEN_ID:
            return made
        positions = made.media["positions"]
        # a text token after the media: one past the largest position on all three axes (get_rope_index)
        after = torch.full((3, 1), int(positions.max()) + 1, dtype=positions.dtype)
        media = {**made.media, "positions": torch.cat([positions, after], dim=1)}
        return dataclasses.replace(made, token_ids=ids + [SCORE_TOKEN_ID], media=media)


class JinaVLForRanking(Qwen2VLForConditionalGeneration):
    """jina-reranker-m0: Qwen2-VL, its last token (the score token) through the ``score`` MLP.

    Example:
        >>> llm = LLM("jinaai/jina-reranker-m0")
        >>> llm.score("slm markdown", [{"content": [{"type": "image_url", "image_url": {"url": "page.png"}}]}, "We present ReaderLM-v2"])
    """

    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    media_processor: ClassVar[type[QwenVLProcessor] | str | None] = JinaRerankerM0Processor
    default_pooler_config: ClassVar[dict[str, Any]] = {"logit_mean": LOGIT_BIAS}
    #: The published layout (``model.``, ``visual.``, ``score.``), or transformers 5's names.
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT.under("", score=r"score\.")

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """One output, as vLLM sets it whatever the config says; the publisher's pair prompt unless
        the config names a score template.

        Raises:
            ModelLoadError: a vocabulary without the score token.
        """
        vocab = int(config.text_config.vocab_size)
        if SCORE_TOKEN_ID >= vocab:
            raise ModelLoadError(f"the score token {SCORE_TOKEN_ID} is outside the vocabulary of {vocab} tokens")
        config.num_labels = 1
        if getattr(config, "score_template", None) is None:
            config.score_template = SCORE_TEMPLATE_NAME

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        hidden = self.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @property
    def num_labels(self) -> int:
        return 1

    def sequence_classifier(self) -> nn.Module:
        return self.score

    def load_parts(self, parts: Mapping[str, Weights]) -> None:
        super().load_parts(parts)
        load_into(self.score, parts["score"], rename=lambda n: n)
