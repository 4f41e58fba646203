"""Argument checks, for plain calls and as attrs validators, failing with a given error class.

One place decides what counts as a number of seconds, a count or a factor, so that every option
of this package and of the package built on it accepts and refuses the same things: never
``bool``, never NaN or an infinity (``Shutdown.INFINITY`` says "for ever"), and never more than
a bound that keeps the arithmetic done later with an accepted value (a deadline, a backoff, a due
time) finite and exact. A value that passes never fails later.

The checks are one implementation, :class:`ArgumentChecks`, made for an error class: here they
raise :class:`InvalidSpec`, and the package built on this one binds the same checks to its own
error class. They live here, in the lower package, because this one imports nothing of that one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import attrs

from ._bounded_repr import bounded_repr
from ._errors import InvalidSpec

__all__ = [
    "MAX_COUNT",
    "MAX_FACTOR",
    "MAX_SECONDS",
    "ArgumentChecks",
    "check_callable",
    "check_count",
    "check_factor",
    "check_instance",
    "check_seconds",
    "instance_of",
    "is_callable",
    "seconds",
]

#: The longest duration, delay or period any option takes: 10**9 s, about 31 years, which is
#: "for ever" for a message, a restart or a shutdown, and far from where a deadline stops being
#: exact.
MAX_SECONDS = 1e9
#: The largest count any option takes: the most a Python container can hold, so that a count
#: can size a structure (a ``deque``'s ``maxlen``, a window) and be compared without overflow.
MAX_COUNT = sys.maxsize
#: The largest factor (a backoff multiplier, a jitter fraction) any option takes: past it a
#: backoff reaches any cap within a few retries or restarts anyway.
MAX_FACTOR = 1000.0

#: An attrs validator: called with the instance, the field and the value.
Validator = Callable[[object, "attrs.Attribute[Any]", object], None]


class ArgumentChecks:
    """The argument checks, raising ``error`` (an exception class taking one message).

    A module binds the methods it uses to names of its own (``check_seconds =
    CHECKS.check_seconds``), so that a check costs one call, as a plain function would.
    """

    __slots__ = ("error",)

    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    def check_seconds(
        self, name: str, value: object, *, allow_zero: bool = False, maximum: float = MAX_SECONDS
    ) -> None:
        """Raise unless ``value`` is a number of seconds, greater than 0 (or at least 0) and
        at most ``maximum``."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"{name} must be a number of seconds, got {bounded_repr(value)}")
        if not 0 < value <= maximum and not (allow_zero and value == 0):
            bound = ">= 0" if allow_zero else "> 0"
            raise self.error(
                f"{name} must be a number of seconds {bound} and at most {maximum:g},"
                f" got {bounded_repr(value)}"
            )

    def check_count(
        self, name: str, value: object, *, minimum: int = 0, maximum: int = MAX_COUNT
    ) -> None:
        """Raise unless ``value`` is an ``int`` (not a ``bool``) from ``minimum`` to
        ``maximum``."""
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.error(
                f"{name} must be an int from {minimum} to {maximum}, got {bounded_repr(value)}"
            )

    def check_factor(
        self, name: str, value: object, *, minimum: float, maximum: float = MAX_FACTOR
    ) -> None:
        """Raise unless ``value`` is a number (not a ``bool``) from ``minimum`` to
        ``maximum``."""
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not minimum <= value <= maximum
        ):
            raise self.error(
                f"{name} must be a number from {minimum:g} to {maximum:g},"
                f" got {bounded_repr(value)}"
            )

    def check_instance(self, name: str, value: object, kind: type) -> None:
        """Raise unless ``value`` is a ``kind``."""
        if not isinstance(value, kind):
            raise self.error(f"{name} must be a {kind.__name__}, got {bounded_repr(value)}")

    def check_callable(self, name: str, value: object) -> None:
        """Raise unless ``value`` is callable."""
        if not callable(value):
            raise self.error(f"{name} must be callable, got {bounded_repr(value)}")

    @staticmethod
    def validator(
        check: Callable[..., None], *arguments: Any, optional: bool = False, **options: Any
    ) -> Validator:
        """An attrs validator running ``check`` on a field (``None`` passes when
        ``optional``): ``check(field name, value, *arguments, **options)``."""

        def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
            if value is None and optional:
                return
            check(attribute.name, value, *arguments, **options)

        return validate


_CHECKS = ArgumentChecks(InvalidSpec)

check_count = _CHECKS.check_count
check_seconds = _CHECKS.check_seconds
check_factor = _CHECKS.check_factor
check_instance = _CHECKS.check_instance
check_callable = _CHECKS.check_callable

#: attrs validator: a number of seconds above 0.
seconds = _CHECKS.validator(check_seconds)
#: attrs validator: a callable.
is_callable = _CHECKS.validator(_CHECKS.check_callable)


def instance_of(kind: type, *, optional: bool = False) -> Validator:
    """attrs validator: an instance of ``kind`` (or ``None`` when ``optional``)."""
    return _CHECKS.validator(_CHECKS.check_instance, kind, optional=optional)
