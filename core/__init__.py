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

import sys
from importlib import import_module
from importlib.abc import Loader, MetaPathFinder
from importlib.util import spec_from_loader
from types import ModuleType
from typing import Any, Sequence

from .contracts.errors import InvalidRequest, MissingDependency, ModelLoadError, PluginError, PoolkitError, UnknownName
from .contracts.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "LLM": "api.llm",
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


#: The import paths of the modules that lived directly in ``poolkit`` before the core was grouped
#: into its layers, and where each lives now. ``import poolkit.batch`` (the path earlier releases'
#: docs/plugins.md and third-party plugins use) gives the very module ``poolkit.contracts.batch``, the
#: same object under both names, so ``isinstance`` checks and monkeypatching see one module.
MOVED = {
    "poolkit.errors": "poolkit.contracts.errors",
    "poolkit.api.params": "poolkit.inputs.params",
    "poolkit.hookspecs": "poolkit.contracts.hookspecs",
    "poolkit.batch": "poolkit.contracts.batch",
    "poolkit.outputs": "poolkit.contracts.outputs",
    "poolkit.sparse": "poolkit.contracts.sparse",
    "poolkit.architecture": "poolkit.contracts.architecture",
    "poolkit.config_checks": "poolkit.contracts.config_checks",
    "poolkit.pooling": "poolkit.contracts.pooling",
    "poolkit.tasks": "poolkit.contracts.tasks",
    "poolkit.scoring": "poolkit.contracts.scoring",
    "poolkit.io": "poolkit.contracts.io",
    "poolkit.kernel_spec": "poolkit.contracts.kernel",
    "poolkit.registry": "poolkit.plugins.registries",
    "poolkit.lookup": "poolkit.plugins.lookup",
    "poolkit.kernel": "poolkit.plugins.lookup",
    "poolkit.testing": "poolkit.plugins.testing",
    "poolkit.settings": "poolkit.config.settings",
    "poolkit.conversion": "poolkit.config.conversion",
    "poolkit.model_impl": "poolkit.config.model_impl",
    "poolkit.model": "poolkit.loading.model",
    "poolkit.model_dir": "poolkit.loading.model_dir",
    "poolkit.weights": "poolkit.loading.weights",
    "poolkit.st_config": "poolkit.loading.st_config",
    "poolkit.engine": "poolkit.runtime.engine",
    "poolkit.batching": "poolkit.runtime.batching",
    "poolkit.allocator": "poolkit.runtime.allocator",
    "poolkit.estimates": "poolkit.runtime.estimates",
    "poolkit.columns": "poolkit.runtime.columns",
    "poolkit.progress": "poolkit.runtime.progress",
    "poolkit.llm": "poolkit.api.llm",
    "poolkit.entities": "poolkit.api.entities",
    "poolkit.st_compat": "poolkit.api.st_compat",
    "poolkit.st_functions": "poolkit.api.st_functions",
    "poolkit.st_multivector": "poolkit.api.st_multivector",
    "poolkit.jobs": "poolkit.entrypoints.jobs",
    "poolkit.protocol": "poolkit.entrypoints.protocol",
    "poolkit.encodings": "poolkit.entrypoints.encodings",
    "poolkit.server": "poolkit.entrypoints.server",
    "poolkit.cli": "poolkit.entrypoints.cli",
    "poolkit.bench": "poolkit.entrypoints.bench",
    "poolkit.integrations": "poolkit.entrypoints.integrations",
    "poolkit.lora.adapter": "poolkit.lora.checkpoint",
    # the int8 mixin third-party architectures use (docs/plugins.md), among the shared model blocks now
    "poolkit.builtin_models.quantize": "poolkit.builtin_models.blocks.quantize",
    # the linear layers third-party architectures run through (docs/plugins.md), and the VLM blocks
    "poolkit.builtin_models.layers": "poolkit.builtin_models.blocks.linear",
    "poolkit.builtin_models.vision_language": "poolkit.builtin_models.blocks.vision_language",
}

#: The names a module of :data:`MOVED` held that live in another module now (``poolkit.model`` was
#: split into the loading pipeline, the loaded model, the device settings and vLLM's view):
#: old path -> name -> (its module now, its name there). ``from poolkit.model import load_model``
#: keeps working (the module, imported by its old path, answers them by a module ``__getattr__``).
MOVED_NAMES = {
    "poolkit.model": {
        "load_model": ("poolkit.loading.load", "load_model"),
        "calibration_texts": ("poolkit.loading.load", "calibration_texts"),
        "CALIBRATION_FILE": ("poolkit.loading.load", "CALIBRATION_FILE"),
        "CALIBRATION_TOKENS": ("poolkit.loading.load", "CALIBRATION_TOKENS"),
        "DTYPES": ("poolkit.config.devices", "DTYPES"),
        "resolve_dtype": ("poolkit.config.devices", "resolve_dtype"),
        "resolve_device": ("poolkit.config.devices", "resolve_device"),
        "cpu_multiplies_bf16": ("poolkit.config.devices", "cpu_multiplies_bf16"),
        "ModelConfig": ("poolkit.api.model_config", "ModelConfig"),
    },
    "poolkit.conversion": {"has_heads": ("poolkit.config.conversion", "has_classifier")},
    # the reader of a LoRA adapter's PEFT checkpoint, named for what it reads
    "poolkit.lora.adapter": {
        "Adapter": ("poolkit.lora.checkpoint", "PeftCheckpoint"),
        "read_adapter": ("poolkit.lora.checkpoint", "read_checkpoint"),
    },
    # the request models moved beside their routes; poolkit.entrypoints.protocol answers them too
    "poolkit.protocol": {
        **{name: ("poolkit.entrypoints.server.routes_openai", name) for name in ("EmbeddingRequest",)},
        **{
            name: ("poolkit.entrypoints.server.routes_vllm", name)
            for name in (
                "ClassificationRequest", "PoolingRequest", "ScoreRequest", "RerankDocument", "RerankRequest",
                "TokenizeRequest", "DetokenizeRequest", "ScoreInput", "CONTENT_PART", "MULTIMODAL_CONTENT",
            )
        },
        **{
            name: ("poolkit.entrypoints.server.routes_cohere", name)
            for name in ("CohereImageUrl", "CohereContent", "CohereInput", "CohereEmbedRequest")
        },
    },
}


def _former_names(module: str, former: dict[str, tuple[str, str]]) -> Any:
    """A module ``__getattr__`` (PEP 562) answering the names ``former`` says moved elsewhere."""

    def __getattr__(name: str) -> Any:
        if name not in former:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home, new_name = former[name]
        return getattr(import_module(home), new_name)

    return __getattr__


class _MovedFinder(MetaPathFinder, Loader):
    """Imports a :data:`MOVED` path (or a module inside a moved package) as the module it names."""

    @staticmethod
    def _target(fullname: str) -> str | None:
        if not fullname.startswith("poolkit."):
            return None
        parts = fullname.split(".")
        for cut in range(len(parts), 1, -1):
            new = MOVED.get(".".join(parts[:cut]))
            if new is not None:
                return ".".join([new, *parts[cut:]])
        return None

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        return spec_from_loader(fullname, self) if self._target(fullname) else None

    def create_module(self, spec: Any) -> ModuleType:
        module = import_module(self._target(spec.name))
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system gave the module the old name's spec: give it its own back
        old, module.__spec__ = module.__spec__.name, module.__spec__.loader_state
        former = MOVED_NAMES.get(old)
        if former and "__getattr__" not in vars(module):
            module.__getattr__ = _former_names(module.__name__, former)


if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedFinder())


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'poolkit' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
