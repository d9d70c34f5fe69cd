"""Adapter repositories: a folder (or hub id) holding only a PEFT adapter over a base model published
elsewhere, as colpali-engine ships its retrievers (vidore/colpali-v1.3 over
vidore/colpaligemma-3b-pt-448-base, vidore/colqwen2.5-v0.2 over vidore/colqwen2.5-base), loaded as
the base with the adapter merged into its weights.

Such a folder has ``adapter_config.json`` (``base_model_name_or_path``, ``r``, ``lora_alpha``,
``target_modules``, ``modules_to_save``) and ``adapter_model.safetensors``, and no ``config.json``. The
base is found as any model is (``poolkit_resolve_model``: a local folder, an installed package, the
Hugging Face cache, a download unless offline) and read as a Hugging Face folder: its config,
weights, sentence-transformers files; the tokenizer is the adapter folder's own when it ships one
(colpali-engine saves its processor's files beside the adapter), else the base's. The adapter is
read and placed as a served LoRA adapter is (:mod:`.checkpoint`, :mod:`.names`) and merged,
``W += scaling * B A``, in float32 before the model is cast or quantized; a module it saves whole
(``modules_to_save``) replaces the base's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..contracts.checkpoint import Layout
from ..contracts.errors import InvalidRequest, ModelLoadError
from ..contracts.hookspecs import hookimpl
from ..plugins.manager import get_manager
from .checkpoint import CONFIG, read_checkpoint
from .names import CheckpointNames
from .request import LoRARequest

if TYPE_CHECKING:
    from ..contracts.architecture import Architecture

#: No rank limit applies to an adapter merged at load (``max_lora_rank`` bounds served slots).
_ANY_RANK = 1 << 20


@hookimpl
def poolkit_checkpoint_layout(path):
    """An adapter repository's layout: the base's folder, the adapter merged into its weights."""
    path = Path(path)
    config_file = path / CONFIG
    if (path / "config.json").is_file() or not config_file.is_file():
        return None
    try:
        adapter = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from None
    base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
    if not isinstance(base, str) or not base:
        raise ModelLoadError(
            f"{path} holds a PEFT adapter ({CONFIG}) and no config.json, and its {CONFIG} names no base model "
            "(base_model_name_or_path)"
        )
    try:
        base_path = get_manager().resolve_model(base)
    except ModelLoadError as exc:
        raise ModelLoadError(f"the adapter in {path} is over the base model '{base}', which cannot be found: {exc}") from None
    if base_path is None:
        raise ModelLoadError(f"the adapter in {path} is over the base model '{base}', which was not found")
    if not (base_path / "config.json").is_file():
        raise ModelLoadError(f"the adapter in {path} is over the base model '{base}', whose folder {base_path} has no config.json")
    tokenizer = path if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")) else base_path
    return Layout(
        name=f"adapter repository over {base}",
        source=f"{CONFIG} (base_model_name_or_path), base folder {base_path}",
        weights=base_path,
        tokenizer=tokenizer,
        config_dir=base_path,
        st_dir=base_path,
        merge=functools.partial(merge_adapter, path, base),
    )


def merge_adapter(folder: Path, base: str, arch: Architecture) -> None:
    """Merge the PEFT adapter in ``folder`` into ``arch``'s loaded weights (see the module docstring).

    Raises:
        ModelLoadError: the adapter is not a LoRA adapter poolkit applies, or does not fit the base
            (a layer it has no linear layer for, other sizes, a saved module it lacks).
    """
    names = CheckpointNames(arch, base, type(arch).__name__)
    try:
        checkpoint = read_checkpoint(LoRARequest(folder.name, 1, str(folder)), max_rank=_ANY_RANK)
        placements = names.place(checkpoint)
    except InvalidRequest as exc:
        raise ModelLoadError(f"the adapter repository {folder} does not apply to its base '{base}': {exc}") from None
    with torch.no_grad():
        for target, a, b in placements:
            module = names.modules[target.module]
            delta = b @ a  # [out, in]
            if isinstance(module, nn.Embedding):
                module.weight += delta.T.to(module.weight.dtype)
            else:
                module.weight[target.row : target.row + target.rows] += delta.to(module.weight.dtype)
        for key, tensor in checkpoint.saved.items():
            path, _, kind = key.rpartition(".")
            module_path = names.saved_module(path)
            assert module_path is not None  # place() checked it
            getattr(arch.get_submodule(module_path), kind).copy_(tensor)
