"""Checkpoint name mapping: where the layers a PEFT checkpoint names live in a loaded model.

A checkpoint names its layers as the fine-tuned model did (``encoder.layer.0.attention.self.query``,
``model.layers.0.self_attn.q_proj``); poolkit's model may keep them under other names, or fused
into one linear layer (BERT's query/key/value, a decoder's q/k/v and gate/up), or not at all (BERT's
``pooler.dense`` under an embedder). :class:`CheckpointNames` answers, for one model, the
:class:`Target` of each layer (the module and its output rows there) and checks a checkpoint
against the model's layers: :meth:`CheckpointNames.place` gives each factor pair its
:class:`Placement`, or refuses the checkpoint with the layer that does not fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from ..contracts.errors import InvalidRequest
from .checkpoint import PeftCheckpoint

if TYPE_CHECKING:
    from ..contracts.architecture import Architecture, LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where a checkpoint's linear layer lives in the model: the module, and its output rows there
    (piece ``piece`` of the ``pieces`` projections the module stacks)."""

    module: str
    row: int
    rows: int
    piece: int = 0
    pieces: int = 1


class Placement(NamedTuple):
    """One layer of a checkpoint, placed: where it goes, and its factors (``A [r, in]``, ``B [out, r]``)."""

    target: Target
    a: torch.Tensor
    b: torch.Tensor


class CheckpointNames:
    """The checkpoint names of one model's layers: its architecture (one whose ``takes_adapters``
    for served adapters), with the model's name and architecture name for the messages."""

    def __init__(self, arch: Architecture, name: str, architecture_name: str) -> None:
        self.arch = arch
        self.name = name
        self.architecture_name = architecture_name
        self.modules = dict(self.arch.named_modules())
        self._fused = _fused_parts(self.arch)

    @classmethod
    def of(cls, model: LoadedModel) -> CheckpointNames:
        """The names of a loaded model's layers."""
        return cls(model.architecture, model.name, model.architecture_name)

    def target(self, layer: str) -> Target | None:
        """Where the checkpoint's linear layer ``layer`` lives in the model: the architecture's own
        answer (:meth:`~poolkit.contracts.architecture.Architecture.adapter_target`) where it gives
        one, else its checkpoint names (``parameter_name``) and its fused layers' parts; ``None``
        for a layer the model skips. A ``Target`` whose module is no linear layer is refused."""
        placed = self.arch.adapter_target(layer)
        if placed is not None:
            path, piece, pieces = placed
            if not path:
                return None
            module = self.modules.get(path)
            if isinstance(module, nn.Embedding):
                return Target(path, 0, module.embedding_dim)
            if not isinstance(module, nn.Linear):
                return Target("", 0, 0)
            parts = getattr(module, "parts", None)  # the pieces' sizes where the module says them, else equal
            sizes = list(parts.values()) if parts and len(parts) == pieces else [module.out_features // pieces] * pieces
            return Target(path, sum(sizes[:piece]), sizes[piece], piece, pieces)
        name = _model_name(self.arch, layer)
        if name is None:
            return None
        fused = self._fused.get(name)
        if fused is not None:
            return fused
        module = self.modules.get(name)
        return Target(name if module is not None else "", 0, getattr(module, "out_features", 0))

    def saved_module(self, path: str) -> str | None:
        """The model's module for a module the checkpoint saves whole (``modules_to_save``), by
        its checkpoint path; ``None`` when the model has none."""
        placed = self.arch.adapter_target(path)
        for candidate in (path, _model_name(self.arch, path) or path, *([placed[0]] if placed and placed[0] else [])):
            try:
                self.arch.get_submodule(candidate)
            except AttributeError:
                continue
            return candidate
        return None

    def place(self, checkpoint: PeftCheckpoint) -> list[Placement]:
        """Where each of the checkpoint's layers goes, with its factors, checked (its saved modules too).

        Raises:
            InvalidRequest: a layer the model has no linear layer for, or of other sizes than the
                model's; a saved module the model does not have, or of another shape.
        """
        name = checkpoint.name
        out = []
        unknown = []
        for layer, (a, b) in checkpoint.factors.items():
            target = self.target(layer)
            if target is None:  # a layer whose weights the model does not use either (BERT's pooler, say)
                logger.info("LoRA adapter '%s': %s is not used by model '%s'", name, layer, self.name)
                continue
            module = self.modules.get(target.module)
            if not isinstance(module, (nn.Linear, nn.Embedding)):
                unknown.append(layer)
                continue
            width = module.in_features if isinstance(module, nn.Linear) else module.num_embeddings
            if a.shape[1] != width or b.shape[0] != target.rows:
                raise InvalidRequest(
                    f"LoRA adapter '{name}' does not fit model '{self.name}': its {layer} maps "
                    f"{a.shape[1]} -> {b.shape[0]} features, the model's layer {width} -> {target.rows}"
                )
            out.append(Placement(target, a, b))
        if unknown:
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise InvalidRequest(
                f"LoRA adapter '{name}' targets modules that model '{self.name}' ({self.architecture_name}) "
                f"has no linear layer for: {', '.join(unknown[:3])}{more}"
            )
        for key, tensor in checkpoint.saved.items():
            path, _, kind = key.rpartition(".")
            module_path = self.saved_module(path)
            if module_path is None:
                raise InvalidRequest(f"LoRA adapter '{name}' saves module '{path}', which model '{self.name}' does not have")
            param = getattr(self.arch.get_submodule(module_path), kind, None)
            if not isinstance(param, torch.Tensor) or param.shape != tensor.shape:
                have = "none" if not isinstance(param, torch.Tensor) else tuple(param.shape)
                raise InvalidRequest(
                    f"LoRA adapter '{name}' does not fit model '{self.name}': its {key} is {tuple(tensor.shape)}, the model's {have}"
                )
        return out


def _fused_parts(arch: nn.Module) -> dict[str, Target]:
    """The projections of the model's fused linear layers (a module with ``parts``, the built-in
    ``FusedLinear``: ``{checkpoint name relative to its parent: output rows}``), by the name a
    checkpoint gives each."""
    found: dict[str, Target] = {}
    for path, module in arch.named_modules():
        parts = getattr(module, "parts", None)
        if not isinstance(module, nn.Linear) or not parts:
            continue
        parent, row = path.rpartition(".")[0], 0
        for piece, (part, rows) in enumerate(parts.items()):
            found[f"{parent}.{part}" if parent else part] = Target(path, row, rows, piece, len(parts))
            row += rows
    return found


def _model_name(arch: nn.Module, layer: str) -> str | None:
    """A checkpoint layer's name in the model (a task model's prefix stripped, as its weights are);
    ``None`` for a layer whose weights the model skips."""
    rename = getattr(arch, "parameter_name", None)
    if rename is None:
        return layer
    name = rename(layer + ".weight")
    return None if name is None else name.removesuffix(".weight")
