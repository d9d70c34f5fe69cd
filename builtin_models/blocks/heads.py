"""The heads the families share, as mixins of an architecture: Hugging Face's token classifier, BERT's
pooled sequence classifier, and a causal LM's next-token head (``lm_head``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.plugins.manager import registry

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class TokenClassifier:
    """Mixin: Hugging Face's ``*ForTokenClassification`` classifier, one Linear on every token (dropout is
    inference-free), named ``classifier_name`` in checkpoints."""

    default_pooling_type: ClassVar[str | None] = None
    #: The classifier's name in checkpoints, ``classifier`` (BERT) or ``score`` (Qwen); ``classifier_prefixes`` match it.
    classifier_name: ClassVar[str] = "classifier"
    classifier_prefixes: ClassVar[tuple[str, ...]] = ("classifier.",)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        setattr(self, self.classifier_name, nn.Linear(self.hidden_size, self.num_labels))

    def token_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)


class PooledClassifier:
    """Mixin: BERT's ``*ForSequenceClassification`` head: the pooled first-token vector through the
    ``pooler`` (:attr:`pooler_class`: dense and tanh), then ``classifier``; the ``token_classify`` task
    applies the bare ``classifier`` to every token, as vLLM does."""

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("pooler.", "classifier.")
    #: The family's pooler module, built with the hidden size.
    pooler_class: ClassVar[type[nn.Module]]

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.pooler = self.pooler_class(self.hidden_size)
        self.classifier = nn.Linear(self.hidden_size, self.num_labels)

    def sequence_classifier(self) -> nn.Module:
        return nn.Sequential(self.pooler, self.classifier)

    def token_classifier(self) -> nn.Module:
        return self.classifier


class CausalLMHead:
    """Mixin: the next-token head of a ``*ForCausalLM`` checkpoint as :meth:`lm_head`.

    Process reward models such as math-shepherd are causal LMs read through their LM head: with
    ``STEP`` pooling the ``token_classify`` task takes the logits of the step-tag tokens (the
    ``returned_token_ids`` columns) from :meth:`lm_head`. Its weight is the input embeddings when
    the model ties them; otherwise the checkpoint's tensors, kept as loaded and copied to the
    model's device and dtype the first time the head runs. A safetensors tensor maps its file, so
    an embedding model served from a causal-LM checkpoint (Qwen3-Embedding) keeps no copy of a
    head it never reads.

    A next-token head is no masked-LM head: the model offers every task but ``sparse_embed``
    (SPLADE), which would read it as one.

    Subclasses say where the input embeddings are (:meth:`input_embedding_weight`) and whether
    they are tied (:meth:`ties_lm_head`); ``load_weights`` keeps the tensors named in
    :attr:`lm_head_tensors` on their way to the subclass's own loading.
    """

    #: Checkpoint names of the head's tensors, by the head's parameter name.
    lm_head_tensors: ClassVar[dict[str, str]] = {"weight": "lm_head.weight"}
    #: Tasks a next-token head must not serve.
    not_lm_head_tasks: ClassVar[frozenset[str]] = frozenset({"sparse_embed"})

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self._lm_tensors: dict[str, torch.Tensor] = {}
        self._lm_copies: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    @property
    def pooling_tasks(self) -> frozenset[str]:
        return frozenset(registry("task").names()) - self.not_lm_head_tasks

    def input_embedding_weight(self) -> torch.Tensor:
        """The ``[vocab, H]`` input embeddings (the head's weight when tied)."""
        raise NotImplementedError

    def ties_lm_head(self) -> bool:
        """Whether the head's weight is the input embeddings."""
        return bool(getattr(self.config, "tie_word_embeddings", False))

    def has_lm_head(self) -> bool:
        """Whether the head's weight is known: tied, or kept from the checkpoint."""
        return self.ties_lm_head() or "weight" in self._lm_tensors

    def keep_lm_head(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """Pass every checkpoint tensor on, keeping a reference to the head's."""
        names = {name: param for param, name in self.lm_head_tensors.items()}
        self._lm_tensors.clear()
        self._lm_copies.clear()
        for name, tensor in weights:
            if name in names:
                self._lm_tensors[names[name]] = tensor
            yield name, tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(self.keep_lm_head(weights))

    def lm_head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.lm_logits if self.has_lm_head() else None

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, H]`` hidden rows -> ``[n, vocab]`` next-token logits, in the model's dtype."""
        weights = self._lm_weights(hidden.device)
        weight = weights["weight"]
        return self.transform_logits(F.linear(hidden.to(weight.dtype), weight, weights.get("bias")))

    def transform_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model does to the head's output before it is a logit (nothing by default)."""
        return logits

    def _lm_weights(self, device: torch.device) -> dict[str, torch.Tensor]:
        embeddings = self.input_embedding_weight()
        dtype = embeddings.dtype
        key = (torch.device(device), dtype)
        found = self._lm_copies.get(key)
        if found is None:
            found = {name: t.detach().to(device=device, dtype=dtype) for name, t in self._lm_tensors.items()}
            if self.ties_lm_head():
                found["weight"] = embeddings
            self._lm_copies.clear()  # one copy: the model's device and dtype
            self._lm_copies[key] = found
        return found
