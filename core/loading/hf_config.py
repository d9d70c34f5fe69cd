"""A checkpoint's ``config.json`` as a transformers config, with ``hf_overrides`` applied and its
standard sizes checked before any config class computes with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..contracts.capabilities import BorrowsConfig
from ..contracts.config_checks import check_common_sizes, overridden_fields
from ..contracts.errors import ModelLoadError
from ..plugins.manager import registry

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def load_hf_config(path: Path, overrides: dict[str, Any], given: Mapping[str, Any] | None = None) -> PretrainedConfig:
    """The config of ``path/config.json``, or ``given`` (what a folder without one stands for:
    :class:`~poolkit.contracts.checkpoint.Layout`), with ``overrides`` applied."""
    from transformers import AutoConfig, PretrainedConfig

    config_file = path / "config.json"
    if given is not None:
        raw = dict(given)
    elif not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json; is it a Hugging Face model directory?")
    else:
        try:
            raw = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{config_file} is not valid JSON: {exc.msg}") from None
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    scaling = raw.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("type") == "su":  # LongRoPE's first name (Phi-3 checkpoints), which transformers no longer reads
        raw["rope_scaling"] = {**scaling, "type": "longrope"}
    model_type = raw.get("model_type")
    check_common_sizes(raw, _attribute_map(model_type), overridden_fields(overrides))
    try:
        return AutoConfig.for_model(model_type, **{k: v for k, v in raw.items() if k != "model_type"})
    except (ValueError, KeyError):
        pass
    except Exception as exc:  # a config class that validates, or computes with a value it cannot use
        raise ModelLoadError(f"{config_file} does not make a valid '{model_type}' config: {one_line(exc)}") from None
    substitute = _config_model_type(raw)
    if substitute is not None:
        try:
            return AutoConfig.for_model(substitute, **{k: v for k, v in raw.items() if k != "model_type"})
        except Exception as exc:
            raise ModelLoadError(f"{config_file} does not make a valid '{substitute}' config: {one_line(exc)}") from None
    try:
        return PretrainedConfig.from_dict(raw)
    except Exception as exc:
        raise ModelLoadError(f"{config_file} is not a valid config: {one_line(exc)}") from None


def _config_model_type(raw: dict[str, Any]) -> str | None:
    """The ``config_model_type`` of the first registered architecture ``raw`` names, if it is a
    :class:`~poolkit.contracts.capabilities.BorrowsConfig`."""
    archs = registry("architecture")
    for name in raw.get("architectures") or []:
        if isinstance(name, str) and name in archs:
            cls = archs.get(name)
            return cls.config_model_type if isinstance(cls, BorrowsConfig) else None
    return None


def one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _attribute_map(model_type: Any) -> dict[str, str]:
    """The config class's aliases of standard fields (GPT-2: ``n_layer`` for ``num_hidden_layers``)."""
    from transformers import CONFIG_MAPPING

    try:
        return dict(getattr(CONFIG_MAPPING[model_type], "attribute_map", None) or {})
    except (KeyError, TypeError, ValueError):
        return {}
