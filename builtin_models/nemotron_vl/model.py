"""Llama-Nemotron-VL (``LlamaNemotronVLModel``: nvidia/llama-nemotron-embed-vl-1b-v2): a SigLIP
vision tower feeding a bidirectional Llama, on packed batches.

A prompt of text and images reaches the model as token ids in which each image is a run of
``<IMG_CONTEXT>`` placeholders between ``<img>`` and ``</img>``, one per image feature, with the
image's tiles in ``batch.extras["media"]`` (made by the family's processor,
:mod:`poolkit.builtin_models.nemotron_vl.processor`: InternVL-style dynamic tiling into square
tiles of the vision tower's size, then a thumbnail). The forward pass runs every tile of the batch
through SigLIP's vision transformer at once (its post-LayerNorm included, no pooling head: the
last hidden state, ``select_layer: -1``), pixel-shuffles each tile's patch grid (each
``1/downsample_ratio``-square block of patches becomes one feature of their channels one after
another, ``ps_version: v2`` keeping the blocks row by row) and projects the features to the
decoder's width with ``mlp1`` (LayerNorm, linear, GELU, linear). These rows replace the
placeholders, and the bidirectional Llama of ``llm_config``
(:class:`~poolkit.builtin_models.decoders.LlamaBidirectionalModel`) runs over the whole prompt with
its plain rotary positions, so text-only prompts run exactly as llama-nemotron-embed's text model.

The checkpoint's ``config.json`` (``model_type: llama_nemotron_vl``, written for remote code) is
read as a plain config whose ``llm_config`` becomes a Llama config and ``vision_config`` a SigLIP
vision config; no remote code runs. Embeddings pool as the config's ``pooling`` says (vLLM: the
top-level one, else ``llm_config``'s; ``avg`` is MEAN), normalised. Checkpoints load with the
vision tower under ``vision_model.`` with or without transformers' inner ``vision_model.``, the
decoder under ``language_model.`` with or without ``model.``, and the projector as ``mlp1.0``
(LayerNorm), ``mlp1.1`` and ``mlp1.3``; the vision pooling head and ``lm_head`` are not read.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Mapping

import torch
from torch import nn

from poolkit.contracts.config_checks import ConfigChecks, source
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import load_into, warn_unused
from poolkit.plugins.lookup import kernel_for

from ..blocks.norms import fp32_layer_norm
from ..decoders.llama import LlamaBidirectionalModel
from ..blocks.linear import fuse_projections, linear
from ..siglip import SiglipVisionTransformer
from ..blocks.vision_language import (
    UNMATCHED,
    Activation,
    CheckpointLayout,
    VisionLanguageModel,
    vit_checks,
)
from .processor import IMG_CONTEXT, LlamaNemotronVLProcessor

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

#: The transformers ``model_type`` each sub-config is read as.
SUB_CONFIGS = {"llm_config": "llama", "vision_config": "siglip_vision_model"}
#: vLLM's ``LlamaNemotronVLConfig``: the config's ``pooling`` -> poolkit's pooling type.
POOLING = {"avg": "MEAN", "mean": "MEAN", "cls": "CLS", "last": "LAST"}
#: The pixel shuffles ``ps_version`` names: ``v2`` keeps the feature blocks row by row, ``v1`` column by column.
PIXEL_SHUFFLES = ("v1", "v2")
#: The checkpoint layouts: the vision tower with or without transformers' inner ``vision_model.``,
#: the decoder with or without ``model.``; ``lm_head`` and id buffers are skipped.
CHECKPOINT = CheckpointLayout(
    {
        "vision": r"vision_model\.(?:vision_model\.)?",
        "language": r"language_model\.(?:model\.)?",
        "projector": r"mlp1\.",
    },
    skip=r"(?:.*\.)?lm_head\.|.*\.position_ids$",
)


def read_sub_configs(config: PretrainedConfig) -> None:
    """Make ``config.llm_config`` a Llama config and ``config.vision_config`` a SigLIP vision config
    (transformers' classes, their defaults filled in), in place; a config read already is left as it is.

    Raises:
        ModelLoadError: a sub-config is missing, is not a SigLIP vision tower, or does not make a valid config.
    """
    from transformers import AutoConfig, CONFIG_MAPPING

    for name, kind in SUB_CONFIGS.items():
        sub = getattr(config, name, None)
        if sub is None:
            raise ModelLoadError(f"the LlamaNemotronVLModel config has no {name}")
        if isinstance(sub, CONFIG_MAPPING[kind]):
            continue
        raw = dict(sub) if isinstance(sub, dict) else sub.to_dict()
        declared = raw.pop("model_type", None)
        if name == "vision_config" and declared not in (None, kind):
            raise ModelLoadError(
                f"a '{declared}' vision tower is not supported: LlamaNemotronVLModel runs SigLIP's ({kind})"
            )
        try:
            sub = AutoConfig.for_model(kind, **raw)
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise ModelLoadError(f"the config's {name} does not make a valid '{kind}' config: {type(exc).__name__}: {text}") from None
        setattr(config, name, sub)


def pooling_type(config: PretrainedConfig) -> str:
    """The pooling the config asks for: its ``pooling``, else ``llm_config``'s, else ``avg`` (MEAN).

    Raises:
        ModelLoadError: a pooling poolkit does not know.
    """
    pooling = getattr(config, "pooling", None)
    if pooling is None:
        pooling = getattr(config.llm_config, "pooling", None) or "avg"
    found = POOLING.get(str(pooling).lower())
    if found is None:
        raise ModelLoadError(f"pooling '{pooling}' of a LlamaNemotronVLModel config is not supported; use one of {', '.join(POOLING)}")
    return found


def pixel_shuffle(x: torch.Tensor, grid: int, scale: int, by_columns: bool = False) -> torch.Tensor:
    """``[tiles, grid², C]`` patch features (row by row) as ``[tiles, (grid/scale)², scale²·C]``:
    each ``scale × scale`` block of patches one feature, its patches' channels one after another
    (row by row), the blocks row by row (or, ``by_columns``, column by column: ``ps_version`` v1)."""
    tiles, _, channels = x.shape
    blocks = grid // scale
    x = x.reshape(tiles, blocks, scale, blocks, scale, channels).permute(0, 1, 3, 2, 4, 5)
    if by_columns:
        x = x.transpose(1, 2)
    return x.reshape(tiles, blocks * blocks, scale * scale * channels)


class VisionProjector(nn.Module):
    """``mlp1``: LayerNorm, linear, GELU, linear, from the shuffled vision features to the decoder's
    width, under ``nn.Sequential``'s names (``0``, ``1``, ``3``)."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.add_module("0", nn.LayerNorm(in_features))
        self.add_module("1", nn.Linear(in_features, hidden))
        self.add_module("3", nn.Linear(hidden, hidden))
        self.act = Activation("gelu")

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        norm, first, second = (self._modules[name] for name in ("0", "1", "3"))
        return linear(self.act.after(fp32_layer_norm(x, norm), first, linear_act), second, linear_act)


class LlamaNemotronVLModel(VisionLanguageModel):
    """Llama-Nemotron-VL as an embedder: tiled, pixel-shuffled SigLIP features in the placeholders'
    rows, the bidirectional Llama over the whole prompt, mean-pooled (the config's ``pooling``).

    Example:
        >>> llm = LLM("nvidia/llama-nemotron-embed-vl-1b-v2")
        >>> llm.embed(["query: how is the revenue split by region?",
        ...            {"prompt": "passage: <image> ", "multi_modal_data": {"image": "page.png"}}])
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    media_processor: ClassVar[type[LlamaNemotronVLProcessor] | str | None] = LlamaNemotronVLProcessor
    config_checks: ClassVar[ConfigChecks] = vit_checks(
        "llm_config",
        "force_image_size",
        layers={
            "llm_config.num_hidden_layers": r"^language_model\.(?:model\.)?layers\.(\d+)\.",
            "vision_config.num_hidden_layers": r"^vision_model\.(?:vision_model\.)?encoder\.layers\.(\d+)\.",
        },
        shapes={"mlp1.3.weight": ("llm_config.hidden_size", "llm_config.hidden_size")},
    )

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Read the sub-configs, and take ``img_context_token_id`` from the tokenizer's
        ``<IMG_CONTEXT>`` (the token the processor writes), checking the config's against it.

        Raises:
            ModelLoadError: the tokenizer has no ``<IMG_CONTEXT>``, or the config names another id.
        """
        read_sub_configs(config)
        found = tokenizer.get_vocab().get(IMG_CONTEXT)
        if found is None:
            raise ModelLoadError(f"the LlamaNemotronVLModel tokenizer has no {IMG_CONTEXT} token for image features")
        declared = getattr(config, "img_context_token_id", None)
        if declared is not None and int(declared) != int(found):
            raise ModelLoadError(
                f"img_context_token_id {declared} is not the tokenizer's {IMG_CONTEXT} ({found}); fix config.json or the tokenizer"
            )
        config.img_context_token_id = int(found)

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """The declared checks, the decoder's own, and what the image features need: the last vision
        layer, tiles of the vision tower's size, a whole pixel-shuffle block count, a known pooling,
        and a projector and position table that fit them."""
        read_sub_configs(config)
        super().check_config(config, shapes, overridden)
        LlamaBidirectionalModel.check_config(config.llm_config, None, ())
        pooling_type(config)
        vision = config.vision_config
        layer = getattr(config, "select_layer", -1)
        if layer != -1:
            raise ModelLoadError(
                f"{source('select_layer', overridden)} select_layer {layer} is not supported: LlamaNemotronVLModel reads the "
                "vision tower's last layer (-1), as vLLM does"
            )
        tile = getattr(config, "force_image_size", None) or vision.image_size
        if int(tile) != int(vision.image_size):
            raise ModelLoadError(
                f"{source('force_image_size', overridden)} force_image_size {tile} differs from vision_config.image_size {vision.image_size}"
            )
        grid = int(vision.image_size) // int(vision.patch_size)
        ratio = getattr(config, "downsample_ratio", 0.5)
        scale = round(1 / ratio) if isinstance(ratio, (int, float)) and ratio > 0 else 0
        if scale < 1 or abs(scale * ratio - 1) > 1e-6 or grid % scale:
            raise ModelLoadError(
                f"{source('downsample_ratio', overridden)} downsample_ratio {ratio} must be 1/n for an n that divides the "
                f"vision tower's {grid}x{grid} patches"
            )
        version = getattr(config, "ps_version", "v2")
        if version not in PIXEL_SHUFFLES:
            raise ModelLoadError(f"{source('ps_version', overridden)} ps_version '{version}' is not one of {', '.join(PIXEL_SHUFFLES)}")
        want = {
            "embeddings.position_embedding.weight": (grid * grid, int(vision.hidden_size)),
            "mlp1.1.weight": (int(config.llm_config.hidden_size), int(vision.hidden_size) * scale * scale),
        }
        for name, held in (shapes or {}).items():
            for suffix, shape in want.items():
                if (name == suffix or name.endswith("." + suffix)) and tuple(held) != shape:
                    raise ModelLoadError(
                        f"'{name}' has shape {tuple(held)}, but the config's vision tower, downsample_ratio and llm_config "
                        f"make {shape}"
                    )

    def __init__(self, config: PretrainedConfig) -> None:
        read_sub_configs(config)
        super().__init__(config)
        vision = config.vision_config
        self.language_model = LlamaBidirectionalModel(config.llm_config)
        self.vision_model = SiglipVisionTransformer(vision, head=False)
        self.scale = round(1 / float(getattr(config, "downsample_ratio", 0.5)))
        self.grid = int(vision.image_size) // int(vision.patch_size)
        self.by_columns = getattr(config, "ps_version", "v2") == "v1"
        self.mlp1 = VisionProjector(int(vision.hidden_size) * self.scale**2, int(config.llm_config.hidden_size))
        self.image_token = int(config.img_context_token_id)
        self.default_pooling_type = pooling_type(config)

    @property
    def text_config(self) -> Any:
        """The decoder's config (``llm_config``)."""
        return self.config.llm_config

    # -- the forward pass ----------------------------------------------------------------------

    def image_features_of(self, found: list[tuple[dict, Any, Any]]) -> torch.Tensor:
        return self.image_features(torch.cat([m["image_pixels"] for m, _, _ in found]))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[features, hidden]`` of ``[tiles, 3, S, S]`` tiles, tile after tile: each tile's
        pixel-shuffled patches projected to the decoder's width."""
        linear_act = kernel_for(self, "linear_act", pixels.device)
        patches = self.vision_model(pixels, linear_act)
        shuffled = pixel_shuffle(patches, self.grid, self.scale, self.by_columns)
        return self.mlp1(shuffled, linear_act).flatten(0, 1)

    # -- weights -------------------------------------------------------------------------------

    #: Where the vision tower, the decoder and the projector sit in the checkpoints.
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT
    #: Vision tensors not read: SigLIP's attention pooling head (the features are the patches).
    _VISION_UNUSED = re.compile(r"^head\.")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        parts = self.checkpoint_layout.split(weights)
        vision = [(name, tensor) for name, tensor in parts["vision"] if not self._VISION_UNUSED.match(name)]
        warn_unused([name for name, _ in parts[UNMATCHED]], type(self).__name__)
        load_into(self.vision_model, fuse_projections(self.vision_model, vision), rename=lambda n: n)
        self.language_model.load_weights(parts["language"])
        load_into(self.mlp1, parts["projector"], rename=lambda n: n)
