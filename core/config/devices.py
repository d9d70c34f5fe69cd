"""The ``dtype`` and ``device`` settings: their spellings and what ``"auto"`` resolves to."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from ..contracts.errors import InvalidRequest
from . import cpu

if TYPE_CHECKING:
    from transformers import PretrainedConfig

DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 where the hardware multiplies bf16 natively (GPUs, CPUs with AVX512-BF16
    or AMX: :func:`poolkit.config.cpu.cpu_features`), fp32 elsewhere. ``POOLKIT_DTYPE`` changes what
    ``"auto"`` means for the process.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        override = os.environ.get("POOLKIT_DTYPE", "auto")
        if override not in ("", "auto"):
            return resolve_dtype(override, device)
        if device.type == "cuda" or (device.type == "cpu" and cpu.cpu_features().multiplies_bf16):
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise InvalidRequest(f"unknown dtype '{dtype}'; use auto, {', '.join(DTYPES)}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: ``POOLKIT_DEVICE`` when set, else a GPU if there is one, else the CPU."""
    if device in (None, "auto"):
        device = os.environ.get("POOLKIT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidRequest(f"unknown device '{device}'") from None


def head_dtype(hf_config: PretrainedConfig, dtype: torch.dtype, lora: bool = False) -> torch.dtype:
    """The classifiers' dtype: fp32 unless ``config.json`` (or ``hf_overrides``) says
    ``head_dtype`` (vLLM's key): ``"model"`` for the model's dtype, or a dtype name. With LoRA
    adapters (``lora``, whose saved heads are in the model's dtype) the model's dtype, as vLLM does."""
    wanted = getattr(hf_config, "head_dtype", None)
    if wanted is None and lora:
        return dtype
    if wanted in (None, "float32", "fp32", "float"):
        return torch.float32
    if wanted == "model":
        return dtype
    try:
        return DTYPES[str(wanted).lower()]
    except KeyError:
        raise InvalidRequest(f"unknown head_dtype '{wanted}'; use model or one of {', '.join(DTYPES)}") from None
