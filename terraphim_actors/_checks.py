"""Argument checks that fail with ``InvalidConfig``, for plain calls and as attrs validators.

One place decides what counts as a number of seconds or a count, so that every option of the
library accepts and refuses the same things (never ``bool``, never NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .errors import InvalidConfig

__all__ = ["check_count", "check_instance", "check_seconds", "validator"]


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a number of seconds, greater than 0 (or at least 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidConfig(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidConfig(f"{name} must be {bound}, got {value!r}")


def check_count(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    """Raise unless ``value`` is an ``int`` (not a ``bool``) of at least ``minimum`` (and at
    most ``maximum``, for a count that sizes a C-level structure)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidConfig(f"{name} must be an int >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise InvalidConfig(f"{name} must be at most {maximum}, got {value!r}")


def check_instance(name: str, value: object, kind: type) -> None:
    """Raise unless ``value`` is a ``kind``."""
    if not isinstance(value, kind):
        raise InvalidConfig(f"{name} must be a {kind.__name__}, got {value!r}")


def validator(
    check: Callable[..., None], *arguments: Any, optional: bool = False, **options: Any
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """An attrs validator running ``check`` on a field (``None`` passes when ``optional``)."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        check(attribute.name, value, *arguments, **options)

    return validate
