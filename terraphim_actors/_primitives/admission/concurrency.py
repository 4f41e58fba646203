"""ConcurrencyLimit: at most so many messages in handlers at once (an LLM provider's
concurrent requests)."""

from __future__ import annotations

from ..._core.checks import check_count
from .budget import Budget, BudgetUsage

__all__ = ["ConcurrencyLimit"]


class ConcurrencyLimit(Budget):
    """At most ``limit`` messages admitted and not yet out of their handlers, at once: a
    message counts from its admission (it may wait in a mailbox first) until its handler ends,
    however it ends. Given to a pool, it bounds the members' handlers together.

    Raises:
        InvalidConfig: ``limit`` is not a positive int.
    """

    __slots__ = ("_in_flight", "limit")

    def __init__(self, limit: int) -> None:
        check_count("limit", limit, minimum=1)
        self.limit = limit
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"ConcurrencyLimit({self.limit})"

    def would_admit(self, now: float) -> bool:
        return self._in_flight < self.limit

    def admit(self, now: float) -> bool:
        if self._in_flight >= self.limit:
            return False
        self._in_flight += 1
        return True

    def release(self, now: float) -> None:
        if self._in_flight:
            self._in_flight -= 1

    def retry_at(self, now: float) -> float | None:
        # Full: a place frees when a message under way ends, at no time known now.
        return None if self.would_admit(now) else now

    def admit_at(self, now: float, ahead: int, handling_time: float) -> float:
        # Every ``limit`` messages under way or ahead hold the places one handling time more.
        return now + (self._in_flight + ahead) // self.limit * handling_time

    def usage(self, now: float) -> BudgetUsage:
        return BudgetUsage(kind="concurrent", used=self._in_flight, limit=self.limit, per=None)
