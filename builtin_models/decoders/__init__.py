"""The Llama-style decoder family: Llama (and its bidirectional variant), Mistral, GritLM and
Gemma 1/2/3, a module each, over the shared stack (:mod:`~poolkit.builtin_models.decoders.model`)
and heads (:mod:`~poolkit.builtin_models.decoders.heads`).

Each member comes with its task models: ``*ForCausalLM``, an embedder (last token) whose LM head
``STEP`` process rewards read, or, when the config names ``classifier_from_token`` and a ``method``,
a reranker built from the LM head's rows; ``*ForSequenceClassification``, last token -> ``score``;
``*ForTokenClassification``, ``score`` on every token. This package's ``__init__`` holds the
``@hookimpl`` and is the entry point.
"""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .gemma import (
    Gemma2ForCausalLM,
    Gemma2ForSequenceClassification,
    Gemma2ForTokenClassification,
    Gemma2Model,
    Gemma3ForCausalLM,
    Gemma3TextForSequenceClassification,
    Gemma3TextModel,
    GemmaForCausalLM,
    GemmaForSequenceClassification,
    GemmaForTokenClassification,
    GemmaModel,
)
from .gritlm import GritLM
from .llama import (
    LlamaBidirectionalForSequenceClassification,
    LlamaBidirectionalModel,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
)
from .mistral import MistralForCausalLM, MistralForSequenceClassification, MistralForTokenClassification, MistralModel


@hookimpl
def poolkit_register_architectures(register):
    for cls in (
        LlamaModel,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        LlamaForTokenClassification,
        LlamaBidirectionalModel,
        LlamaBidirectionalForSequenceClassification,
        MistralModel,
        MistralForCausalLM,
        MistralForSequenceClassification,
        MistralForTokenClassification,
        GritLM,
        GemmaModel,
        GemmaForCausalLM,
        GemmaForSequenceClassification,
        GemmaForTokenClassification,
        Gemma2Model,
        Gemma2ForCausalLM,
        Gemma2ForSequenceClassification,
        Gemma2ForTokenClassification,
        Gemma3TextModel,
        Gemma3ForCausalLM,
        Gemma3TextForSequenceClassification,
    ):
        register(cls.__name__, cls)
