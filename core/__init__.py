"""poolkit: run pooling models (embeddings, rerankers, classifiers, token models).

``import poolkit`` registers nothing and loads no plugin; the first lookup does. The heavy
names (``LLM`` and friends) are imported on first access.

Example:
    >>> from poolkit import LLM
    >>> llm = LLM(model="sentence-transformers/all-MiniLM-L6-v2")
    >>> (out,) = llm.embed("Hello, my name is")
    >>> len(out.outputs.embedding)
    384
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import InvalidRequest, MissingDependency, ModelLoadError, PluginError, PoolkitError, UnknownName
from .hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "LLM": "llm",
    "SentenceTransformer": "st_compat",
    "CrossEncoder": "st_compat",
    "SparseEncoder": "st_compat",
    "MultiVectorEncoder": "st_multivector",
    "PoolingParams": "config",
    "PoolerConfig": "config",
    "LateChunkingParams": "config",
    "PoolingModel": "model",
    "Architecture": "architecture",
    "ConfigChecks": "config_checks",
    "PackedBatch": "batch",
    "Pooler": "pooling",
    "Task": "tasks",
    "IOProcessor": "io",
    "IOContext": "io",
    "Prompt": "io",
    "Kernel": "kernel",
    "select_kernel": "kernel",
    "kernel_reference": "kernel",
    "kernel_table": "kernel",
    "kernel_rows": "kernel",
    "Scorer": "scoring",
    "EngineArgs": "settings",
    "register_pooler": "plugins",
    "register_activation": "plugins",
    "load_into": "weights",
    "SparseEmbedding": "sparse",
    "PoolingOutput": "outputs",
    "EmbeddingOutput": "outputs",
    "ClassificationOutput": "outputs",
    "ScoringOutput": "outputs",
    "PoolingRequestOutput": "outputs",
    "EmbeddingRequestOutput": "outputs",
    "ClassificationRequestOutput": "outputs",
    "ScoringRequestOutput": "outputs",
    "RerankResult": "outputs",
    "LateChunk": "outputs",
    "LateChunkingOutput": "outputs",
    "SparseEmbeddingRequestOutput": "sparse",
    "ModelConfig": "model",
}

__all__ = [
    "InvalidRequest",
    "MissingDependency",
    "ModelLoadError",
    "PluginError",
    "PoolkitError",
    "UnknownName",
    "hookimpl",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'poolkit' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
