"""Argument checks that fail with ``InvalidSpec`` (never ``bool`` for a number, never NaN)."""

from __future__ import annotations

from typing import Any

import attrs

from ._errors import InvalidSpec

__all__ = [
    "check_count",
    "check_seconds",
    "instance_of",
    "is_callable",
    "positive_count",
    "seconds",
    "seconds_or_zero",
]


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidSpec(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidSpec(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_count(name: str, value: object, *, minimum: int = 0) -> None:
    """Raise unless ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSpec(f"{name} must be an int >= {minimum}, got {value!r}")


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a number of seconds above 0 (or at least 0)."""
    _check_seconds(name, value, allow_zero=allow_zero)


def seconds(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a number of seconds above 0."""
    _check_seconds(attribute.name, value, allow_zero=False)


def seconds_or_zero(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a number of seconds, 0 allowed."""
    _check_seconds(attribute.name, value, allow_zero=True)


def positive_count(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: an int of at least 1."""
    check_count(attribute.name, value, minimum=1)


def instance_of(kind: type, *, optional: bool = False) -> Any:
    """attrs validator: an instance of ``kind`` (or ``None`` when ``optional``)."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, kind):
            raise InvalidSpec(f"{attribute.name} must be a {kind.__name__}, got {value!r}")

    return validate


def is_callable(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a callable."""
    if not callable(value):
        raise InvalidSpec(f"{attribute.name} must be callable, got {value!r}")
