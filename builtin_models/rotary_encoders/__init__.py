"""Rotary encoders running on packed batches: NomicBERT (:mod:`~.nomic`) and GTE's "new"
architecture (:mod:`~.gte`), over one encoder (:mod:`~.encoder`).

nomic-embed-text (``NomicBertModel``; v2-moe's mixture-of-experts layers are in
:mod:`~poolkit.builtin_models.rotary_encoders.nomic_moe`) and Alibaba's gte-v1.5 / gte-multilingual / Snowflake's
arctic-embed-v2 (``NewModel``, ``GteModel``) are one family: a post-LayerNorm BERT whose
positions are rotary and whose feed-forward block is gated (SwiGLU, GeGLU). They differ only in
configuration — config field names, tensor names, biases, rotary variants — so one
implementation serves both, switched by a :class:`~.encoder.RotaryEncoderSpec` that each family reads off
its config, and a :class:`~.encoder.Layout` that says where its checkpoints keep each tensor.

Both are remote-code models on the hub and poolkit never runs that code: the math follows the
published modeling code (nomic-ai's ``modeling_hf_nomic_bert.py``, Alibaba-NLP's ``new-impl``
``modeling.py``). Where that code depends on the padded batch (NomicBERT's dynamic NTK scaling
reads the padded length), each sequence here is computed as the published model computes it
alone, so results never depend on the rest of the batch.

This package's ``__init__`` holds the ``@hookimpl`` and is the entry point.
"""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .encoder import RotaryEncoder
from .gte import NewForSequenceClassification, NewForTokenClassification, NewModel
from .nomic import NomicBertModel
from .nomic_moe import NomicMoE

__all__ = ["NewForSequenceClassification", "NewForTokenClassification", "NewModel", "NomicBertModel", "NomicMoE", "RotaryEncoder"]


@hookimpl
def poolkit_register_architectures(register):
    register("NomicBertModel", NomicBertModel)
    register("NewModel", NewModel)
    register("GteModel", NewModel)
    register("GteNewModel", NewModel)
    register("NewForSequenceClassification", NewForSequenceClassification)
    register("GteNewForSequenceClassification", NewForSequenceClassification)
    register("NewForTokenClassification", NewForTokenClassification)
