"""DistilBERT (distilbert-base-uncased and its fine-tunes: sentence-transformers embedders, SST-2
classifiers, opensearch-neural-sparse-encoding-doc-v3-distill's masked LM) running on packed batches.

DistilBERT is BERT laid out under other names: transformers' ``modeling_distilbert.py`` (5.24) builds
word + learned position embeddings (positions from 0, no token types), then ``LayerNorm``, and
``n_layers`` post-LayerNorm blocks of self-attention (``attention.q_lin``/``k_lin``/``v_lin``,
``out_lin``, residual, ``sa_layer_norm``) and a feed-forward block (``ffn.lin1``, ``activation``,
``ffn.lin2``, residual, ``output_layer_norm``); every LayerNorm's eps is 1e-12 whatever the config
says. Its task models keep the encoder under ``distilbert.`` and add:

- ``DistilBertForMaskedLM``: ``vocab_transform``, the activation, ``vocab_layer_norm``, then
  ``vocab_projector``, whose weight is the word embeddings' (``tie_word_embeddings``, the default;
  else its own) and whose bias is its own: BERT's MLM head (``cls.predictions``) under other names;
- ``DistilBertForSequenceClassification``: the first token through ``pre_classifier``, ReLU,
  ``classifier`` (the dropouts, ``seq_classif_dropout`` and ``qa_dropout``, are training-only);
- ``DistilBertForTokenClassification``: ``classifier`` on every token.

Read from ``config.json``: ``dim``, ``n_layers``, ``n_heads``, ``hidden_dim``, ``activation``,
``vocab_size``, ``max_position_embeddings``, ``num_labels``, ``tie_word_embeddings``. The position
table is read from the weights even with ``sinusoidal_pos_embds``, as transformers saves and loads
it (the sinusoids only initialise it). So the modules here are BERT's
(:mod:`poolkit.builtin_models.bert`), built from the config in BERT's words (:func:`bert_config`),
and DistilBERT's tensor names are read into them (:data:`DISTILBERT_AS_BERT`), as
jina-reranker-v2 reads Jina's flash names into XLM-R's; query, key and value are fused into one
matmul at load time.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.capabilities import MaskedLMHead
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl

from .bert import BertEmbeddings, BertEncoder, BertLayoutModel, BertOnlyMLMHead, BertPooler, MaskedLMModel
from .blocks.heads import PooledClassifier, TokenClassifier
from .rotary_encoders.encoder import Layout

if TYPE_CHECKING:
    from transformers import BertConfig, PretrainedConfig

#: The eps of every LayerNorm of transformers' DistilBERT (fixed there; the config has none).
LAYER_NORM_EPS = 1e-12
#: Checkpoint tensors the encoder does not use: the heads of transformers' task models, the position id buffer.
_UNUSED = re.compile(r"^(vocab_transform|vocab_layer_norm|vocab_projector|pre_classifier|classifier|qa_outputs)\.|^embeddings\.position_ids$")
#: Where BERT's layout keeps each module of transformers' DistilBERT: query, key and value apart (fused
#: at load time, as BERT's are), the MLM head as BERT's ``cls.predictions`` (``vocab_projector``'s bias
#: loads as the decoder's, which the MLM mixin takes for the head's own ``cls.predictions.bias``: the
#: rule after it names that one in messages), ``pre_classifier`` as the pooler.
DISTILBERT_AS_BERT = Layout(
    prefix="distilbert.",
    modules={
        "encoder.layer.{i}.attention.self.query": "transformer.layer.{i}.attention.q_lin",
        "encoder.layer.{i}.attention.self.key": "transformer.layer.{i}.attention.k_lin",
        "encoder.layer.{i}.attention.self.value": "transformer.layer.{i}.attention.v_lin",
        "encoder.layer.{i}.attention.output.dense": "transformer.layer.{i}.attention.out_lin",
        "encoder.layer.{i}.attention.output.LayerNorm": "transformer.layer.{i}.sa_layer_norm",
        "encoder.layer.{i}.intermediate.dense": "transformer.layer.{i}.ffn.lin1",
        "encoder.layer.{i}.output.dense": "transformer.layer.{i}.ffn.lin2",
        "encoder.layer.{i}.output.LayerNorm": "transformer.layer.{i}.output_layer_norm",
        "cls.predictions.transform.dense": "vocab_transform",
        "cls.predictions.transform.LayerNorm": "vocab_layer_norm",
        "cls.predictions.decoder": "vocab_projector",
        "cls.predictions": "vocab_projector",
        "pooler.dense": "pre_classifier",
    },
)
#: A dotted tensor name in a load error.
_TENSOR_NAME = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+")


def bert_config(config: PretrainedConfig) -> BertConfig:
    """DistilBERT's ``config`` in BERT's words, which the BERT modules are built from: ``hidden_dim``
    is the feed-forward width, ``activation`` its activation and the MLM transform's, every
    LayerNorm's eps :data:`LAYER_NORM_EPS`. ``hf_overrides`` are in ``config`` already."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=int(config.vocab_size),
        hidden_size=int(config.dim),
        num_hidden_layers=int(config.n_layers),
        num_attention_heads=int(config.n_heads),
        intermediate_size=int(config.hidden_dim),
        hidden_act=config.activation,
        max_position_embeddings=int(config.max_position_embeddings),
        layer_norm_eps=LAYER_NORM_EPS,
    )


@contextlib.contextmanager
def distilbert_names() -> Iterator[None]:
    """Load errors raised inside name DistilBERT's tensors (``transformer.layer.1.ffn.lin2.bias``),
    not the BERT modules that hold them here (``encoder.layer.1.output.dense.bias``)."""
    try:
        yield
    except ModelLoadError as exc:
        raise type(exc)(_TENSOR_NAME.sub(lambda m: DISTILBERT_AS_BERT.checkpoint_names(m.group(0))[0], str(exc))) from None


class DistilBertModel(BertLayoutModel):
    """The DistilBERT encoder: packed token ids in, last-layer hidden states ``[T, H]`` out.

    Loads checkpoints of ``DistilBertModel`` (sentence-transformers' DistilBERT embedders) and of the
    task models (``distilbert.`` prefix), whose heads are left to poolkit's poolers and heads; CLS
    pooling by default, as for BERT.

    Example:
        >>> model = DistilBertModel(transformers.DistilBertConfig.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[101, 7592, 102], [101, 102]]))
    """

    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=("dim", "n_layers", "n_heads", "hidden_dim", "vocab_size", "max_position_embeddings"),
        multiples=(("dim", "n_heads"),),
        layers={"n_layers": r"(?:^|\.)transformer\.layer\.(\d+)\."},
        shapes={
            "embeddings.word_embeddings.weight": ("vocab_size", "dim"),
            "embeddings.position_embeddings.weight": ("max_position_embeddings", "dim"),
            "transformer.layer.0.attention.q_lin.weight": ("dim", "dim"),
            "transformer.layer.0.ffn.lin1.weight": ("hidden_dim", "dim"),
        },
    )
    checkpoint_prefix: ClassVar[str] = DISTILBERT_AS_BERT.prefix
    unused_tensors: ClassVar[re.Pattern] = _UNUSED

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        bert = bert_config(config)
        self.embeddings = BertEmbeddings(bert, self.position_offset, token_types=False)
        self.encoder = BertEncoder(bert)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        with distilbert_names():
            super().load_weights(weights)

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """BERT's name of a DistilBERT checkpoint tensor (``transformer.layer.0.ffn.lin1.weight`` ->
        ``encoder.layer.0.intermediate.dense.weight``), or ``None`` to skip it."""
        name = super().parameter_name(checkpoint_name)
        return None if name is None else DISTILBERT_AS_BERT.model_name(name)[0]

    def describe(self) -> dict[str, Any]:
        """``layout``: transformers' DistilBERT names, read into BERT's modules."""
        names = ", ".join(getattr(self.config, "architectures", None) or []) or "none"
        return {"layout": {
            "value": "DistilBERT (transformers' tensor names, read into BERT's layout)",
            "source": f"config.json model_type {self.config.model_type}, architectures {names}; tensors transformer.layer.N.attention.q_lin",
        }}


class DistilBertForMaskedLM(MaskedLMModel, DistilBertModel, MaskedLMHead):
    """DistilBERT with its masked-language-model head (``vocab_transform``, ``vocab_layer_norm``,
    ``vocab_projector``, held as BERT's ``cls.predictions``), which SPLADE models are
    (:class:`~poolkit.builtin_models.bert.MaskedLMModel`): ``sparse_embed``, and ``embed`` when a
    sentence-transformers ``SpladePooling`` says so (opensearch-neural-sparse-encoding-doc-v3-distill's
    document route)."""

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.")
    mlm_head_path: ClassVar[str] = "cls.predictions"

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.cls: BertOnlyMLMHead | None = BertOnlyMLMHead(bert_config(config))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        with distilbert_names():  # the mixin's loading, which DistilBertModel's does not wrap
            super().load_weights(weights)


class DistilBertPreClassifier(BertPooler):
    """``pre_classifier`` and its ReLU, where BERT's pooler (dense, tanh) is."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class DistilBertForSequenceClassification(PooledClassifier, DistilBertModel):
    """A DistilBERT classifier: the first token -> ``pre_classifier`` -> ReLU -> ``classifier``.

    The ``token_classify`` task applies the bare ``classifier`` to every token, as for BERT.
    """

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("pre_classifier.", "classifier.")
    pooler_class: ClassVar[type[nn.Module]] = DistilBertPreClassifier


class DistilBertForTokenClassification(TokenClassifier, DistilBertModel):
    """A DistilBERT token classifier (NER): ``classifier`` on every token."""


@hookimpl
def poolkit_register_architectures(register):
    register("DistilBertModel", DistilBertModel)
    register("DistilBertForMaskedLM", DistilBertForMaskedLM)
    register("DistilBertForSequenceClassification", DistilBertForSequenceClassification)
    register("DistilBertForTokenClassification", DistilBertForTokenClassification)
