"""Qwen2.5-VL: the Qwen2-VL design (:mod:`~poolkit.builtin_models.qwen_vl.qwen2_vl`) with its own
vision tower, on packed batches.

The tower has RMSNorms and a gated SiLU feed-forward layer, and attends within windows of
``window_size`` pixels on every block but ``fullatt_block_indexes`` (which attend within the whole
frame): the patches are reordered window by window (whole merge blocks at a time) before the blocks
and the merged features put back in the processor's order after the merger. The decoder is Qwen2's
with M-RoPE; a video's temporal positions count ``tokens_per_second`` per second of video.
jina-embeddings-v4 (``jinaai/jina-embeddings-v4-vllm-retrieval``) is one, pooled by MEAN through
its own pooling config; the architecture's default stays LAST, as vLLM's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.plugins.lookup import kernel_for

from ..blocks.norms import RMSNorm
from ..blocks.linear import linear
from ..blocks.vision_language import Activation
from .processor import QWEN2_5_VL, Family
from .qwen2_vl import (
    PatchMerger,
    Qwen2VisionTower,
    Qwen2VLForConditionalGeneration,
    VisionBlock,
    VisionFeatures,
    attend_within,
    frame_lengths,
    vision_rotary,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: The sizes a Qwen2.5-VL or Qwen3-VL config must give (their vision configs name them alike).
VISION_SIZES = (
    "text_config.hidden_size", "text_config.num_hidden_layers", "text_config.num_attention_heads",
    "text_config.vocab_size", "vision_config.depth", "vision_config.hidden_size", "vision_config.num_heads",
    "vision_config.intermediate_size", "vision_config.out_hidden_size", "vision_config.patch_size",
    "vision_config.spatial_merge_size", "vision_config.temporal_patch_size",
)


def vision_checks(*sizes: str) -> ConfigChecks:
    """The config checks of Qwen2.5-VL and Qwen3-VL: :data:`VISION_SIZES` and the family's own
    ``sizes``, the vision heads dividing its width."""
    return ConfigChecks(sizes=VISION_SIZES + sizes, multiples=(("vision_config.hidden_size", "vision_config.num_heads"),))


class GatedVisionMLP(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``, all three biased (Qwen2.5-VL's vision MLP)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)
        self.act = Activation(act)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        gate = self.act.after(x, self.gate_proj, linear_act)
        return linear(gate * linear(x, self.up_proj, linear_act), self.down_proj, linear_act)


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

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.window = int(config.window_size)
        self.full_blocks = frozenset(int(i) for i in (config.fullatt_block_indexes or ()))

    @staticmethod
    def width(config: PretrainedConfig) -> int:
        return int(config.hidden_size)

    def block(self, config: PretrainedConfig) -> nn.Module:
        """A pre-RMSNorm block with a gated feed-forward layer."""
        mlp = GatedVisionMLP(self.embed_dim, int(config.intermediate_size), config.hidden_act)
        return VisionBlock(self.embed_dim, int(config.num_heads), mlp, rms_norm=True)

    def merger_for(self, config: PretrainedConfig) -> nn.Module:
        return RMSPatchMerger(int(config.out_hidden_size), self.embed_dim, self.merge)

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
    media_family: ClassVar[Family] = QWEN2_5_VL
    config_checks: ClassVar[ConfigChecks] = vision_checks("vision_config.window_size")

    def __init__(self, config: PretrainedConfig) -> None:
        vision = config.vision_config
        if int(vision.out_hidden_size) != int(config.text_config.hidden_size):
            raise ModelLoadError(
                f"vision_config.out_hidden_size {vision.out_hidden_size} must equal text_config.hidden_size {config.text_config.hidden_size}"
            )
        super().__init__(config)
