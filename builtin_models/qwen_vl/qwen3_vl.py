"""Qwen3-VL: the Qwen2-VL design (:mod:`~poolkit.builtin_models.qwen_vl.qwen2_vl`) with its own
vision tower and the Qwen3 decoder, on packed batches.

The tower adds learned position embeddings, bilinearly interpolated (corners aligned) from their
square grid to each image's patch grid, and *deepstack*: the features of some intermediate blocks
(``deepstack_visual_indexes``), each merged by its own merger, are added to the outputs of the
first decoder layers at the media rows. The decoder is Qwen3's (q/k norms) with interleaved
M-RoPE; each temporal patch of a video is its own run of placeholders after a ``<t seconds>``
timestamp (:mod:`~poolkit.builtin_models.qwen_vl.processor`). Qwen3-VL-Embedding is one, pooled LAST.

Qwen3-VL-Reranker ships as the same architecture, the LM head kept: recognised from what it ships
(:data:`~poolkit.builtin_models.decoders.rerankers.QWEN3_VL_RERANKER`), or declared vLLM's way
(``Qwen3VLForSequenceClassification``), it scores as its publisher's script does, the LM head's
"yes" row minus its "no" row read at the last token (:class:`~poolkit.builtin_models.decoders.heads.ScoreClassifier`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Iterable

import torch
from torch import nn

from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import load_into

from ..blocks.norms import fp32_layer_norm
from ..blocks.vision_language import CheckpointLayout, FeedForward
from ..decoders.rerankers import QWEN3_VL_RERANKER, LLMReranker
from ..qwen import Qwen2Model, Qwen3Model, QwenScoreClassifier
from .processor import QWEN3_VL, Family
from .qwen2_5_vl import vision_checks
from .qwen2_vl import CHECKPOINT, Qwen2VisionTower, Qwen2VLForConditionalGeneration, VisionBlock

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class Qwen3PatchMerger(FeedForward):
    """LayerNorm, the join of each ``merge × merge`` block, a two-layer GELU MLP (``linear_fc1``,
    ``linear_fc2``); the deepstack mergers norm after the join (``postshuffle``), the final one before."""

    def __init__(self, config: PretrainedConfig, postshuffle: bool) -> None:
        dim = int(config.hidden_size)
        joined = dim * int(config.spatial_merge_size) ** 2
        super().__init__(joined, joined, int(config.out_hidden_size), "gelu", names=("linear_fc1", "linear_fc2"))
        self.joined = joined
        self.postshuffle = postshuffle
        self.norm = nn.LayerNorm(joined if postshuffle else dim, eps=1e-6)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        x = fp32_layer_norm(x.reshape(-1, self.joined) if self.postshuffle else x, self.norm).reshape(-1, self.joined)
        return super().forward(x, linear_act)


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


class Qwen3VisionTower(Qwen2VisionTower):
    """Qwen3-VL's vision transformer: patches (a biased convolution) plus interpolated learned
    positions, pre-LayerNorm blocks with 2-D rotary attention within each frame, the final merger
    and the deepstack ones."""

    patch_bias: ClassVar[bool] = True

    def __init__(self, config: PretrainedConfig) -> None:
        count = int(config.num_position_embeddings)
        side = int(count**0.5)
        if side * side != count:
            raise ModelLoadError(f"vision_config.num_position_embeddings {count} must be a square")
        super().__init__(config)
        self.side = side
        self.pos_embed = nn.Embedding(count, self.embed_dim)
        self.deepstack_layers = [int(i) for i in (config.deepstack_visual_indexes or ())]
        self.deepstack_merger_list = nn.ModuleList(Qwen3PatchMerger(config, postshuffle=True) for _ in self.deepstack_layers)

    @staticmethod
    def width(config: PretrainedConfig) -> int:
        return int(config.hidden_size)

    def block(self, config: PretrainedConfig) -> nn.Module:
        """A pre-LayerNorm block, ``linear_fc2(act(linear_fc1(x)))`` its MLP (GELU-tanh)."""
        dim = self.embed_dim
        mlp = FeedForward(dim, int(config.intermediate_size), dim, config.hidden_act, names=("linear_fc1", "linear_fc2"))
        return VisionBlock(dim, int(config.num_heads), mlp)

    def merger_for(self, config: PretrainedConfig) -> nn.Module:
        return Qwen3PatchMerger(config, postshuffle=False)

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

    def embed(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]], linear_act: Callable) -> torch.Tensor:
        """The patch embeddings plus the learned positions, float32."""
        return self.patches(pixels, linear_act).float() + self.positions(grids, pixels.device)

    def deepstack(self, index: int, x: torch.Tensor, linear_act: Callable) -> list[torch.Tensor]:
        if index not in self.deepstack_layers:
            return []
        return [self.deepstack_merger_list[self.deepstack_layers.index(index)](x, linear_act)]


class Qwen3VLForConditionalGeneration(QwenScoreClassifier, Qwen2VLForConditionalGeneration):
    """Qwen3-VL as an embedder (Qwen3-VL-Embedding): the Qwen3 decoder with interleaved M-RoPE and
    deepstack features in its first layers, the last token pooled.

    Qwen3-VL-Reranker, recognised from its hub id, its scoring script, its model card or its
    folder's name, is a reranker instead: its publisher's prompt as the score template, the score
    ``sigmoid((lm_head["yes"] - lm_head["no"]) · h)`` at the last token. ``classifier_from_token``
    and ``method`` in ``hf_overrides`` make any checkpoint of it a reranker the same way. A
    checkpoint recognised as none is an embedder, unwarned: the family's are published embedders.

    Example:
        >>> llm = LLM("Qwen/Qwen3-VL-Embedding-2B")
        >>> llm.embed({"prompt": "<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\\n<|im_start|>assistant\\n",
        ...            "multi_modal_data": {"image": "cat.png"}})
        >>> LLM("Qwen/Qwen3-VL-Reranker-2B").rerank("a dog on a beach", ["a golden retriever at sunset", "a tax form"])
    """

    checkpoint_score: ClassVar[bool] = False
    llm_rerankers: ClassVar[tuple[LLMReranker, ...]] = (QWEN3_VL_RERANKER,)
    warns_as_embedder: ClassVar[bool] = False

    language_model_class: ClassVar[type[Qwen2Model]] = Qwen3Model
    vision_tower_class: ClassVar[type[nn.Module]] = Qwen3VisionTower
    interleaved_mrope: ClassVar[bool] = True
    media_family: ClassVar[Family] = QWEN3_VL
    config_checks: ClassVar[ConfigChecks] = vision_checks("vision_config.num_position_embeddings")

    def __init__(self, config: PretrainedConfig) -> None:
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

    def load_backbone(self, weights: Iterable[tuple[str, torch.Tensor]], optional: Callable[[str], bool]) -> None:
        self.load_parts(self.checkpoint_layout.split(weights))

    def tied_input_embeddings(self) -> torch.Tensor | None:
        tied = getattr(self.config, "tie_word_embeddings", False) or getattr(self.text_config, "tie_word_embeddings", False)
        return self.language_model.embed_tokens.weight.detach() if tied else None


class Qwen3VLForSequenceClassification(Qwen3VLForConditionalGeneration):
    """vLLM's name of Qwen3-VL as a classifier: a ``score`` Linear on the last token, from the
    checkpoint's ``score`` tensors, or, as vLLM serves Qwen3-VL-Reranker, from the LM head's rows:
    ``hf_overrides={"architectures": ["Qwen3VLForSequenceClassification"], "classifier_from_token":
    ["no", "yes"], "is_original_qwen3_reranker": true}``. Declared so, the pair is scored plain as
    vLLM scores it; its prompt comes with a score template (``chat_template=``).
    """

    checkpoint_score: ClassVar[bool] = True
    #: Qwen3-VL's layout, and a converted checkpoint's ``score``.
    checkpoint_layout: ClassVar[CheckpointLayout] = CHECKPOINT.under("", score=r"score\.")

    def load_backbone(self, weights: Iterable[tuple[str, torch.Tensor]], optional: Callable[[str], bool]) -> None:
        parts = self.checkpoint_layout.split(weights)
        self.load_parts(parts)
        if self.classifier_token_ids is None:
            load_into(self.score, parts["score"], rename=lambda n: n, optional=lambda n: optional(f"score.{n}"))
