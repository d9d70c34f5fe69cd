"""LLaVA-NeXT: a CLIP vision tower feeding a Llama, Mistral or Qwen2 decoder, on packed batches.

A prompt of text and images reaches the model as token ids in which each image is a run of
``<image>`` placeholders, one per image feature, with the image's tiles in
``batch.extras["media"]`` (made by the family's processor,
:mod:`poolkit.builtin_models.llava_next.processor`). Any-resolution tiling, as transformers runs
it: each image is resized into the best of the config's ``image_grid_pinpoints`` and cut into
tiles of the vision tower's ``image_size``, after a base tile of the whole image. The forward pass runs every tile of the
batch through the CLIP vision tower at once, up to ``vision_feature_layer`` (the second-to-last
layer's output, usually; a list of layers is concatenated), drops each tile's CLS token
(``vision_feature_select_strategy: "default"``) and projects the patches to the decoder's width
(linear, GELU, linear). Per image, the base tile's features come first; then the other tiles'
features are laid out as one grid, the rows or columns that only cover padding are cut off (the
image's own aspect ratio), and ``image_newline`` ends each row. These rows replace the
placeholders, and the decoder runs over the whole prompt with its plain rotary positions, so
text-only prompts run exactly as the Llama model would.

The vision layers are CLIP's (:mod:`poolkit.builtin_models.blocks.dual_encoder`); the layers past the
feature layer and the post-LayerNorm are never built. Checkpoints load in both layouts:
transformers 5's (``model.vision_tower.``, ``model.multi_modal_projector.``,
``model.language_model.``, ``model.image_newline``) and the published one (``vision_tower.`` with or
without ``vision_model.``, ``multi_modal_projector.``, ``language_model.model.``,
``image_newline``); ``lm_head`` is not read. Embeddings pool the last token, as vLLM's E5-V does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Mapping

import torch
from torch import nn

from poolkit.contracts.capabilities import MediaPlaceholders, SharesPrefixes
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import load_into, warn_unused
from poolkit.plugins.lookup import kernel_for

from ..blocks.dual_encoder import EncoderLayer, VisionEmbeddings, dense_attention
from ..blocks.norms import fp32_layer_norm
from ..decoders.llama import LlamaModel
from ..decoders.mistral import MistralModel
from ..decoders.model import DecoderModel
from ..blocks.linear import fuse_projections
from ..qwen import Qwen2Model
from ..blocks.vision_language import (
    UNMATCHED,
    CheckpointLayout,
    FeedForward,
    VisionLanguageModel,
    built_layers,
    vit_checks,
)
from .processor import LlavaNextProcessor

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: The decoder families a LLaVA-NeXT text config may name (``text_config.model_type``).
LANGUAGE_MODELS: dict[str, type[DecoderModel]] = {"llama": LlamaModel, "mistral": MistralModel, "qwen2": Qwen2Model}
#: The checkpoint layouts: transformers 5's (``model.`` before each part) and the published one
#: (``vision_tower.vision_model.``, ``language_model.model.``); ``lm_head`` and id buffers are skipped.
CHECKPOINT = CheckpointLayout(
    {
        "vision": r"(?:model\.)?vision_tower\.(?:vision_model\.)?",
        "language": r"(?:model\.)?language_model\.(?:model\.)?",
        "projector": r"(?:model\.)?multi_modal_projector\.",
        "newline": r"(?:model\.)?image_newline$",
    },
    skip=r"(?:.*\.)?lm_head\.|.*\.position_ids$",
)


def feature_layers(config: PretrainedConfig) -> list[int]:
    """The vision tower's hidden states the image features are made of, as indices into
    ``[embeddings, layer 1, ..., layer N]`` (``vision_feature_layer``: one index or a list, negative
    ones counted from the end, as transformers reads ``hidden_states``).

    Raises:
        ModelLoadError: an index is out of range.
    """
    wanted = config.vision_feature_layer
    wanted = [wanted] if isinstance(wanted, int) else list(wanted)
    count = int(config.vision_config.num_hidden_layers) + 1
    out = []
    for index in wanted:
        if not isinstance(index, int) or not -count <= index < count:
            raise ModelLoadError(
                f"vision_feature_layer {config.vision_feature_layer} is out of range for a vision tower of {count - 1} layers"
            )
        out.append(index % count)
    return out


def unpad_box(height: int, width: int, rows: int, cols: int) -> tuple[int, int, int, int]:
    """Which part of a ``rows × cols`` feature grid covers an image of ``height × width`` pixels
    resized into it and centred, the rest being padding: ``(top, bottom, left, right)``, as
    transformers' ``unpad_image`` cuts it."""
    if width / height > cols / rows:
        new_rows = int(round(height * (cols / width), 7))
        pad = (rows - new_rows) // 2
        return pad, rows - pad, 0, cols
    new_cols = int(round(width * (rows / height), 7))
    pad = (cols - new_cols) // 2
    return 0, rows, pad, cols - pad


class LlavaVisionTower(nn.Module):
    """CLIP's vision transformer up to the feature layers: patch and class embeddings,
    pre-LayerNorm, and the encoder layers the features need (``[tiles, 3, S, S]`` pixels in,
    ``[tiles, 1 + patches, width × len(layers)]`` out, fp32 at least)."""

    def __init__(self, config: PretrainedConfig, layers: list[int]) -> None:
        super().__init__()
        eps = float(config.layer_norm_eps)
        self.layers_out = layers
        self.embeddings = VisionEmbeddings(config, class_token=True, patch_bias=False)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(EncoderLayer(config) for _ in range(max(layers)))

    def forward(self, pixel_values: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        x = fp32_layer_norm(self.embeddings(pixel_values), self.pre_layrnorm)
        states = {0: x}
        for depth, layer in enumerate(self.encoder.layers, start=1):
            x = layer(x, dense_attention, linear_act)
            states[depth] = x
        return torch.cat([states[i] for i in self.layers_out], dim=-1)


class MultiModalProjector(FeedForward):
    """``linear_2(act(linear_1(x)))``: vision features to the decoder's width."""

    def __init__(self, config: PretrainedConfig, in_features: int) -> None:
        hidden, bias = int(config.text_config.hidden_size), bool(getattr(config, "multimodal_projector_bias", True))
        act = getattr(config, "projector_hidden_act", None) or "gelu"
        super().__init__(in_features, hidden, hidden, act, names=("linear_1", "linear_2"), bias=bias)


class LlavaNextForConditionalGeneration(VisionLanguageModel, SharesPrefixes, MediaPlaceholders):
    """LLaVA-NeXT as an embedder (E5-V): tiled CLIP features in the placeholders' rows, the
    Llama / Mistral / Qwen2 decoder over the whole prompt, the last token pooled.

    Example:
        >>> llm = LLM("royokong/e5-v")
        >>> llm.embed({"prompt": "<|start_header_id|>user<|end_header_id|>\\n\\n<image>\\nSummary above image in one word: "
        ...            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n",
        ...            "multi_modal_data": {"image": "cat.png"}})
    """

    default_pooling_type: ClassVar[str | None] = "LAST"
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    media_processor: ClassVar[type[LlavaNextProcessor] | str | None] = LlavaNextProcessor
    config_checks: ClassVar[ConfigChecks] = vit_checks("text_config")

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """The declared checks, the text model's own, and what the tiling needs: the ``default``
        feature strategy, feature layers in range, pinpoints that are whole tiles."""
        cls.require_sub_configs(config)
        super().check_config(config, None, overridden)
        cls.language_model_class(config).check_config(config.text_config, None, ())
        strategy = getattr(config, "vision_feature_select_strategy", "default")
        if strategy != "default":
            raise ModelLoadError(
                f"vision_feature_select_strategy '{strategy}' is not supported: LLaVA-NeXT's tiles keep no CLS token "
                "(transformers fails on it too); use 'default'"
            )
        feature_layers(config)
        tile = int(config.vision_config.image_size)
        pinpoints = getattr(config, "image_grid_pinpoints", None) or []
        if not pinpoints or any(len(p) != 2 or int(p[0]) % tile or int(p[1]) % tile or min(p) <= 0 for p in pinpoints):
            raise ModelLoadError(
                f"image_grid_pinpoints {pinpoints} must be (height, width) pairs in whole tiles of {tile} pixels"
            )

    @classmethod
    def language_model_class(cls, config: PretrainedConfig) -> type[DecoderModel]:
        """The decoder family of ``text_config.model_type``.

        Raises:
            ModelLoadError: a family poolkit does not run under LLaVA-NeXT.
        """
        kind = getattr(config.text_config, "model_type", None) or "llama"
        found = LANGUAGE_MODELS.get(kind)
        if found is None:
            raise ModelLoadError(
                f"LLaVA-NeXT with a '{kind}' text model is not supported; supported: {', '.join(LANGUAGE_MODELS)}"
            )
        return found

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        vision = config.vision_config
        layers = feature_layers(config)
        self.language_model = self.language_model_class(config)(config.text_config)
        self.vision_tower = LlavaVisionTower(vision, layers)
        self.multi_modal_projector = MultiModalProjector(config, int(vision.hidden_size) * len(layers))
        self.image_newline = nn.Parameter(torch.zeros(int(config.text_config.hidden_size)))
        self.image_token = int(config.image_token_id)
        self.grid = int(vision.image_size) // int(vision.patch_size)
        # Prompts share prefixes as the decoder does; a shared prefix holds all of a prompt's images or none.
        self.shares_prefixes = isinstance(self.language_model, SharesPrefixes) and self.language_model.shares_prefixes
        self.placeholder_tokens = frozenset({self.image_token})

    # -- the forward pass ----------------------------------------------------------------------

    def image_features_of(self, found: list[tuple[dict, Any, Any]]) -> torch.Tensor:
        layouts = [tuple(r) for m, _, _ in found for r in torch.cat((m["image_grid"], m["image_sizes"]), dim=1).tolist()]
        return self.image_features(torch.cat([m["image_pixels"] for m, _, _ in found]), layouts)

    def image_features(self, pixels: torch.Tensor, layouts: list[tuple[int, int, int, int]]) -> torch.Tensor:
        """``[features, hidden]`` of all images, one after another: each image's base tile, then its
        other tiles as one unpadded grid with ``image_newline`` after each row.

        Args:
            pixels: ``[tiles, 3, S, S]``, each image's base tile and then its ``rows × cols`` tiles.
            layouts: per image, its tile grid and pixel size ``(rows, cols, height, width)``.
        """
        linear_act = kernel_for(self, "linear_act", pixels.device)
        states = self.vision_tower(pixels, linear_act)[:, 1:]  # the CLS token dropped ("default")
        projected = self.multi_modal_projector(states, linear_act)
        g, hidden = self.grid, projected.shape[-1]
        out: list[torch.Tensor] = []
        at = 0
        for tile_rows, tile_cols, height, width in layouts:
            base = projected[at]
            tiles = projected[at + 1 : at + 1 + tile_rows * tile_cols]
            at += 1 + tile_rows * tile_cols
            grid = tiles.reshape(tile_rows, tile_cols, g, g, hidden).permute(0, 2, 1, 3, 4)
            grid = grid.reshape(tile_rows * g, tile_cols * g, hidden)
            top, bottom, left, right = unpad_box(height, width, tile_rows * g, tile_cols * g)
            grid = grid[top:bottom, left:right]
            newline = self.image_newline.to(grid.dtype).expand(grid.shape[0], 1, hidden)
            out.extend((base, torch.cat((grid, newline), dim=1).reshape(-1, hidden)))
        if at != pixels.shape[0]:
            raise ModelLoadError(f"{pixels.shape[0]} image tiles for a tiling of {at}")
        return torch.cat(out)

    # -- weights -------------------------------------------------------------------------------

    #: Where the vision tower, the decoder, the projector and ``image_newline`` sit in the checkpoints.
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        parts = self.checkpoint_layout.split(weights)
        # past the feature layers: the post-LayerNorm and the layers never built
        vision = built_layers(parts["vision"], len(self.vision_tower.encoder.layers), skip="post_layernorm.")
        warn_unused([name for name, _ in parts[UNMATCHED]], type(self).__name__)
        load_into(self.vision_tower, fuse_projections(self.vision_tower, vision), rename=lambda n: n)
        self.language_model.load_weights(parts["language"])
        load_into(self.multi_modal_projector, parts["projector"], rename=lambda n: n)
        newline = parts["newline"][-1][1] if parts["newline"] else None
        if newline is None or tuple(newline.shape) != tuple(self.image_newline.shape):
            got = "lacks it" if newline is None else f"has shape {tuple(newline.shape)}"
            raise ModelLoadError(f"image_newline of shape {tuple(self.image_newline.shape)} is needed; the checkpoint {got}")
        with torch.no_grad():
            self.image_newline.copy_(newline.to(self.image_newline.dtype))
