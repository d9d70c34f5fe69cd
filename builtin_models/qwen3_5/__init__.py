"""Qwen3.5: the first hybrid decoder family, gated delta-net layers beside gated full attention
(:mod:`.model`), with the packed convolution and gated delta rule its recurrent layers run
(:mod:`.delta_rule`), and behind Qwen3-VL's vision tower as Qwen publishes it (:mod:`.vision`).

This package's ``__init__`` holds the ``@hookimpl`` and is the entry point.
"""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .model import Qwen3_5ForCausalLM, Qwen3_5TextForSequenceClassification, Qwen3_5TextModel
from .vision import Qwen3_5ForConditionalGeneration


@hookimpl
def poolkit_register_architectures(register):
    for cls in (Qwen3_5TextModel, Qwen3_5ForCausalLM, Qwen3_5TextForSequenceClassification, Qwen3_5ForConditionalGeneration):
        register(cls.__name__, cls)

