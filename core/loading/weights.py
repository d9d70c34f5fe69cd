"""Reading checkpoint tensors and copying them into modules by name."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from ..contracts.errors import ModelLoadError

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def checkpoint_files(model_dir: Path, allow_pickle: bool = False) -> list[Path]:
    """The weight files of a checkpoint directory, safetensors first.

    Raises:
        ModelLoadError: no weights, or only pickle weights and ``allow_pickle`` is false.
    """
    model_dir = Path(model_dir)
    for index_name, single in ((SAFETENSORS_INDEX, "model.safetensors"), (PICKLE_INDEX, "pytorch_model.bin")):
        index = model_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [model_dir / s for s in shards]
        elif (model_dir / single).is_file():
            files = [model_dir / single]
        else:
            continue
        if single.endswith(".bin") and not allow_pickle:
            raise ModelLoadError(
                f"{model_dir} has only pickle weights ({files[0].name}), which can run code when loaded; "
                "convert them to safetensors, or opt in with allow_pickle=True (--allow-pickle)"
            )
        return files
    raise ModelLoadError(f"no model weights (model.safetensors or pytorch_model.bin) in {model_dir}")


def checkpoint_shapes(files: Iterable[Path]) -> dict[str, tuple[int, ...]] | None:
    """Every checkpoint tensor's shape, without loading a tensor.

    safetensors files give them in their header; pickle files (``allow_pickle``) are memory-mapped,
    which reads no tensor data either. ``None`` when a pickle file cannot be mapped (an old,
    non-zip ``torch.save``): the shapes are then unknown.

    Raises:
        ModelLoadError: a safetensors file whose header cannot be read.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    for name in f.keys():
                        shapes[name] = tuple(int(d) for d in f.get_slice(name).get_shape())
            except Exception as exc:  # OSError, or safetensors' own SafetensorError for a bad header
                raise ModelLoadError(f"cannot read the safetensors file {path}: {type(exc).__name__}: {exc}") from None
        else:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                logger.debug("cannot map %s (%s): its tensor shapes are not checked before loading", path, exc)
                return None
            shapes.update((name, tuple(t.shape)) for name, t in state.items() if isinstance(t, torch.Tensor))
    return shapes


def iter_tensors(files: Iterable[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from safetensors files, or pickle files with ``weights_only``."""
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            yield from state.items()


def legacy_norm_name(name: str) -> str:
    """Map TF-era LayerNorm names (``gamma``/``beta``) to ``weight``/``bias``."""
    if name.endswith(".gamma"):
        return name[: -len("gamma")] + "weight"
    if name.endswith(".beta"):
        return name[: -len("beta")] + "bias"
    return name


def base_model_name(
    name: str, prefix: str, classifier_prefixes: tuple[str, ...], unused: re.Pattern[str]
) -> str | None:
    """A checkpoint tensor's name in a base model, or ``None`` to skip it.

    Task-model checkpoints carry the backbone under ``prefix`` (HF's ``base_model_prefix``,
    ``"bert."``); names under ``classifier_prefixes`` are the classifiers a class loads itself; names that
    ``unused`` finds are classifiers and buffers the class does not use.
    """
    if name.startswith(prefix):
        name = name[len(prefix) :]
    if classifier_prefixes and name.startswith(classifier_prefixes):
        return name
    return None if unused.search(name) else name


#: How many unused tensor names :func:`warn_unused` shows.
SHOWN_UNUSED = 5


def warn_unused(names: Sequence[str], owner: str) -> None:
    """Warn that checkpoint tensors found no place in ``owner`` and were dropped.

    A checkpoint that carries weights its architecture does not use (a projection saved beside a
    ``Qwen3Model``'s weights) would otherwise give outputs other than its author's without a word,
    as transformers and vLLM warn about unexpected keys. Tensors an architecture skips on purpose
    (rotary ``inv_freq`` buffers, ``position_ids``, heads a base model does not run) never get
    here: its ``rename`` returns ``None`` for them.
    """
    if not names:
        return
    shown = ", ".join(names[:SHOWN_UNUSED])
    more = f" and {len(names) - SHOWN_UNUSED} more" if len(names) > SHOWN_UNUSED else ""
    logger.warning(
        "%d checkpoint tensor(s) unused by %s were dropped: %s%s; the outputs may differ from the checkpoint "
        "author's (does config.json name the right architecture?)",
        len(names),
        owner,
        shown,
        more,
    )


def load_into(
    module: torch.nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    rename: Callable[[str], str | None] = legacy_norm_name,
    optional: Callable[[str], bool] = lambda name: False,
) -> set[str]:
    """Copy named tensors into ``module``'s parameters and buffers; warn about the tensors that
    ``rename`` keeps but ``module`` has no place for (:func:`warn_unused`).

    Args:
        module: the target module.
        weights: ``(checkpoint name, tensor)`` pairs.
        rename: maps a checkpoint name to a parameter name, or ``None`` to skip the tensor on
            purpose (quietly).
        optional: parameters that may stay as initialised when the checkpoint lacks them.

    Returns:
        The parameter names that were loaded.

    Raises:
        ModelLoadError: a parameter is missing from the checkpoint or has the wrong shape.
    """
    targets = dict(module.named_parameters())
    targets.update(dict(module.named_buffers()))
    loaded: set[str] = set()
    unused: list[str] = []
    for ckpt_name, tensor in weights:
        name = rename(ckpt_name)
        if name is None:
            continue
        target = targets.get(name)
        if target is None:
            unused.append(ckpt_name)
            continue
        if tuple(target.shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"checkpoint tensor '{ckpt_name}' has shape {tuple(tensor.shape)}, "
                f"but the model expects {tuple(target.shape)} for '{name}'"
            )
        with torch.no_grad():
            target.copy_(tensor.to(target.dtype))
        loaded.add(name)
    warn_unused(unused, type(module).__name__)
    missing = sorted(n for n in dict(module.named_parameters()) if n not in loaded and not optional(n))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ModelLoadError(f"checkpoint lacks weights for {', '.join(missing[:5])}{more}")
    return loaded
