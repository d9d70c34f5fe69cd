"""CLIP (text and vision towers with their projections) running on packed batches.

A text prompt runs the causal text transformer and comes out projected for every token
(``[T, projection_dim]``): the projection is linear, so pooling the last token (the EOS token that
closes each CLIP text) and then projecting is the same as projecting and then pooling. An image
prompt (``batch.extras["pixel_values"]``, ``[n, 3, H, W]``) runs the vision transformer and comes
out as one projected CLS row per image, which any sequence pooler picks. Both are in the shared
embedding space, so text and image embeddings compare by cosine.

The towers' layers, and the path from prompts to them, are those CLIP shares with SigLIP
(:mod:`poolkit.builtin_models.blocks.dual_encoder`). The modules keep Hugging Face's parameter names
(``text_model.*``, ``vision_model.*``, ``text_projection``, ``visual_projection``), except that
each layer's q/k/v projections are fused into one ``self_attn.qkv`` matrix at load time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar

import torch
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.hookspecs import hookimpl

from .blocks.dual_encoder import (
    TEXT,
    VISION,
    DualEncoder,
    Encoder,
    TextTransformer,
    VisionEmbeddings,
    dense_attention,
    tower_checks,
)
from .blocks.norms import fp32_layer_norm
from .blocks.linear import linear

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class CLIPVisionTransformer(nn.Module):
    """Patch and class embeddings, pre-LayerNorm, the encoder, and post-LayerNorm of the CLS token."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        eps = float(config.layer_norm_eps)
        self.embeddings = VisionEmbeddings(config, class_token=True, patch_bias=False)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)

    def forward(self, pixel_values: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        x = fp32_layer_norm(self.embeddings(pixel_values), self.pre_layrnorm)
        x = self.encoder(x, dense_attention, linear_act)
        return fp32_layer_norm(x[:, 0], self.post_layernorm)


class CLIPModel(DualEncoder):
    """CLIP: packed token ids in, projected token states out; or images in, projected CLS out.

    Text: causal attention within each packed sequence, positions from ``batch.positions``,
    ``final_layer_norm`` and ``text_projection`` on every token, so the default ``LAST`` pooling
    reads the EOS token, as transformers' ``get_text_features`` does (see ``docs/images.md``).
    Images: ``batch.extras["pixel_values"]`` (``[n, 3, H, W]``, the model's ``image_size``) gives
    ``[n, projection_dim]``, one row per image, each read as a one-token sequence.
    """

    default_pooling_type: ClassVar[str | None] = "LAST"
    family: ClassVar[str] = "CLIP"
    class_token: ClassVar[bool] = True
    default_hidden_act: ClassVar[str] = "quick_gelu"
    config_checks: ClassVar[ConfigChecks] = tower_checks(
        sizes=("projection_dim",),
        shapes={
            "text_projection.weight": ("projection_dim", TEXT + "hidden_size"),
            "visual_projection.weight": ("projection_dim", VISION + "hidden_size"),
        },
    )

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.projection_dim = int(config.projection_dim)
        self.text_model = TextTransformer(self.text_config, causal=True)
        self.vision_model = CLIPVisionTransformer(self.vision_config)
        self.text_projection = nn.Linear(self.text_config.hidden_size, self.projection_dim, bias=False)
        self.visual_projection = nn.Linear(self.vision_config.hidden_size, self.projection_dim, bias=False)

    @property
    def hidden_size(self) -> int:
        return self.projection_dim

    def text_features(self, batch: PackedBatch, attention: Callable, linear_act: Callable) -> torch.Tensor:
        return linear(self.text_model(batch, attention, linear_act), self.text_projection, linear_act)

    def image_features(self, pixel_values: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        return linear(self.vision_model(pixel_values, linear_act), self.visual_projection, linear_act)


@hookimpl
def poolkit_register_architectures(register):
    register("CLIPModel", CLIPModel)
