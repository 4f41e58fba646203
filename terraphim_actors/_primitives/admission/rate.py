"""RateLimit: at most so many admissions in any window of so many seconds (an LLM provider's
requests per minute)."""

from __future__ import annotations

from collections import deque

from ..._core.checks import check_count, check_seconds
from .budget import Budget, BudgetUsage

__all__ = ["RateLimit"]


class RateLimit(Budget):
    """At most ``requests`` messages admitted in any window of ``per`` seconds.

    A sliding window, not a token bucket: it keeps the times of the admissions still inside
    the window, so a message refused now may go when the oldest of them ages out.

    Raises:
        InvalidConfig: ``requests`` is not a positive int, or ``per`` not a positive, finite
            number of seconds.
    """

    __slots__ = ("_admitted", "per", "requests")

    def __init__(self, requests: int, per: float = 60.0) -> None:
        check_count("requests", requests, minimum=1)
        check_seconds("per", per)
        self.requests = requests
        self.per = float(per)
        #: Times of the admissions inside the window, oldest first.
        self._admitted: deque[float] = deque()

    def __repr__(self) -> str:
        return f"RateLimit(requests={self.requests}, per={self.per:g})"

    def _age(self, now: float) -> deque[float]:
        # An admission leaves the window at ``admitted + per``, the very sum ``retry_at``
        # names: ``admitted <= now - per`` rounds otherwise (4.6 - 1.0 < 3.6), and refusing
        # at the time named, with no later time to name, would leave the waiting waiting.
        admitted = self._admitted
        per = self.per
        while admitted and admitted[0] + per <= now:
            admitted.popleft()
        return admitted

    def would_admit(self, now: float) -> bool:
        return len(self._age(now)) < self.requests

    def admit(self, now: float) -> bool:
        if not self.would_admit(now):
            return False
        self._admitted.append(now)
        return True

    def retry_at(self, now: float) -> float | None:
        if self.would_admit(now):
            return None
        # Full: the next place frees when the oldest admission leaves the window.
        return self._admitted[0] + self.per

    def admit_at(self, now: float, ahead: int, handling_time: float) -> float:
        # The window repeats every ``per``: the n-th admission from the window's oldest on
        # comes ``per`` after the one ``requests`` before it.
        admitted = self._age(now)
        rounds, slot = divmod(len(admitted) + ahead, self.requests)
        return (admitted[slot] if slot < len(admitted) else now) + rounds * self.per

    def usage(self, now: float) -> BudgetUsage:
        return BudgetUsage(
            kind="requests", used=len(self._age(now)), limit=self.requests, per=self.per
        )
