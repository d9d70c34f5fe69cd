"""Typed registries: name -> object, remembering which plugin supplied each entry."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from ..contracts.errors import PluginError, UnknownName

logger = logging.getLogger(__name__)

T = TypeVar("T")

RUNTIME_PLUGIN = "<runtime>"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and the plugin that registered it."""

    name: str
    obj: T
    plugin: str


class Registry(Generic[T]):
    """A listable mapping from names to plugin-provided objects of one kind.

    Args:
        kind: what the registry holds, singular, for messages (``"pooler"``).
        check: turns what a plugin passed into the stored object, raising ``TypeError`` naming
            the offender when it is not the right kind.
        normalize: maps a name to its canonical key (poolers are upper case, ``"mean"`` finds
            ``"MEAN"``).
    """

    def __init__(
        self,
        kind: str,
        check: Callable[[str, Any], T],
        normalize: Callable[[str], str] = str,
    ) -> None:
        self.kind = kind
        self._check = check
        self._normalize = normalize
        self._entries: dict[str, Entry[T]] = {}
        #: Called with (kind, name) when a lookup fails, to say which broken plugin may have
        #: provided the name; set by the plugin manager.
        self.explain_missing: Callable[[str, str], str | None] = lambda kind, name: None

    def key(self, name: str) -> str:
        return self._normalize(name)

    def validate(self, name: str, obj: Any) -> T:
        """Check one registration without storing it; returns the object to store."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} names must be non-empty strings, got {name!r}")
        return self._check(name, obj)

    def add(self, name: str, obj: Any, plugin: str, override: bool = False) -> None:
        """Validate and store ``obj`` under ``name``; a clash is an error unless ``override``."""
        stored = self.validate(name, obj)
        key = self.key(name)
        previous = self._entries.get(key)
        if previous is not None and not override:
            raise PluginError(
                f"{self.kind} '{key}' from plugin '{plugin}' clashes with the one registered by "
                f"plugin '{previous.plugin}'; pass override=True to replace it"
            )
        if previous is not None:
            # Replacing another plugin's entry (a built-in, say) changes results: say so by default.
            level = logging.INFO if previous.plugin == plugin else logging.WARNING
            logger.log(
                level, "%s '%s' from plugin '%s' overrides plugin '%s'", self.kind, key, plugin, previous.plugin
            )
        self._entries[key] = Entry(key, stored, plugin)

    def remove(self, name: str) -> None:
        self._entries.pop(self.key(name), None)

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name lists what could have been meant."""
        found = self._entries.get(name) if isinstance(name, str) else None  # a name as registered: no normalizing
        return found.obj if found is not None else self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        if not isinstance(name, str):
            raise UnknownName(f"{self.kind} names are strings, got {type(name).__name__} {name!r}")
        key = self.key(name)
        try:
            return self._entries[key]
        except KeyError:
            pass
        message = f"unknown {self.kind} '{name}'"
        close = difflib.get_close_matches(key, list(self._entries), n=1)
        if close:
            message += f" (did you mean '{close[0]}'?)"
        message += f"; available: {', '.join(sorted(self._entries)) or 'none'}"
        why = self.explain_missing(self.kind, key)
        if why:
            message += f". {why}"
        raise UnknownName(message)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[k] for k in sorted(self._entries)]
