"""An example poolkit plugin: what a third-party ``poolkit-<name>`` distribution looks like.

poolkit imports this module through the ``example`` entry point of the ``poolkit.plugins``
group (see ``pyproject.toml``) and calls its ``@hookimpl`` functions once, on its first
registry lookup. It provides:

- the pooler ``FIRST_LAST_AVG``: the mean of each sequence's first and last token vectors;
- the activation ``tanh``;
- the architecture ``StaticEmbeddingModel``: a model2vec-style static word-embedding model,
  plus :func:`build_static_model` to write one to disk;
- the IO processor ``token_weights``: each token of a text with its text (from the model's
  tokenizer, through the processor's :class:`poolkit.IOContext`) and its weight.
"""

from __future__ import annotations

from poolkit import hookimpl

from .poolers import FirstLastAvgPooler, tanh
from .static_model import StaticEmbeddingModel, build_static_model
from .token_weights import TokenWeights

__all__ = ["FirstLastAvgPooler", "StaticEmbeddingModel", "TokenWeights", "build_static_model", "tanh"]


@hookimpl
def poolkit_register_poolers(register):
    register("FIRST_LAST_AVG", FirstLastAvgPooler)


@hookimpl
def poolkit_register_activations(register):
    register("tanh", tanh)


@hookimpl
def poolkit_register_architectures(register):
    register("StaticEmbeddingModel", StaticEmbeddingModel)


@hookimpl
def poolkit_register_io_processors(register):
    register("token_weights", TokenWeights)
