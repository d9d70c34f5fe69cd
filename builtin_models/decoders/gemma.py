"""Gemma 1, 2 and 3: ``(1 + weight)`` RMSNorms and scaled embeddings; Gemma 2's sandwich norms,
scaled and soft-capped attention scores and local layers; Gemma 3's q/k norms and local rotary base;
and their task models."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Mapping

from poolkit.contracts.capabilities import RefusesDtypes
from poolkit.contracts.config_checks import ConfigChecks

from ..blocks.checks import extend_checks
from .heads import DecoderLMHead, ScoreClassifier, TokenScoreClassifier
from .model import DecoderModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class GemmaModel(DecoderModel):
    """The Gemma decoder: ``(1 + weight)`` RMSNorms, GELU-tanh gated feed-forward, embeddings
    scaled by ``sqrt(hidden_size)``."""

    norm_offset: ClassVar[bool] = True
    scale_embeddings: ClassVar[bool] = True

    @classmethod
    def activation(cls, config: PretrainedConfig) -> str:
        return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None) or "gelu_pytorch_tanh"


class Gemma2Model(GemmaModel, RefusesDtypes):
    """The Gemma 2 decoder: Gemma with sandwich norms, scores scaled by ``query_pre_attn_scalar``
    and soft-capped (``attn_logit_softcapping``), and sliding windows on the local layers
    (``layer_types``). ``Gemma2ForCausalLM`` soft-caps its logits (``final_logit_softcapping``)."""

    sandwich_norms: ClassVar[bool] = True
    unsupported_dtypes: ClassVar[Mapping[str, str]] = {
        "float16": "Numerical instability. Please use bfloat16 or float32 instead."
    }
    config_checks: ClassVar[ConfigChecks] = extend_checks(
        DecoderModel.config_checks,
        sizes=("sliding_window", "query_pre_attn_scalar"),
        shapes={"layers.0.pre_feedforward_layernorm.weight": ("hidden_size",)},
    )

    @classmethod
    def attention_scale(cls, config: PretrainedConfig, head_dim: int) -> float:
        return float(getattr(config, "query_pre_attn_scalar", None) or head_dim) ** -0.5

    @classmethod
    def attention_softcap(cls, config: PretrainedConfig) -> float | None:
        cap = getattr(config, "attn_logit_softcapping", None)
        return float(cap) if cap else None


class Gemma3TextModel(Gemma2Model):
    """The Gemma 3 text decoder: Gemma 2 with q/k norms, scores soft-capped only if the config says
    so, and its own rotary base on local layers (``rope_parameters`` per layer type; ``rope_local_base_freq``).

    ``use_bidirectional_attention: true`` (EmbeddingGemma) makes attention bidirectional, each
    local token seeing ``sliding_window // 2`` tokens either side, as transformers does.
    """

    qk_norm: ClassVar[bool] = True
    config_checks: ClassVar[ConfigChecks] = extend_checks(
        Gemma2Model.config_checks, shapes={"layers.0.self_attn.q_norm.weight": ("head_dim",)}
    )

    @classmethod
    def is_causal(cls, config: PretrainedConfig) -> bool:
        return super().is_causal(config) and not getattr(config, "use_bidirectional_attention", False)

    @classmethod
    def window(cls, config: PretrainedConfig, causal: bool) -> int | None:
        if getattr(config, "use_bidirectional_attention", False):
            # Gemma3TextConfig has halved the window to ``sliding_window // 2 + 1``, an exclusive bound.
            return int(config.sliding_window) - 1
        return super().window(config, causal)


class GemmaForCausalLM(DecoderLMHead, ScoreClassifier, GemmaModel):
    """A Gemma causal LM; bge-reranker-v2-gemma is one read as a reranker
    (``classifier_from_token: ["Yes"]``, ``method: "no_post_processing"``)."""

    checkpoint_score: ClassVar[bool] = False


class GemmaForSequenceClassification(ScoreClassifier, GemmaModel):
    """A Gemma sequence classifier / reranker: last token -> ``score``."""


class GemmaForTokenClassification(TokenScoreClassifier, GemmaModel):
    """A Gemma token classifier: ``score`` on every token."""


class Gemma2ForCausalLM(DecoderLMHead, ScoreClassifier, Gemma2Model):
    """A Gemma 2 causal LM (bge-multilingual-gemma2); its logits are soft-capped."""

    checkpoint_score: ClassVar[bool] = False


class Gemma2ForSequenceClassification(ScoreClassifier, Gemma2Model):
    """A Gemma 2 sequence classifier / reranker: last token -> ``score`` (not soft-capped)."""


class Gemma2ForTokenClassification(TokenScoreClassifier, Gemma2Model):
    """A Gemma 2 token classifier: ``score`` on every token."""


class Gemma3ForCausalLM(DecoderLMHead, ScoreClassifier, Gemma3TextModel):
    """A Gemma 3 text causal LM; its logits are soft-capped when the config says so."""

    checkpoint_score: ClassVar[bool] = False


class Gemma3TextForSequenceClassification(ScoreClassifier, Gemma3TextModel):
    """A Gemma 3 text sequence classifier / reranker: last token -> ``score``."""
