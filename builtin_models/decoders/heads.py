"""The heads of the Llama-style decoder family (:mod:`poolkit.builtin_models.decoders`): its classifiers and LM head.

- :class:`ScoreClassifier`: ``*ForSequenceClassification`` (``score`` on the last token), and any LLM
  used as a reranker: ``classifier_from_token`` words plus a ``method`` in the config (or
  ``hf_overrides``) turn rows of the LM head into the classifier, as vLLM's
  ``SEQ_CLS_LOAD_METHODS`` do (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma).
- :class:`DecoderLMHead`: the next-token head of ``*ForCausalLM`` (``lm_head()``), which ``STEP``
  process rewards read; Gemma 2/3 soft-cap its logits (``final_logit_softcapping``).
- :class:`TokenScoreClassifier`: ``*ForTokenClassification``, ``score`` on every token.

The mixins go before the decoder class in the bases (``class X(ScoreClassifier, LlamaModel)``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator

import torch
from torch import nn

from poolkit.contracts.errors import ModelLoadError

from ..blocks.heads import CausalLMHead, TokenClassifier
from .rerankers import FROM_2_WAY_SOFTMAX, NO_POST_PROCESSING, LLMReranker, recognise

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.checkpoint import Checkpoint
    from poolkit.contracts.model import Tokenizer

logger = logging.getLogger(__name__)


def check_classifier_tokens(tokens: Any, method: Any) -> tuple[list[str], str] | None:
    """``(tokens, method)`` checked, or ``None`` when no tokens are named.

    Raises:
        ModelLoadError: the words or the method are missing or do not fit together.
    """
    if not tokens:
        return None
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise ModelLoadError(f"classifier_from_token must be a list of strings, got {tokens!r}")
    if method not in (FROM_2_WAY_SOFTMAX, NO_POST_PROCESSING):
        raise ModelLoadError(
            f"classifier_from_token needs method '{FROM_2_WAY_SOFTMAX}' or '{NO_POST_PROCESSING}' in the config, got {method!r}"
        )
    if method == FROM_2_WAY_SOFTMAX and len(tokens) != 2:
        raise ModelLoadError(
            f"method '{FROM_2_WAY_SOFTMAX}' needs exactly two classifier_from_token words [false, true], got {list(tokens)}"
        )
    return list(tokens), method


def token_id(tokenizer: Tokenizer, word: str) -> int:
    """The id of ``word`` as one token: the vocabulary entry, else its encoding if that is one token.

    Raises:
        ModelLoadError: the word is not a single token.
    """
    found = tokenizer.convert_tokens_to_ids(word)
    unk = getattr(tokenizer, "unk_token_id", None)
    if isinstance(found, int) and (found != unk or word == getattr(tokenizer, "unk_token", None)):
        return found
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelLoadError(
            f"classifier_from_token word '{word}' is not one token of the tokenizer (it encodes to {len(ids)} tokens)"
        )
    return int(ids[0])


class ScoreClassifier:
    """Mixin: a ``score`` Linear on the last token (``classify``) and on every token (``token_classify``).

    The weights come from the checkpoint's ``score`` tensors (``score.bias`` optional: HF's
    decoder classifiers have none), or, for an LLM used as a reranker (``classifier_from_token``
    + ``method`` in the config), from the LM head's rows of those tokens: ``from_2_way_softmax``
    gives one output ``W[true] - W[false]`` (its sigmoid is the softmax of the two next-token
    logits), ``no_post_processing`` one output per token.

    A causal LM (``checkpoint_score`` false) published as a reranker declares none of this: it is
    recognised from what it ships (:meth:`inspect_checkpoint`) as one of :attr:`llm_rerankers`, whose
    tokens, method, score template and calibration it then gets. One that is not, and ships no
    sentence-transformers files, is an embedder of its last token, and the load says so.
    """

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("score.",)
    #: Whether the checkpoint carries ``score`` when the config names no classifier tokens.
    checkpoint_score: ClassVar[bool] = True
    #: Publishers' reranker layouts this architecture's checkpoints may have
    #: (:class:`~.rerankers.LLMReranker`), recognised by :meth:`inspect_checkpoint`.
    llm_rerankers: ClassVar[tuple[LLMReranker, ...]] = ()
    #: Whether a checkpoint recognised as none of them is warned of as an embedder of its last
    #: token (a causal LM's is suspect; a vision-language family's are mostly published embedders).
    warns_as_embedder: ClassVar[bool] = True

    @classmethod
    def declares_reranker(cls, config: PretrainedConfig) -> bool:
        """Whether the config (or ``hf_overrides``) asks for a reranker itself, vLLM's way."""
        return bool(getattr(config, "classifier_from_token", None))

    @classmethod
    def declines_reranker(cls, config: PretrainedConfig) -> bool:
        """Whether the config (or ``hf_overrides``) says the checkpoint is no reranker
        (``llm_reranker: false``): it is served as an embedder, unrecognised and unwarned."""
        return getattr(config, "llm_reranker", None) is False

    @classmethod
    def llm_reranker(cls, config: PretrainedConfig) -> LLMReranker | None:
        """The layout :meth:`inspect_checkpoint` recognised (``config.llm_reranker``), or ``None``."""
        name = getattr(config, "llm_reranker", None)
        return next((layout for layout in cls.llm_rerankers if layout.name == name), None) if name else None

    @classmethod
    def inspect_checkpoint(cls, config: PretrainedConfig, checkpoint: Checkpoint) -> list[str]:
        """Recognise a causal LM published as a reranker; warn of one served as an embedder.

        Nothing to recognise when the config declares the reranker (``classifier_from_token``) or the
        checkpoint ships sentence-transformers files (they say how it pools or scores).
        """
        warnings = list(super().inspect_checkpoint(config, checkpoint))  # type: ignore[misc]
        if cls.checkpoint_score or cls.declares_reranker(config) or checkpoint.st is not None or cls.declines_reranker(config):
            return warnings
        found = recognise(config, checkpoint, cls.llm_rerankers)
        if found is not None:
            layout, evidence = found
            config.llm_reranker, config.llm_reranker_source = layout.name, evidence
            logger.info("serving %s as the %s reranker (recognised from its %s)", checkpoint.name, layout.name, evidence)
            return warnings
        if not cls.warns_as_embedder:
            return warnings
        tokens = '"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"'
        warnings.append(
            f"{cls.__name__} '{checkpoint.name}' ships no pooling files (sentence-transformers modules.json) and is "
            "no reranker poolkit recognises: it is served as an embedder of its last token, and score/rerank "
            f"compare cosines. If it is an LLM reranker, load it with hf_overrides={{{tokens}}} "
            "(its false and true answer tokens) and pass its prompt as chat_template"
        )
        return warnings

    @classmethod
    def classifier_tokens(cls, config: PretrainedConfig) -> tuple[list[str], str] | None:
        """The ``classifier_from_token`` words and ``method`` of the config, else those of the
        recognised :meth:`llm_reranker`, or ``None``.

        Raises:
            ModelLoadError: the words or the method are missing or do not fit together.
        """
        layout = cls.llm_reranker(config)
        if layout is not None and not cls.declares_reranker(config):
            return list(layout.tokens), layout.method
        return check_classifier_tokens(getattr(config, "classifier_from_token", None), getattr(config, "method", None))

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Look up the ``classifier_from_token`` ids and set ``num_labels`` to match; a recognised
        :meth:`llm_reranker` gets its publisher's prompt as the score template unless the config names one."""
        found = cls.classifier_tokens(config)
        if found is None:
            return
        tokens, method = found
        layout = cls.llm_reranker(config)
        if layout is not None and not cls.declares_reranker(config) and getattr(config, "score_template", None) is None:
            config.score_template = layout.template
        config.classifier_from_token_ids = [token_id(tokenizer, t) for t in tokens]
        config.method = method
        config.num_labels = 1 if method == FROM_2_WAY_SOFTMAX else len(tokens)

    def describe(self) -> dict[str, Any]:
        """``llm_reranker``: how the LM head scores (the layout or ``classifier_from_token``), when it does."""
        if self.classifier_token_ids is None:
            return {}
        layout = self.llm_reranker(self.config)
        found = self.classifier_tokens(self.config)
        shown = {
            "tokens": found[0] if found else None,
            "method": self.method,
            "score_template": getattr(self.config, "score_template", None),
        }
        if layout is not None and not self.declares_reranker(self.config):
            calibration = {"pooler_defaults": dict(layout.pooler_defaults)} if layout.pooler_defaults else {}
            return {"llm_reranker": {"value": layout.name, "source": self.config.llm_reranker_source, **shown, **calibration,
                                     "layout_source": layout.source}}
        return {"llm_reranker": {"value": "classifier_from_token", "source": "config.json or hf_overrides", **shown}}

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        found = self.classifier_tokens(config)
        self.method = found[1] if found else None
        layout = self.llm_reranker(config)
        if found is not None and layout is not None and layout.pooler_defaults:
            # The layout's calibration (zerank's logit / 5) as this instance's pooler defaults.
            self.default_pooler_config = {**type(self).default_pooler_config, **layout.pooler_defaults}
        self.classifier_token_ids: list[int] | None = None
        if found is not None:
            ids = getattr(config, "classifier_from_token_ids", None)
            if not ids or len(ids) != len(found[0]):
                raise ModelLoadError(
                    "classifier_from_token needs the tokenizer's ids: call configure(config, tokenizer) before building the model"
                )
            self.classifier_token_ids = [int(i) for i in ids]
        if found is None and not self.checkpoint_score:
            self.score = None
        else:
            self.score = nn.Linear(self.hidden_size, self.num_labels, bias=True)
            nn.init.zeros_(self.score.bias)

    def sequence_classifier(self) -> nn.Module | None:
        return self.score

    def load_backbone(self, weights: Iterable[tuple[str, torch.Tensor]], optional: Callable[[str], bool]) -> None:
        """Load the model's own tensors, ``score`` included when it has one; ``optional`` names the
        parameters that may stay as initialised. The decoder's loading; a vision-language model
        loads its parts."""
        self._load(weights, optional=optional)

    def tied_input_embeddings(self) -> torch.Tensor | None:
        """The input embeddings, the LM head's weight when the config ties them; ``None`` when it does not."""
        return self.embed_tokens.weight.detach() if getattr(self.config, "tie_word_embeddings", False) else None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.classifier_token_ids is None:
            self.load_backbone(weights, optional=lambda name: name == "score.bias")
            return
        ids = self.classifier_token_ids
        captured: dict[str, torch.Tensor] = {}

        def lm_head_rows(stream: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                if name == "lm_head.weight":
                    captured["rows"] = tensor[ids].float()
                elif not name.startswith("score."):
                    yield name, tensor

        self.load_backbone(lm_head_rows(weights), optional=lambda name: name.startswith("score."))
        rows = captured.get("rows")
        if rows is None:
            tied = self.tied_input_embeddings()
            if tied is None:
                raise ModelLoadError(
                    "checkpoint lacks weights for lm_head.weight, which classifier_from_token reads "
                    "(and tie_word_embeddings is off)"
                )
            rows = tied[ids].float()
        weight = (rows[1] - rows[0]).unsqueeze(0) if self.method == FROM_2_WAY_SOFTMAX else rows
        with torch.no_grad():
            self.score.weight.copy_(weight)
            self.score.bias.zero_()


class DecoderLMHead(CausalLMHead):
    """Mixin: the LM head of a decoder's causal LM, ``lm_head.weight`` or the tied ``embed_tokens``.

    Logits are soft-capped as the config says (``final_logit_softcapping``, Gemma 2/3):
    ``cap * tanh(logits / cap)``.
    """

    def input_embedding_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight

    def transform_logits(self, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


class TokenScoreClassifier(TokenClassifier):
    """Mixin: HF's decoder token classifier, ``score`` (with bias) on every token."""

    classifier_name: ClassVar[str] = "score"
    classifier_prefixes: ClassVar[tuple[str, ...]] = ("score.",)
