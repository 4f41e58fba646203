"""Argument checks that fail with ``InvalidConfig``, for plain calls and as attrs validators.

One place decides what counts as a number of seconds, a count or a factor, so that every option
of the library accepts and refuses the same things: never ``bool``, never NaN or an infinity,
and never more than a bound that keeps the arithmetic done later with an accepted value (a
deadline, a backoff, a due time) finite and exact. A value that passes never fails later.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import attrs

from ..errors import InvalidConfig
from .bounded_repr import bounded_repr

__all__ = [
    "MAX_COUNT",
    "MAX_FACTOR",
    "MAX_SECONDS",
    "check_count",
    "check_factor",
    "check_instance",
    "check_seconds",
    "validator",
]

#: The longest duration, delay or period any option takes: 10**9 s, about 31 years, which is
#: "for ever" for a message or a restart, and far from where a deadline stops being exact.
MAX_SECONDS = 1e9
#: The largest count any option takes: the most a Python container can hold, so that a count
#: can size a structure (a ``deque``'s ``maxlen``, a window) and be compared without overflow.
MAX_COUNT = sys.maxsize
#: The largest factor (a backoff multiplier, a jitter fraction) any option takes: past it a
#: backoff reaches any cap within a few retries anyway.
MAX_FACTOR = 1000.0


def check_seconds(
    name: str, value: object, *, allow_zero: bool = False, maximum: float = MAX_SECONDS
) -> None:
    """Raise unless ``value`` is a number of seconds, greater than 0 (or at least 0) and at
    most ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidConfig(f"{name} must be a number of seconds, got {bounded_repr(value)}")
    if not 0 < value <= maximum and not (allow_zero and value == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidConfig(
            f"{name} must be a number of seconds {bound} and at most {maximum:g},"
            f" got {bounded_repr(value)}"
        )


def check_count(name: str, value: object, *, minimum: int, maximum: int = MAX_COUNT) -> None:
    """Raise unless ``value`` is an ``int`` (not a ``bool``) from ``minimum`` to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidConfig(
            f"{name} must be an int from {minimum} to {maximum}, got {bounded_repr(value)}"
        )


def check_factor(name: str, value: object, *, minimum: float, maximum: float = MAX_FACTOR) -> None:
    """Raise unless ``value`` is a number (not a ``bool``) from ``minimum`` to ``maximum``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not minimum <= value <= maximum
    ):
        raise InvalidConfig(
            f"{name} must be a number from {minimum:g} to {maximum:g}, got {bounded_repr(value)}"
        )


def check_instance(name: str, value: object, kind: type) -> None:
    """Raise unless ``value`` is a ``kind``."""
    if not isinstance(value, kind):
        raise InvalidConfig(f"{name} must be a {kind.__name__}, got {bounded_repr(value)}")


def validator(
    check: Callable[..., None], *arguments: Any, optional: bool = False, **options: Any
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """An attrs validator running ``check`` on a field (``None`` passes when ``optional``)."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        check(attribute.name, value, *arguments, **options)

    return validate
