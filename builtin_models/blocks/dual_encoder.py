"""What CLIP-style dual encoders (CLIP, SigLIP) share: a text tower and a vision tower of
pre-LayerNorm transformer layers, and the path that gives text prompts one and image prompts the
other.

A text prompt runs the text tower over its packed tokens and comes out as one row per token; an
image prompt (``batch.extras["pixel_values"]``, ``[n, 3, H, W]``) runs the vision tower and comes
out as one row per image, which any sequence pooler picks (the engine reads each image as a
one-token sequence). Both towers end in the same embedding space, so text and image embeddings
compare by cosine. What differs between the families — the text mask (CLIP is causal, SigLIP
bidirectional), the CLS token, the norms around the vision encoder, how each tower is pooled and
projected — the families' own modules say.

Parameters keep Hugging Face's names (``text_model.*``, ``vision_model.*``), except that each
layer's q/k/v projections are fused into one ``self_attn.qkv`` matrix at load time: one matmul
instead of three. With bf16 weights the matmuls run in bf16 while the residual stream and the
LayerNorms stay fp32 (mixed precision, as the BERT family does).
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Callable, ClassVar, Collection, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks, Dim, config_value, source
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.loading.weights import load_into
from poolkit.plugins.lookup import kernel_for

from .linear import FusedLinear, activated_linear, activation_function, fuse_projections, fused_activation, linear
from .attention import MultiHeadAttention
from .embeddings import check_positions
from .norms import at_least_float32, fp32_layer_norm
from .quantize import Quantizable

if TYPE_CHECKING:
    from transformers import PretrainedConfig


TEXT, VISION = "text_config.", "vision_config."
VISION_POSITIONS = "vision_model.embeddings.position_embedding.weight"

_TOWER_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def tower_checks(
    sizes: tuple[str, ...] = (), shapes: Mapping[str, tuple[Dim, ...]] | None = None
) -> ConfigChecks:
    """The config checks both towers need, plus a family's own ``sizes`` and tensor ``shapes``."""
    return ConfigChecks(
        sizes=tuple(sizes)
        + tuple(TEXT + f for f in _TOWER_SIZES + ("vocab_size", "max_position_embeddings"))
        + tuple(VISION + f for f in _TOWER_SIZES + ("image_size", "patch_size", "num_channels")),
        multiples=(
            (TEXT + "hidden_size", TEXT + "num_attention_heads"),
            (VISION + "hidden_size", VISION + "num_attention_heads"),
        ),
        layers={
            TEXT + "num_hidden_layers": r"^text_model\.encoder\.layers\.(\d+)\.",
            VISION + "num_hidden_layers": r"^vision_model\.encoder\.layers\.(\d+)\.",
        },
        shapes={
            "text_model.embeddings.token_embedding.weight": (TEXT + "vocab_size", TEXT + "hidden_size"),
            "text_model.embeddings.position_embedding.weight": (TEXT + "max_position_embeddings", TEXT + "hidden_size"),
            "text_model.encoder.layers.0.mlp.fc1.weight": (TEXT + "intermediate_size", TEXT + "hidden_size"),
            "vision_model.embeddings.patch_embedding.weight": (
                VISION + "hidden_size", VISION + "num_channels", VISION + "patch_size", VISION + "patch_size",
            ),
            "vision_model.encoder.layers.0.mlp.fc1.weight": (VISION + "intermediate_size", VISION + "hidden_size"),
            **(shapes or {}),
        },
    )


def sub_config(config: PretrainedConfig, name: str, family: str, hidden_act: str) -> PretrainedConfig:
    """``config.<name>`` (``text_config``, ``vision_config``) as a config object; ``hidden_act``
    is the family's default activation, for a sub-config that does not say."""
    sub = getattr(config, name, None)
    if sub is None:
        raise ModelLoadError(f"the {family} config has no {name}")
    if isinstance(sub, dict):
        from transformers import PretrainedConfig

        sub = PretrainedConfig.from_dict(sub)
    if getattr(sub, "hidden_act", None) is None:
        sub.hidden_act = hidden_act
    return sub


class EncoderAttention(MultiHeadAttention):
    """Multi-head self-attention with fused q/k/v; the caller says over which tokens."""

    def __init__(self, config: PretrainedConfig) -> None:
        hidden = int(config.hidden_size)
        super().__init__(hidden, int(config.num_attention_heads))
        self.qkv = FusedLinear(hidden, {"q_proj": hidden, "k_proj": hidden, "v_proj": hidden})
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, attend: Callable, linear_act: Callable) -> torch.Tensor:
        qkv = linear(x, self.qkv, linear_act).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.unbind(-3)
        return linear(attend(q, k, v).flatten(-2), self.out_proj, linear_act)


class EncoderMLP(nn.Module):
    """``fc2(act(fc1(x)))``; the activation is fused into ``fc1``'s matmul where the kernel can."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation_function(config.hidden_act)
        self.fused_act = fused_activation(config.hidden_act)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        return linear(activated_linear(x, self.fc1, linear_act, self.fused_act, self.act), self.fc2, linear_act)


class EncoderLayer(nn.Module):
    """One pre-LayerNorm transformer layer (both towers, both families)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        eps = float(config.layer_norm_eps)
        self.self_attn = EncoderAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = EncoderMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, attend: Callable, linear_act: Callable) -> torch.Tensor:
        x = x + self.self_attn(fp32_layer_norm(x, self.layer_norm1), attend, linear_act)
        return x + self.mlp(fp32_layer_norm(x, self.layer_norm2), linear_act)


class Encoder(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(int(config.num_hidden_layers)))

    def forward(self, x: torch.Tensor, attend: Callable, linear_act: Callable) -> torch.Tensor:
        x = at_least_float32(x)
        for layer in self.layers:
            x = layer(x, attend, linear_act)
        return x


class TextEmbeddings(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        tokens = F.embedding(batch.input_ids, self.token_embedding.weight)
        return at_least_float32(tokens) + at_least_float32(F.embedding(batch.positions, self.position_embedding.weight))


class TextTransformer(nn.Module):
    """Token and position embeddings, the encoder within each packed sequence, the final LayerNorm.

    Args:
        config: the text config.
        causal: each token sees only itself and earlier tokens (CLIP), or its whole sequence (SigLIP).
    """

    def __init__(self, config: PretrainedConfig, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=float(config.layer_norm_eps))

    def forward(self, batch: PackedBatch, attention: Callable, linear_act: Callable) -> torch.Tensor:
        attend = functools.partial(attention, batch=batch, causal=self.causal)
        return fp32_layer_norm(self.encoder(self.embeddings(batch), attend, linear_act), self.final_layer_norm)


class VisionEmbeddings(nn.Module):
    """Patch embeddings (a strided convolution) and learned positions, after a class token if any.

    Args:
        config: the vision config.
        class_token: prepend a learned class embedding (CLIP), or not (SigLIP).
        patch_bias: whether the patch convolution has a bias (SigLIP's has, CLIP's has not).
    """

    def __init__(self, config: PretrainedConfig, class_token: bool, patch_bias: bool) -> None:
        super().__init__()
        self.image_size = int(config.image_size)
        self.patch_size = int(config.patch_size)
        if class_token:
            self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            int(getattr(config, "num_channels", 3)),
            config.hidden_size,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=patch_bias,
        )
        num_positions = (self.image_size // self.patch_size) ** 2 + int(class_token)
        self.position_embedding = nn.Embedding(num_positions, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[n, positions, hidden]`` (fp32 at least) for ``[n, channels, image_size, image_size]`` pixels.

        Raises:
            InvalidRequest: the pixels are not of the model's image size.
        """
        size = self.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[2:]) != (size, size):
            raise InvalidRequest(
                f"pixel_values of shape {tuple(pixel_values.shape)} do not fit the model's {size}x{size} images"
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = at_least_float32(patches.flatten(2).transpose(1, 2))
        if hasattr(self, "class_embedding"):
            x = torch.cat([at_least_float32(self.class_embedding).expand(x.shape[0], 1, -1), x], dim=1)
        return x + at_least_float32(self.position_embedding.weight)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional attention on ``[n, P, heads, d]``: the patches of each image see each other."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2)


class DualEncoder(Quantizable, Architecture):
    """Base of text-and-image dual encoders: packed token ids in, one row per token out; or
    images in, one row per image out.

    Subclasses build ``text_model`` and ``vision_model``, say whether the vision tower has a
    class token (:attr:`class_token`, for the position check) and implement
    :meth:`text_features` and :meth:`image_features`.
    """

    #: What a prompt may carry; the image IO processor refuses images for models without "image".
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    #: The family's name in messages.
    family: ClassVar[str] = "dual encoder"
    #: Whether the vision tower prepends a class token (one more position embedding).
    class_token: ClassVar[bool] = True
    #: The activation of a sub-config that names none (transformers' default for the family).
    default_hidden_act: ClassVar[str] = "quick_gelu"
    #: Checkpoint tensors the model does not use (contrastive temperature, bias, id buffers).
    unused_tensors: ClassVar[re.Pattern] = re.compile(r"^logit_(scale|bias)$|\.position_ids$")

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """The declared checks, and that the image and patch sizes give the checkpoint's positions."""
        super().check_config(config, shapes, overridden)
        held = (shapes or {}).get(VISION_POSITIONS)
        image, patch = config_value(config, VISION + "image_size"), config_value(config, VISION + "patch_size")
        if held and isinstance(image, int) and isinstance(patch, int):
            positions = (image // patch) ** 2 + int(cls.class_token)
            if positions != held[0]:
                raise ModelLoadError(
                    f"{source(VISION + 'image_size', overridden)} vision_config.image_size {image} and patch_size "
                    f"{patch} make {positions} positions, but the weights hold {held[0]} "
                    f"('{VISION_POSITIONS}' has shape {tuple(held)})"
                )

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.text_config = sub_config(config, "text_config", self.family, self.default_hidden_act)
        self.vision_config = sub_config(config, "vision_config", self.family, self.default_hidden_act)

    @property
    def max_positions(self) -> int | None:
        return int(self.text_config.max_position_embeddings)

    @property
    def num_labels(self) -> int:
        return 0  # the configs inherit num_labels=2 from PretrainedConfig; dual encoders have no classifier

    def text_features(self, batch: PackedBatch, attention: Callable, linear_act: Callable) -> torch.Tensor:
        """``[T, hidden_size]``: every token of the packed texts, in the shared embedding space."""
        raise NotImplementedError

    def image_features(self, pixel_values: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        """``[n, hidden_size]``: one row per image, in the shared embedding space."""
        raise NotImplementedError

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        linear_act = kernel_for(self, "linear_act", batch.device)
        pixel_values = batch.extras.get("pixel_values")
        if pixel_values is not None:
            return self.image_features(pixel_values, linear_act)
        check_positions(batch, self.max_positions)
        return self.text_features(batch, kernel_for(self, "varlen_attention", batch.device), linear_act)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        kept = ((n, t) for n, t in weights if not self.unused_tensors.search(n))
        load_into(self, fuse_projections(self, kept), rename=lambda name: name)
