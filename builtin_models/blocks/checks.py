"""Config checks the families share: an encoder's sizes, layer count and tensor shapes, BERT's layout,
a decoder's layers and heads, a family's own fields added to another's checks, and the refusal of config switches a family does
not cover."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from poolkit.contracts.config_checks import ConfigChecks, Dim
from poolkit.contracts.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: The sizes every encoder's config gives, each a positive integer.
ENCODER_SIZES = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
)


#: The tensors of BERT's layout that every encoder keeping it has (BERT, RoBERTa, XLM-R, MPNet), with
#: their sizes: the token and position embeddings and the first feed-forward layer.
_BERT_LAYOUT_SHAPES: Mapping[str, tuple[Dim, ...]] = {
    "embeddings.word_embeddings.weight": ("vocab_size", "hidden_size"),
    "embeddings.position_embeddings.weight": ("max_position_embeddings", "hidden_size"),
    "encoder.layer.0.intermediate.dense.weight": ("intermediate_size", "hidden_size"),
}


def encoder_checks(layers: str, sizes: tuple[str, ...] = (), shapes: Mapping[str, tuple[Dim, ...]] | None = None) -> ConfigChecks:
    """An encoder's config checks: the :data:`ENCODER_SIZES` and its family's own ``sizes``, attention
    heads that divide the hidden size, as many layers as the checkpoint tensors ``layers`` finds (a
    regular expression, its group the layer index), and the tensor ``shapes``."""
    return ConfigChecks(
        sizes=ENCODER_SIZES + tuple(sizes),
        multiples=(("hidden_size", "num_attention_heads"),),
        layers={"num_hidden_layers": layers},
        shapes=dict(shapes or {}),
    )


def bert_layout_checks(sizes: tuple[str, ...], shapes: Mapping[str, tuple[Dim, ...]]) -> ConfigChecks:
    """:func:`encoder_checks` of an encoder laid out as BERT (layers ``encoder.layer.N.``, the
    tensors every such checkpoint has), with its family's own ``sizes`` and tensor ``shapes``."""
    return encoder_checks(r"(?:^|\.)encoder\.layer\.(\d+)\.", sizes, {**_BERT_LAYOUT_SHAPES, **shapes})


#: Where a decoder checkpoint's layers are: ``layers.N.``, under a prefix (``model.``) or none.
DECODER_LAYERS = r"(?:^|\.)layers\.(\d+)\."


def decoder_checks(
    shapes: Mapping[str, tuple[Dim, ...]], sizes: tuple[str, ...] = (), multiples: tuple[tuple[str, str], ...] = ()
) -> ConfigChecks:
    """A decoder's config checks: the :data:`ENCODER_SIZES`, ``num_key_value_heads`` and its family's
    own ``sizes``, the further ``multiples`` and query heads that share the key/value heads evenly,
    as many layers as the checkpoint's ``layers.N.`` tensors (:data:`DECODER_LAYERS`), and the
    tensor ``shapes``."""
    return ConfigChecks(
        sizes=ENCODER_SIZES + ("num_key_value_heads",) + sizes,
        multiples=multiples + (("num_attention_heads", "num_key_value_heads"),),
        layers={"num_hidden_layers": DECODER_LAYERS},
        shapes=dict(shapes),
    )


def extend_checks(checks: ConfigChecks, sizes: tuple[str, ...] = (), shapes: Mapping[str, tuple] | None = None) -> ConfigChecks:
    """``checks`` with more positive sizes and tensor shapes (a family's own fields and tensors)."""
    return dataclasses.replace(checks, sizes=checks.sizes + sizes, shapes={**checks.shapes, **(shapes or {})})


def unsupported(field: str, value: Any, why: str) -> ModelLoadError:
    """The error that refuses a config's ``field`` of ``value``, saying ``why``."""
    return ModelLoadError(f"unsupported {field} {value!r}: {why}")


def refuse_switches(config: PretrainedConfig, reasons: Iterable[tuple[str, str]]) -> None:
    """Refuse a config that sets any of the fields ``reasons`` names, each with why it is not supported.

    Raises:
        ModelLoadError: naming the first field set, its value and why.
    """
    for name, why in reasons:
        value = getattr(config, name, None)
        if value:
            raise unsupported(name, value, why)
