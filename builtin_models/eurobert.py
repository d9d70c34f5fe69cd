"""EuroBERT: a Llama-style stack with bidirectional attention, run by the shared decoder
(:class:`~poolkit.builtin_models.decoders.model.DecoderModel`), and its task models.

EuroBERT (``model_type: "eurobert"``) is Llama's layer — RMSNorm, grouped-query attention with
rotary positions, SwiGLU — with every token attending to its whole sequence, under Llama's
parameter names (``model.embed_tokens``, ``model.layers.*``, ``model.norm``). Its sequence
classifier is ``dense`` → GELU → ``classifier`` over the config's ``classifier_pooling``
(:func:`classifier_pooling`): ``bos`` (the first token), ``mean`` (the mean of the tokens), or ``late`` (the default: the head
on every token, then the mean of the logits). Its token classifier is a bare ``classifier``; its
masked LM (the class the published base checkpoints name) has an ``lm_head``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

import torch
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import MaskedLMHead
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.params import PoolingParams
from poolkit.contracts.pooling import Head

from .blocks.heads import TokenClassifier
from .decoders.heads import DecoderLMHead
from .decoders.model import DecoderModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.architecture import LoadedModel, TaskSpec

#: ``classifier_pooling`` -> the pooler of the classifier's input; ``late`` pools the head's
#: activations (its last layer is linear, so the mean of its logits is the logits of that mean).
_POOLING_TYPES = {"bos": "CLS", "mean": "MEAN", "late": "MEAN"}
#: transformers' ``EuroBertConfig.classifier_pooling`` default.
DEFAULT_CLASSIFIER_POOLING = "late"


def classifier_pooling(config: PretrainedConfig) -> str:
    """The sequence classifier's pooling: ``classifier_pooling``, or, where that is transformers'
    default, the ``clf_pooling`` of configs written for the publisher's remote code (which read
    that name; transformers ignores it, and would pool such a ``bos`` classifier ``late``)."""
    pooling = getattr(config, "classifier_pooling", None) or DEFAULT_CLASSIFIER_POOLING
    legacy = getattr(config, "clf_pooling", None)
    return str(legacy) if legacy and pooling == DEFAULT_CLASSIFIER_POOLING else str(pooling)


class EuroBertModel(DecoderModel):
    """The EuroBERT encoder: packed token ids in, final-norm hidden states ``[T, H]`` out.

    Bidirectional within each sequence, positions counted from 0 in each. Embeddings pool the
    mean of the tokens unless a sentence-transformers export or the user says otherwise.

    Example:
        >>> model = EuroBertModel(transformers.EuroBertConfig.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[128000, 9906, 4435, 0], [128000, 9906]]))
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"

    @classmethod
    def is_causal(cls, config: PretrainedConfig) -> bool:
        return False


class EuroBertForMaskedLM(DecoderLMHead, EuroBertModel, MaskedLMHead):
    """EuroBERT with its masked-language-model head (``lm_head``, biased as the MLP is): the
    published base checkpoints name this class.

    ``embed`` pools the hidden states as :class:`EuroBertModel` does; ``sparse_embed`` and
    ``token_classify`` (the softmax over the vocabulary at every token) read the head's logits
    (:meth:`lm_head`), kept as loaded until first used. A config that ties the head to the input
    embeddings uses those; a checkpoint with no head serves the hidden-state tasks only.
    """

    lm_head_tensors: ClassVar[dict[str, str]] = {"weight": "lm_head.weight", "bias": "lm_head.bias"}
    #: A masked LM's head serves every task that reads one.
    not_lm_head_tasks: ClassVar[frozenset[str]] = frozenset()


class _LateHead:
    """A classify head whose poolers read the sequence head's activations
    (``GELU(dense(h))`` on every token) instead of the hidden states."""

    def __init__(self, activations: nn.Module, head: Head) -> None:
        self.activations = activations
        self.head = head

    def __call__(
        self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]
    ) -> torch.Tensor | list[torch.Tensor]:
        weight = self.activations[0].weight  # the classifiers stay float32 in a bf16 model
        return self.head(self.activations(hidden.to(weight.dtype)), batch, params)


class EuroBertForSequenceClassification(EuroBertModel):
    """A EuroBERT sequence classifier / cross-encoder: ``dense`` → GELU → ``classifier`` over the
    config's ``classifier_pooling`` (``bos``, ``mean`` or ``late``), as transformers' class.

    With ``late`` the ``classify`` head (:meth:`task_head`) pools ``GELU(dense(h))`` and then
    runs ``classifier``: the mean of per-token logits. ``token_classify`` runs the whole head on
    every token (the per-token logits ``late`` averages).
    """

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("dense.", "classifier.")

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        pooling = classifier_pooling(config)
        if pooling not in _POOLING_TYPES:
            raise ModelLoadError(
                f"unsupported classifier_pooling '{pooling}'; EuroBERT pools with {', '.join(map(repr, _POOLING_TYPES))}"
            )
        self.classifier_pooling = pooling
        self.default_pooling_type = _POOLING_TYPES[pooling]
        self.dense = nn.Linear(self.hidden_size, self.hidden_size)
        self.classifier = nn.Linear(self.hidden_size, self.num_labels)

    def activations(self) -> nn.Module:
        """``GELU(dense(x))``: the head up to its classifier."""
        return nn.Sequential(self.dense, nn.GELU())

    def sequence_classifier(self) -> nn.Module:
        if self.classifier_pooling == "late":
            return self.classifier  # reads pooled activations (task_head)
        return nn.Sequential(self.dense, nn.GELU(), self.classifier)

    def token_classifier(self) -> nn.Module:
        return nn.Sequential(self.dense, nn.GELU(), self.classifier)

    def task_head(self, task: TaskSpec, model: LoadedModel) -> Head | None:
        """For ``classify`` with ``late`` pooling, the task's head over the head's activations."""
        if task.name != "classify" or self.classifier_pooling != "late":
            return None
        head = task.build(model)
        return None if head is None else _LateHead(self.activations(), head)


class EuroBertForTokenClassification(TokenClassifier, EuroBertModel):
    """A EuroBERT token classifier (NER): ``classifier`` on every token."""


@hookimpl
def poolkit_register_architectures(register):
    register("EuroBertModel", EuroBertModel)
    register("EuroBertForMaskedLM", EuroBertForMaskedLM)
    register("EuroBertForSequenceClassification", EuroBertForSequenceClassification)
    register("EuroBertForTokenClassification", EuroBertForTokenClassification)
