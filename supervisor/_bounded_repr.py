"""A repr that is always short and never raises, for error messages and log records.

What a user hands us (a payload, a child's id, the error its code raised) can have a repr of
megabytes, or one that raises. Quoted as is, a 10 MB prompt makes a 10 MB error message and a
log line of that size per crash, and a ``__repr__`` that raises replaces the error being
reported with its own. Everything we quote goes through :func:`bounded_repr` instead.

It lives here, in the lower package, so that the package built on this one uses it too.
"""

from __future__ import annotations

import reprlib

__all__ = ["REPR_LIMIT", "BoundedRepr", "bounded_repr", "shorten"]

#: Characters of a repr we quote at most: enough to recognise a value, small enough for a log.
REPR_LIMIT = 200

#: What ends a text that was cut short.
_CUT = "..."


class _Repr(reprlib.Repr):
    """``reprlib``'s repr, which shortens strings and containers without building their whole
    repr first, with any other object's repr guarded and cut."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = limit

    def repr_instance(self, x: object, level: int) -> str:
        try:
            return shorten(repr(x), self.maxother)
        except Exception:
            return _unprintable(x)


_DEFAULT = _Repr(REPR_LIMIT)


def bounded_repr(value: object, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (ending in ``...`` when cut), or
    ``<unprintable TypeName>`` when the repr raises."""
    try:
        text = (_DEFAULT if limit == REPR_LIMIT else _Repr(limit)).repr(value)
    except Exception:
        text = _unprintable(value)
    return shorten(text, limit)


class BoundedRepr:
    """An argument of a log call that formats as :func:`bounded_repr` of ``value``, only when
    a record is emitted: a restart logged at INFO costs nothing while INFO is off."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return bounded_repr(self.value)


def shorten(text: str, limit: int = REPR_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(_CUT), 0)] + _CUT


def _unprintable(value: object) -> str:
    return f"<unprintable {type(value).__name__}>"
