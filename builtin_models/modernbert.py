"""ModernBERT encoders running on packed batches.

ModernBERT is a pre-LayerNorm encoder with rotary positions, GeGLU feed-forward layers and
alternating attention: every ``global_attn_every_n_layers``-th layer (from the first) attends to
the whole sequence, the others only to a sliding window of ``local_attention // 2`` tokens on
each side, with their own rotary base. The modules keep Hugging Face's parameter names, so
checkpoints load by name.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.weights import base_model_name, load_into
from poolkit.plugins.lookup import kernel_for

from .blocks.attention import GLOBAL, SLIDING, MultiHeadAttention
from .blocks.checks import encoder_checks
from .blocks.mlp import GatedMLP
from .blocks.quantize import Quantizable
from .blocks.rotary import Rotary, rotary_cos_sin, rotary_inv_freq
from .blocks.linear import activation_function, linear as linear_layer

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: Checkpoint tensors the encoder does not use: the classifiers and prediction heads (``head.``) of ModernBERT task models.
_UNUSED = re.compile(r"^(head|decoder|classifier|qa_outputs)\.")
#: ModernBERT's local attention layers, in transformers 5's name.
LOCAL = SLIDING
#: Rotary bases of configs that name none (transformers' ``ModernBertConfig.default_theta``).
_DEFAULT_THETA = {GLOBAL: 160_000.0, LOCAL: 10_000.0}
_POOLING_TYPES = {"cls": "CLS", "mean": "MEAN"}


def layer_types(config: PretrainedConfig) -> list[str]:
    """Each layer's attention, ``"full_attention"`` or ``"sliding_attention"``.

    transformers 5 configs list them in ``layer_types``; older ones give only
    ``global_attn_every_n_layers``.
    """
    types = getattr(config, "layer_types", None)
    if types:
        types = list(types)
        unknown = sorted(set(types) - {GLOBAL, LOCAL})
        if unknown or len(types) != config.num_hidden_layers:
            raise ModelLoadError(
                f"layer_types {types} must name '{GLOBAL}' or '{LOCAL}' once per layer ({config.num_hidden_layers})"
            )
        return types
    every = int(getattr(config, "global_attn_every_n_layers", 3))
    return [LOCAL if i % every else GLOBAL for i in range(config.num_hidden_layers)]


def rope_theta(config: PretrainedConfig, layer_type: str) -> float:
    """The rotary base of one kind of layer.

    transformers 5 configs keep it in ``rope_parameters[layer_type]["rope_theta"]``; older ones
    in ``global_rope_theta`` / ``local_rope_theta``. A null local base means the global one, as
    in transformers 4 and vLLM.
    """
    params = (getattr(config, "rope_parameters", None) or {}).get(layer_type) or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ModelLoadError(f"unsupported rope_type '{kind}' for {layer_type} layers; poolkit's ModernBERT has plain RoPE")
    legacy = "global_rope_theta" if layer_type == GLOBAL else "local_rope_theta"
    theta = params["rope_theta"] if "rope_theta" in params else getattr(config, legacy, _DEFAULT_THETA[layer_type])
    if theta is None:
        return rope_theta(config, GLOBAL) if layer_type == LOCAL else _DEFAULT_THETA[GLOBAL]
    return float(theta)


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class ModernBertEmbeddings(nn.Module):
    """Token embeddings, then LayerNorm (no position embeddings: positions are rotary). The
    LayerNorm is :meth:`forward`'s, apart from the lookup, so that a vision-language model puts its
    image features among the looked-up rows first."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)

    def lookup(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings of ``input_ids``, before the LayerNorm."""
        return F.embedding(input_ids, self.tok_embeddings.weight)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        return _layer_norm(embedded, self.norm)


class ModernBertAttention(MultiHeadAttention):
    """Self-attention within each sequence (or a window of it), with rotary queries and keys."""

    def __init__(self, config: PretrainedConfig, window: int | None) -> None:
        hidden = config.hidden_size
        super().__init__(hidden, config.num_attention_heads)
        self.window = window
        self.Wqkv = nn.Linear(hidden, 3 * hidden, bias=config.attention_bias)
        self.Wo = nn.Linear(hidden, hidden, bias=config.attention_bias)

    def forward(
        self, x: torch.Tensor, rotary: Rotary, batch: PackedBatch, attention: Callable, linear: Callable
    ) -> torch.Tensor:
        qkv = linear_layer(x, self.Wqkv, linear).view(-1, 3, self.num_heads, self.head_dim)
        # As in transformers: cos and sin rounded to the model's dtype, q and k rotated in (at least)
        # float32: the rotary op computes in the promoted dtype of q/k and the float32 cos and sin.
        qk = qkv[:, :2]
        if qk.dtype == torch.float64:
            qk = qk.float().double()  # transformers rounds q and k to float32 even in a float64 model
        q, k = kernel_for(self, "rotary", x.device)(qk, *rotary).unbind(1)
        context = attention(q, k, qkv[:, 2], batch, window=self.window)
        return linear_layer(context.reshape(x.shape), self.Wo, linear)


class ModernBertMLP(GatedMLP):
    """The GeGLU feed-forward block: ``Wo(act(input) * gate)`` with ``Wi`` giving both halves
    (its first half is activated, "input"; its second is the gate it is multiplied by)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(
            config.hidden_size, config.intermediate_size, config.hidden_activation, ("Wi", "Wo"),
            (config.mlp_bias, config.mlp_bias), gate_first=True,
        )


class ModernBertLayer(nn.Module):
    """One pre-LayerNorm encoder layer; the first layer has no attention norm (the embeddings' norm serves)."""

    def __init__(self, config: PretrainedConfig, index: int, layer_type: str) -> None:
        super().__init__()
        self.layer_type = layer_type
        hidden = config.hidden_size
        self.attn_norm = nn.LayerNorm(hidden, eps=config.norm_eps, bias=config.norm_bias) if index else None
        self.attn = ModernBertAttention(config, int(config.local_attention) // 2 if layer_type == LOCAL else None)
        self.mlp_norm = nn.LayerNorm(hidden, eps=config.norm_eps, bias=config.norm_bias)
        self.mlp = ModernBertMLP(config)

    def forward(
        self, x: torch.Tensor, rotary: Rotary, batch: PackedBatch, attention: Callable, linear: Callable
    ) -> torch.Tensor:
        h = x if self.attn_norm is None else _layer_norm(x, self.attn_norm)
        x = x + self.attn(h, rotary, batch, attention, linear)
        return x + self.mlp(_layer_norm(x, self.mlp_norm), linear)


class ModernBertModel(Quantizable, Architecture):
    """The ModernBERT encoder: packed token ids in, final-norm hidden states ``[T, H]`` out.

    Loads checkpoints of ``ModernBertModel`` itself and of ModernBERT task models, whose encoder
    tensors carry a ``model.`` prefix; their heads are left to poolkit's poolers and heads.
    Positions are rotary, counted from 0 in each sequence; ``max_positions`` is the config's
    ``max_position_embeddings``, the length the model was trained for.

    Example:
        >>> model = ModernBertModel(transformers.ModernBertConfig.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[50281, 7592, 50282], [50281, 50282]]))
    """

    default_pooling_type: ClassVar[str | None] = "CLS"
    takes_adapters: ClassVar[bool] = True
    config_checks: ClassVar[ConfigChecks] = encoder_checks(
        r"(?:^|\.)layers\.(\d+)\.",
        sizes=("local_attention", "global_attn_every_n_layers"),
        shapes={
            "embeddings.tok_embeddings.weight": ("vocab_size", "hidden_size"),
            "layers.0.attn.Wqkv.weight": ((3, "hidden_size"), "hidden_size"),
            "layers.0.mlp.Wi.weight": ((2, "intermediate_size"), "hidden_size"),
        },
    )
    #: Prefix of the encoder's tensors in task-model checkpoints (HF's ``base_model_prefix``).
    checkpoint_prefix: ClassVar[str] = "model."
    #: Checkpoint name prefixes of the classifiers this class loads itself (none for the bare encoder).
    classifier_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        types = layer_types(config)
        self.embeddings = ModernBertEmbeddings(config)
        self.layers = nn.ModuleList(ModernBertLayer(config, i, t) for i, t in enumerate(types))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        head_dim = config.hidden_size // config.num_attention_heads
        # Plain float32 tensors rather than buffers, so that casting the model leaves them exact.
        self._inv_freq = {t: rotary_inv_freq(rope_theta(config, t), head_dim) for t in sorted(set(types))}

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.encode(self.embeddings.lookup(batch.input_ids), batch)

    def encode(self, embedded: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """The encoder over token embeddings ``[T, H]`` given before the embedding LayerNorm (a
        vision-language model's, image features in their placeholders' rows), as transformers runs
        ``inputs_embeds``."""
        attention = kernel_for(self, "varlen_attention", batch.device)
        linear = kernel_for(self, "linear_act", batch.device)
        x = self.embeddings(embedded)
        # cos and sin rounded to the model's dtype, held in at least float32 (angles in float32)
        rotary = {t: rotary_cos_sin(inv_freq, batch.positions, x.dtype, wide=True) for t, inv_freq in self._inv_freq.items()}
        for layer in self.layers:
            x = layer(x, rotary[layer.layer_type], batch, attention, linear)
        return _layer_norm(x, self.final_norm)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_into(self, weights, rename=self.parameter_name)

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """The Hugging Face base-model name of a checkpoint tensor, or ``None`` to skip it."""
        return base_model_name(checkpoint_name, self.checkpoint_prefix, self.classifier_prefixes, _UNUSED)


class ModernBertPredictionHead(nn.Module):
    """HF's ModernBERT head: dense, ``classifier_activation``, LayerNorm."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.dense = nn.Linear(hidden, hidden, bias=config.classifier_bias)
        self.act = activation_function(config.classifier_activation)
        self.norm = nn.LayerNorm(hidden, eps=config.norm_eps, bias=config.norm_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layer_norm(self.act(F.linear(x, self.dense.weight, self.dense.bias)), self.norm)


class ModernBertForSequenceClassification(ModernBertModel):
    """A ModernBERT sequence classifier / cross-encoder: pooled -> ``head`` -> ``classifier``.

    The pooling is the config's ``classifier_pooling`` (``"cls"`` or ``"mean"``, over the whole
    sequence) unless a pooler config says otherwise. The ``token_classify`` task applies
    ``head`` and ``classifier`` to every token, as vLLM does.
    """

    classifier_prefixes: ClassVar[tuple[str, ...]] = ("head.", "classifier.")

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        pooling = getattr(config, "classifier_pooling", "cls")
        if pooling not in _POOLING_TYPES:
            raise ModelLoadError(f"unsupported classifier_pooling '{pooling}'; ModernBERT pools with 'cls' or 'mean'")
        self.default_pooling_type = _POOLING_TYPES[pooling]
        self.head = ModernBertPredictionHead(config)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)

    def sequence_classifier(self) -> nn.Module:
        return nn.Sequential(self.head, self.classifier)


class ModernBertForTokenClassification(ModernBertModel):
    """A ModernBERT token classifier (NER): ``head`` then ``classifier`` on every token."""

    default_pooling_type: ClassVar[str | None] = None
    classifier_prefixes: ClassVar[tuple[str, ...]] = ("head.", "classifier.")

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.head = ModernBertPredictionHead(config)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)

    def token_classifier(self) -> nn.Module:
        return nn.Sequential(self.head, self.classifier)


@hookimpl
def poolkit_register_architectures(register):
    register("ModernBertModel", ModernBertModel)
    register("ModernBertForSequenceClassification", ModernBertForSequenceClassification)
    register("ModernBertForTokenClassification", ModernBertForTokenClassification)
