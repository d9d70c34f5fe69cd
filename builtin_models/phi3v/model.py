"""Phi-3-Vision (``Phi3VForCausalLM``) as an embedder, VLM2Vec's model: a CLIP vision tower feeding
the Phi-3 decoder, on packed batches.

A prompt of text and images reaches the model as token ids in which each image is a run of
``<|image|>`` placeholders, one per image feature, with the image's crops in
``batch.extras["media"]`` (made by the family's processor, :mod:`.processor`). The forward pass runs
every crop of the batch through the CLIP vision tower at once (ViT-L/14 at 336 pixels, up to the
hidden state ``img_processor.layer_idx`` names: the second-to-last layer's output) and keeps the
patches (no CLS token). Then the HD transform, per image: each 24x24 grid of patch features is
merged 2x2 into a 12x12 grid of features four times as wide; the crops' grids are laid out as one
(rows of crops, then columns), ``sub_GN`` ends each row, ``glb_GN`` follows, and the global image's
grid comes last, its rows ended by ``sub_GN`` too (``hd_transform_order: sub_glb``; ``glb_sub`` puts
the global image first). The projector (``img_projection``: linear, GELU, linear) takes these to the
decoder's width; they replace the placeholders, and the Phi-3 decoder (:mod:`.text`) runs over the
whole prompt with its plain rotary positions, so text-only prompts run as the Phi-3 model would.

``config.json`` names ``model_type: phi3_v``, which transformers does not know: poolkit reads it
as a Phi-3 config (``config_model_type``), its image settings from ``img_processor`` and
``embd_layer`` (:mod:`.config`), and runs no remote code. Weights load under the published names:
``model.embed_tokens``, ``model.layers.N.self_attn.qkv_proj``, ...,
``model.vision_embed_tokens.img_processor.vision_model.*`` (the post-LayerNorm and the layers past
the feature layer are never built), ``model.vision_embed_tokens.img_projection.0`` / ``.2``,
``model.vision_embed_tokens.glb_GN`` and ``sub_GN``; ``lm_head`` is not read. Embeddings pool the
last token and normalise, as vLLM's VLM2Vec does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Mapping

import torch
from torch import nn

from poolkit.contracts.capabilities import BorrowsConfig
from poolkit.contracts.config_checks import ConfigChecks, layers_held
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import load_into, warn_unused
from poolkit.plugins.lookup import kernel_for

from ..blocks.dual_encoder import EncoderLayer, VisionEmbeddings, dense_attention
from ..blocks.norms import fp32_layer_norm
from ..blocks.linear import fuse_projections
from ..blocks.vision_language import (
    UNMATCHED,
    CheckpointLayout,
    FeedForward,
    VisionLanguageModel,
    built_layers,
)
from .config import ImageSettings, image_settings
from .processor import Phi3VProcessor
from .text import Phi3TextModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

#: The published checkpoint layout: the vision tower, projector and separators under
#: ``model.vision_embed_tokens.``, the decoder under ``model.``; ``lm_head``, the tower's
#: post-LayerNorm, the tied ``wte`` copy and id buffers are skipped.
CHECKPOINT = CheckpointLayout(
    {
        "vision": r"model\.vision_embed_tokens\.img_processor\.vision_model\.",
        "projection": r"model\.vision_embed_tokens\.img_projection\.",
        "separators": r"model\.vision_embed_tokens\.",
        "language": r"model\.",
    },
    skip=(
        r"lm_head\.|.*\.position_ids$|.*\.rotary_emb\."
        r"|model\.vision_embed_tokens\.(?:wte\.|img_processor\.vision_model\.post_layernorm\.)"
    ),
)
VISION = "model.vision_embed_tokens.img_processor.vision_model."
#: The placeholder token of the published tokenizers when neither the config nor the tokenizer
#: names ``<|image|>`` (vLLM's constant).
IMAGE_TOKEN_ID = 32044
#: The image placeholders' token.
IMAGE_TOKEN = "<|image|>"


def _image_token(config: PretrainedConfig, tokenizer: Tokenizer) -> int:
    """The token whose rows the image features fill: the config's ``image_token_id``, else the
    tokenizer's ``<|image|>``, else vLLM's 32044 where the vocabulary is that large.

    Raises:
        ModelLoadError: none of them.
    """
    given = getattr(config, "image_token_id", None)
    if isinstance(given, int) and not isinstance(given, bool):
        return given
    if tokenizer is not None:
        found = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if isinstance(found, int) and found != getattr(tokenizer, "unk_token_id", None):
            return found
    if int(config.vocab_size) > IMAGE_TOKEN_ID:
        return IMAGE_TOKEN_ID
    raise ModelLoadError(f"the tokenizer has no {IMAGE_TOKEN} token and config.json no image_token_id for the image features' placeholders")


class Phi3VisionTower(nn.Module):
    """CLIP's vision transformer up to the feature layer: patch and class embeddings, pre-LayerNorm
    and the encoder layers the features need (``[crops, 3, S, S]`` pixels in, ``[crops, 1 +
    patches, width]`` out, fp32 at least)."""

    def __init__(self, config: PretrainedConfig, layers: int) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(config, class_token=True, patch_bias=False)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=float(config.layer_norm_eps))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(EncoderLayer(config) for _ in range(layers))

    def forward(self, pixel_values: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        x = fp32_layer_norm(self.embeddings(pixel_values), self.pre_layrnorm)
        for layer in self.encoder.layers:
            x = layer(x, dense_attention, linear_act)
        return x


class Phi3VForCausalLM(VisionLanguageModel, BorrowsConfig):
    """Phi-3-Vision as an embedder (VLM2Vec): HD-transformed CLIP features in the placeholders'
    rows, the Phi-3 decoder over the whole prompt, the last token pooled.

    Example:
        >>> llm = LLM("TIGER-Lab/VLM2Vec-Full", runner="pooling")
        >>> llm.embed({"prompt": "<|image_1|> Represent the given image.", "multi_modal_data": {"image": "cat.png"}})
        >>> llm.embed("Find me an everyday image that matches the given caption: a cat on a mat")
    """

    default_pooling_type: ClassVar[str | None] = "LAST"
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    media_processor: ClassVar[type[Phi3VProcessor] | str | None] = Phi3VProcessor
    config_model_type: ClassVar[str | None] = "phi3"
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=(
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings",
        ),
        multiples=(("num_attention_heads", "num_key_value_heads"),),
        layers={"num_hidden_layers": r"^model\.layers\.(\d+)\."},
        shapes={
            "model.embed_tokens.weight": ("vocab_size", "hidden_size"),
            "model.layers.0.mlp.gate_up_proj.weight": ((2, "intermediate_size"), "hidden_size"),
            "model.layers.0.mlp.down_proj.weight": ("hidden_size", "intermediate_size"),
            "model.vision_embed_tokens.img_projection.2.weight": ("hidden_size", "hidden_size"),
        },
    )
    #: Where the vision tower, the projector, the separators and the decoder sit in the checkpoints.
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """The declared checks, the image settings (:func:`~.config.image_settings`), the text
        model's heads, and the vision tower's layers and patch embedding against the checkpoint."""
        super().check_config(config, shapes, overridden)
        if not getattr(config, "head_dim", None):
            ConfigChecks(multiples=(("hidden_size", "num_attention_heads"),)).check(config, None, overridden)
        settings = image_settings(config)
        if not shapes:
            return
        vision = settings.vision
        held = layers_held(shapes, rf"^{re.escape(VISION)}encoder\.layers\.(\d+)\.")
        if held < settings.feature_layer:
            raise ModelLoadError(
                f"img_processor layer_idx {config.img_processor.get('layer_idx', -2)} reads vision layer {settings.feature_layer}, "
                f"but the weights hold {held} vision layers"
            )
        expected = {
            f"{VISION}embeddings.patch_embedding.weight": (vision.hidden_size, vision.num_channels, vision.patch_size, vision.patch_size),
            f"{VISION}embeddings.position_embedding.weight": ((vision.image_size // vision.patch_size) ** 2 + 1, vision.hidden_size),
            "model.vision_embed_tokens.img_projection.0.weight": (config.hidden_size, settings.width),
            "model.vision_embed_tokens.glb_GN": (1, 1, settings.width),
            "model.vision_embed_tokens.sub_GN": (1, 1, 1, settings.width),
        }
        for name, shape in expected.items():
            found = shapes.get(name)
            if found is not None and tuple(found) != tuple(int(d) for d in shape):
                raise ModelLoadError(
                    f"checkpoint tensor '{name}' has shape {tuple(found)}, but the config's vision settings make {tuple(shape)}"
                )

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Find the placeholder token of image features (``config.image_token_id``)."""
        config.image_token_id = _image_token(config, tokenizer)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.image: ImageSettings = image_settings(config)
        vision = self.image.vision
        self.language_model = Phi3TextModel(config)
        self.vision_tower = Phi3VisionTower(vision, self.image.feature_layer)
        self.img_projection = FeedForward(self.image.width, config.hidden_size, config.hidden_size, "gelu", names=("0", "2"))
        self.glb_GN = nn.Parameter(torch.zeros(self.image.width))
        self.sub_GN = nn.Parameter(torch.zeros(self.image.width))
        token = getattr(config, "image_token_id", None)
        self.image_token = IMAGE_TOKEN_ID if token is None else int(token)

    @property
    def text_config(self) -> Any:
        """The decoder's config: the model's own (Phi-3-Vision's text fields are at its top level)."""
        return self.config

    # -- the forward pass ----------------------------------------------------------------------

    def image_features_of(self, found: list[tuple[dict, Any, Any]]) -> torch.Tensor:
        grids = [tuple(g) for m, _, _ in found for g in m["image_grid"].tolist()]
        return self.image_features(torch.cat([m["image_pixels"] for m, _, _ in found]), grids)

    def image_features(self, pixels: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
        """``[features, hidden]`` of all images, one after another, as the HD transform lays them
        out and the projector maps them.

        Args:
            pixels: ``[crops, 3, S, S]``, each image's global image and then its ``rows × cols`` crops.
            grids: per image, its crop grid ``(rows, cols)``.
        """
        linear_act = kernel_for(self, "linear_act", pixels.device)
        states = self.vision_tower(pixels, linear_act)[:, 1:]  # the patches; the CLS token dropped
        n, c, m = states.shape[0], states.shape[-1], self.image.merged
        merged = states.reshape(n, m, 2, m, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, m, m, 4 * c)
        sub, glb = self.sub_GN.to(merged.dtype), self.glb_GN.to(merged.dtype).unsqueeze(0)
        out: list[torch.Tensor] = []
        at = 0
        for rows, cols in grids:
            whole = merged[at]
            crops = merged[at + 1 : at + 1 + rows * cols]
            at += 1 + rows * cols
            crops = crops.reshape(rows, cols, m, m, 4 * c).permute(0, 2, 1, 3, 4).reshape(rows * m, cols * m, 4 * c)
            parts = (_ended_rows(crops, sub), glb, _ended_rows(whole, sub))
            out.extend(parts if self.image.order == "sub_glb" else parts[::-1])
        if at != n:
            raise ModelLoadError(f"{n} image crops for a layout of {at}")
        return self.img_projection(torch.cat(out), linear_act)

    # -- weights -------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        parts = self.checkpoint_layout.split(weights)
        vision = built_layers(parts["vision"], len(self.vision_tower.encoder.layers))  # past the feature layer: never built
        separators = dict(parts["separators"])
        unused = [name for name, _ in parts[UNMATCHED]]
        unused += [f"model.vision_embed_tokens.{name}" for name in separators if name not in ("glb_GN", "sub_GN")]
        warn_unused(unused, type(self).__name__)
        load_into(self.vision_tower, fuse_projections(self.vision_tower, vision), rename=lambda n: n)
        self.language_model.load_weights(parts["language"])
        load_into(self.img_projection, parts["projection"], rename=lambda n: n)
        width = self.image.width
        for name, shape in (("glb_GN", (1, 1, width)), ("sub_GN", (1, 1, 1, width))):
            tensor = separators.get(name)
            if tensor is None or tuple(tensor.shape) != shape:
                got = "lacks it" if tensor is None else f"has shape {tuple(tensor.shape)}"
                raise ModelLoadError(f"model.vision_embed_tokens.{name} of shape {shape} is needed; the checkpoint {got}")
            with torch.no_grad():
                getattr(self, name).copy_(tensor.reshape(width).to(getattr(self, name).dtype))


def _ended_rows(grid: torch.Tensor, separator: torch.Tensor) -> torch.Tensor:
    """A ``[rows, cols, C]`` feature grid as ``[rows · (cols + 1), C]`` rows, ``separator`` ending each."""
    ends = separator.expand(grid.shape[0], 1, grid.shape[-1])
    return torch.cat((grid, ends), dim=1).reshape(-1, grid.shape[-1])
