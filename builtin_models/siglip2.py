"""SigLIP 2 with NaFlex images (``Siglip2Model``: google/siglip2-*-naflex) running on packed batches.

The text tower and the attention-pooling head are SigLIP's (:mod:`poolkit.builtin_models.siglip`).
What NaFlex changes is the vision tower's input: the image processor resizes each image, keeping
its aspect ratio, to at most ``max_num_patches`` patches of its own grid, cuts it into flattened
patches (``pixel_values``, ``[n, max_num_patches, channels * patch * patch]``, padded at the end),
and says each image's grid (``spatial_shapes``, ``[n, 2]`` rows and columns of patches) and which
patches are real (``pixel_attention_mask``). Here:

- the patches go through a linear patch embedding (the checkpoint's ``patch_embedding`` is an
  ``nn.Linear``), and the learned ``num_patches`` positions, a square grid, are resized to each
  image's grid (bilinear, antialiased, as transformers' ``Siglip2VisionEmbeddings`` resizes them);
- only the real patches run, packed: each image is one sequence of its own patch count through the
  varlen attention kernel, so an image's embedding does not depend on the padding or its neighbours;
- the pooling head's probe attends to each image's real patches only.

Image prompts come in through the image IO processor, which carries every tensor the model's image
processor returns (``pixel_values``, ``pixel_attention_mask``, ``spatial_shapes``) into the batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Callable, ClassVar, Collection, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks, config_value, source
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.plugins.lookup import kernel_for

from .blocks.dual_encoder import VISION, DualEncoder, Encoder
from .blocks.linear import linear
from .blocks.norms import at_least_float32, fp32_layer_norm
from .siglip import SiglipModel, SiglipMultiheadAttentionPoolingHead, SiglipTextTransformer

if TYPE_CHECKING:
    from transformers import PretrainedConfig

POSITIONS = "vision_model.embeddings.position_embedding.weight"


def _checks() -> ConfigChecks:
    """SigLIP's checks, less the fixed ``image_size`` NaFlex has none of, with the linear patch
    embedding and the ``num_patches`` position grid."""
    checks = SiglipModel.config_checks
    shapes = dict(checks.shapes)
    shapes["vision_model.embeddings.patch_embedding.weight"] = (
        VISION + "hidden_size", (VISION + "num_channels", VISION + "patch_size", VISION + "patch_size"),
    )
    shapes[POSITIONS] = (VISION + "num_patches", VISION + "hidden_size")
    sizes = tuple(s for s in checks.sizes if s != VISION + "image_size") + (VISION + "num_patches",)
    return dataclasses.replace(checks, sizes=sizes, shapes=shapes)


class Siglip2VisionEmbeddings(nn.Module):
    """The linear patch embedding and the square grid of learned positions, resized per image."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        channels, patch = int(getattr(config, "num_channels", 3)), int(config.patch_size)
        self.patch_embedding = nn.Linear(channels * patch * patch, config.hidden_size)
        self.num_patches = int(config.num_patches)
        self.grid = math.isqrt(self.num_patches)
        self.position_embedding = nn.Embedding(self.num_patches, config.hidden_size)

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        """``[rows * cols, hidden]`` fp32: the position grid resized to an image's patch grid."""
        grid = at_least_float32(self.position_embedding.weight).reshape(self.grid, self.grid, -1)
        resized = F.interpolate(
            grid.permute(2, 0, 1)[None], size=(rows, cols), mode="bilinear", align_corners=False, antialias=True
        )
        return resized[0].flatten(1).T

    def forward(self, patches: torch.Tensor, shapes: list[tuple[int, int]], linear_act: Callable) -> torch.Tensor:
        """``[N, hidden]`` for the ``[N, channels * patch * patch]`` real patches of the images, in order."""
        x = at_least_float32(linear(patches.to(self.patch_embedding.weight.dtype), self.patch_embedding, linear_act))
        resized: dict[tuple[int, int], torch.Tensor] = {}
        for shape in shapes:
            if shape not in resized:
                resized[shape] = self.positions(*shape)
        return x + torch.cat([resized[shape] for shape in shapes])


class Siglip2VisionTransformer(nn.Module):
    """NaFlex patches in, packed per image through the encoder, post-LayerNorm, the MAP head: one row per image."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.embeddings = Siglip2VisionEmbeddings(config)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=float(config.layer_norm_eps))
        self.head = SiglipMultiheadAttentionPoolingHead(config)

    def forward(
        self,
        pixel_values: torch.Tensor,
        spatial_shapes: torch.Tensor,
        attention: Callable,
        linear_act: Callable,
    ) -> torch.Tensor:
        """``[n, hidden]`` for ``[n, P, channels * patch * patch]`` patches whose first
        ``rows * cols`` (``spatial_shapes[i]``) are image ``i``'s."""
        shapes = [(int(r), int(c)) for r, c in spatial_shapes.tolist()]
        counts = [r * c for r, c in shapes]
        real = torch.arange(pixel_values.shape[1], device=pixel_values.device)[None, :] < torch.tensor(
            counts, device=pixel_values.device
        )[:, None]
        packed = PackedBatch(torch.zeros(sum(counts), dtype=torch.long, device=pixel_values.device), counts)
        attend = functools.partial(attention, batch=packed, causal=False)
        x = self.encoder(self.embeddings(pixel_values[real], shapes, linear_act), attend, linear_act)
        x = fp32_layer_norm(x, self.post_layernorm)
        longest = max(counts)
        padded = x.new_zeros(len(counts), longest, x.shape[-1])
        mask = real[:, :longest]
        padded[mask] = x
        return self.head(padded, linear_act, mask)


class Siglip2Model(SiglipModel):
    """SigLIP 2 NaFlex: texts as SigLIP's (the last token through the text head); images of any
    size and aspect ratio as ``batch.extras`` ``pixel_values``, ``spatial_shapes`` (and
    ``pixel_attention_mask``, checked against them), one row per image."""

    family: ClassVar[str] = "SigLIP 2"
    config_checks: ClassVar[ConfigChecks] = _checks()

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """SigLIP's checks, and that ``num_patches`` positions make a square grid."""
        super().check_config(config, shapes, overridden)
        patches = config_value(config, VISION + "num_patches")
        if isinstance(patches, int) and math.isqrt(patches) ** 2 != patches:
            raise ModelLoadError(
                f"{source(VISION + 'num_patches', overridden)} vision_config.num_patches {patches} is not a square "
                "number: the positions are a square grid"
            )

    def __init__(self, config: PretrainedConfig) -> None:
        DualEncoder.__init__(self, config)  # SigLIP's towers but its vision tower: no fixed image_size to build
        self.text_model = SiglipTextTransformer(self.text_config)
        self.vision_model = Siglip2VisionTransformer(self.vision_config)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Texts as SigLIP; images with their ``spatial_shapes`` and ``pixel_attention_mask``.

        Raises:
            InvalidRequest: a ``pixel_attention_mask`` that does not mark the first ``rows * cols``
                patches of each image (see also :meth:`image_features`).
        """
        pixel_values = batch.extras.get("pixel_values")
        if pixel_values is None:
            return super().forward(batch)
        shapes, mask = batch.extras.get("spatial_shapes"), batch.extras.get("pixel_attention_mask")
        linear_act = kernel_for(self, "linear_act", batch.device)
        if mask is not None and shapes is not None and tuple(mask.shape) == tuple(pixel_values.shape[:2]):
            first = torch.arange(mask.shape[1], device=mask.device)[None, :] < shapes.prod(-1)[:, None]
            if not torch.equal(mask.bool(), first):  # the processor pads after each image's patches
                raise InvalidRequest("pixel_attention_mask does not mark the first patches of each image's spatial_shapes")
        return self.image_features(pixel_values, linear_act, shapes)

    def image_features(
        self, pixel_values: torch.Tensor, linear_act: Callable, spatial_shapes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[n, hidden]`` for NaFlex patches ``[n, P, channels * patch * patch]`` whose first
        ``rows * cols`` are image ``i``'s (``spatial_shapes[i]``).

        Raises:
            InvalidRequest: no ``spatial_shapes`` (pixels not from a NaFlex processor), or a grid
                of no patches or of more than ``P``.
        """
        if pixel_values.ndim != 3 or spatial_shapes is None or tuple(spatial_shapes.shape) != (pixel_values.shape[0], 2):
            raise InvalidRequest(
                "SigLIP 2 images need NaFlex patches ([n, patches, values]) with their spatial_shapes ([n, 2]); "
                "give the model its Siglip2 image processor"
            )
        counts = spatial_shapes.prod(-1)
        if (counts < 1).any() or (counts > pixel_values.shape[1]).any():
            raise InvalidRequest(
                f"spatial_shapes {spatial_shapes.tolist()} do not fit {pixel_values.shape[1]} patches per image"
            )
        attention = kernel_for(self, "varlen_attention", pixel_values.device)
        return self.vision_model(pixel_values, spatial_shapes, attention, linear_act)


@hookimpl
def poolkit_register_architectures(register):
    register("Siglip2Model", Siglip2Model)
