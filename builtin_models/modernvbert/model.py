"""ModernVBERT (``ModernVBertModel``) and ColModernVBERT (``ColModernVBertForRetrieval``).

ModernVBERT is SigLIP's vision tower without its pooling head
(:class:`~poolkit.builtin_models.siglip.SiglipVisionTransformer`, one row per patch), a connector
that pixel-shuffles each tile's patch grid (``pixel_shuffle_factor``² neighbouring patches side
by side in one row) and projects it (``modality_projection``, no bias), and a ModernBERT encoder
(:class:`~poolkit.builtin_models.modernbert.ModernBertModel`) whose token embeddings take the
image features in the ``<image>`` rows before its embedding LayerNorm. Its prompts (Idefics3's
image tiles) are :mod:`.processor`'s. ColModernVBERT projects every token's hidden state to
``embedding_dim`` and normalises it (the ColVision head, :mod:`~poolkit.builtin_models.colvision.retrieval`).

Checkpoints load in transformers 5's layout (``vlm.vision_model.*``, ``vlm.connector.*``,
``vlm.text_model.*``, ``embedding_proj_layer.*``; a ``ModernVBertModel`` without ``vlm.``, a task
model's under ``model.``) and the tensor names of the published ``colmodernvbert-merged``
(``model.vision_model.vision_model.*``, ``model.custom_text_proj.*``); SigLIP's unused pooling
head (``vision_model.head.*``) and the masked-LM head are not read.
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
from ..blocks.linear import fuse_projections, linear
from ..blocks.vision_language import CheckpointLayout, VisionLanguageModel, batch_media, merge_multimodal_embeddings, placeholder_rows
from ..colvision.retrieval import ProjectedRetriever, project
from ..modernbert import ModernBertModel
from ..siglip import SiglipVisionTransformer
from .processor import ColModernVBertProcessor, ModernVBertProcessor

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: The checkpoint layouts: each part under ``vlm.`` (a retriever's) or ``model.`` (a task model's,
#: the published merged retriever's) or nothing (``ModernVBertModel``'s own).
CHECKPOINT = CheckpointLayout(
    dict(
        vision=r"vision_model\.(?:vision_model\.)?", language=r"text_model\.", connector=r"connector\.",
        projection=r"(?:embedding_proj_layer|custom_text_proj)\.",
    ),
    skip=r"(?:vision_model\.(?:vision_model\.)?head\.|lm_head\.|projection_head\.)",
    prefix=r"(?:vlm\.|model\.)?",
)
_POOLING_TYPES = {"cls": "CLS", "mean": "MEAN"}


def pixel_shuffle(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """``[tiles, side², hidden]`` patch rows as ``[tiles, (side / factor)², hidden · factor²]``: each
    ``factor × factor`` block of the square patch grid in one row, in the order transformers'
    ``ModernVBertConnector.pixel_shuffle`` lays it out (its column-major regrouping kept exact)."""
    tiles, count, hidden = patches.shape
    side = int(round(count**0.5))
    x = patches.reshape(tiles, side, side // factor, hidden * factor)
    x = x.permute(0, 2, 1, 3).reshape(tiles, side // factor, side // factor, hidden * factor * factor)
    return x.permute(0, 2, 1, 3).reshape(tiles, count // factor**2, hidden * factor * factor)


class ModernVBertModel(VisionLanguageModel):
    """ModernVBERT: ModernBERT over text and image tiles; hidden states ``[T, H]`` out, pooled as
    the config's ``classifier_pooling`` (``cls`` by default).

    Example:
        >>> llm = LLM("ModernVBERT/modernvbert")
        >>> llm.embed([{"prompt": "<image> a chart", "multi_modal_data": {"image": "page.png"}}])
    """

    default_pooling_type: ClassVar[str | None] = "CLS"
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    media_processor: ClassVar[type[ModernVBertProcessor] | str | None] = ModernVBertProcessor
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=(
            "text_config.hidden_size", "text_config.num_hidden_layers", "text_config.num_attention_heads",
            "text_config.vocab_size", "vision_config.hidden_size", "vision_config.num_hidden_layers",
            "vision_config.num_attention_heads", "vision_config.image_size", "vision_config.patch_size",
            "pixel_shuffle_factor",
        ),
        multiples=(
            ("vision_config.hidden_size", "vision_config.num_attention_heads"),
            ("vision_config.image_size", "vision_config.patch_size"),
        ),
    )

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        vision = sub_config(config, "vision_config", "ModernVBERT", "gelu_pytorch_tanh")
        text = config.text_config
        self.factor = int(config.pixel_shuffle_factor)
        self.vision_model = SiglipVisionTransformer(vision, head=False)
        self.connector = nn.Module()
        self.connector.modality_projection = nn.Linear(
            int(vision.hidden_size) * self.factor**2, int(text.hidden_size), bias=False
        )
        self.language_model = ModernBertModel(text)
        self.image_token_id = int(config.image_token_id)
        if type(self).default_pooling_type is not None:  # a retriever pools no sequence
            pooling = getattr(config, "classifier_pooling", "cls")
            if pooling not in _POOLING_TYPES:
                raise ModelLoadError(f"unsupported classifier_pooling '{pooling}'; ModernVBERT pools with 'cls' or 'mean'")
            self.default_pooling_type = _POOLING_TYPES[pooling]

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        cls.require_sub_configs(config)
        kind = getattr(config.text_config, "model_type", None)
        if kind != "modernbert":
            raise ModelLoadError(f"{cls.__name__} runs a ModernBERT text model; a '{kind}' one is not supported")
        super().check_config(config, None, overridden)
        grid = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        if grid % int(config.pixel_shuffle_factor):
            raise ModelLoadError(
                f"the {grid}×{grid} patch grid of a tile does not shuffle by pixel_shuffle_factor {config.pixel_shuffle_factor}"
            )
        ModernBertModel.check_config(config.text_config, None, ())

    # -- the forward pass ----------------------------------------------------------------------

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.encode(batch, kernel_for(self, "linear_act", batch.device))

    def encode(self, batch: PackedBatch, linear_act: Callable) -> torch.Tensor:
        """The encoder's hidden states ``[T, H]``, each ``<image>`` row holding its tile's feature."""
        text = self.language_model
        x = text.embeddings.lookup(batch.input_ids)
        media = batch_media(batch)
        found = placeholder_rows(batch, media, {"image": self.image_token_id}) if media is not None else []
        if found:
            features = self.image_features(torch.cat([m["image_pixels"] for m, _, _ in found]), linear_act)
            x = merge_multimodal_embeddings(x, [rows for _, _, rows in found], features, "image")[0]
        return text.encode(x, batch)

    def image_features(self, pixels: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        """``[tiles · features, H]``: every tile through the tower, pixel-shuffled and projected."""
        patches = self.vision_model(pixels.to(self.connector.modality_projection.weight.dtype), linear_act)
        shuffled = pixel_shuffle(patches, self.factor)
        return linear(shuffled, self.connector.modality_projection, linear_act).flatten(0, 1)

    # -- weights -------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.load_parts(self.checkpoint_layout.split(weights))

    def load_parts(self, parts: Mapping[str, list[tuple[str, torch.Tensor]]]) -> None:
        """Load the tower, the connector and the encoder from their parts of the checkpoint."""
        load_into(self.vision_model, fuse_projections(self.vision_model, parts["vision"]), rename=lambda n: n)
        load_into(self.connector, parts["connector"], rename=lambda n: n)
        self.language_model.load_weights(parts["language"])


class ColModernVBertForRetrieval(ProjectedRetriever, ModernVBertModel):
    """ColModernVBERT: ModernVBERT's hidden states projected and normalised, one vector per token.

    Example:
        >>> llm = LLM("ModernVBERT/colmodernvbert")
        >>> pages = llm.encode([{"prompt": "", "multi_modal_data": {"image": "page.png"}}], pooling_task="token_embed")
    """

    media_processor: ClassVar[type[ColModernVBertProcessor] | str | None] = ColModernVBertProcessor

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        linear_act = kernel_for(self, "linear_act", batch.device)
        return project(self.encode(batch, linear_act), self.embedding_proj_layer, linear_act)
