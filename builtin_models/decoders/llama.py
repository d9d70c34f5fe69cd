"""Llama: the decoder as :class:`~poolkit.builtin_models.decoders.model.DecoderModel` builds it, its
bidirectional variant (NVIDIA's llama-nemotron embed / rerank), and its task models."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from poolkit.contracts.capabilities import BorrowsConfig
from poolkit.contracts.errors import ModelLoadError

from .heads import DecoderLMHead, ScoreClassifier, TokenScoreClassifier
from .model import DecoderModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: vLLM's ``LlamaBidirectionalConfig``: the config's ``pooling`` -> poolkit's pooling type.
_BIDIRECTIONAL_POOLING = {"avg": "MEAN", "mean": "MEAN", "cls": "CLS", "last": "LAST"}


class LlamaModel(DecoderModel):
    """The Llama decoder: RMSNorm, SwiGLU, rotary positions (``llama3``, ``linear``, ``dynamic``,
    ``yarn`` scaling), optional ``attention_bias`` / ``mlp_bias``.

    Example:
        >>> model = LlamaModel(transformers.LlamaConfig.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[1, 15043], [1]]))
    """


class LlamaBidirectionalModel(LlamaModel, BorrowsConfig):
    """Llama with bidirectional attention (NVIDIA's llama-nemotron embed / rerank checkpoints).

    As vLLM's ``LlamaBidirectionalConfig``: attention is never causal, and the config's
    ``pooling`` (``avg``, ``cls``, ``last``) is the default pooling type. The checkpoints'
    ``config.json`` (``model_type: llama_bidirec``, written for remote code) is read as a Llama
    config, and no remote code runs. A plain Llama checkpoint becomes one with
    ``hf_overrides={"architectures": ["LlamaBidirectionalModel"]}`` (MEAN pooling unless
    ``pooling`` says otherwise).
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"
    config_model_type: ClassVar[str | None] = "llama"

    @classmethod
    def is_causal(cls, config: PretrainedConfig) -> bool:
        return False

    def __init__(self, config: PretrainedConfig) -> None:
        pooling = getattr(config, "pooling", None)
        if pooling is not None and str(pooling).lower() not in _BIDIRECTIONAL_POOLING:
            raise ModelLoadError(
                f"pooling '{pooling}' of a {type(self).__name__} config is not supported; use one of {', '.join(_BIDIRECTIONAL_POOLING)}"
            )
        super().__init__(config)
        if pooling is not None:
            self.default_pooling_type = _BIDIRECTIONAL_POOLING[str(pooling).lower()]


class LlamaForCausalLM(DecoderLMHead, ScoreClassifier, LlamaModel):
    """A Llama causal LM (e5-mistral-style embedders, math-shepherd-style process reward models)."""

    checkpoint_score: ClassVar[bool] = False


class LlamaForSequenceClassification(ScoreClassifier, LlamaModel):
    """A Llama sequence classifier / reranker: last token -> ``score``."""


class LlamaForTokenClassification(TokenScoreClassifier, LlamaModel):
    """A Llama token classifier: ``score`` on every token."""


class LlamaBidirectionalForSequenceClassification(ScoreClassifier, LlamaBidirectionalModel):
    """A bidirectional Llama reranker (llama-nemotron-rerank): the pooled vector (the config's
    ``pooling``) -> ``score``."""
