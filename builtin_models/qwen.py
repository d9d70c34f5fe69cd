"""Qwen2 and Qwen3: the Llama-style decoder family (:mod:`poolkit.builtin_models.decoders`)
configured for Qwen, with Qwen's own heads.

Qwen2 has biased q/k/v projections (and an unbiased output projection) and sliding windows above
``max_window_layers`` when ``use_sliding_window`` is set; Qwen3 adds a per-head RMSNorm on queries
and keys and ``attention_bias`` for all four projections. Attention is causal within each
sequence, or bidirectional when the config says ``is_causal: false`` (gte-Qwen2 style embedders).

Heads: ``*ForSequenceClassification`` (``score`` on the last token), ``*ForTokenClassification``,
Qwen2 reward and process reward models (a ``score`` MLP on every token), LLM-as-reranker
checkpoints (the family-wide ``classifier_from_token``, the original Qwen3-Reranker declared with
``is_original_qwen3_reranker``, and Qwen3-Reranker, mxbai-rerank-v2 and zerank recognised from what
they ship: :mod:`~poolkit.builtin_models.decoders.rerankers`), and the LM head of ``*ForCausalLM``
itself (``lm_head()``), which ``STEP`` process rewards read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Collection, Mapping

import torch
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl

from .blocks.attention import GLOBAL, SLIDING
from .blocks.checks import extend_checks
from .decoders.heads import (
    FROM_2_WAY_SOFTMAX,
    DecoderLMHead,
    ScoreClassifier,
    TokenScoreClassifier,
    check_classifier_tokens,
)
from .decoders.model import DecoderModel, check_layer_types
from .decoders.rerankers import MXBAI_RERANK_V2, QWEN3_RERANKER, TEMPLATES, ZERANK, LLMReranker

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

#: The token id of ``<extra_0>``, the step tag of Qwen2.5-Math-PRM (vLLM's default ``step_tag_id``).
PRM_STEP_TAG_ID = 151651


def layer_types(config: PretrainedConfig) -> list[str]:
    """Each layer's attention: the config's ``layer_types``, else ``"sliding_attention"`` from
    ``max_window_layers`` on when ``use_sliding_window`` is set."""
    n = int(config.num_hidden_layers)
    types = getattr(config, "layer_types", None)
    if types:
        return check_layer_types(config, list(types))
    sliding = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", False) else None
    first = int(getattr(config, "max_window_layers", n))
    return check_layer_types(config, [SLIDING if sliding is not None and i >= first else GLOBAL for i in range(n)])


class Qwen2Model(DecoderModel):
    """The Qwen2 decoder: packed token ids in, final-norm hidden states ``[T, H]`` out.

    Loads checkpoints of ``Qwen2Model`` itself and of Qwen2 task models (``Qwen2ForCausalLM``,
    ``Qwen2ForSequenceClassification``, ...), whose backbone tensors carry a ``model.`` prefix;
    ``lm_head`` is dropped (``*ForCausalLM`` keeps it for ``lm_head()``). Positions are rotary,
    counted from 0 in each sequence. Each token attends to the earlier tokens of its sequence, or
    to all of them when the config (or ``hf_overrides``) sets ``is_causal: false``. Embeddings
    pool the last token by default.

    Example:
        >>> model = Qwen2Model(transformers.Qwen2Config.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[9707, 1879], [14990]]))
    """

    @classmethod
    def attention_biases(cls, config: PretrainedConfig) -> tuple[bool, bool]:
        return True, False

    @classmethod
    def mlp_bias(cls, config: PretrainedConfig) -> bool:
        return False

    @classmethod
    def layer_types(cls, config: PretrainedConfig) -> list[str]:
        return layer_types(config)


class Qwen3Model(Qwen2Model):
    """The Qwen3 decoder: Qwen2 with per-head ``q_norm`` / ``k_norm`` and ``attention_bias``.

    Qwen3-Embedding checkpoints (``Qwen3ForCausalLM`` with a sentence-transformers last-token
    pooling) load through ``Qwen3ForCausalLM``, which only reads its LM head for ``STEP`` rewards.
    """

    qk_norm: ClassVar[bool] = True
    config_checks: ClassVar[ConfigChecks] = extend_checks(
        DecoderModel.config_checks, shapes={"layers.0.self_attn.q_norm.weight": ("head_dim",)}
    )

    @classmethod
    def attention_biases(cls, config: PretrainedConfig) -> tuple[bool, bool]:
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias


class VoyageQwen3BidirectionalEmbedModel(Qwen3Model):
    """voyage-4-nano: Qwen3 run bidirectionally, then a per-token ``linear`` (no bias) from the
    hidden size to ``num_labels``, mean pooling and L2 normalisation, as vLLM's architecture of
    that name. The embeddings are ``num_labels`` wide (2048 for voyage-4-nano), so
    :attr:`hidden_size` is that width; the checkpoint keeps the body under ``model.`` and the
    projection as ``linear.weight``.
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"
    classifier_prefixes: ClassVar[tuple[str, ...]] = ("linear.",)

    @classmethod
    def is_causal(cls, config: PretrainedConfig) -> bool:
        return False

    @classmethod
    def check_config(cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()) -> None:
        """The output width is the checkpoint's ``linear.weight`` rows: ``num_labels`` takes it
        unless ``hf_overrides`` set it, which must then agree."""
        super().check_config(config, shapes, overridden)
        shape = (shapes or {}).get("linear.weight")
        if shape is None:
            return
        if "num_labels" not in overridden:
            config.num_labels = int(shape[0])
        elif int(config.num_labels) != int(shape[0]):
            raise ModelLoadError(f"num_labels {config.num_labels} does not match the checkpoint's linear.weight {tuple(shape)}")

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.linear = nn.Linear(int(config.hidden_size), self.num_labels, bias=False)

    @property
    def hidden_size(self) -> int:
        return self.num_labels

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.linear(super().forward(batch))


# -- heads -----------------------------------------------------------------------------------------


def classifier_tokens(config: PretrainedConfig) -> tuple[list[str], str] | None:
    """The ``classifier_from_token`` words and ``method`` of an LLM-as-reranker config declared
    vLLM's way, or ``None``.

    ``is_original_qwen3_reranker: true`` means ``["no", "yes"]`` (unless given) and ``from_2_way_softmax``.

    Raises:
        ModelLoadError: the words or the method are missing or do not fit together.
    """
    tokens = getattr(config, "classifier_from_token", None)
    method = getattr(config, "method", None)
    if _declared_original(config):
        tokens = list(tokens or QWEN3_RERANKER.tokens)
        method = FROM_2_WAY_SOFTMAX
    return check_classifier_tokens(tokens, method)


def _declared_original(config: PretrainedConfig) -> bool:
    # ``is_qwen3_reranker`` is vLLM's earlier name of ``is_original_qwen3_reranker``.
    return bool(getattr(config, "is_original_qwen3_reranker", False) or getattr(config, "is_qwen3_reranker", False))


class QwenScoreClassifier(ScoreClassifier):
    """Mixin: the family's ``score`` head, knowing vLLM's spelling of the original Qwen3-Reranker too
    (``is_original_qwen3_reranker``), which scores the plain pair as vLLM does: its prompt comes
    with a score template (``chat_template=``). A Qwen3-Reranker recognised from what it ships
    (:attr:`llm_rerankers`) gets the model card's prompt, which vLLM would not know to apply."""

    @classmethod
    def declares_reranker(cls, config: PretrainedConfig) -> bool:
        return _declared_original(config) or super().declares_reranker(config)

    @classmethod
    def declines_reranker(cls, config: PretrainedConfig) -> bool:
        return getattr(config, "is_original_qwen3_reranker", None) is False or super().declines_reranker(config)

    @classmethod
    def classifier_tokens(cls, config: PretrainedConfig) -> tuple[list[str], str] | None:
        if cls.declares_reranker(config):
            return classifier_tokens(config)
        return super().classifier_tokens(config)


class Qwen2ForSequenceClassification(QwenScoreClassifier, Qwen2Model):
    """A Qwen2 sequence classifier / reranker: last token -> ``score`` (no bias).

    The ``token_classify`` task applies ``score`` to every token, as vLLM does.
    """


class Qwen3ForSequenceClassification(QwenScoreClassifier, Qwen3Model):
    """A Qwen3 sequence classifier / reranker: last token -> ``score``.

    Also the original Qwen3-Reranker with ``hf_overrides={"architectures":
    ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": true}``: the score is read off the LM head.
    """


class Qwen2ForCausalLM(DecoderLMHead, QwenScoreClassifier, Qwen2Model):
    """A Qwen2 language model served as an embedder, or, when its config names
    ``classifier_from_token`` and a ``method`` or it is recognised as mxbai-rerank-v2, as a
    reranker built from the LM head's rows.

    Its LM head is :meth:`lm_head` (kept as loaded until read): with ``pooler_config``
    ``{"pooling_type": "STEP", "step_tag_id": ..., "returned_token_ids": [...]}`` the
    ``token_classify`` task (``LLM.reward``) returns the softmax of those logits at the step tags.
    """

    checkpoint_score: ClassVar[bool] = False
    llm_rerankers: ClassVar[tuple[LLMReranker, ...]] = (MXBAI_RERANK_V2,)


class Qwen3ForCausalLM(DecoderLMHead, QwenScoreClassifier, Qwen3Model):
    """A Qwen3 language model served as an embedder (Qwen3-Embedding), or, when its config names
    ``classifier_from_token`` and a ``method`` (Qwen3-Reranker), as a reranker; its LM head serves
    ``STEP`` process rewards as :class:`Qwen2ForCausalLM`'s does. Recognised from what they ship,
    Qwen3-Reranker and zerank are rerankers too.
    """

    checkpoint_score: ClassVar[bool] = False
    llm_rerankers: ClassVar[tuple[LLMReranker, ...]] = (ZERANK, QWEN3_RERANKER)


class Qwen2ForTokenClassification(TokenScoreClassifier, Qwen2Model):
    """A Qwen2 token classifier: ``score`` on every token."""


class Qwen3ForTokenClassification(TokenScoreClassifier, Qwen3Model):
    """A Qwen3 token classifier: ``score`` on every token."""


class Qwen2ForRewardModel(Qwen2Model):
    """A Qwen2 reward model (Qwen2.5-Math-RM): ``score`` = Linear, ReLU, Linear on every token.

    One output per token through ``token_classify`` / ``LLM.reward`` (ALL pooling). As in vLLM the
    rewards are raw by default (``use_activation`` defaults to false for this architecture).
    """

    default_pooling_type: ClassVar[str | None] = None
    default_pooler_config: ClassVar[dict[str, Any]] = {"use_activation": False}
    classifier_prefixes: ClassVar[tuple[str, ...]] = ("score.",)
    #: Outputs of the score MLP, whatever the checkpoint's config says (vLLM forces it too).
    reward_labels: ClassVar[int] = 1

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        config.num_labels = cls.reward_labels

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        hidden = self.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, self.reward_labels))

    @property
    def num_labels(self) -> int:
        return self.reward_labels

    def token_classifier(self) -> nn.Module:
        return self.score


class Qwen2ForProcessRewardModel(Qwen2ForRewardModel):
    """A Qwen2 process reward model (Qwen2.5-Math-PRM): the reward MLP with two outputs, softmaxed.

    Read with ``STEP`` pooling by default, keeping the rows of the step tag tokens
    (``<extra_0>``, id 151651 in Qwen2.5-Math-PRM; ``pooler_config`` may name another).
    """

    reward_labels: ClassVar[int] = 2
    default_token_pooling_type: ClassVar[str | None] = "STEP"
    default_pooler_config: ClassVar[dict[str, Any]] = {"step_tag_id": PRM_STEP_TAG_ID}

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        config.num_labels = cls.reward_labels


@hookimpl
def poolkit_register_architectures(register):
    for cls in (
        Qwen2Model,
        Qwen3Model,
        Qwen2ForCausalLM,
        Qwen3ForCausalLM,
        Qwen2ForSequenceClassification,
        Qwen3ForSequenceClassification,
        Qwen2ForTokenClassification,
        Qwen3ForTokenClassification,
        Qwen2ForRewardModel,
        Qwen2ForProcessRewardModel,
        VoyageQwen3BidirectionalEmbedModel,
    ):
        register(cls.__name__, cls)


@hookimpl
def poolkit_register_io_processors(register):
    from ..io_processors.templates import ScoreTemplateProcessor

    for name, template in TEMPLATES.items():
        # The publisher's prompt exactly, final newline included.
        register(name, ScoreTemplateProcessor(template, keep_trailing_newline=True))
