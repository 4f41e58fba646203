"""TokenBudget: admit while the tokens handlers charged in the last so many seconds are below
a limit (an LLM provider's tokens per minute)."""

from __future__ import annotations

from collections import deque

from ..._core.checks import check_count, check_seconds
from .budget import Budget, BudgetUsage

__all__ = ["TokenBudget"]


class TokenBudget(Budget):
    """Admits while the tokens charged (``ctx.charge(tokens=...)``) in the last ``per``
    seconds are below ``tokens``.

    What a message costs is known only once its handler has run, so the budget is checked
    before and charged after: the message that crosses the limit is let through, and its
    overdraft delays later admissions until enough of the charges have aged out.

    Raises:
        InvalidConfig: ``tokens`` is not a positive int, or ``per`` not a positive, finite
            number of seconds.
    """

    __slots__ = ("_charges", "_spent", "per", "tokens")

    def __init__(self, tokens: int, per: float = 60.0) -> None:
        check_count("tokens", tokens, minimum=1)
        check_seconds("per", per)
        self.tokens = tokens
        self.per = float(per)
        #: (time, tokens) of each charge inside the window, oldest first.
        self._charges: deque[tuple[float, int]] = deque()
        #: Their sum.
        self._spent = 0

    def __repr__(self) -> str:
        return f"TokenBudget(tokens={self.tokens}, per={self.per:g})"

    def _age(self, now: float) -> int:
        # A charge ages out at ``charged_at + per``, the sum ``retry_at`` names (not
        # ``charged_at <= now - per``, which rounds otherwise), as in ``RateLimit``.
        charges = self._charges
        per = self.per
        while charges and charges[0][0] + per <= now:
            self._spent -= charges.popleft()[1]
        return self._spent

    def would_admit(self, now: float) -> bool:
        return self._age(now) < self.tokens

    def admit(self, now: float) -> bool:
        return self.would_admit(now)

    def charge(self, tokens: int, now: float) -> None:
        if tokens:
            self._charges.append((now, tokens))
            self._spent += tokens

    def retry_at(self, now: float) -> float | None:
        spent = self._age(now)
        if spent < self.tokens:
            return None
        # The time at which enough of the oldest charges have aged out to go below the limit.
        for charged_at, tokens in self._charges:
            spent -= tokens
            if spent < self.tokens:
                return charged_at + self.per
        raise AssertionError("unreachable: every charge ages out")  # pragma: no cover

    def usage(self, now: float) -> BudgetUsage:
        return BudgetUsage(kind="tokens", used=self._age(now), limit=self.tokens, per=self.per)
