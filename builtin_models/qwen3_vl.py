"""Qwen2.5-VL and Qwen3-VL: the Qwen2-VL design (:mod:`poolkit.builtin_models.qwen_vl`) with
their own vision towers, on packed batches.

Qwen2.5-VL's tower has RMSNorms and a gated SiLU feed-forward layer, and attends within windows
of ``window_size`` pixels on every block but ``fullatt_block_indexes`` (which attend within the
whole frame): the patches are reordered window by window (whole merge blocks at a time) before
the blocks and the merged features put back in the processor's order after the merger. Its
decoder is Qwen2's with M-RoPE; a video's temporal positions count ``tokens_per_second`` per
second of video. jina-embeddings-v4 (``jinaai/jina-embeddings-v4-vllm-retrieval``) is one, pooled
by MEAN through its own pooling config; the architecture's default stays LAST, as vLLM's.

Qwen3-VL's tower adds learned position embeddings, bilinearly interpolated (corners aligned) from
their square grid to each image's patch grid, and *deepstack*: the features of some intermediate
blocks (``deepstack_visual_indexes``), each merged by its own merger, are added to the outputs of
the first decoder layers at the media rows. Its decoder is Qwen3's (q/k norms) with interleaved
M-RoPE; each temporal patch of a video is its own run of placeholders after a ``<t seconds>``
timestamp (:mod:`poolkit.io_processors.qwen_vl`). Qwen3-VL-Embedding is one, pooled LAST.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from poolkit.builtin_models.layers import RMSNorm, activation_function, fp32_layer_norm, fused_activation, linear
from poolkit.builtin_models.qwen import Qwen2Model, Qwen3Model
from poolkit.builtin_models.qwen_vl import (
    PatchMerger,
    Qwen2VisionTower,
    Qwen2VLForConditionalGeneration,
    VisionAttention,
    VisionFeatures,
    VisionMLP,
    attend_within,
    frame_lengths,
    vision_rotary,
)
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.plugins.lookup import kernel_for

_VISION_SIZES = (
    "text_config.hidden_size", "text_config.num_hidden_layers", "text_config.num_attention_heads",
    "text_config.vocab_size", "vision_config.depth", "vision_config.hidden_size", "vision_config.num_heads",
    "vision_config.intermediate_size", "vision_config.out_hidden_size", "vision_config.patch_size",
    "vision_config.spatial_merge_size", "vision_config.temporal_patch_size",
)


def _vision_rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", 10000.0))


# -- Qwen2.5-VL ------------------------------------------------------------------------------------


class GatedVisionMLP(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``, all three biased (Qwen2.5-VL's vision MLP)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)
        self.act = activation_function(act)
        self.fused_act = fused_activation(act)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        if self.fused_act is None:
            gate = self.act(linear(x, self.gate_proj, linear_act))
        else:
            gate = linear(x, self.gate_proj, linear_act, self.fused_act)
        return linear(gate * linear(x, self.up_proj, linear_act), self.down_proj, linear_act)


class Qwen25VisionBlock(nn.Module):
    """A pre-RMSNorm vision block with a gated feed-forward layer; the residual stream float32."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        dim = int(config.hidden_size)
        self.norm1 = RMSNorm(dim, 1e-6)
        self.norm2 = RMSNorm(dim, 1e-6)
        self.attn = VisionAttention(dim, int(config.num_heads))
        self.mlp = GatedVisionMLP(dim, int(config.intermediate_size), config.hidden_act)

    def forward(self, x: torch.Tensor, rotary: Any, attend: Callable, linear_act: Callable) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rotary, attend, linear_act).float()
        return x + self.mlp(self.norm2(x), linear_act).float()


class RMSPatchMerger(PatchMerger):
    """Qwen2.5-VL's patch merger: Qwen2-VL's with an RMSNorm (``ln_q``) before the join."""

    def __init__(self, dim: int, context_dim: int, merge: int) -> None:
        super().__init__(dim, context_dim, merge)
        self.ln_q = RMSNorm(context_dim, 1e-6)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        joined = self.ln_q(x).reshape(-1, self.joined)
        return linear(linear(joined, self.mlp[0], linear_act, "gelu"), self.mlp[2], linear_act)


def window_order(
    grids: list[tuple[int, int, int]], merge: int, window: int, patch: int
) -> tuple[np.ndarray, list[int]]:
    """Qwen2.5-VL's windows: the merge blocks of every frame listed window by window (windows of
    ``window // merge // patch`` merge blocks a side, in row-major order, the last ones cut short
    at the frame's edge) as indices into the processor's order, and each window's patch count."""
    side = max(1, window // merge // patch)
    unit = merge * merge
    order: list[np.ndarray] = []
    lengths: list[int] = []
    offset = 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        ids = np.arange(t * gh * gw).reshape(t, gh, gw) + offset
        for frame in ids:
            for top in range(0, gh, side):
                for left in range(0, gw, side):
                    block = frame[top : top + side, left : left + side].ravel()
                    order.append(block)
                    lengths.append(block.size * unit)
        offset += t * gh * gw
    return np.concatenate(order), lengths


class Qwen25VisionTower(Qwen2VisionTower):
    """Qwen2.5-VL's vision transformer: windowed attention on all blocks but the full-attention ones."""

    def __init__(self, config: Any) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.embed_dim = int(config.hidden_size)
        self.merge = int(config.spatial_merge_size)
        self.patch_size = int(config.patch_size)
        temporal = int(config.temporal_patch_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            int(config.in_channels), self.embed_dim, (temporal, self.patch_size, self.patch_size),
            (temporal, self.patch_size, self.patch_size), bias=False,
        )
        self.blocks = nn.ModuleList(Qwen25VisionBlock(config) for _ in range(int(config.depth)))
        self.merger = RMSPatchMerger(int(config.out_hidden_size), self.embed_dim, self.merge)
        self.head_dim = self.embed_dim // int(config.num_heads)
        self.theta = _vision_rope_theta(config)
        self.window = int(config.window_size)
        self.full_blocks = frozenset(int(i) for i in (config.fullatt_block_indexes or ()))

    def forward(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]]) -> VisionFeatures:
        device = pixels.device
        linear_act = kernel_for(self, "linear_act", device)
        attention = kernel_for(self, "varlen_attention", device)
        order_np, windows = window_order(grids, self.merge, self.window, self.patch_size)
        order = torch.from_numpy(order_np).to(device)
        unit = self.merge * self.merge

        def by_window(rows: torch.Tensor) -> torch.Tensor:
            return rows.reshape(-1, unit, rows.shape[-1])[order].reshape(-1, rows.shape[-1])

        full = attend_within(attention, frame_lengths(grids), device)
        windowed = attend_within(attention, windows, device)
        cos, sin = vision_rotary(grids, self.merge, self.head_dim, self.theta, device)
        rotary = (by_window(cos), by_window(sin))
        x = by_window(self.patches(pixels, linear_act).float())
        for i, block in enumerate(self.blocks):
            x = block(x, rotary, full if i in self.full_blocks else windowed, linear_act)
        return self.merger(x, linear_act)[torch.argsort(order)], []


class Qwen2_5_VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen2.5-VL as an embedder (jina-embeddings-v4 with its MEAN pooling config; LAST by default).

    Example:
        >>> llm = LLM("jinaai/jina-embeddings-v4-vllm-retrieval")
        >>> llm.embed({"prompt": "<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\\n",
        ...            "multi_modal_data": {"image": "page.png"}})
    """

    vision_tower_class: ClassVar[type[nn.Module]] = Qwen25VisionTower
    media_family: ClassVar[str] = "qwen2_5_vl"
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=_VISION_SIZES + ("vision_config.window_size",),
        multiples=(("vision_config.hidden_size", "vision_config.num_heads"),),
    )

    def __init__(self, config: Any) -> None:
        vision = config.vision_config
        if int(vision.out_hidden_size) != int(config.text_config.hidden_size):
            raise ModelLoadError(
                f"vision_config.out_hidden_size {vision.out_hidden_size} must equal text_config.hidden_size {config.text_config.hidden_size}"
            )
        super().__init__(config)


# -- Qwen3-VL --------------------------------------------------------------------------------------


class Qwen3VisionMLP(VisionMLP):
    """``linear_fc2(act(linear_fc1(x)))`` (GELU-tanh), Qwen3-VL's names for Qwen2-VL's MLP."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        nn.Module.__init__(self)
        self.linear_fc1 = nn.Linear(dim, hidden)
        self.linear_fc2 = nn.Linear(hidden, dim)
        self.act = activation_function(act)
        self.fused_act = fused_activation(act)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        if self.fused_act is None:
            return linear(self.act(linear(x, self.linear_fc1, linear_act)), self.linear_fc2, linear_act)
        return linear(linear(x, self.linear_fc1, linear_act, self.fused_act), self.linear_fc2, linear_act)


class Qwen3VisionBlock(nn.Module):
    """A pre-LayerNorm vision block (Qwen2-VL's, with Qwen3-VL's sizes and names)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        dim = int(config.hidden_size)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = VisionAttention(dim, int(config.num_heads))
        self.mlp = Qwen3VisionMLP(dim, int(config.intermediate_size), config.hidden_act)

    def forward(self, x: torch.Tensor, rotary: Any, attend: Callable, linear_act: Callable) -> torch.Tensor:
        x = x + self.attn(fp32_layer_norm(x, self.norm1), rotary, attend, linear_act).float()
        return x + self.mlp(fp32_layer_norm(x, self.norm2), linear_act).float()


class Qwen3PatchMerger(nn.Module):
    """LayerNorm, the join of each ``merge × merge`` block, a two-layer GELU MLP; the deepstack
    mergers norm after the join (``postshuffle``), the final one before."""

    def __init__(self, config: Any, postshuffle: bool) -> None:
        super().__init__()
        dim = int(config.hidden_size)
        self.joined = dim * int(config.spatial_merge_size) ** 2
        self.postshuffle = postshuffle
        self.norm = nn.LayerNorm(self.joined if postshuffle else dim, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.joined, self.joined)
        self.linear_fc2 = nn.Linear(self.joined, int(config.out_hidden_size))

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        x = fp32_layer_norm(x.reshape(-1, self.joined) if self.postshuffle else x, self.norm).reshape(-1, self.joined)
        return linear(linear(x, self.linear_fc1, linear_act, "gelu"), self.linear_fc2, linear_act)


def corner_aligned_weights(size: int, side: int) -> torch.Tensor:
    """``[size, side]`` float32: how much each of ``side`` learned positions contributes to each of
    ``size`` patches along one axis (bilinear, corners aligned, as transformers interpolates)."""
    src = torch.arange(size, dtype=torch.float32) * (side - 1) / max(size - 1, 1)
    floor = torch.floor(src)
    out = torch.zeros(size, side, dtype=torch.float32)
    for offset in (0, 1):
        weight = (1 - (src - floor - offset).abs()).clamp(min=0)
        out.index_put_((torch.arange(size), (floor.long() + offset).clamp(0, side - 1)), weight, accumulate=True)
    return out


class Qwen3VisionTower(nn.Module):
    """Qwen3-VL's vision transformer: patches plus interpolated learned positions, pre-LayerNorm
    blocks with 2-D rotary attention within each frame, the final merger and the deepstack ones."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = int(config.hidden_size)
        self.merge = int(config.spatial_merge_size)
        patch, temporal = int(config.patch_size), int(config.temporal_patch_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            int(config.in_channels), self.embed_dim, (temporal, patch, patch), (temporal, patch, patch), bias=True
        )
        count = int(config.num_position_embeddings)
        self.side = int(count**0.5)
        if self.side * self.side != count:
            raise ModelLoadError(f"vision_config.num_position_embeddings {count} must be a square")
        self.pos_embed = nn.Embedding(count, self.embed_dim)
        self.blocks = nn.ModuleList(Qwen3VisionBlock(config) for _ in range(int(config.depth)))
        self.merger = Qwen3PatchMerger(config, postshuffle=False)
        self.deepstack_layers = [int(i) for i in (config.deepstack_visual_indexes or ())]
        self.deepstack_merger_list = nn.ModuleList(Qwen3PatchMerger(config, postshuffle=True) for _ in self.deepstack_layers)
        self.head_dim = self.embed_dim // int(config.num_heads)
        self.theta = _vision_rope_theta(config)

    def patches(self, pixels: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        """The patch embedding (a biased 3-D convolution over each patch) as one matmul."""
        proj = self.patch_embed.proj
        weight = proj.weight
        return linear_act(pixels.to(weight.dtype), weight.reshape(weight.shape[0], -1), proj.bias, "none")

    def positions(self, grids: list[tuple[int, int, int]], device: torch.device) -> torch.Tensor:
        """The learned position embeddings resampled to each grid, float32, in merge-block order and
        repeated over each video's temporal patches."""
        table = self.pos_embed.weight.float().reshape(self.side, self.side, -1)
        m = self.merge
        rows = []
        for t, h, w in grids:
            across = corner_aligned_weights(h, self.side).to(device)
            down = corner_aligned_weights(w, self.side).to(device)
            grid = torch.einsum("hi,ijd,wj->hwd", across, table, down)
            grid = grid.reshape(h // m, m, w // m, m, -1).transpose(1, 2).reshape(h * w, -1)
            rows.append(grid.repeat(t, 1) if t > 1 else grid)
        return torch.cat(rows)

    def forward(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]]) -> VisionFeatures:
        device = pixels.device
        linear_act = kernel_for(self, "linear_act", device)
        attend = attend_within(kernel_for(self, "varlen_attention", device), frame_lengths(grids), device)
        rotary = vision_rotary(grids, self.merge, self.head_dim, self.theta, device)
        x = self.patches(pixels, linear_act).float() + self.positions(grids, device)
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, rotary, attend, linear_act)
            if i in self.deepstack_layers:
                deepstack.append(self.deepstack_merger_list[self.deepstack_layers.index(i)](x, linear_act))
        return self.merger(x, linear_act), deepstack


class Qwen3VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen3-VL as an embedder (Qwen3-VL-Embedding): the Qwen3 decoder with interleaved M-RoPE and
    deepstack features in its first layers, the last token pooled.

    Example:
        >>> llm = LLM("Qwen/Qwen3-VL-Embedding-2B")
        >>> llm.embed({"prompt": "<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\\n<|im_start|>assistant\\n",
        ...            "multi_modal_data": {"image": "cat.png"}})
    """

    language_model_class: ClassVar[type[Qwen2Model]] = Qwen3Model
    vision_tower_class: ClassVar[type[nn.Module]] = Qwen3VisionTower
    interleaved_mrope: ClassVar[bool] = True
    media_family: ClassVar[str] = "qwen3_vl"
    #: The multimodal embedders vLLM lists that ship only remote code: Qwen3-VL-Embedding is the one to use instead.
    alternative_for: ClassVar[Mapping[str, str]] = {
        "Phi3VForCausalLM": "Qwen/Qwen3-VL-Embedding-2B",
        "LlamaNemotronVLModel": "Qwen/Qwen3-VL-Embedding-2B",
    }
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=_VISION_SIZES + ("vision_config.num_position_embeddings",),
        multiples=(("vision_config.hidden_size", "vision_config.num_heads"),),
    )

    def __init__(self, config: Any) -> None:
        text = config.text_config
        deepstack = list(getattr(config.vision_config, "deepstack_visual_indexes", None) or ())
        if len(deepstack) > int(text.num_hidden_layers):
            raise ModelLoadError(
                f"{len(deepstack)} deepstack_visual_indexes for {text.num_hidden_layers} decoder layers; there must be at most one per layer"
            )
        if any(not 0 <= int(i) < int(config.vision_config.depth) for i in deepstack):
            raise ModelLoadError(f"deepstack_visual_indexes {deepstack} must name vision blocks below depth {config.vision_config.depth}")
        params = getattr(text, "rope_parameters", None) or {}
        if params.get("mrope_interleaved") is False:
            raise ModelLoadError("Qwen3-VL needs interleaved M-RoPE (mrope_interleaved: true)")
        super().__init__(config)


@hookimpl
def poolkit_register_architectures(register):
    register("Qwen2_5_VLForConditionalGeneration", Qwen2_5_VLForConditionalGeneration)
    register("Qwen3VLForConditionalGeneration", Qwen3VLForConditionalGeneration)
