"""Mistral: Llama with a sliding window on every layer, and its task models."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from poolkit.contracts.config_checks import ConfigChecks

from ..blocks.attention import GLOBAL, SLIDING
from ..blocks.checks import extend_checks
from .heads import DecoderLMHead, ScoreClassifier, TokenScoreClassifier
from .llama import LlamaModel
from .model import DecoderModel, check_layer_types

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class MistralModel(LlamaModel):
    """The Mistral decoder: Llama with a sliding window (``sliding_window``) on every layer."""

    config_checks: ClassVar[ConfigChecks] = extend_checks(DecoderModel.config_checks, sizes=("sliding_window",))

    @classmethod
    def layer_types(cls, config: PretrainedConfig) -> list[str]:
        kind = SLIDING if getattr(config, "sliding_window", None) else GLOBAL
        return check_layer_types(config, [kind] * int(config.num_hidden_layers))


class MistralForCausalLM(DecoderLMHead, ScoreClassifier, MistralModel):
    """A Mistral causal LM (e5-mistral-7b-instruct, math-shepherd-mistral-7b-prm)."""

    checkpoint_score: ClassVar[bool] = False


class MistralForSequenceClassification(ScoreClassifier, MistralModel):
    """A Mistral sequence classifier / reranker: last token -> ``score``."""


class MistralForTokenClassification(TokenScoreClassifier, MistralModel):
    """A Mistral token classifier: ``score`` on every token."""
