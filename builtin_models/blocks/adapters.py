"""A checkpoint's own task adapters saved as PEFT LoRA folders (jina-embeddings-v3-hf's and
jina-embeddings-v5's), read into the factors :meth:`~poolkit.contracts.architecture.Architecture.task_adapters`
gives. (A user's adapters go through :mod:`poolkit.lora`; the built-in families use only the core's
lower layers, so the checkpoint's own are read here.)"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from poolkit.contracts.errors import ModelLoadError
from poolkit.loading.weights import iter_tensors

#: A PEFT adapter's factor: a linear layer's ``lora_A.weight`` / ``lora_B.weight``, or an embedding's ``lora_embedding_A`` / ``_B``.
_PEFT_FACTOR = re.compile(r"^(?:base_model\.model\.)?(?P<layer>.+)\.lora_(?:embedding_)?(?P<which>[AB])(?:\.default)?(?:\.weight)?$")


def peft_task_adapter(folder: Path, task: str, allow_pickle: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One task's PEFT adapter: per layer (transformers' module name) ``(A [r, in], B [out, r])``,
    ``B`` times ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA); an embedding's ``A`` is ``[r, vocab]``.

    Raises:
        ModelLoadError: the folder's adapter is no plain LoRA adapter, or its factors do not pair.
    """
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"the {task} adapter's {folder.name}/adapter_config.json is not valid JSON ({exc})") from None
    alpha = config.get("lora_alpha", 1) if isinstance(config, dict) else None
    if (
        not isinstance(alpha, (int, float)) or isinstance(alpha, bool)
        or str(config.get("peft_type", "LORA")).upper() != "LORA" or config.get("use_dora") or config.get("alpha_pattern")
    ):
        raise ModelLoadError(
            f"the {task} adapter in {folder.name}/ is not a plain LoRA adapter (peft_type LORA, a numeric lora_alpha, no DoRA, no alpha_pattern)"
        )
    files = [folder / "adapter_model.safetensors"]
    if not files[0].is_file():
        if not (allow_pickle and (folder / "adapter_model.bin").is_file()):
            raise ModelLoadError(f"the {task} adapter in {folder.name}/ has no adapter_model.safetensors")
        files = [folder / "adapter_model.bin"]
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in iter_tensors(files):
        found = _PEFT_FACTOR.match(key)
        if found is None:
            raise ModelLoadError(f"the {task} adapter's tensor {key} is no LoRA factor")
        halves.setdefault(found["layer"], {})[found["which"]] = tensor.float()
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer, pair in halves.items():
        if set(pair) != {"A", "B"} or pair["A"].ndim != 2 or pair["B"].ndim != 2 or pair["B"].shape[1] != pair["A"].shape[0]:
            raise ModelLoadError(f"the {task} adapter's factors of {layer} do not pair")
        rank = pair["A"].shape[0]
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        out[layer] = (pair["A"].contiguous(), (pair["B"] * scaling).contiguous())
    return out
