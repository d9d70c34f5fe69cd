"""Qwen2-VL: a vision tower feeding poolkit's Qwen2 decoder, on packed batches.

A prompt of text, images and videos reaches the model as token ids in which each image is a run
of ``<|image_pad|>`` placeholders (each video of ``<|video_pad|>``), one per merged patch, with
the patches and the multimodal rotary positions in ``batch.extras["media"]`` (made by the
family's processor, :mod:`poolkit.builtin_models.qwen_vl.processor`). The forward pass runs every
image and video of the batch through the vision tower at once — patch embedding, pre-LayerNorm
blocks with 2-D rotary attention within each image (each temporal patch of a video: two frames),
the patch merger that joins each 2×2 block of patches into one token — puts the features where
the placeholders are, and runs the decoder layers with M-RoPE: each rotary frequency reads the
temporal, height or width position of its token (``mrope_section``), which for text is its plain
position, so text-only prompts run exactly as a Qwen2 model would. Qwen2.5-VL
(:mod:`~poolkit.builtin_models.qwen_vl.qwen2_5_vl`) and Qwen3-VL
(:mod:`~poolkit.builtin_models.qwen_vl.qwen3_vl`) subclass this with their own towers; a tower may
return deepstack features, which the decoder's ``after_layer`` hook adds to its first layers' outputs.

Checkpoints load in both layouts: transformers 5's (``model.visual.*``,
``model.language_model.*``) and the published one (``visual.*``, ``model.*``); ``lm_head`` is not
read. Embeddings pool the last token, as vLLM's Qwen2-VL embedders (DSE, GME) do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Collection, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import MediaPlaceholders, SharesPrefixes
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import load_into
from poolkit.plugins.lookup import kernel_for

from ..blocks.norms import RMSNorm, fp32_layer_norm
from ..blocks.rotary import Rotary, rotary_inv_freq
from ..blocks.linear import linear
from ..qwen import Qwen2Model
from ..blocks.vision_language import (
    CheckpointLayout,
    FeedForward,
    VisionLanguageModel,
    Weights,
    batch_media,
    merge_multimodal_embeddings,
    placeholder_rows,
)
from .processor import QWEN2_VL, Family, QwenVLProcessor

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: The media kinds whose features replace placeholder tokens, with their config's token-id fields.
PLACEHOLDERS = (("image", "image_token_id"), ("video", "video_token_id"))
#: The checkpoint layouts: transformers 5's ``model.visual.`` / ``model.language_model.``, the
#: published ``visual.`` / ``model.``; ``lm_head`` is skipped.
CHECKPOINT = CheckpointLayout(
    {"visual": r"(?:model\.)?visual\.", "language": r"(?:model\.language_model\.|language_model\.|model\.)?"},
    skip=r"lm_head\.",
)


def mrope_axes(sections: list[int], interleaved: bool = False) -> torch.Tensor:
    """Which position (0 temporal, 1 height, 2 width) each rotary frequency reads: Qwen2-VL's
    consecutive sections (``[16, 24, 24]``: the first 16 frequencies temporal, ...), or Qwen3-VL's
    interleaved ones (``t h w t h w ...``, each axis up to its section's share)."""
    half = sum(sections)
    if not interleaved:
        return torch.repeat_interleave(torch.arange(3), torch.tensor(sections))
    axes = torch.zeros(half, dtype=torch.long)
    for axis in (1, 2):
        axes[axis : 3 * sections[axis] : 3] = axis
    return axes


def mrope_cos_sin(inv_freq: torch.Tensor, axes: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> Rotary:
    """Each token's rotary ``cos`` and ``sin`` (``[T, head_dim]``, rotate-half layout) from its
    ``[3, T]`` multimodal positions: frequency ``j`` turns by the position on axis ``axes[j]``.
    The angles are float32, as transformers computes them."""
    angles = positions.index_select(0, axes.to(positions.device)).T.float() * inv_freq.to(positions.device)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def vision_rotary(grids: list[tuple[int, int, int]], merge: int, head_dim: int, theta: float, device: torch.device) -> Rotary:
    """The vision tower's 2-D rotary ``cos`` / ``sin`` (float32, ``[N, head_dim]``): half the
    frequencies turn with a patch's row, half with its column, the patches in merge-block order
    (each ``merge × merge`` block's patches one after another, as the processor lays them out)."""
    quarter = rotary_inv_freq(theta, head_dim // 2)
    rows = []
    for t, h, w in grids:
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = (h // merge, merge, w // merge, merge)
        hh = hh.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        ww = ww.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        rows.append(np.tile(np.stack([hh, ww], axis=-1), (t, 1)))
    pos = torch.from_numpy(np.concatenate(rows)).to(device)
    angles = (pos.unsqueeze(-1).float() * quarter.to(device)).flatten(1)  # [N, 2 * head_dim // 4]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


#: A vision tower's output: one row per merged patch, and the deepstack features (Qwen3-VL) that
#: join the first decoder layers' outputs at the same rows (empty for the other families).
VisionFeatures = tuple[torch.Tensor, list[torch.Tensor]]


def frame_lengths(grids: list[tuple[int, int, int]]) -> list[int]:
    """The patches of each frame (each image, each temporal patch of a video): the runs a vision
    tower attends within."""
    return [h * w for t, h, w in grids for _ in range(t)]


def attend_within(attention: Callable, lengths: list[int], device: torch.device) -> Callable:
    """Bidirectional attention of the ``varlen_attention`` op within consecutive runs of
    ``lengths`` rows (frames, or Qwen2.5-VL's windows)."""
    batch = PackedBatch(torch.zeros(sum(lengths), dtype=torch.long, device=device), lengths)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, batch, causal=False)

    return attend


def rotate_half_fp32(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` (``[N, heads, head_dim]``) rotated in float32 and cast back, as transformers rotates
    the vision tower's queries and keys."""
    wide = x.float()
    first, second = wide.chunk(2, dim=-1)
    turned = torch.cat((-second, first), dim=-1)
    return (wide * cos.unsqueeze(1) + turned * sin.unsqueeze(1)).to(x.dtype)


class VisionAttention(nn.Module):
    """Self-attention within each image (each frame of a video), 2-D rotary on queries and keys."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rotary: Rotary, attend: Callable, linear_act: Callable) -> torch.Tensor:
        q, k, v = linear(x, self.qkv, linear_act).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)
        cos, sin = rotary
        q, k = rotate_half_fp32(q, cos, sin), rotate_half_fp32(k, cos, sin)
        return linear(attend(q, k, v).flatten(-2), self.proj, linear_act)


class VisionBlock(nn.Module):
    """A pre-norm vision block: attention within each frame (or window), then the feed-forward
    layer ``mlp``; LayerNorms (Qwen2-VL, Qwen3-VL) or RMSNorms (Qwen2.5-VL), the residual stream
    float32 in a bf16 model."""

    def __init__(self, dim: int, num_heads: int, mlp: nn.Module, rms_norm: bool = False) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim, 1e-6) if rms_norm else nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = RMSNorm(dim, 1e-6) if rms_norm else nn.LayerNorm(dim, eps=1e-6)
        self.attn = VisionAttention(dim, num_heads)
        self.mlp = mlp

    @staticmethod
    def _normed(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        return norm(x) if isinstance(norm, RMSNorm) else fp32_layer_norm(x, norm)

    def forward(self, x: torch.Tensor, rotary: Rotary, attend: Callable, linear_act: Callable) -> torch.Tensor:
        x = x + self.attn(self._normed(x, self.norm1), rotary, attend, linear_act).float()
        return x + self.mlp(self._normed(x, self.norm2), linear_act).float()


class PatchMerger(nn.Module):
    """LayerNorm, then each ``merge × merge`` block of patches concatenated and projected to the
    language model's width by a two-layer GELU MLP (``mlp.0``, ``mlp.2``)."""

    def __init__(self, dim: int, context_dim: int, merge: int) -> None:
        super().__init__()
        self.joined = context_dim * merge * merge
        self.ln_q = nn.LayerNorm(context_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.joined, self.joined), nn.GELU(), nn.Linear(self.joined, dim))

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        joined = fp32_layer_norm(x, self.ln_q).reshape(-1, self.joined)
        return linear(linear(joined, self.mlp[0], linear_act, "gelu"), self.mlp[2], linear_act)


class Qwen2VisionTower(nn.Module):
    """Qwen2-VL's vision transformer: flattened patches ``[N, C·T·P·P]`` and each image's
    ``(t, h, w)`` patch grid in, one row per merged patch (``N / merge²``) out.

    Qwen2.5-VL's and Qwen3-VL's towers are built the same way from their own :meth:`width`,
    :meth:`block` and :meth:`merger_for` (and :attr:`patch_bias`)."""

    #: Whether the patch embedding (a 3-D convolution) has a bias.
    patch_bias: ClassVar[bool] = False

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = self.width(config)
        self.merge = int(config.spatial_merge_size)
        self.patch_size = int(config.patch_size)
        kernel = (int(config.temporal_patch_size), self.patch_size, self.patch_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(int(config.in_channels), self.embed_dim, kernel, kernel, bias=self.patch_bias)
        self.blocks = nn.ModuleList(self.block(config) for _ in range(int(config.depth)))
        self.merger = self.merger_for(config)
        self.head_dim = self.embed_dim // int(config.num_heads)
        params = getattr(config, "rope_parameters", None) or {}
        self.theta = float(params.get("rope_theta", 10000.0))

    @staticmethod
    def width(config: PretrainedConfig) -> int:
        """The blocks' width."""
        return int(config.embed_dim)

    def block(self, config: PretrainedConfig) -> nn.Module:
        """One vision block: LayerNorms, ``fc2(act(fc1(x)))`` of ``mlp_ratio`` times the width."""
        dim = self.embed_dim
        return VisionBlock(dim, int(config.num_heads), FeedForward(dim, int(dim * config.mlp_ratio), dim, config.hidden_act))

    def merger_for(self, config: PretrainedConfig) -> nn.Module:
        """The patch merger to the decoder's width."""
        return PatchMerger(int(config.hidden_size), self.embed_dim, self.merge)

    def patches(self, pixels: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        """The patch embedding: the 3-D convolution over each patch, as one matmul."""
        proj = self.patch_embed.proj
        weight = proj.weight
        return linear_act(pixels.to(weight.dtype), weight.reshape(weight.shape[0], -1), proj.bias, "none")

    def embed(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]], linear_act: Callable) -> torch.Tensor:
        """What the first block reads: the patch embeddings, float32."""
        return self.patches(pixels, linear_act).float()

    def deepstack(self, index: int, x: torch.Tensor, linear_act: Callable) -> list[torch.Tensor]:
        """The deepstack features of block ``index``'s output ``x`` (Qwen3-VL's; none here)."""
        return []

    def forward(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]]) -> VisionFeatures:
        device = pixels.device
        linear_act = kernel_for(self, "linear_act", device)
        attend = attend_within(kernel_for(self, "varlen_attention", device), frame_lengths(grids), device)
        rotary = vision_rotary(grids, self.merge, self.head_dim, self.theta, device)
        x = self.embed(pixels, grids, linear_act)
        deepstack: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x, rotary, attend, linear_act)
            deepstack.extend(self.deepstack(i, x, linear_act))
        return self.merger(x, linear_act), deepstack


class Qwen2VLForConditionalGeneration(VisionLanguageModel, SharesPrefixes, MediaPlaceholders):
    """Qwen2-VL as an embedder: the vision tower's features in the placeholders' rows, the Qwen2
    decoder with M-RoPE over the whole prompt, the last token pooled.

    Example:
        >>> llm = LLM("MrLight/dse-qwen2-2b-mrl-v1")
        >>> llm.embed({"prompt": "<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\\n",
        ...            "multi_modal_data": {"image": "page.png"}})
    """

    default_pooling_type: ClassVar[str | None] = "LAST"
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image", "video")
    media_processor: ClassVar[type[QwenVLProcessor] | str | None] = QwenVLProcessor
    #: How the processor treats this family's pixels and video positions.
    media_family: ClassVar[Family] = QWEN2_VL
    #: The decoder family of the language model.
    language_model_class: ClassVar[type[Qwen2Model]] = Qwen2Model
    #: The vision tower's class.
    vision_tower_class: ClassVar[type[nn.Module]] = Qwen2VisionTower
    #: Qwen3-VL interleaves the M-RoPE axes (``t h w t h w ...``); Qwen2-VL and Qwen2.5-VL do not.
    interleaved_mrope: ClassVar[bool] = False
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=(
            "text_config.hidden_size", "text_config.num_hidden_layers", "text_config.num_attention_heads",
            "text_config.vocab_size", "vision_config.depth", "vision_config.embed_dim", "vision_config.num_heads",
            "vision_config.patch_size", "vision_config.spatial_merge_size", "vision_config.temporal_patch_size",
        ),
        multiples=(("vision_config.embed_dim", "vision_config.num_heads"),),
    )

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        text = config.text_config
        self.language_model = self.language_model_class(text)
        self.visual = self.vision_tower_class(config.vision_config)
        self.placeholders = {kind: getattr(config, field, None) for kind, field in PLACEHOLDERS}
        # Prompts share prefixes as the decoder does; a shared prefix holds all of a prompt's media or
        # none, and each part reads its own columns of the media's positions.
        self.shares_prefixes = isinstance(self.language_model, SharesPrefixes) and self.language_model.shares_prefixes
        self.placeholder_tokens = frozenset(int(t) for t in self.placeholders.values() if t is not None)
        head_dim = self.language_model_class.head_dim(text)
        params = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
        sections = list(params.get("mrope_section") or [])
        if sum(sections) * 2 != head_dim or len(sections) != 3:
            raise ModelLoadError(f"mrope_section {sections} must be three sizes adding up to half the head dimension ({head_dim // 2})")
        inv_freq, scaling = self.language_model._rotary_parameters[next(iter(self.language_model._rotary_parameters))]
        if scaling != 1.0:
            raise ModelLoadError("scaled rotary embeddings are not supported with M-RoPE")
        self._inv_freq = inv_freq
        self._axes = mrope_axes(sections, self.interleaved_mrope)

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        cls.require_sub_configs(config)
        super().check_config(config, None, overridden)
        cls.language_model_class.check_config(config.text_config, None, ())

    # -- the forward pass ----------------------------------------------------------------------

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        lm = self.language_model
        x = lm.embed(batch.input_ids)
        positions = batch.positions.unsqueeze(0).expand(3, -1)
        media = batch_media(batch)
        after_layer = None
        if media is not None:
            x, positions, after_layer = self._merge_media(x, positions, batch, media)
        rotary = mrope_cos_sin(self._inv_freq, self._axes, positions, x.dtype)
        return lm.decode(x, batch, {kind: rotary for kind in lm._rotary_parameters}, after_layer)

    def _merge_media(
        self, x: torch.Tensor, positions: torch.Tensor, batch: PackedBatch, media: list[dict | None]
    ) -> tuple[torch.Tensor, torch.Tensor, Callable | None]:
        """The embeddings with each placeholder row replaced by its media feature, the positions
        with each media sequence's own, and the decoder's ``after_layer`` hook that adds the
        deepstack features to the first layers' outputs at those rows (``None`` without them).
        A sequence that is part of a prompt (shared prefixes) has the positions of its own tokens,
        and pixels only where it holds the placeholders: the features and the deepstack rows
        follow the media into whichever part holds them."""
        positions = positions.clone()
        starts = batch.cu_seqlens.tolist()
        for i, m in enumerate(media):
            if m is not None:
                positions[:, starts[i] : starts[i + 1]] = m["positions"]
        found = placeholder_rows(batch, media, self.placeholders)
        if not found:
            return x, positions, None
        grids = [tuple(g) for m, kind, _ in found for g in m[f"{kind}_grid_thw"].tolist()]
        features, deepstack = self.visual(torch.cat([m[f"{kind}_pixels"] for m, kind, _ in found]), grids)
        x, index = merge_multimodal_embeddings(x, [rows for _, _, rows in found], features)
        if not deepstack:
            return x, positions, None

        def after_layer(i: int, stream: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if i < len(deepstack):
                stream = stream.index_add(0, index, deepstack[i].to(stream.dtype))
            return stream, delta

        return x, positions, after_layer

    # -- weights -------------------------------------------------------------------------------

    #: Where the vision tower and the decoder sit in the checkpoints.
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.load_parts(self.checkpoint_layout.split(weights))

    def load_parts(self, parts: Mapping[str, Weights]) -> None:
        """Load the vision tower's and the decoder's tensors (:meth:`CheckpointLayout.split`'s parts)."""
        load_into(self.visual, parts["visual"], rename=lambda n: n)
        self.language_model.load_weights(parts["language"])
