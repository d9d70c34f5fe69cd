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

from .contracts.errors import InvalidRequest, MissingDependency, ModelLoadError, PluginError, PoolkitError, UnknownName
from .contracts.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "LLM": "api.llm",
    "AsyncLLM": "api.async_llm",
    "SentenceTransformer": "api.st_compat",
    "CrossEncoder": "api.st_compat",
    "SparseEncoder": "api.st_compat",
    "MultiVectorEncoder": "api.st_multivector",
    "LateInteractionIndex": "api.index",
    "PoolingParams": "contracts.params",
    "PoolerConfig": "contracts.params",
    "LateChunkingParams": "contracts.params",
    "LoRARequest": "lora.request",
    "PoolingModel": "loading.model",
    "Architecture": "contracts.architecture",
    "ConfigChecks": "contracts.config_checks",
    "PackedBatch": "contracts.batch",
    "Pooler": "contracts.pooling",
    "Task": "contracts.tasks",
    "IOProcessor": "contracts.io",
    "IOContext": "contracts.io",
    "Prompt": "contracts.io",
    "Kernel": "contracts.kernel",
    "KernelPriority": "contracts.kernel",
    "implements": "contracts.kernel",
    "select_kernel": "plugins.lookup",
    "kernel_for": "plugins.lookup",
    "kernel_reference": "plugins.lookup",
    "kernel_table": "plugins.lookup",
    "kernel_rows": "plugins.lookup",
    "Scorer": "contracts.scoring",
    "EngineArgs": "config.settings",
    "register_pooler": "plugins.manager",
    "register_activation": "plugins.manager",
    "load_into": "loading.weights",
    "SparseEmbedding": "contracts.sparse",
    "PoolingOutput": "contracts.outputs",
    "EmbeddingOutput": "contracts.outputs",
    "ClassificationOutput": "contracts.outputs",
    "ScoringOutput": "contracts.outputs",
    "PoolingRequestOutput": "contracts.outputs",
    "EmbeddingRequestOutput": "contracts.outputs",
    "ClassificationRequestOutput": "contracts.outputs",
    "ScoringRequestOutput": "contracts.outputs",
    "RerankResult": "contracts.outputs",
    "LateChunk": "contracts.outputs",
    "LateChunkingOutput": "contracts.outputs",
    "SparseEmbeddingRequestOutput": "contracts.sparse",
    "ModelConfig": "api.model_config",
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
