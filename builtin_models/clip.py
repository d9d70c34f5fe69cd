"""CLIP (text and vision towers with their projections) running on packed batches.

A text prompt runs the causal text transformer and comes out projected for every token
(``[T, projection_dim]``): the projection is linear, so pooling the last token (the EOS token that
closes each CLIP text) and then projecting is the same as projecting and then pooling. An image
prompt (``batch.extras["pixel_values"]``, ``[n, 3, H, W]``) runs the vision transformer and comes
out as one projected CLS row per image, which any sequence pooler picks. Both are in the shared
embedding space, so text and image embeddings compare by cosine.

The modules keep Hugging Face's parameter names (``text_model.*``, ``vision_model.*``,
``text_projection``, ``visual_projection``), except that each layer's q/k/v projections are
fused into one ``self_attn.qkv`` matrix at load time: one matmul instead of three.
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Collection, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.architecture import Architecture
from poolkit.batch import PackedBatch
from poolkit.builtin_models.layers import FusedLinear, activation_function, attention_head_dim, fuse_projections, kernel
from poolkit.config_checks import ConfigChecks, config_value, source
from poolkit.errors import InvalidRequest, ModelLoadError
from poolkit.hookspecs import hookimpl
from poolkit.weights import load_into

#: Checkpoint tensors the model does not use: the contrastive temperature and id buffers.
_UNUSED = re.compile(r"^logit_scale$|\.position_ids$")
_VISION_POSITIONS = "vision_model.embeddings.position_embedding.weight"
_TEXT, _VISION = "text_config.", "vision_config."


def _sub_config(config: Any, name: str) -> Any:
    sub = getattr(config, name, None)
    if sub is None:
        raise ModelLoadError(f"the CLIP config has no {name}")
    if isinstance(sub, dict):
        from transformers import PretrainedConfig

        sub = PretrainedConfig.from_dict(sub)
    return sub


class CLIPAttention(nn.Module):
    """Multi-head self-attention with fused q/k/v; the caller says over which tokens."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        hidden = int(config.hidden_size)
        self.num_heads = int(config.num_attention_heads)
        self.head_dim = attention_head_dim(hidden, self.num_heads)
        self.qkv = FusedLinear(hidden, {"q_proj": hidden, "k_proj": hidden, "v_proj": hidden})
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, attend: Callable, linear: Callable) -> torch.Tensor:
        qkv = linear(x, self.qkv.weight, self.qkv.bias).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.unbind(-3)
        context = attend(q, k, v)
        return linear(context.flatten(-2), self.out_proj.weight, self.out_proj.bias)


class CLIPMLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation_function(getattr(config, "hidden_act", "quick_gelu"))

    def forward(self, x: torch.Tensor, linear: Callable) -> torch.Tensor:
        return linear(self.act(linear(x, self.fc1.weight, self.fc1.bias)), self.fc2.weight, self.fc2.bias)


class CLIPEncoderLayer(nn.Module):
    """One pre-LayerNorm transformer layer (shared by both towers)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        eps = float(config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, attend: Callable, linear: Callable) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), attend, linear)
        return x + self.mlp(self.layer_norm2(x), linear)


class CLIPEncoder(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(int(config.num_hidden_layers)))

    def forward(self, x: torch.Tensor, attend: Callable, linear: Callable) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, attend, linear)
        return x


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)


class CLIPTextTransformer(nn.Module):
    """Token + position embeddings, the causal encoder, and the final LayerNorm."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=float(config.layer_norm_eps))

    def forward(self, batch: PackedBatch, attention: Callable, linear: Callable) -> torch.Tensor:
        x = F.embedding(batch.input_ids, self.embeddings.token_embedding.weight)
        x = x + F.embedding(batch.positions, self.embeddings.position_embedding.weight)
        x = self.encoder(x, lambda q, k, v: attention(q, k, v, batch, causal=True), linear)
        return self.final_layer_norm(x)


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.image_size = int(config.image_size)
        self.patch_size = int(config.patch_size)
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            int(getattr(config, "num_channels", 3)),
            config.hidden_size,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=False,
        )
        num_positions = (self.image_size // self.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(num_positions, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


def _dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional attention on ``[n, P, heads, d]``: the patches of each image see each other."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2)


class CLIPVisionTransformer(nn.Module):
    """Patch and class embeddings, pre-LayerNorm, the encoder, and post-LayerNorm of the CLS token."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        eps = float(config.layer_norm_eps)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)

    def forward(self, pixel_values: torch.Tensor, linear: Callable) -> torch.Tensor:
        size = self.embeddings.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[2:]) != (size, size):
            raise InvalidRequest(
                f"pixel_values of shape {tuple(pixel_values.shape)} do not fit the model's {size}x{size} images"
            )
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        x = self.encoder(x, _dense_attention, linear)
        return self.post_layernorm(x[:, 0])


class CLIPModel(Architecture):
    """CLIP: packed token ids in, projected token states out; or images in, projected CLS out.

    Text: causal attention within each packed sequence, positions from ``batch.positions``,
    ``final_layer_norm`` and ``text_projection`` on every token, so the default ``LAST`` pooling
    reads the EOS token, as transformers' ``get_text_features`` does (see ``docs/images.md``).
    Images: ``batch.extras["pixel_values"]`` (``[n, 3, H, W]``, the model's ``image_size``) gives
    ``[n, projection_dim]``, one row per image, each read as a one-token sequence.
    """

    default_pooling_type: ClassVar[str | None] = "LAST"
    #: What a prompt may carry; the image IO processor refuses images for models without "image".
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=("projection_dim",)
        + tuple(_TEXT + f for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                     "vocab_size", "max_position_embeddings"))
        + tuple(_VISION + f for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                       "image_size", "patch_size", "num_channels")),
        multiples=(
            (_TEXT + "hidden_size", _TEXT + "num_attention_heads"),
            (_VISION + "hidden_size", _VISION + "num_attention_heads"),
        ),
        layers={
            _TEXT + "num_hidden_layers": r"^text_model\.encoder\.layers\.(\d+)\.",
            _VISION + "num_hidden_layers": r"^vision_model\.encoder\.layers\.(\d+)\.",
        },
        shapes={
            "text_model.embeddings.token_embedding.weight": (_TEXT + "vocab_size", _TEXT + "hidden_size"),
            "text_model.embeddings.position_embedding.weight": (_TEXT + "max_position_embeddings", _TEXT + "hidden_size"),
            "text_model.encoder.layers.0.mlp.fc1.weight": (_TEXT + "intermediate_size", _TEXT + "hidden_size"),
            "vision_model.embeddings.patch_embedding.weight": (
                _VISION + "hidden_size", _VISION + "num_channels", _VISION + "patch_size", _VISION + "patch_size",
            ),
            "vision_model.encoder.layers.0.mlp.fc1.weight": (_VISION + "intermediate_size", _VISION + "hidden_size"),
            "text_projection.weight": ("projection_dim", _TEXT + "hidden_size"),
            "visual_projection.weight": ("projection_dim", _VISION + "hidden_size"),
        },
    )

    @classmethod
    def check_config(
        cls, config: Any, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """The declared checks, and that the image and patch sizes give the checkpoint's positions."""
        super().check_config(config, shapes, overridden)
        held = (shapes or {}).get(_VISION_POSITIONS)
        image, patch = config_value(config, _VISION + "image_size"), config_value(config, _VISION + "patch_size")
        if held and isinstance(image, int) and isinstance(patch, int):
            positions = (image // patch) ** 2 + 1
            if positions != held[0]:
                raise ModelLoadError(
                    f"{source(_VISION + 'image_size', overridden)} vision_config.image_size {image} and patch_size "
                    f"{patch} make {positions} positions, but the weights hold {held[0]} "
                    f"('{_VISION_POSITIONS}' has shape {tuple(held)})"
                )

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.text_config = _sub_config(config, "text_config")
        self.vision_config = _sub_config(config, "vision_config")
        self.projection_dim = int(config.projection_dim)
        self.text_model = CLIPTextTransformer(self.text_config)
        self.vision_model = CLIPVisionTransformer(self.vision_config)
        self.text_projection = nn.Linear(self.text_config.hidden_size, self.projection_dim, bias=False)
        self.visual_projection = nn.Linear(self.vision_config.hidden_size, self.projection_dim, bias=False)

    @property
    def hidden_size(self) -> int:
        return self.projection_dim

    @property
    def max_positions(self) -> int | None:
        return int(self.text_config.max_position_embeddings)

    @property
    def num_labels(self) -> int:
        return 0  # CLIPConfig inherits num_labels=2 from PretrainedConfig; CLIP has no classifier

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        pixel_values = batch.extras.get("pixel_values")
        linear = kernel(self, "linear_act", batch.device)
        if pixel_values is not None:
            return self.visual_projection(self.vision_model(pixel_values, linear))
        if batch.max_len > self.max_positions:
            raise InvalidRequest(
                f"a sequence of {batch.max_len} tokens is longer than the model's {self.max_positions} positions; "
                "truncate the input"
            )
        return self.text_projection(self.text_model(batch, kernel(self, "varlen_attention", batch.device), linear))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        kept = ((n, t) for n, t in weights if not _UNUSED.search(n))
        load_into(self, fuse_projections(self, kept), rename=lambda name: name)


@hookimpl
def poolkit_register_architectures(register):
    register("CLIPModel", CLIPModel)
