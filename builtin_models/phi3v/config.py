"""What a Phi-3-Vision ``config.json`` says about its image side, read and checked in one place
for the model and its processor.

The published checkpoints (microsoft/Phi-3-vision-128k-instruct, Phi-3.5-vision-instruct,
TIGER-Lab/VLM2Vec-Full) are a Phi-3 text config with two dicts beside it: ``img_processor``, the
image encoder (``name: clip_vision_model``, ``model_name: openai/clip-vit-large-patch14-336``, its
feature width ``image_dim_out``, the features per crop after the 2x2 merge ``num_img_tokens``,
optionally the hidden state to read ``layer_idx`` (default -2) and ``type_feature`` (``patch``)), and
``embd_layer``, how the features become embeddings (``use_hd_transform``,
``with_learnable_separator``, ``hd_transform_order``, ``projection_cls: mlp``). The remote code
hard-codes CLIP ViT-L/14 at 336 pixels; poolkit does too, and reads other CLIP sizes from an
``img_processor.vision_config`` dict where one is given (the tests' tiny towers).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from poolkit.contracts.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: The vision tower every published Phi-3-Vision checkpoint has (``openai/clip-vit-large-patch14-336``).
CLIP_VIT_L_14_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
#: Where the separators go: the crops' features first (the published checkpoints), or the global image's.
ORDERS = ("sub_glb", "glb_sub")


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """The image side of a Phi-3-Vision config.

    Attributes:
        vision: the CLIP vision config (a ``CLIPVisionConfig``).
        feature_layer: the hidden state the features are read from, an index into
            ``[embeddings, layer 1, ..., layer N]`` (``layer_idx``, made non-negative).
        order: ``"sub_glb"`` or ``"glb_sub"`` (``hd_transform_order``).
    """

    vision: Any
    feature_layer: int
    order: str

    @property
    def crop(self) -> int:
        """The side of a crop in pixels (the vision tower's image size: 336)."""
        return int(self.vision.image_size)

    @property
    def merged(self) -> int:
        """The side of a crop's feature grid after the 2x2 merge (12)."""
        return int(self.vision.image_size) // int(self.vision.patch_size) // 2

    @property
    def width(self) -> int:
        """The width of a merged feature: four CLIP features side by side (4096)."""
        return 4 * int(self.vision.hidden_size)


def image_feature_count(rows: int, cols: int, merged: int) -> int:
    """How many image features (placeholder tokens) an image cut into ``rows × cols`` crops makes:
    the crops' merged grid with a separator ending each row, one separator between, and the
    global image's grid with its own row separators (``(rows·cols + 1)·144 + 1 + (rows + 1)·12``)."""
    return (rows * cols + 1) * merged * merged + 1 + (rows + 1) * merged


def _vision_config(img: dict[str, Any]) -> Any:
    from transformers import CLIPVisionConfig

    given = img.get("vision_config") or {}
    if not isinstance(given, dict):
        raise ModelLoadError(f"img_processor.vision_config must be a dict of CLIP vision settings, got {type(given).__name__}")
    try:
        return CLIPVisionConfig(**{**CLIP_VIT_L_14_336, **given})
    except Exception as exc:
        raise ModelLoadError(f"img_processor.vision_config is not a valid CLIP vision config: {type(exc).__name__}: {exc}") from None


def image_settings(config: PretrainedConfig) -> ImageSettings:
    """The :class:`ImageSettings` of a Phi-3-Vision config, checked against what the published
    model runs.

    Raises:
        ModelLoadError: an image encoder other than CLIP, settings the HD transform cannot run
            (no HD transform, CLS features, a linear projection), or sizes that disagree.
    """
    img, embd = getattr(config, "img_processor", None), getattr(config, "embd_layer", None)
    if not isinstance(img, dict) or not isinstance(embd, dict):
        raise ModelLoadError("a Phi3VForCausalLM config needs the img_processor and embd_layer dicts of Phi-3-Vision's config.json")
    name = img.get("name", "clip_vision_model")
    if name != "clip_vision_model":
        raise ModelLoadError(f"img_processor name '{name}' is not supported; Phi-3-Vision's image encoder is clip_vision_model")
    feature = img.get("type_feature", "patch")
    if feature != "patch":
        raise ModelLoadError(f"img_processor type_feature '{feature}' is not supported; the HD transform reads 'patch' features")
    for key, default, wanted in (
        ("use_hd_transform", False, True), ("with_learnable_separator", False, True), ("projection_cls", "linear", "mlp"),
    ):
        if embd.get(key, default) != wanted:
            raise ModelLoadError(f"embd_layer {key} {embd.get(key, default)!r} is not supported; Phi-3-Vision runs {wanted!r}")
    order = embd.get("hd_transform_order", "glb_sub")
    if order not in ORDERS:
        raise ModelLoadError(f"embd_layer hd_transform_order '{order}' is not supported; use one of {', '.join(ORDERS)}")
    vision = _vision_config(img)
    layers = int(vision.num_hidden_layers)
    index = img.get("layer_idx", -2)
    if isinstance(index, bool) or not isinstance(index, int) or not -(layers + 1) <= index <= layers:
        raise ModelLoadError(f"img_processor layer_idx {index!r} is out of range for a vision tower of {layers} layers")
    settings = ImageSettings(vision, index % (layers + 1), order)
    grid = int(vision.image_size) // int(vision.patch_size)
    if int(vision.image_size) % int(vision.patch_size) or grid % 2:
        raise ModelLoadError(
            f"the vision tower's {vision.image_size}-pixel crops in {vision.patch_size}-pixel patches must make an even grid "
            "for the 2x2 merge"
        )
    dim = img.get("image_dim_out", vision.hidden_size)
    if dim != vision.hidden_size:
        raise ModelLoadError(f"img_processor image_dim_out {dim} is not the vision tower's width {vision.hidden_size}")
    tokens = img.get("num_img_tokens", settings.merged**2)
    if tokens != settings.merged**2:
        raise ModelLoadError(
            f"img_processor num_img_tokens {tokens} does not fit {grid}x{grid}-patch crops merged 2x2 ({settings.merged**2} per crop)"
        )
    return settings
