"""Contracts: what a plugin implements and the data that crosses between poolkit and its plugins.

The hook specifications, the base classes a plugin subclasses (``Architecture``, ``Pooler``,
``Task``, ``Scorer``, ``IOProcessor``, ``Kernel``), the ``check_*`` functions the registries
validate registrations with, and the data they exchange: ``PackedBatch``, ``PoolerConfig`` and
``PoolingParams``, the request outputs, the errors, and the protocols a loaded model is read by
(``LoadedModel``, ``ModelInfo``, ``Tokenizer``).

May import: no other layer of poolkit (this is the bottom one).
"""
