"""Conversion by architecture name: which headless architecture serves a checkpoint's hidden states.

``convert="embed"`` (and ``"auto"`` for a name nobody registered) serves a ``<Prefix>For...``
checkpoint with a base architecture: the one its registered class declares
(:attr:`Architecture.base_architecture`), else ``<Prefix>Model`` by the name rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contracts.architecture import Architecture
from ..plugins.manager import registry


@dataclass(frozen=True)
class Conversion:
    """What a ``convert`` setting does to a checkpoint's architecture.

    Attributes:
        to_base: a ``<Prefix>For...`` checkpoint may be served by its registered base architecture
            (:func:`poolkit.config.conversion.base_architecture`: declared, else ``<Prefix>Model``).
        resolve_base: ask the architecture resolvers for that base architecture too.
        hidden_states: serve the hidden states of a checkpoint that has a classifier (its
            embeddings), rather than the classifier.
        needs_classifier: refuse a checkpoint without a classifier.
    """

    to_base: bool = False
    resolve_base: bool = False
    hidden_states: bool = False
    needs_classifier: bool = False


#: The ``convert`` settings (vLLM's ``--convert``).
CONVERSIONS = {
    "auto": Conversion(to_base=True),
    "none": Conversion(),
    "embed": Conversion(to_base=True, resolve_base=True, hidden_states=True),
    "classify": Conversion(needs_classifier=True),
}


#: Architecture-name suffixes a base ``<Prefix>Model`` implementation can serve by conversion.
CONVERTIBLE_SUFFIXES = (
    "ForMaskedLM",
    "ForPreTraining",
    "ForCausalLM",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForTextEncoding",
    "EmbeddingModel",
)


def has_classifier(cls: type[Architecture]) -> bool:
    """Whether an architecture class has a classifier of its own (overrides ``sequence_classifier`` or ``token_classifier``)."""
    return cls.sequence_classifier is not Architecture.sequence_classifier or cls.token_classifier is not Architecture.token_classifier


def base_architecture(name: str) -> str | None:
    """The architecture whose hidden states serve checkpoints of ``name`` by conversion: the
    :attr:`Architecture.base_architecture` the registered ``name`` declares, else ``<Prefix>Model``
    for a name ending in one of :data:`CONVERTIBLE_SUFFIXES`; ``None`` if neither."""
    archs = registry("architecture")
    declared = archs.get(name).base_architecture if name in archs else None
    if declared:
        return declared
    for suffix in CONVERTIBLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] + "Model"
    return None


def missing_base(names: list[str]) -> str | None:
    """Why ``convert="embed"`` found no headless architecture for ``names`` that are registered only
    with a classification head, or ``None`` when none is."""
    archs = registry("architecture")
    name = next((name for name in names if name in archs and has_classifier(archs.get(name))), None)
    if name is None:
        return None
    cls, base = archs.get(name), base_architecture(name)
    fix = f"set base_architecture on {cls.__name__} to the registered name of its headless architecture"
    if base is None:
        why = "it declares no base_architecture, and its name has none of the convertible suffixes"
    else:
        rule = "its base_architecture" if cls.base_architecture else "by the name rule <Prefix>Model"
        why = f"its base architecture '{base}' ({rule}) is not registered"
        fix = f"register the headless architecture as '{base}', or {fix}"
    return (
        f"convert='embed' serves hidden states without the classification head, but {name} is registered "
        f"with one and {why}; {fix}"
    )
