"""SigLIP (``SiglipModel``: google/siglip-*, and siglip2-* checkpoints of that architecture)
running on packed batches.

SigLIP is a CLIP-style dual encoder (:mod:`poolkit.builtin_models.blocks.dual_encoder`) that differs in
what matters for pooling:

- the text tower is **bidirectional**, and transformers' ``get_text_features`` pools the **last
  token** (``last_hidden_state[:, -1]``) through ``text_model.head`` (a linear layer with bias).
  poolkit applies the head to every token and the default ``LAST`` pooling reads the last one of
  each packed sequence, which is ``get_text_features`` on the same token ids. How that relates to
  the padding to 64 tokens SigLIP was trained with is in ``docs/images.md``;
- the vision tower has **no class token** and no LayerNorm before its encoder; after the
  post-LayerNorm of every patch, a **multi-head attention pooling head** (MAP: a learned probe
  attends to the patches, then LayerNorm, MLP and a residual) gives one row per image, which is
  ``get_image_features``. There are no separate projections: the text head's
  ``projection_size`` is the vision width.

The modules keep Hugging Face's parameter names (``text_model.head``, ``vision_model.head.probe``,
``vision_model.head.attention.in_proj_weight``, ...), except the fused ``self_attn.qkv``.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks, config_value, source
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.spm_tokenizer import read_model, unigram_tokenizer

from .blocks.attention import attention_head_dim
from .blocks.dual_encoder import (
    TEXT,
    VISION,
    DualEncoder,
    Encoder,
    EncoderMLP,
    TextTransformer,
    VisionEmbeddings,
    dense_attention,
    tower_checks,
)
from .blocks.norms import fp32_layer_norm
from .blocks.linear import linear

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def _projection_size(text_config: PretrainedConfig) -> int:
    """The text head's width: ``projection_size``, which older configs leave to ``hidden_size``."""
    return int(getattr(text_config, "projection_size", None) or text_config.hidden_size)


class MultiheadAttentionProbe(nn.Module):
    """``torch.nn.MultiheadAttention`` of one query over the patches, with its parameter names
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) and its arithmetic."""

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = attention_head_dim(hidden, num_heads)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden, hidden))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * hidden))
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(
        self, probe: torch.Tensor, x: torch.Tensor, linear_act: Callable, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A ``[1, 1, H]`` probe attends to the ``[n, P, H]`` patches of each image: ``[n, 1, H]``;
        ``mask`` (``[n, P]``, true where a patch is the image's) hides padding patches."""
        weight, bias = self.in_proj_weight, self.in_proj_bias
        hidden = weight.shape[1]
        # The stored [3H, H] matrix whole: its q rows are wasted on the patches, but a kernel that
        # keeps packed weights sees one weight, not new slices on every call.
        q = linear_act(probe.to(weight.dtype), weight, bias)[..., :hidden]
        kv = linear_act(x.to(weight.dtype), weight, bias)[..., hidden:]
        k, v = kv.unflatten(-1, (2, self.num_heads, self.head_dim)).unbind(-3)
        q = q.unflatten(-1, (self.num_heads, self.head_dim)).expand(x.shape[0], -1, -1, -1)
        if mask is None:
            attended = dense_attention(q, k, v)
        else:  # images of different patch counts side by side (SigLIP 2's NaFlex)
            attended = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask[:, None, None, :]
            ).transpose(1, 2)
        return linear(attended.flatten(-2), self.out_proj, linear_act)


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """MAP: a learned probe attends to the patches; LayerNorm, MLP and a residual; one row per image."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        hidden = int(config.hidden_size)
        self.probe = nn.Parameter(torch.zeros(1, 1, hidden))
        self.attention = MultiheadAttentionProbe(hidden, int(config.num_attention_heads))
        self.layernorm = nn.LayerNorm(hidden, eps=float(config.layer_norm_eps))
        self.mlp = EncoderMLP(config)

    def forward(self, x: torch.Tensor, linear_act: Callable, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One row per image of the ``[n, P, H]`` patches (``mask``: which are the image's)."""
        pooled = self.attention(self.probe, x, linear_act, mask).float()
        pooled = pooled + self.mlp(fp32_layer_norm(pooled, self.layernorm), linear_act)
        return pooled[:, 0]


class SiglipVisionTransformer(nn.Module):
    """Patch embeddings (no class token), the encoder, post-LayerNorm of every patch, the MAP head:
    ``[n, 3, H, W]`` pixels in, one row per image out. Without the head (``head=False``:
    PaliGemma's tower, ``vision_use_head: false``), one row per patch: ``[n, patches, hidden]``."""

    def __init__(self, config: PretrainedConfig, head: bool = True) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(config, class_token=False, patch_bias=True)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=float(config.layer_norm_eps))
        self.head = SiglipMultiheadAttentionPoolingHead(config) if head else None

    def forward(self, pixel_values: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        x = self.encoder(self.embeddings(pixel_values), dense_attention, linear_act)
        x = fp32_layer_norm(x, self.post_layernorm)
        return x if self.head is None else self.head(x, linear_act)


class SiglipTextTransformer(TextTransformer):
    """The bidirectional text tower and its ``head`` (linear, with bias) to ``projection_size``."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config, causal=False)
        self.head = nn.Linear(config.hidden_size, _projection_size(config))


class SiglipModel(DualEncoder):
    """SigLIP: packed token ids in, every token through the text head out; or images in, the
    attention-pooled row of each out.

    Text: bidirectional attention within each packed sequence, positions from
    ``batch.positions``, ``final_layer_norm`` and ``text_model.head`` on every token (linear, so
    it commutes with pooling); the default ``LAST`` pooling reads the last token, as
    transformers' ``get_text_features`` does. Images: ``batch.extras["pixel_values"]``
    (``[n, 3, H, W]``, the model's ``image_size``) gives ``[n, vision hidden_size]``.
    """

    default_pooling_type: ClassVar[str | None] = "LAST"
    family: ClassVar[str] = "SigLIP"
    class_token: ClassVar[bool] = False
    default_hidden_act: ClassVar[str] = "gelu_pytorch_tanh"
    config_checks: ClassVar[ConfigChecks] = tower_checks(
        sizes=(TEXT + "projection_size",),
        shapes={
            "text_model.head.weight": (TEXT + "projection_size", TEXT + "hidden_size"),
            "vision_model.head.probe": (1, 1, VISION + "hidden_size"),
            "vision_model.head.attention.in_proj_weight": ((3, VISION + "hidden_size"), VISION + "hidden_size"),
            "vision_model.head.mlp.fc1.weight": (VISION + "intermediate_size", VISION + "hidden_size"),
        },
    )

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """The declared checks, the positions, that the vision tower has its pooling head, and
        that text and image embeddings are of one width."""
        super().check_config(config, shapes, overridden)
        if config_value(config, VISION + "vision_use_head") is False:
            raise ModelLoadError(
                f"{source(VISION + 'vision_use_head', overridden)} vision_config.vision_use_head is false: this "
                "SigLIP has no attention pooling head, so it gives no image embeddings"
            )
        text = config_value(config, TEXT + "projection_size") or config_value(config, TEXT + "hidden_size")
        vision = config_value(config, VISION + "hidden_size")
        if isinstance(text, int) and isinstance(vision, int) and text != vision:
            name = TEXT + ("projection_size" if config_value(config, TEXT + "projection_size") else "hidden_size")
            raise ModelLoadError(
                f"{source(name, overridden)} {name} {text} differs from vision_config.hidden_size {vision}: "
                "text and image embeddings must be of one width"
            )

    @classmethod
    def load_tokenizer(cls, path: Path, config: PretrainedConfig) -> Any | None:
        """``spiece.model`` as a fast tokenizer, for the checkpoints that ship no ``tokenizer.json``
        (google/siglip-*); ``None`` (transformers loads it) for those that do (SigLIP2)."""
        if (path / "tokenizer.json").is_file() or not (path / "spiece.model").is_file():
            return None
        return siglip_tokenizer(path)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.text_model = SiglipTextTransformer(self.text_config)
        self.vision_model = SiglipVisionTransformer(self.vision_config)

    @property
    def hidden_size(self) -> int:
        return _projection_size(self.text_config)

    def text_features(self, batch: PackedBatch, attention: Callable, linear_act: Callable) -> torch.Tensor:
        return linear(self.text_model(batch, attention, linear_act), self.text_model.head, linear_act)

    def image_features(self, pixel_values: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        return self.vision_model(pixel_values, linear_act)


def siglip_tokenizer(path: Path) -> Any:
    """transformers' ``SiglipTokenizer`` as a fast tokenizer, from ``path``'s ``spiece.model`` and
    ``tokenizer_config.json``.

    ``SiglipTokenizer`` puts ``▁`` before the text, then canonicalises it: lower-cased (unless
    ``do_lower_case`` is false), ASCII punctuation removed, each run of whitespace made one space,
    stripped; SentencePiece reads the result without a dummy prefix of its own, and ``</s>`` is
    appended. Its special tokens swallow the whitespace around them. The same steps run here as
    ``tokenizers`` normalisers, pre-tokeniser and post-processor, so the token ids are
    ``SiglipTokenizer``'s.

    Raises:
        ModelLoadError: ``spiece.model`` is unreadable, or lacks the end-of-sequence token.
    """
    from tokenizers import AddedToken, Regex, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    settings_file = path / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    special = {}
    for key, default in (("eos_token", "</s>"), ("pad_token", "</s>"), ("unk_token", "<unk>")):
        text = settings.get(key, default)
        text = text if isinstance(text, str) else default
        special[key] = AddedToken(text, lstrip=True, rstrip=True, normalized=False, special=True)
    model = read_model(path / "spiece.model")
    canonical = [normalizers.Lowercase()] if settings.get("do_lower_case", True) else []
    canonical += [
        normalizers.Replace(Regex("[" + re.escape(string.punctuation) + "]"), ""),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(left=False),  # a leading space is where the leading ▁ goes
    ]
    tokenizer = unigram_tokenizer(model, canonical, prepend_scheme="first")
    eos = special["eos_token"].content
    eos_id = tokenizer.token_to_id(eos)
    if eos_id is None:
        raise ModelLoadError(f"{path / 'spiece.model'} has no end-of-sequence token '{eos}'")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=settings.get("model_max_length", 64), **special
    )


@hookimpl
def poolkit_register_architectures(register):
    register("SiglipModel", SiglipModel)
