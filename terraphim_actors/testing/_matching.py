"""What a probe's expectation accepts: a type, a tuple of types, a predicate, or a value.

One small rule shared by every ``expect*`` method, so that ``expect(str)``,
``expect(lambda message: message > 3)`` and ``expect("hello")`` read the way a test means them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._core.bounded_repr import bounded_repr

__all__ = ["ANYTHING", "describe", "matches"]


class _Anything:
    """The matcher that accepts every message (the default of ``expect``)."""

    def __repr__(self) -> str:
        return "any message"


#: Accepts every message.
ANYTHING: Any = _Anything()


def matches(matcher: object, payload: object) -> bool:
    """Whether ``payload`` satisfies ``matcher``.

    A class or a tuple of classes is an ``isinstance`` test, another callable a predicate, and
    any other value must compare equal (as Akka's ``expectMsg(obj)`` does).
    """
    if matcher is ANYTHING:
        return True
    if isinstance(matcher, type) or (
        isinstance(matcher, tuple) and matcher and all(isinstance(kind, type) for kind in matcher)
    ):
        return isinstance(payload, matcher)
    if callable(matcher):
        predicate: Callable[[object], object] = matcher
        return bool(predicate(payload))
    return payload == matcher


def describe(matcher: object) -> str:
    """How an expectation failure names what was expected."""
    if isinstance(matcher, type):
        return f"a message of type {matcher.__name__}"
    if isinstance(matcher, tuple) and matcher and all(isinstance(kind, type) for kind in matcher):
        return "a message of type " + " or ".join(kind.__name__ for kind in matcher)
    if matcher is ANYTHING:
        return "any message"
    if callable(matcher):
        name = getattr(matcher, "__name__", None)
        if name is None:
            name = bounded_repr(matcher)
        return f"a message accepted by {name}"
    return f"a message equal to {bounded_repr(matcher)}"
