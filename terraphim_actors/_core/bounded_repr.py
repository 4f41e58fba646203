"""Payloads and user errors in our error messages and log records: through a bounded repr.

``supervisor`` (the lower package, which imports nothing of ours) holds the one
implementation; this is where the modules of ``terraphim_actors`` take it from.
"""

from collections.abc import Callable
from typing import Any

from supervisor._bounded_repr import REPR_LIMIT, bounded_repr, shorten

__all__ = ["REPR_LIMIT", "LazyText", "bounded_repr", "shorten"]


class LazyText:
    """A log argument made only when a record is emitted: ``str()`` of it is ``make(value)``.
    A crash or a dead letter logged below the logger's level then formats nothing."""

    __slots__ = ("_make", "_value")

    def __init__(self, make: Callable[[Any], str], value: object) -> None:
        self._make = make
        self._value = value

    def __str__(self) -> str:
        return self._make(self._value)
