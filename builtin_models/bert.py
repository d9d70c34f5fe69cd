"""BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa) running on packed batches.

The modules keep Hugging Face's parameter names, so checkpoints load by name, except that a
layer's query, key and value projections are fused into one ``attention.qkv`` matrix at load
time: one matmul instead of three.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Iterator, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import MaskedLMHead, TakesTokenTypes
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.weights import base_model_name, legacy_norm_name, load_into
from poolkit.plugins.lookup import kernel_for
from poolkit.plugins.manager import registry

from .blocks.attention import MultiHeadAttention
from .blocks.checks import bert_layout_checks
from .blocks.embeddings import add_token_types, check_positions
from .blocks.heads import PooledClassifier, TokenClassifier
from .blocks.norms import fp32_layer_norm, post_norm
from .blocks.quantize import Quantizable
from .blocks.linear import FusedLinear, activated_linear, activation_function, fuse_projections, fused_activation, linear

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.architecture import LoadedModel, TaskSpec
    from poolkit.contracts.model import Tokenizer
    from poolkit.contracts.pooling import Head

#: Checkpoint tensors the encoder does not use: the classifiers and LM heads of transformers' task models, position/type id buffers.
_UNUSED = re.compile(r"^(pooler|cls|classifier|lm_head|qa_outputs)\.|^embeddings\.(position_ids|token_type_ids)$")
_QKV_PARTS = ("query", "key", "value")


class BertEmbeddings(nn.Module):
    """Word + position + token type embeddings, then LayerNorm, as BERT's layout names them.

    Args:
        position_offset: added to each position before its embedding (RoBERTa's and MPNet's
            ``padding_idx + 1``); ``None``: no position embeddings (JinaBERT's positions are ALiBi's,
            in attention).
        token_types: ``False``: no token type embeddings (MPNet).
    """

    def __init__(self, config: PretrainedConfig, position_offset: int | None, token_types: bool = True) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        if position_offset is not None:
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        if token_types:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.position_offset = position_offset
        self.token_types = token_types

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The normed embeddings, fp32 and in the weights' dtype (:func:`post_norm`)."""
        x = F.embedding(batch.input_ids, self.word_embeddings.weight)
        if self.position_offset is not None:
            positions = batch.positions + self.position_offset if self.position_offset else batch.positions
            x = x + F.embedding(positions, self.position_embeddings.weight)
        if self.token_types:
            x = add_token_types(x, batch, self.token_type_embeddings)
        return post_norm(self, x, None, self.LayerNorm)


class BertResidualOutput(nn.Module):
    """Dense projection, residual add, LayerNorm (HF's ``BertSelfOutput`` and ``BertOutput``)."""

    def __init__(self, in_features: int, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor, linear_act: Callable
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The new residual stream, fp32 and in the weights' dtype (:func:`post_norm`)."""
        return post_norm(self, linear(x, self.dense, linear_act), residual, self.LayerNorm)


class BertAttention(MultiHeadAttention):
    """Bidirectional self-attention within each sequence, with fused q/k/v projections."""

    def __init__(self, config: PretrainedConfig) -> None:
        hidden = config.hidden_size
        super().__init__(hidden, config.num_attention_heads)
        self.qkv = FusedLinear(hidden, {f"self.{part}": hidden for part in _QKV_PARTS})
        self.output = BertResidualOutput(hidden, hidden, config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, low: torch.Tensor, batch: PackedBatch, attention: Callable, linear_act: Callable
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qkv = linear(low, self.qkv, linear_act).view(-1, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        context = attention(q, k, v, batch)
        return self.output(context.reshape(x.shape), x, linear_act)


class BertIntermediate(nn.Module):
    """The feed-forward expansion and its activation, fused into one kernel where it can be."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation_function(config.hidden_act)
        self.fused_act = fused_activation(config.hidden_act)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        return activated_linear(x, self.dense, linear_act, self.fused_act, self.act)


class BertLayer(nn.Module):
    """One post-LayerNorm transformer encoder layer.

    ``attention`` replaces :class:`BertAttention` in a family whose attention block is named or
    built otherwise (MPNet's); it takes the same ``(x, low, batch, attention, linear_act)`` and
    returns the same pair. The residual stream ``x`` is fp32 (at least) and ``low`` is the same in
    the weights' dtype, the matmuls' input: both come out of each norm at once.
    """

    def __init__(self, config: PretrainedConfig, attention: nn.Module | None = None) -> None:
        super().__init__()
        self.attention = BertAttention(config) if attention is None else attention
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, low: torch.Tensor, batch: PackedBatch, attention: Callable, linear_act: Callable
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, low = self.attention(x, low, batch, attention, linear_act)
        return self.output(self.intermediate(low, linear_act), x, linear_act)


class BertEncoder(nn.Module):
    """The stack of layers, named as in Hugging Face checkpoints (``encoder.layer.N``)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class LayerStack(Protocol):
    """An encoder as BERT's layout holds it: its layers in ``layer``."""

    layer: nn.ModuleList


class BertLayoutModel(Quantizable, Architecture):
    """What the encoders laid out as BERT (BERT, RoBERTa, XLM-R, MPNet, JinaBERT) share: CLS pooling
    by default, the checkpoint names they load (a task model's prefix stripped, its heads skipped,
    q/k/v fused, loaded strictly), the position table's length, and the forward pass (embeddings,
    then the layers, with a family's own :meth:`attention_bias`)."""

    takes_adapters: ClassVar[bool] = True

    default_pooling_type: ClassVar[str | None] = "CLS"
    #: Prefix of the encoder's tensors in task-model checkpoints (HF's ``base_model_prefix``).
    checkpoint_prefix: ClassVar[str] = ""
    #: Checkpoint name prefixes of the classifiers this class loads itself (none for the bare encoder).
    classifier_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Checkpoint tensors the encoder does not use (:meth:`parameter_name` skips them).
    unused_tensors: ClassVar[re.Pattern] = _UNUSED
    #: A family's embeddings and encoder, which :meth:`forward` runs.
    embeddings: BertEmbeddings
    encoder: LayerStack

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Refuse positions other than a learned table, naming the architecture that has them."""
        position = getattr(config, "position_embedding_type", "absolute") or "absolute"
        if position in ("rotary", "rope"):
            raise ModelLoadError(
                f"position_embedding_type '{position}' is Jina's rotary XLM-RoBERTa (jina-embeddings-v3), not "
                f"{cls.__name__}: load it with hf_overrides={{\"architectures\": [\"XLMRobertaLoRA\"]}}"
            )
        if position != "absolute":
            raise ModelLoadError(f"position_embedding_type '{position}' is not supported by {cls.__name__} (only 'absolute')")
        super().configure(config, tokenizer)

    def attention_bias(self, batch: PackedBatch) -> torch.Tensor | None:
        """What attention adds to its scores by position pair (``varlen_attention``'s ``bias``:
        MPNet's relative positions, JinaBERT's ALiBi), or ``None``: nothing, the positions are
        the embeddings'."""
        return None

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """The hidden states of a packed batch: the embeddings (``self.embeddings``), then the
        layers of ``self.encoder.layer``, attending with :meth:`attention_bias`."""
        check_positions(batch, self.max_positions)
        attention = kernel_for(self, "varlen_attention", batch.device)
        bias = self.attention_bias(batch)
        if bias is not None:
            attention = functools.partial(attention, bias=bias)
        linear_act = kernel_for(self, "linear_act", batch.device)
        x, low = self.embeddings(batch)
        for layer in self.encoder.layer:
            x, low = layer(x, low, batch, attention, linear_act)
        return x

    @property
    def position_offset(self) -> int:
        """What is added to a token's position in its sequence to index the position table."""
        return 0

    @property
    def max_positions(self) -> int:
        return int(self.config.max_position_embeddings) - self.position_offset

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        named = ((self.parameter_name(name), tensor) for name, tensor in weights)
        fused = fuse_projections(self, ((n, t) for n, t in named if n is not None))
        load_into(self, fused, rename=lambda name: name)

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """The Hugging Face base-model name of a checkpoint tensor, or ``None`` to skip it."""
        return base_model_name(
            legacy_norm_name(checkpoint_name), self.checkpoint_prefix, self.classifier_prefixes, self.unused_tensors
        )


class BertModel(BertLayoutModel, TakesTokenTypes):
    """The BERT encoder: packed token ids in, last-layer hidden states ``[T, H]`` out.

    Loads checkpoints of ``BertModel`` itself and of BERT task models (``BertForMaskedLM``,
    ``BertForSequenceClassification``, ...), whose encoder tensors carry a ``bert.`` prefix;
    task heads are left to poolkit's poolers and heads. Old TensorFlow-era ``LayerNorm.gamma``
    / ``beta`` names are accepted.

    Example:
        >>> model = BertModel(transformers.BertConfig.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[101, 7592, 102], [101, 102]]))
    """

    config_checks: ClassVar[ConfigChecks] = bert_layout_checks(
        ("type_vocab_size",),
        {
            "embeddings.token_type_embeddings.weight": ("type_vocab_size", "hidden_size"),
            "encoder.layer.0.attention.self.query.weight": ("hidden_size", "hidden_size"),
        },
    )
    checkpoint_prefix: ClassVar[str] = "bert."

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config, self.position_offset)
        self.encoder = BertEncoder(config)


class RobertaModel(BertModel):
    """The RoBERTa encoder: BERT with positions counted from ``pad_token_id + 1``.

    Token type ids are consumed only when the config has more than one type (standard
    RoBERTa checkpoints have one); loads ``RobertaFor*`` checkpoints (``roberta.`` prefix).
    """

    uses_token_type_ids = False
    checkpoint_prefix: ClassVar[str] = "roberta."

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        if config.type_vocab_size > 1:
            self.uses_token_type_ids = True

    @property
    def position_offset(self) -> int:
        # HF's create_position_ids_from_input_ids on an unpadded sequence: padding_idx + 1 + i.
        return int(self.config.pad_token_id) + 1


class XLMRobertaModel(RobertaModel):
    """The XLM-RoBERTa encoder, identical in structure to RoBERTa."""


class BertPooler(nn.Module):
    """HF's BERT pooler: dense + tanh over the (already pooled) first-token vector; a family whose
    classifiers put another function after the same dense layer overrides :meth:`activation`."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(F.linear(x, self.dense.weight, self.dense.bias))

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """The function after the dense layer."""
        return torch.tanh(x)


class BertForSequenceClassification(PooledClassifier, BertModel):
    """A BERT cross-encoder / sequence classifier: CLS -> pooler -> ``classifier``.

    The ``token_classify`` task applies the bare ``classifier`` to every token, as vLLM does.
    """

    pooler_class: ClassVar[type[nn.Module]] = BertPooler


class BertForTokenClassification(TokenClassifier, BertModel):
    """A BERT token classifier (NER): ``classifier`` on every token."""


class RobertaClassificationHead(nn.Module):
    """HF's RoBERTa head: dense, tanh, ``out_proj`` (bge-reranker and other XLM-R cross-encoders)."""

    def __init__(self, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(x)))


if TYPE_CHECKING:
    _Encoder = BertLayoutModel  # what the mixin below is mixed into, for the type checker
else:
    _Encoder = object


class RobertaHeadClassifier(_Encoder):
    """Mixed in before an encoder: a sequence classifier with RoBERTa's ``classifier`` head
    (dense, tanh, ``out_proj``) on the CLS token's state."""

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("classifier.",)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.classifier = RobertaClassificationHead(config.hidden_size, self.num_labels)

    def sequence_classifier(self) -> nn.Module:
        return self.classifier


class RobertaForSequenceClassification(RobertaHeadClassifier, RobertaModel):
    """A RoBERTa cross-encoder / sequence classifier: CLS -> ``classifier`` head."""


class RobertaForTokenClassification(TokenClassifier, RobertaModel):
    """A RoBERTa token classifier: ``classifier`` on every token."""


class XLMRobertaForSequenceClassification(RobertaForSequenceClassification):
    """XLM-RoBERTa cross-encoder (bge-reranker-v2-m3 style)."""


class XLMRobertaForTokenClassification(RobertaForTokenClassification):
    """XLM-RoBERTa token classifier."""


_mlm_logger = logging.getLogger(__name__)


class BertPredictionHeadTransform(nn.Module):
    """HF's MLM transform: dense, ``hidden_act``, LayerNorm."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = activation_function(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(x.to(self.dense.weight.dtype), self.dense.weight, self.dense.bias)
        return fp32_layer_norm(self.act(hidden), self.LayerNorm)


class BertLMPredictionHead(nn.Module):
    """Transform, then the vocabulary projection: the word embeddings (tied) plus ``bias``.

    ``decoder`` exists only for checkpoints whose decoder weight is not tied to the embeddings.
    """

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder: nn.Linear | None = None


class BertOnlyMLMHead(nn.Module):
    """The ``cls`` module of HF's ``BertForMaskedLM``."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class RobertaLMHead(nn.Module):
    """The ``lm_head`` of HF's ``RobertaForMaskedLM`` (and XLM-R's): dense, GELU (the exact one,
    whatever ``hidden_act`` says, as transformers' ``RobertaLMHead`` calls ``gelu``), ``layer_norm``,
    then the vocabulary projection: the word embeddings (tied) plus ``bias``.

    ``decoder`` exists only for checkpoints whose decoder weight is not tied to the embeddings.
    """

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder: nn.Linear | None = None

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(x.to(self.dense.weight.dtype), self.dense.weight, self.dense.bias)
        return fp32_layer_norm(F.gelu(hidden), self.layer_norm)


class MaskedLMModel(_Encoder):
    """Mixed in before an encoder: its masked-language-model head, which SPLADE models are.

    ``embed`` and ``token_embed`` pool the encoder's hidden states as the bare encoder does (CLS by
    default), unless the model is a SPLADE model (:attr:`splade`, or a sentence-transformers config
    with ``SpladePooling``): then ``embed`` is the SPLADE vector. ``sparse_embed`` is always the
    SPLADE vector, ``log(1 + relu(MLM logits))`` pooled over all tokens: the task builds it from
    :meth:`lm_head`. ``token_classify`` is the MLM head's softmax over the vocabulary at every token
    (``[n_tokens, vocab_size]``), as vLLM serves a masked LM.

    The head loads from :attr:`mlm_head_path` (``cls.predictions.*``, ``lm_head.*``; old
    ``LayerNorm.gamma``/``beta`` names too); the decoder weight is the word embeddings when the
    config ties them (the default) or the checkpoint has none; its bias is the head's ``bias``, or
    ``decoder.bias`` for an untied decoder (as in transformers, which ties the two only along with
    the weight). A checkpoint with no MLM head at all (a base model labelled ``*ForMaskedLM``) loads
    without one and serves the hidden-state tasks only.
    """

    #: Where the head is, as the checkpoint names it; its first part is this model's attribute.
    mlm_head_path: ClassVar[str]
    #: Whether ``embed`` is the SPLADE vector whatever the sentence-transformers config says.
    splade: ClassVar[bool] = False

    @property
    def mlm_head(self) -> BertLMPredictionHead | RobertaLMHead | None:
        """The head (``transform``, ``bias``, ``decoder``), or ``None`` for a checkpoint without one.

        Read from the registered modules: RoBERTa's ``lm_head`` module shares its name with
        :meth:`lm_head`, which attribute access finds first."""
        top, _, rest = self.mlm_head_path.partition(".")
        module = self._modules.get(top)
        return cast("BertLMPredictionHead | RobertaLMHead", module.get_submodule(rest)) if module is not None else None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        path = self.mlm_head_path
        top = path.partition(".")[0] + "."
        decoder_weight, decoder_bias, head_bias = f"{path}.decoder.weight", f"{path}.decoder.bias", f"{path}.bias"
        aside: dict[str, torch.Tensor] = {}

        def named() -> Iterator[tuple[str, torch.Tensor]]:
            for checkpoint_name, tensor in weights:
                name = self.parameter_name(checkpoint_name)
                if name in (decoder_weight, decoder_bias):
                    aside[name] = tensor
                elif name is not None:
                    yield name, tensor

        loaded = load_into(self, fuse_projections(self, named()), rename=lambda name: name, optional=lambda n: n.startswith(top))
        head = {name for name, _ in self.named_parameters() if name.startswith(top)}
        tied = bool(getattr(self.config, "tie_word_embeddings", True))
        # transformers ties decoder.bias to the head's bias only along with the weight: an untied
        # decoder adds its own bias.
        if decoder_bias in aside and (not tied or head_bias not in loaded):
            self._copy(head_bias, aside[decoder_bias])
            loaded.add(head_bias)
        if not (head & loaded) and not aside:
            if self.splade:
                raise ModelLoadError(f"{type(self).__name__} needs the checkpoint's MLM head ({path}.*), and it has none")
            _mlm_logger.info("the checkpoint has no MLM head (%s.*): sparse_embed is unavailable", path)
            setattr(self, top[:-1], None)
            return
        missing = sorted(head - loaded)
        if missing:
            raise ModelLoadError(f"checkpoint lacks weights for {', '.join(missing)} (the MLM head)")
        decoder = aside.get(decoder_weight)
        if decoder is not None and not tied:
            expected = (int(self.config.vocab_size), self.hidden_size)
            if tuple(decoder.shape) != expected:
                raise ModelLoadError(
                    f"checkpoint tensor '{decoder_weight}' has shape {tuple(decoder.shape)}, but the model expects {expected}"
                )
            linear = nn.Linear(self.hidden_size, expected[0], bias=False)
            with torch.no_grad():
                linear.weight.copy_(decoder)
            cast("BertLMPredictionHead | RobertaLMHead", self.mlm_head).decoder = linear
        elif decoder is None and not tied:
            _mlm_logger.warning("the checkpoint has no %s; using the word embeddings (tied)", decoder_weight)

    def _copy(self, name: str, tensor: torch.Tensor) -> None:
        target = dict(self.named_parameters())[name]
        if tuple(target.shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"checkpoint tensor for '{name}' has shape {tuple(tensor.shape)}, but the model expects {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(tensor.to(target.dtype))

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, H]`` hidden rows -> ``[n, vocab]`` MLM logits, in the model's dtype."""
        head = self.mlm_head
        if head is None:
            raise InvalidRequest(f"this checkpoint has no MLM head ({self.mlm_head_path}.*), so it has no MLM logits")
        weight = head.decoder.weight if head.decoder is not None else self.embeddings.word_embeddings.weight
        return F.linear(head.transform(hidden).to(weight.dtype), weight, head.bias)

    def lm_head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.mlm_logits if self.mlm_head is not None else None

    def is_splade(self, model: LoadedModel) -> bool:
        """Whether ``embed`` on ``model`` (the loaded :class:`PoolingModel`) is the SPLADE vector."""
        st = getattr(model, "st", None)
        return self.mlm_head is not None and (self.splade or (st is not None and st.splade is not None))

    def task_head(self, task: TaskSpec, model: LoadedModel) -> Head | None:
        """For ``embed`` on a SPLADE model, the ``sparse_embed`` task's head (found by its registry key)."""
        if task.name != "embed" or not self.is_splade(model):
            return None
        return registry("task").get("sparse_embed").build(model)


class BertForMaskedLM(MaskedLMModel, BertModel, MaskedLMHead):
    """BERT with its masked-language-model head (``cls.predictions``), which SPLADE models are
    (:class:`MaskedLMModel`). Unlike vLLM, the CLS and SEP tokens are pooled too, as
    sentence-transformers' ``SparseEncoder`` pools them."""

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("cls.predictions.",)
    mlm_head_path: ClassVar[str] = "cls.predictions"

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.cls: BertOnlyMLMHead | None = BertOnlyMLMHead(config)


class RobertaForMaskedLM(MaskedLMModel, RobertaModel, MaskedLMHead):
    """RoBERTa with its masked-language-model head (``lm_head``: granite-embedding-30m-sparse, a
    sentence-transformers ``MLMTransformer`` + ``SpladePooling``), as :class:`MaskedLMModel` serves it."""

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("lm_head.",)
    mlm_head_path: ClassVar[str] = "lm_head"

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self._modules["lm_head"] = RobertaLMHead(config)  # registered by name: lm_head() is the Architecture's method


class XLMRobertaForMaskedLM(RobertaForMaskedLM):
    """XLM-RoBERTa with its masked-language-model head, identical in structure to RoBERTa's."""


class BertSpladeSparseEmbeddingModel(BertForMaskedLM):
    """A SPLADE model (vLLM's architecture name): ``embed`` is the SPLADE vector.

    Select it for an MLM checkpoint with ``hf_overrides={"architectures":
    ["BertSpladeSparseEmbeddingModel"]}``. Unlike vLLM, the CLS and SEP tokens are pooled too,
    as sentence-transformers' ``SparseEncoder`` pools them, so the vectors match it.
    """

    splade: ClassVar[bool] = True


@hookimpl
def poolkit_register_architectures(register):
    register("BertModel", BertModel)
    register("RobertaModel", RobertaModel)
    register("XLMRobertaModel", XLMRobertaModel)
    register("BertForSequenceClassification", BertForSequenceClassification)
    register("BertForTokenClassification", BertForTokenClassification)
    register("RobertaForSequenceClassification", RobertaForSequenceClassification)
    register("RobertaForTokenClassification", RobertaForTokenClassification)
    register("XLMRobertaForSequenceClassification", XLMRobertaForSequenceClassification)
    register("XLMRobertaForTokenClassification", XLMRobertaForTokenClassification)
    register("BertForMaskedLM", BertForMaskedLM)
    register("RobertaForMaskedLM", RobertaForMaskedLM)
    register("XLMRobertaForMaskedLM", XLMRobertaForMaskedLM)
    register("BertSpladeSparseEmbeddingModel", BertSpladeSparseEmbeddingModel)
