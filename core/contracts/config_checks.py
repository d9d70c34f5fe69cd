"""Checking a model's config against its checkpoint before the model is built.

A ``config.json`` can ask for anything: a million layers, a hidden size of ten million, no
attention heads. Building such a model allocates gigabytes (or never finishes) before loading
the weights would notice that they do not fit. So the loader first compares the config with
what the checkpoint holds — tensor names and shapes, read from the safetensors headers without
loading a tensor — as each architecture declares in its :class:`ConfigChecks`, and refuses a
mismatch in one line that names the field:

    config.json num_hidden_layers is 1000000, but the weights hold 2 layers
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Mapping, Tuple, Union

from .errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: A dimension of a declared shape: a config field, a fixed size, ``None`` (not checked), or a
#: tuple of fields and sizes whose product it is.
Dim = Union[str, int, None, Tuple[Union[str, int], ...]]
#: Checkpoint tensor name -> shape.
Shapes = Mapping[str, Tuple[int, ...]]

#: Size fields every config that has them must give as positive integers, whatever the
#: architecture (checked on the raw ``config.json``, before transformers builds a config object
#: from it, which divides by some of them).
COMMON_SIZES = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "head_dim",
)


def config_value(config: PretrainedConfig | Mapping[str, Any], name: str) -> Any:
    """The value of a config field (of a config object or a raw ``config.json`` dict); a dotted
    name reaches into a sub-config; ``None`` if absent."""
    value: Any = config
    for part in name.split("."):
        if value is None:
            return None
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    return value


def overridden_fields(overrides: Mapping[str, Any] | None) -> frozenset[str]:
    """The config fields ``hf_overrides`` sets, sub-config fields dotted (``text_config.hidden_size``)."""
    names = set()
    for key, value in (overrides or {}).items():
        names.add(key)
        if isinstance(value, dict):
            names.update(f"{key}.{sub}" for sub in value)
    return frozenset(names)


def source(name: str, overridden: Collection[str]) -> str:
    """Where a field's value came from, for messages: ``hf_overrides`` or ``config.json``."""
    return "hf_overrides" if name in overridden else "config.json"


def require_positive(config: PretrainedConfig | Mapping[str, Any], name: str, overridden: Collection[str] = ()) -> None:
    """Refuse a size field that is set to anything but a positive integer.

    Raises:
        ModelLoadError: naming the field and its value.
    """
    value = config_value(config, name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"{source(name, overridden)} {name} is {value!r}; it must be a positive integer")


def check_common_sizes(
    raw: Mapping[str, Any], aliases: Mapping[str, str] | None = None, overridden: Collection[str] = ()
) -> None:
    """Check the :data:`COMMON_SIZES` of a raw ``config.json`` dict and of its sub-config dicts.

    Args:
        raw: the parsed ``config.json``, ``hf_overrides`` applied.
        aliases: the config class's ``attribute_map`` (GPT-2's ``n_layer`` for
            ``num_hidden_layers``); the aliases of common sizes are checked too.
        overridden: fields ``hf_overrides`` set.

    Raises:
        ModelLoadError: a size that is not a positive integer.
    """
    names = list(COMMON_SIZES) + [alias for name, alias in (aliases or {}).items() if name in COMMON_SIZES]
    for name in names:
        require_positive(raw, name, overridden)
    for key, sub in raw.items():
        if key.endswith("_config") and isinstance(sub, dict):
            for name in COMMON_SIZES:
                require_positive(raw, f"{key}.{name}", overridden)


def layers_held(shapes: Shapes, pattern: str) -> int:
    """How many layers the checkpoint holds: one more than the highest index ``pattern`` finds."""
    found = re.compile(pattern)
    indices = [int(m.group(1)) for m in map(found.search, shapes) if m]
    return max(indices) + 1 if indices else 0


def _plural(n: int) -> str:
    return f"{n} layer" if n == 1 else f"{n} layers"


@dataclass(frozen=True)
class ConfigChecks:
    """What an architecture checks of its config against the checkpoint before it is built.

    Field names are config attributes; a dotted name reaches into a sub-config
    (``"text_config.hidden_size"``). A field the config does not have, or sets to ``None``, is not
    checked; nor is a tensor the checkpoint does not have.

    Attributes:
        sizes: fields that must be positive integers.
        multiples: ``(field, divisor)`` pairs: ``field`` must be a multiple of ``divisor``
            (``("hidden_size", "num_attention_heads")``).
        layers: layer-count field -> regular expression that finds the checkpoint tensors of a
            layer, its first group the layer index (``r"(?:^|\\.)encoder\\.layer\\.(\\d+)\\."``). The
            config must ask for as many layers as the checkpoint holds; for fewer only through
            ``hf_overrides`` (running the first layers on purpose).
        shapes: checkpoint tensor name -> its shape, one :data:`Dim` per dimension. The name
            matches a tensor called so, or ending in ``"." + name`` (a task checkpoint's ``bert.``
            prefix).

    Example:
        >>> class MyEncoder(Architecture):
        ...     config_checks = ConfigChecks(
        ...         sizes=("hidden_size", "num_hidden_layers", "vocab_size"),
        ...         layers={"num_hidden_layers": r"(?:^|\\.)layers\\.(\\d+)\\."},
        ...         shapes={"embed.weight": ("vocab_size", "hidden_size")},
        ...     )
    """

    sizes: Tuple[str, ...] = ()
    multiples: Tuple[Tuple[str, str], ...] = ()
    layers: Mapping[str, str] = field(default_factory=dict)
    shapes: Mapping[str, Tuple[Dim, ...]] = field(default_factory=dict)

    def check(self, config: PretrainedConfig, shapes: Shapes | None, overridden: Collection[str] = ()) -> None:
        """Refuse ``config`` where it does not fit the checkpoint's tensor ``shapes``.

        Args:
            config: the Hugging Face config, ``hf_overrides`` applied.
            shapes: checkpoint tensor name -> shape; ``None`` when unknown (then only the sizes
                and multiples are checked).
            overridden: fields ``hf_overrides`` set, named so in messages.

        Raises:
            ModelLoadError: one line naming the field.
        """
        for name in self.sizes:
            require_positive(config, name, overridden)
        for name, divisor in self.multiples:
            value, by = config_value(config, name), config_value(config, divisor)
            if isinstance(value, int) and isinstance(by, int) and by > 0 and value % by:
                raise ModelLoadError(
                    f"{source(name, overridden)} {name} {value} is not a multiple of {divisor} {by}"
                )
        if shapes is None:
            return
        for name, pattern in self.layers.items():
            self._check_layers(config, name, layers_held(shapes, pattern), overridden)
        for suffix, dims in self.shapes.items():
            for tensor, shape in shapes.items():
                if tensor == suffix or tensor.endswith("." + suffix):
                    self._check_shape(config, tensor, tuple(shape), dims, overridden)

    @staticmethod
    def _check_layers(config: PretrainedConfig, name: str, held: int, overridden: Collection[str]) -> None:
        wanted = config_value(config, name)
        if not isinstance(wanted, int) or wanted == held:
            return
        where = source(name, overridden)
        if wanted > held:
            raise ModelLoadError(f"{where} {name} is {wanted}, but the weights hold {_plural(held)}")
        if name not in overridden:
            raise ModelLoadError(
                f"{where} {name} is {wanted}, but the weights hold {_plural(held)}; "
                f"to run only the first {wanted}, set {name} with hf_overrides"
            )

    @staticmethod
    def _check_shape(
        config: PretrainedConfig, tensor: str, shape: tuple[int, ...], dims: tuple[Dim, ...], overridden: Collection[str]
    ) -> None:
        if len(shape) != len(dims):
            return  # not the tensor the declaration describes; loading the weights will say
        for dim, held in zip(dims, shape):
            if dim is None:
                continue
            parts = dim if isinstance(dim, tuple) else (dim,)
            values = [p if isinstance(p, int) else config_value(config, p) for p in parts]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                continue
            expected = 1
            for v in values:
                expected *= v
            if expected == held:
                continue
            fields = [p for p in parts if isinstance(p, str)]
            if not fields:
                continue  # a fixed size: loading the weights will say
            where = source(fields[0], overridden) if len(fields) == 1 else (
                "hf_overrides" if any(f in overridden for f in fields) else "config.json"
            )
            if len(parts) == 1:
                what = f"{where} {fields[0]} is {expected}"
            else:
                names = " * ".join(str(p) for p in parts)
                what = f"{where} {names} is {' * '.join(map(str, values))} = {expected}"
            raise ModelLoadError(f"{what}, but the weights hold {held} ('{tensor}' has shape {shape})")
