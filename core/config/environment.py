"""Limits and settings read from environment variables, with one rule and one wording."""

from __future__ import annotations

import math
import os
from typing import overload

from ..contracts.errors import InvalidRequest


@overload
def env_number(name: str, default: int, what: str = ..., *, integer: bool = ..., positive: bool = ...) -> int: ...
@overload
def env_number(name: str, default: float, what: str = ..., *, integer: bool = ..., positive: bool = ...) -> float: ...
@overload
def env_number(name: str, default: None, what: str = ..., *, integer: bool = ..., positive: bool = ...) -> float | None: ...


def env_number(name, default, what="a positive number", *, integer=False, positive=True):
    """The number the environment variable ``name`` holds, else ``default`` (unset or empty).

    Args:
        what: what the value must be, for the message (``"a positive integer"``).
        integer: the value is a whole number.
        positive: the value must be above 0 (and, for a float, finite).

    Raises:
        InvalidRequest: ``"{name} must be {what}, got {value!r}"``.
    """
    value = os.environ.get(name)
    if not value or not value.strip():
        return default
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        number = None
    if number is None or (positive and not (number > 0 and math.isfinite(number))):
        raise InvalidRequest(f"{name} must be {what}, got {value!r}")
    return number
