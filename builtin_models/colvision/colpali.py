"""ColPali (``ColPaliForRetrieval``): PaliGemma's hidden states projected and normalised, one
vector per token (:mod:`.retrieval`).

PaliGemma is SigLIP's vision tower without its pooling head
(:class:`~poolkit.builtin_models.siglip.SiglipVisionTransformer`, one row per patch), the
``multi_modal_projector`` (linear) into a Gemma decoder whose embeddings are scaled and the image
features are not; positions count from 1, and every token attends to its whole prompt (PaliGemma's
prefix: transformers' processors mark every token of a ColPali prompt as prefix). Its prompts (the
query prefix and augmentation, the page's visual prompt) are :class:`~.processor.ColPaliProcessor`'s.

Checkpoints load in transformers 5's layout (``vlm.vision_tower.*``, ``vlm.multi_modal_projector.*``,
``vlm.language_model.*``) and the published one (vidore's ``-hf`` checkpoints:
``vlm.language_model.model.*``, ``vision_tower.vision_model.*``); ``lm_head`` is not read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Collection, Iterable, Mapping

import torch
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import load_into
from poolkit.plugins.lookup import kernel_for

from ..blocks.dual_encoder import sub_config
from ..decoders.gemma import GemmaModel
from ..blocks.linear import fuse_projections, linear
from ..siglip import SiglipVisionTransformer
from ..blocks.vision_language import (
    CheckpointLayout,
    VisionLanguageModel,
    batch_media,
    merge_multimodal_embeddings,
    placeholder_rows,
)
from .processor import ColPaliProcessor
from .retrieval import RetrievalHead, check_embedding_dim, project, vlm_config

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: The checkpoint layouts, ``vlm.`` and ``model.`` before each part or not; the rest is the
#: retriever's own (the projector, the projection).
CHECKPOINT = CheckpointLayout(
    {"language": r"language_model\.", "vision": r"vision_tower\.(?:vision_model\.)?", "own": ""},
    skip=r"lm_head\.",
    prefix=r"(?:vlm\.)?(?:model\.)?",
)


class PrefixGemmaModel(GemmaModel):
    """Gemma whose tokens attend to their whole sequence: a PaliGemma prompt that is all prefix."""

    @classmethod
    def is_causal(cls, config: PretrainedConfig) -> bool:
        return False


class ColPaliForRetrieval(RetrievalHead, VisionLanguageModel):
    """ColPali: PaliGemma's hidden states projected and normalised, one vector per token.

    Example:
        >>> llm = LLM("vidore/colpali-v1.3-hf")
        >>> queries = llm.encode(["what is the revenue in 2023?"], pooling_task="token_embed")
    """

    media_processor: ClassVar[type[ColPaliProcessor] | str | None] = ColPaliProcessor
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=tuple(
            "vlm_config." + f
            for f in (
                "text_config.hidden_size", "text_config.num_hidden_layers", "text_config.num_attention_heads",
                "text_config.vocab_size", "vision_config.hidden_size", "vision_config.num_hidden_layers",
                "vision_config.num_attention_heads", "vision_config.image_size", "vision_config.patch_size",
            )
        ),
        multiples=(("vlm_config.vision_config.hidden_size", "vlm_config.vision_config.num_attention_heads"),),
    )
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        vlm = vlm_config(type(self), config)
        text = vlm.text_config
        vision = sub_config(vlm, "vision_config", "PaliGemma", "gelu_pytorch_tanh")
        self.language_model = PrefixGemmaModel(text)
        self.vision_tower = SiglipVisionTransformer(vision, head=False)
        self.multi_modal_projector = nn.Module()
        self.multi_modal_projector.linear = nn.Linear(int(vision.hidden_size), int(text.hidden_size))
        self.embedding_proj_layer = nn.Linear(int(text.hidden_size), int(config.embedding_dim))
        self.image_token_id = int(vlm.image_token_id)
        self.vocab_size = int(text.vocab_size)

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        vlm = vlm_config(cls, config)
        cls.require_sub_configs(vlm, "vlm_config")
        kind = getattr(vlm.text_config, "model_type", None)
        if kind != "gemma":
            raise ModelLoadError(
                f"{cls.__name__} runs PaliGemma's Gemma decoder; a '{kind}' text model (PaliGemma 2) is not supported"
            )
        if int(getattr(vlm.vision_config, "projection_dim", vlm.text_config.hidden_size)) != int(vlm.text_config.hidden_size):
            raise ModelLoadError(
                f"the vision projection_dim {vlm.vision_config.projection_dim} must equal the text hidden_size {vlm.text_config.hidden_size}"
            )
        super().check_config(config, None, overridden)
        check_embedding_dim(cls, config)
        GemmaModel.check_config(vlm.text_config, None, ())

    # -- the forward pass ----------------------------------------------------------------------

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        lm = self.language_model
        ids = batch.input_ids
        if self.image_token_id >= self.vocab_size:  # an image token outside the vocabulary looks up row 0
            ids = ids.masked_fill(ids == self.image_token_id, 0)
        x = lm.embed(ids)
        media = batch_media(batch)
        linear_act = kernel_for(self, "linear_act", batch.device)
        if media is not None:
            x = self._merge_images(x, batch, media, linear_act)
        hidden = lm.decode(x, batch, lm.rotary(batch.positions + 1, x.dtype))  # PaliGemma counts positions from 1
        return project(hidden, self.embedding_proj_layer, linear_act)

    def _merge_images(self, x: torch.Tensor, batch: PackedBatch, media: list[dict | None], linear_act: Callable) -> torch.Tensor:
        """The embeddings with each ``<image>`` row replaced by its image's projected patch feature."""
        found = placeholder_rows(batch, media, {"image": self.image_token_id})
        if not found:
            return x
        patches = self.vision_tower(torch.cat([m["image_pixels"] for m, _, _ in found]), linear_act)
        features = linear(patches, self.multi_modal_projector.linear, linear_act).flatten(0, 1)
        return merge_multimodal_embeddings(x, [rows for _, _, rows in found], features, "image")[0]

    # -- weights -------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        parts = self.checkpoint_layout.split(weights)
        load_into(self.vision_tower, fuse_projections(self.vision_tower, parts["vision"]), rename=lambda n: n)
        load_into(self, parts["own"], rename=lambda n: n, optional=lambda n: n.startswith(("language_model.", "vision_tower.")))
        self.language_model.load_weights(parts["language"])
