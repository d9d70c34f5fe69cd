"""The PEFT checkpoint of a LoRA adapter, read from its directory as people save them
(``PeftModel.save_pretrained``) and checked: :class:`PeftCheckpoint`, what :func:`read_checkpoint` returns.

The directory holds ``adapter_config.json`` (``r``, ``lora_alpha``, ``use_rslora``,
``target_modules``, ``modules_to_save``, ...) and ``adapter_model.safetensors``, whose tensors are
named ``base_model.model.<layer>.lora_A.weight`` (``[r, in]``) and ``...lora_B.weight``
(``[out, r]``), ``<layer>`` as in the checkpoint of the model that was fine-tuned; a module of
``modules_to_save`` (a classifier head) is saved whole, under its own name. The adapter adds
``scaling * B (A x)`` to each layer's output, ``scaling = lora_alpha / r`` (``lora_alpha /
sqrt(r)`` with rsLoRA).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..contracts.errors import InvalidRequest
from ..loading.weights import iter_tensors
from .request import LoRARequest

CONFIG = "adapter_config.json"
SAFETENSORS = "adapter_model.safetensors"
PICKLE = "adapter_model.bin"
#: The prefix PEFT gives every saved tensor: the PEFT model's ``base_model`` (the LoRA model) and its ``model``.
_PEFT_PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<layer>.+)\.lora_(?P<which>A|B)(?:\.default)?\.weight$")


@dataclass
class PeftCheckpoint:
    """A LoRA adapter's PEFT checkpoint, read: its factors under the fine-tuned model's layer names
    (where the model puts them is :mod:`poolkit.lora.names`'s business; binding them into a slot,
    the manager's: :class:`poolkit.lora.manager.Adapters`).

    Attributes:
        request: the request that named it.
        rank: the largest rank of its layers (``r``).
        factors: per layer, ``(A [r, in], B [out, r])`` float32, ``B`` times the layer's scaling.
        saved: the tensors of ``modules_to_save`` (a classifier head), by checkpoint name.
    """

    request: LoRARequest
    rank: int
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    saved: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The adapter's name (its request's ``lora_name``)."""
        return self.request.lora_name


def read_checkpoint(request: LoRARequest, *, max_rank: int, allow_pickle: bool = False) -> PeftCheckpoint:
    """Read and check the PEFT checkpoint ``request`` names.

    Raises:
        InvalidRequest: no adapter at the path, a setting poolkit does not apply (DoRA, bias
            terms, embedding LoRA), a rank above ``max_rank``, or pickle weights without
            ``allow_pickle``.
    """
    name, folder = request.lora_name, Path(request.lora_path).expanduser()
    config_file = folder / CONFIG
    if not config_file.is_file():
        raise InvalidRequest(f"Loading lora {name} failed: No adapter found for {request.lora_path}", status=404)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"Loading lora {name} failed: {CONFIG} is not valid JSON ({exc})") from None
    _check_config(name, config, max_rank)
    files = _tensor_files(name, folder, allow_pickle)
    alpha_pattern = config.get("alpha_pattern") or {}  # ranks come from the tensors (rank_pattern too)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    saved: dict[str, torch.Tensor] = {}
    for key, tensor in _tensors(name, files):
        key = key.removeprefix(_PEFT_PREFIX)
        match = _FACTOR.match(key)
        if match is None:
            if "lora_embedding_" in key or "lora_magnitude" in key:
                raise InvalidRequest(f"Loading lora {name} failed: {key} is not supported (embedding LoRA and DoRA are not)")
            # a module of modules_to_save, saved whole (older PEFT names its copy "modules_to_save")
            saved[key.replace(".modules_to_save.default.", ".").replace(".modules_to_save.", ".")] = tensor.float()
            continue
        halves.setdefault(match["layer"], {})[match["which"]] = tensor.float()
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rank = 0
    for layer, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise InvalidRequest(f"Loading lora {name} failed: {layer} has lora_{next(iter(pair))} without its other factor")
        a, b = pair["A"], pair["B"]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise InvalidRequest(
                f"Loading lora {name} failed: {files[0].name}: {layer}'s factors {tuple(a.shape)} and {tuple(b.shape)} do not chain"
            )
        r = a.shape[0]
        if r < 1:
            raise InvalidRequest(f"Loading lora {name} failed: {files[0].name}: {layer}'s factors have rank 0")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            # refused, not served: an adapter's NaN or inf would reach every vector it computes
            raise InvalidRequest(f"Loading lora {name} failed: {files[0].name}: {layer}'s factors hold NaN or infinite values")
        if r > max_rank:
            raise InvalidRequest(f"LoRA rank {r} is greater than max_lora_rank {max_rank}.")
        alpha = float(_pattern(alpha_pattern, layer, config.get("lora_alpha", r)))
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        factors[layer] = (a, b * scaling)
        rank = max(rank, r)
    if not factors and not saved:
        raise InvalidRequest(f"Loading lora {name} failed: {files[0].name} holds no LoRA weights")
    return PeftCheckpoint(request, rank, factors, saved)


def _tensors(name: str, files: list[Path]) -> list[tuple[str, torch.Tensor]]:
    """The tensors of an adapter's weight files; a file that is not one (random bytes, cut short)
    is the request's error, named."""
    try:
        return list(iter_tensors(files))
    except InvalidRequest:
        raise
    except Exception as exc:  # safetensors' and torch's errors for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidRequest(f"Loading lora {name} failed: {files[0].name} cannot be read ({reason})") from None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_config(name: str, config: object, max_rank: int) -> None:
    if not isinstance(config, dict):
        raise InvalidRequest(f"Loading lora {name} failed: {CONFIG} holds a JSON {type(config).__name__}, not an object")
    if "lora_alpha" in config and not _number(config["lora_alpha"]):
        raise InvalidRequest(f"Loading lora {name} failed: {CONFIG}: lora_alpha must be a number, got {config['lora_alpha']!r}")
    for key in ("alpha_pattern", "rank_pattern"):
        pattern = config.get(key)
        if pattern is not None and (not isinstance(pattern, dict) or not all(_number(v) for v in pattern.values())):
            raise InvalidRequest(f"Loading lora {name} failed: {CONFIG}: {key} must map layer names to numbers, got {pattern!r}")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InvalidRequest(f"Loading lora {name} failed: a {peft_type} adapter is not a LoRA adapter")
    if config.get("use_dora"):
        raise InvalidRequest(f"Loading lora {name} failed: poolkit does not yet support DoRA (use_dora).")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise InvalidRequest(f"Loading lora {name} failed: adapters with bias terms (bias={config.get('bias')!r}) are not supported")
    if config.get("layer_replication"):
        raise InvalidRequest(f"Loading lora {name} failed: layer_replication is not supported")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidRequest(f"Loading lora {name} failed: the LoRA rank r must be a positive integer, got {rank!r}")
    if rank > max_rank:
        raise InvalidRequest(f"LoRA rank {rank} is greater than max_lora_rank {max_rank}.")


def _tensor_files(name: str, folder: Path, allow_pickle: bool) -> list[Path]:
    if (folder / SAFETENSORS).is_file():
        return [folder / SAFETENSORS]
    if (folder / PICKLE).is_file():
        if not allow_pickle:
            raise InvalidRequest(
                f"Loading lora {name} failed: {folder} has only pickle weights ({PICKLE}), which can run code when "
                "loaded; convert them to safetensors, or opt in with allow_pickle=True (--allow-pickle)"
            )
        return [folder / PICKLE]
    raise InvalidRequest(f"Loading lora {name} failed: no {SAFETENSORS} in {folder}", status=404)


def _pattern(patterns: dict, layer: str, default: object) -> object:
    """PEFT's per-layer override: the value of the first key that matches the end of ``layer``'s name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", layer):
            return value
    return default
