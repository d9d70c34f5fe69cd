"""Qwen2-VL: a vision tower feeding poolkit's Qwen2 decoder, on packed batches.

A prompt of text, images and videos reaches the model as token ids in which each image is a run
of ``<|image_pad|>`` placeholders (each video of ``<|video_pad|>``), one per merged patch, with
the patches and the multimodal rotary positions in ``batch.extras["media"]`` (made by the
``qwen2_vl`` IO processor, :mod:`poolkit.io_processors.qwen_vl`). The forward pass runs every
image and video of the batch through the vision tower at once — patch embedding, pre-LayerNorm
blocks with 2-D rotary attention within each image (each temporal patch of a video: two frames),
the patch merger that joins each 2×2 block of patches into one token — puts the features where
the placeholders are, and runs the decoder layers with M-RoPE: each rotary frequency reads the
temporal, height or width position of its token (``mrope_section``), which for text is its plain
position, so text-only prompts run exactly as a Qwen2 model would. Qwen2.5-VL and Qwen3-VL
(:mod:`poolkit.builtin_models.qwen3_vl`) subclass this with their own towers; a tower may return
deepstack features, which the decoder's ``after_layer`` hook adds to its first layers' outputs.

Checkpoints load in both layouts: transformers 5's (``model.visual.*``,
``model.language_model.*``) and the published one (``visual.*``, ``model.*``); ``lm_head`` is not
read. Embeddings pool the last token, as vLLM's Qwen2-VL embedders (DSE, GME) do.
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Collection, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from poolkit.builtin_models.layers import (
    Rotary,
    activation_function,
    fp32_layer_norm,
    fused_activation,
    linear,
    rotary_inv_freq,
)
from poolkit.builtin_models.qwen import Qwen2Model
from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.weights import load_into
from poolkit.plugins.lookup import kernel_for

#: The media kinds whose features replace placeholder tokens, with their config's token-id fields.
PLACEHOLDERS = (("image", "image_token_id"), ("video", "video_token_id"))


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


class VisionMLP(nn.Module):
    """``fc2(act(fc1(x)))`` (Qwen2-VL's QuickGELU)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = activation_function(act)
        self.fused_act = fused_activation(act)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        if self.fused_act is None:
            return linear(self.act(linear(x, self.fc1, linear_act)), self.fc2, linear_act)
        return linear(linear(x, self.fc1, linear_act, self.fused_act), self.fc2, linear_act)


class VisionBlock(nn.Module):
    """A pre-LayerNorm vision block; the residual stream stays float32 in a bf16 model."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        dim = int(config.embed_dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = VisionAttention(dim, int(config.num_heads))
        self.mlp = VisionMLP(dim, int(dim * config.mlp_ratio), config.hidden_act)

    def forward(self, x: torch.Tensor, rotary: Rotary, attend: Callable, linear_act: Callable) -> torch.Tensor:
        x = x + self.attn(fp32_layer_norm(x, self.norm1), rotary, attend, linear_act).float()
        return x + self.mlp(fp32_layer_norm(x, self.norm2), linear_act).float()


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
    ``(t, h, w)`` patch grid in, one row per merged patch (``N / merge²``) out."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = int(config.embed_dim)
        self.merge = int(config.spatial_merge_size)
        patch, temporal = int(config.patch_size), int(config.temporal_patch_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            int(config.in_channels), self.embed_dim, (temporal, patch, patch), (temporal, patch, patch), bias=False
        )
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(int(config.depth)))
        self.merger = PatchMerger(int(config.hidden_size), self.embed_dim, self.merge)
        self.head_dim = self.embed_dim // int(config.num_heads)
        params = getattr(config, "rope_parameters", None) or {}
        self.theta = float(params.get("rope_theta", 10000.0))

    def patches(self, pixels: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        """The patch embedding: the 3-D convolution over each patch, as one matmul."""
        weight = self.patch_embed.proj.weight
        return linear_act(pixels.to(weight.dtype), weight.reshape(weight.shape[0], -1), None, "none")

    def forward(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]]) -> VisionFeatures:
        device = pixels.device
        linear_act = kernel_for(self, "linear_act", device)
        attend = attend_within(kernel_for(self, "varlen_attention", device), frame_lengths(grids), device)
        rotary = vision_rotary(grids, self.merge, self.head_dim, self.theta, device)
        x = self.patches(pixels, linear_act).float()
        for block in self.blocks:
            x = block(x, rotary, attend, linear_act)
        return self.merger(x, linear_act), []


class Qwen2VLForConditionalGeneration(Architecture):
    """Qwen2-VL as an embedder: the vision tower's features in the placeholders' rows, the Qwen2
    decoder with M-RoPE over the whole prompt, the last token pooled.

    Example:
        >>> llm = LLM("MrLight/dse-qwen2-2b-mrl-v1")
        >>> llm.embed({"prompt": "<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\\n",
        ...            "multi_modal_data": {"image": "page.png"}})
    """

    default_pooling_type: ClassVar[str | None] = "LAST"
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image", "video")
    media_processor: ClassVar[str | None] = "qwen2_vl"
    #: How the ``qwen2_vl`` IO processor treats this family's pixels and video positions
    #: (:data:`poolkit.io_processors.qwen_vl.FAMILIES`).
    media_family: ClassVar[str] = "qwen2_vl"
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

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        text = config.text_config
        self.language_model = self.language_model_class(text)
        self.visual = self.vision_tower_class(config.vision_config)
        self.placeholders = {kind: getattr(config, field, None) for kind, field in PLACEHOLDERS}
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

    @property
    def hidden_size(self) -> int:
        return int(self.config.text_config.hidden_size)

    @property
    def max_positions(self) -> int | None:
        n = getattr(self.config.text_config, "max_position_embeddings", None)
        return int(n) if n else None

    @classmethod
    def check_config(
        cls, config: Any, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        for name in ("text_config", "vision_config"):
            if getattr(config, name, None) is None:
                raise ModelLoadError(f"the {cls.__name__} config has no {name}")
        super().check_config(config, None, overridden)
        cls.language_model_class.check_config(config.text_config, None, ())

    # -- the forward pass ----------------------------------------------------------------------

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        lm = self.language_model
        x = lm.embed(batch.input_ids)
        positions = batch.positions.unsqueeze(0).expand(3, -1)
        media = batch.extras.get("media")
        after_layer = None
        if media is not None and any(m is not None for m in media):
            x, positions, after_layer = self._merge_media(x, positions, batch, media)
        rotary = mrope_cos_sin(self._inv_freq, self._axes, positions, x.dtype)
        return lm.decode(x, batch, {kind: rotary for kind in lm._rotary_parameters}, after_layer)

    def _merge_media(
        self, x: torch.Tensor, positions: torch.Tensor, batch: PackedBatch, media: list[dict | None]
    ) -> tuple[torch.Tensor, torch.Tensor, Callable | None]:
        """The embeddings with each placeholder row replaced by its media feature, the positions
        with each media sequence's own, and the decoder's ``after_layer`` hook that adds the
        deepstack features to the first layers' outputs at those rows (``None`` without them)."""
        positions = positions.clone()
        starts = batch.cu_seqlens.tolist()
        pixels: list[torch.Tensor] = []
        grids: list[tuple[int, int, int]] = []
        rows: list[torch.Tensor] = []
        for i, m in enumerate(media):
            if m is None:
                continue
            a, b = starts[i], starts[i + 1]
            positions[:, a:b] = m["positions"]
            ids = batch.input_ids[a:b]
            for kind, token in self.placeholders.items():
                if f"{kind}_pixels" not in m:
                    continue
                pixels.append(m[f"{kind}_pixels"])
                grids.extend(tuple(g) for g in m[f"{kind}_grid_thw"].tolist())
                rows.append(a + torch.nonzero(ids == token).flatten())
        if not pixels:
            return x, positions, None
        features, deepstack = self.visual(torch.cat(pixels), grids)
        index = torch.cat(rows)
        if index.numel() != features.shape[0]:
            raise ModelLoadError(f"{index.numel()} placeholder tokens for {features.shape[0]} media features")
        x = x.index_copy(0, index, features.to(x.dtype))
        if not deepstack:
            return x, positions, None

        def after_layer(i: int, stream: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if i < len(deepstack):
                stream = stream.index_add(0, index, deepstack[i].to(stream.dtype))
            return stream, delta

        return x, positions, after_layer

    # -- weights -------------------------------------------------------------------------------

    #: Checkpoint names: transformers 5's ``model.visual.`` / ``model.language_model.``, the
    #: published ``visual.`` / ``model.``; ``lm_head`` is skipped.
    _VISUAL = re.compile(r"^(?:model\.)?visual\.")
    _LANGUAGE = re.compile(r"^(?:model\.language_model\.|language_model\.|model\.)")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        visual: list[tuple[str, torch.Tensor]] = []
        language: list[tuple[str, torch.Tensor]] = []
        for name, tensor in weights:
            if name.startswith("lm_head."):
                continue
            seen = self._VISUAL.match(name)
            if seen:
                visual.append((name[seen.end():], tensor))
                continue
            seen = self._LANGUAGE.match(name)
            language.append((name[seen.end():] if seen else name, tensor))
        load_into(self.visual, visual, rename=lambda n: n)
        self.language_model.load_weights(language)


@hookimpl
def poolkit_register_architectures(register):
    register("Qwen2VLForConditionalGeneration", Qwen2VLForConditionalGeneration)
