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

from typing import Any, ClassVar, Iterable, Iterator

import torch
from torch import nn

from poolkit.contracts.errors import ModelLoadError

from ..blocks.heads import CausalLMHead, TokenClassifier

#: LLM-as-reranker conversions (vLLM's ``SEQ_CLS_LOAD_METHODS``).
FROM_2_WAY_SOFTMAX, NO_POST_PROCESSING = "from_2_way_softmax", "no_post_processing"


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


def token_id(tokenizer: Any, word: str) -> int:
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
    """

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("score.",)
    #: Whether the checkpoint carries ``score`` when the config names no classifier tokens.
    checkpoint_score: ClassVar[bool] = True

    @classmethod
    def classifier_tokens(cls, config: Any) -> tuple[list[str], str] | None:
        """The ``classifier_from_token`` words and ``method`` of the config, or ``None``.

        Raises:
            ModelLoadError: the words or the method are missing or do not fit together.
        """
        return check_classifier_tokens(getattr(config, "classifier_from_token", None), getattr(config, "method", None))

    @classmethod
    def configure(cls, config: Any, tokenizer: Any) -> None:
        """Look up the ``classifier_from_token`` ids and set ``num_labels`` to match."""
        found = cls.classifier_tokens(config)
        if found is None:
            return
        tokens, method = found
        config.classifier_from_token_ids = [token_id(tokenizer, t) for t in tokens]
        config.method = method
        config.num_labels = 1 if method == FROM_2_WAY_SOFTMAX else len(tokens)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        found = self.classifier_tokens(config)
        self.method = found[1] if found else None
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

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.classifier_token_ids is None:
            self._load(weights, optional=lambda name: name == "score.bias")
            return
        ids = self.classifier_token_ids
        captured: dict[str, torch.Tensor] = {}

        def lm_head_rows(stream: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                if name == "lm_head.weight":
                    captured["rows"] = tensor[ids].float()
                elif not name.startswith("score."):
                    yield name, tensor

        self._load(lm_head_rows(weights), optional=lambda name: name.startswith("score."))
        rows = captured.get("rows")
        if rows is None:
            if not getattr(self.config, "tie_word_embeddings", False):
                raise ModelLoadError(
                    "checkpoint lacks weights for lm_head.weight, which classifier_from_token reads "
                    "(and tie_word_embeddings is off)"
                )
            rows = self.embed_tokens.weight.detach()[ids].float()
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
