"""Argument checks that fail with ``InvalidSpec``.

Never ``bool`` for a number, never NaN or an infinity (``Shutdown.INFINITY`` says "for ever"),
and never more than a bound that keeps the arithmetic done later with an accepted value (a
deadline, a backoff) finite: a value that passes never fails later.
"""

from __future__ import annotations

import sys
from typing import Any

import attrs

from ._bounded_repr import bounded_repr
from ._errors import InvalidSpec

__all__ = [
    "MAX_COUNT",
    "MAX_FACTOR",
    "MAX_SECONDS",
    "check_count",
    "check_factor",
    "check_seconds",
    "instance_of",
    "is_callable",
    "positive_count",
    "seconds",
]

#: The longest time any option takes: 10**9 s, about 31 years, "for ever" for a restart or a
#: shutdown, and far from where a deadline stops being exact.
MAX_SECONDS = 1e9
#: The largest count any option takes: the most a Python container can hold.
MAX_COUNT = sys.maxsize
#: The largest factor (a backoff multiplier, a jitter fraction) any option takes: past it a
#: backoff reaches any cap within a few restarts anyway.
MAX_FACTOR = 1000.0


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpec(f"{name} must be a number of seconds, got {bounded_repr(value)}")
    if not 0 < value <= MAX_SECONDS and not (allow_zero and value == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidSpec(
            f"{name} must be a number of seconds {bound} and at most {MAX_SECONDS:g},"
            f" got {bounded_repr(value)}"
        )


def check_count(name: str, value: object, *, minimum: int = 0) -> None:
    """Raise unless ``value`` is an ``int`` (not a ``bool``) from ``minimum`` to ``MAX_COUNT``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_COUNT:
        raise InvalidSpec(
            f"{name} must be an int from {minimum} to {MAX_COUNT}, got {bounded_repr(value)}"
        )


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a number of seconds above 0 (or at least 0), at most
    ``MAX_SECONDS``."""
    _check_seconds(name, value, allow_zero=allow_zero)


def check_factor(name: str, value: object, *, minimum: float) -> None:
    """Raise unless ``value`` is a number (not a ``bool``) from ``minimum`` to ``MAX_FACTOR``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not minimum <= value <= MAX_FACTOR
    ):
        raise InvalidSpec(
            f"{name} must be a number from {minimum:g} to {MAX_FACTOR:g}, got {bounded_repr(value)}"
        )


def seconds(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a number of seconds above 0."""
    _check_seconds(attribute.name, value, allow_zero=False)


def positive_count(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: an int of at least 1."""
    check_count(attribute.name, value, minimum=1)


def instance_of(kind: type, *, optional: bool = False) -> Any:
    """attrs validator: an instance of ``kind`` (or ``None`` when ``optional``)."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, kind):
            raise InvalidSpec(
                f"{attribute.name} must be a {kind.__name__}, got {bounded_repr(value)}"
            )

    return validate


def is_callable(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a callable."""
    if not callable(value):
        raise InvalidSpec(f"{attribute.name} must be callable, got {bounded_repr(value)}")
