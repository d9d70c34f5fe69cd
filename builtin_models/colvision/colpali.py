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

colpali-engine's own layout loads too (``ColPali`` in ``colpali_engine/models/paligemma/colpali/modeling_colpali.py``,
the base vidore/colpaligemma-3b-pt-448-base that its adapters such as vidore/colpali-v1.3 are over,
:mod:`poolkit.lora.repository`): ``config.json`` is PaliGemma's own (``"architectures": ["ColPali"]``,
``"model_type": "paligemma"``, no ``vlm_config``, the projection ``128`` wide as the class hard-codes
it), its tensors ``model.language_model.model.*``, ``model.vision_tower.vision_model.*``,
``model.multi_modal_projector.*`` and ``custom_text_proj.*`` (the projection). An adapter's layers
are named so too: the decoder's under ``model.language_model.model.``, the projection ``custom_text_proj``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Mapping

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
from .retrieval import PROJECTION, RetrievalHead, check_embedding_dim, project, vlm_config

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: colpali-engine's ``ColPali``: its config PaliGemma's own, its projection ``self.dim = 128`` wide.
ENGINE_ARCHITECTURE, ENGINE_MODEL_TYPE, ENGINE_DIM = "ColPali", "paligemma", 128

#: The checkpoint layouts, ``vlm.`` and ``model.`` before each part or not: the decoder, the vision
#: tower, the projection (transformers' name or colpali-engine's); the rest is the retriever's own (the projector).
CHECKPOINT = CheckpointLayout(
    {
        "language": r"language_model\.",
        "vision": r"vision_tower\.(?:vision_model\.)?",
        "projection": PROJECTION,
        "own": "",
    },
    skip=r"lm_head\.",
    prefix=r"(?:vlm\.)?(?:model\.)?",
)


#: PaliGemma's sizes, checked on the backbone's config.
PALIGEMMA_CHECKS = ConfigChecks(
    sizes=(
        "text_config.hidden_size", "text_config.num_hidden_layers", "text_config.num_attention_heads",
        "text_config.vocab_size", "vision_config.hidden_size", "vision_config.num_hidden_layers",
        "vision_config.num_attention_heads", "vision_config.image_size", "vision_config.patch_size",
    ),
    multiples=(("vision_config.hidden_size", "vision_config.num_attention_heads"),),
)


def paligemma_config(cls: type, config: PretrainedConfig) -> PretrainedConfig:
    """The PaliGemma config: the retriever's ``vlm_config`` (transformers' ``ColPaliConfig``), or the
    config itself where it is PaliGemma's (colpali-engine's ``ColPali``)."""
    return config if getattr(config, "model_type", None) == ENGINE_MODEL_TYPE else vlm_config(cls, config)


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
    #: colpali-engine's ``ColPali`` checkpoints (:class:`~poolkit.contracts.capabilities.ClaimsNames`).
    claims: ClassVar[Mapping[str, Mapping[str, Any]]] = {ENGINE_ARCHITECTURE: {"model_type": ENGINE_MODEL_TYPE}}
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=tuple("vlm_config." + f for f in PALIGEMMA_CHECKS.sizes),
        multiples=tuple(("vlm_config." + f, "vlm_config." + d) for f, d in PALIGEMMA_CHECKS.multiples),
    )
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        vlm = paligemma_config(type(self), config)
        text = vlm.text_config
        vision = sub_config(vlm, "vision_config", "PaliGemma", "gelu_pytorch_tanh")
        self.language_model = PrefixGemmaModel(text)
        self.vision_tower = SiglipVisionTransformer(vision, head=False)
        self.multi_modal_projector = nn.Module()
        self.multi_modal_projector.linear = nn.Linear(int(vision.hidden_size), int(text.hidden_size))
        dim = ENGINE_DIM if vlm is config else int(config.embedding_dim)
        self.embedding_proj_layer = nn.Linear(int(text.hidden_size), dim)
        self.image_token_id = int(vlm.image_token_id)
        self.vocab_size = int(text.vocab_size)

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        vlm = paligemma_config(cls, config)
        cls.require_sub_configs(vlm, "vlm_config" if vlm is not config else "config")
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
        if vlm is config:
            PALIGEMMA_CHECKS.check(config, None, overridden)
        else:
            check_embedding_dim(cls, config)
        GemmaModel.check_config(vlm.text_config, None, ())

    @property
    def hidden_size(self) -> int:
        return int(self.embedding_proj_layer.out_features)


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
        load_into(self.embedding_proj_layer, parts["projection"], rename=lambda n: n)
        load_into(
            self, parts["own"], rename=lambda n: n,
            optional=lambda n: n.startswith(("language_model.", "vision_tower.", "embedding_proj_layer.")),
        )
        self.language_model.load_weights(parts["language"])
