"""What the registries' ``check_*`` functions share: a registered plugin object taken as an instance."""

from __future__ import annotations

import inspect
from typing import TypeVar

T = TypeVar("T")


def plugin_instance(name: str, obj: object, base: type[T], what: str) -> T:
    """``obj`` as a ``base`` instance: an instance as it is, a subclass instantiated.

    Raises:
        TypeError: anything else, naming the registration (``scorer 'name' must be a poolkit.Scorer``).
    """
    if inspect.isclass(obj) and issubclass(obj, base):
        obj = obj()
    if not isinstance(obj, base):
        raise TypeError(f"{what} '{name}' must be a poolkit.{base.__name__}, got {type(obj).__name__}")
    return obj
