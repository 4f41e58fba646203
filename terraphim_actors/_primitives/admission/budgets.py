"""Budgets: the admission budgets of one agent or pool, the hold a ``retry_after`` puts on
them, and the messages waiting for them, highest priority first."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..._core.bounded_repr import bounded_repr
from ...errors import InvalidConfig
from .budget import Budget, BudgetUsage

__all__ = ["AdmissionStats", "Budgets", "budgets_from"]

#: Weight of the newest handling time in the moving average.
_SMOOTHING = 0.2
#: Lanes of waiting messages, one per ``Priority`` value (LOW 0 to CRITICAL 3).
_LANES = 4


@attrs.frozen(kw_only=True)
class AdmissionStats:
    """A snapshot of one agent's (or pool's) admission budgets."""

    #: Each budget's use now, in the order given.
    budgets: tuple[BudgetUsage, ...]
    #: Messages waiting for admission now.
    waiting: int
    #: Messages let through, ever.
    admitted: int
    #: Messages that had to wait for admission, ever.
    waited: int
    #: Messages refused because their deadline would pass before they could be handled.
    refused: int
    #: Messages sent to the pool's fallback instead.
    fallbacks: int
    #: Seconds left of a hold a ``ctx.retry_after`` put on them (0 if none).
    held_for: float
    #: Moving average of seconds from admission to the end of the handler.
    handling_time: float


class Budgets:
    """The budgets one agent (or every member of one pool) is admitted by, as one policy: a
    message goes through when every budget would let it and no hold is on; it then counts in
    each.

    It also keeps what delivery needs to make messages wait for it: the waiting messages
    (opaque entries, by priority, first come first served within one), a moving average of
    how long an admitted message took to be handled (for the deadline estimate), the counts
    that statistics show, and the one wake-up timer delivery holds for it (``timer``).
    """

    __slots__ = (
        "_lanes",
        "admitted",
        "fallbacks",
        "handling_time",
        "held_until",
        "policies",
        "refused",
        "timer",
        "waited",
    )

    def __init__(self, policies: Iterable[Budget]) -> None:
        self.policies = tuple(policies)
        #: No admission before this Trio time (``retry_after``).
        self.held_until = -float("inf")
        self._lanes: tuple[deque[Any], ...] = tuple(deque() for _ in range(_LANES))
        #: Moving average of seconds from admission to the end of the handler (0 before any).
        self.handling_time = 0.0
        #: Messages let through, waited for admission, refused for their deadline, and sent to
        #: a fallback instead.
        self.admitted = 0
        self.waited = 0
        self.refused = 0
        self.fallbacks = 0
        #: Delivery's wake-up for the waiting messages, if one is set (opaque here).
        self.timer: Any = None

    def __repr__(self) -> str:
        return f"<Budgets {list(self.policies)!r}, {self.waiting} waiting>"

    # -- as an admission policy -----------------------------------------------------------------

    def would_admit(self, now: float) -> bool:
        return now >= self.held_until and all(p.would_admit(now) for p in self.policies)

    def admit(self, now: float) -> bool:
        if not self.would_admit(now):
            return False
        for policy in self.policies:
            policy.admit(now)
        self.admitted += 1
        return True

    def retry_at(self, now: float) -> float | None:
        """When every budget (and the hold) may let a message through, as far as time tells:
        the latest of their ``retry_at``\\ s; ``None`` if one would go now."""
        if self.would_admit(now):
            return None
        times = [p.retry_at(now) for p in self.policies]
        times.append(self.held_until if self.held_until > now else None)
        return max((t for t in times if t is not None), default=now)

    def admit_at(self, now: float, priority: int) -> float:
        """An estimate of when a message of ``priority`` arriving now would be let through,
        behind the messages waiting at its priority or above: the latest of each budget's
        estimate and the end of a hold."""
        ahead = sum(map(len, self._lanes[priority:]))
        handling_time = self.handling_time
        times = [policy.admit_at(now, ahead, handling_time) for policy in self.policies]
        return max(now, self.held_until, *times)

    def record(self, succeeded: bool | None, now: float) -> None:
        for policy in self.policies:
            policy.record(succeeded, now)

    def charge(self, tokens: int, now: float) -> None:
        for policy in self.policies:
            policy.charge(tokens, now)

    def release(self, now: float, handled_in: float) -> None:
        """A message admitted ``handled_in`` seconds ago has left its handler."""
        for policy in self.policies:
            policy.release(now)
        self.handling_time += _SMOOTHING * (handled_in - self.handling_time)

    def hold(self, until: float) -> None:
        """Admit nothing before ``until`` (a provider said: retry after)."""
        self.held_until = max(self.held_until, until)

    def stats(self, now: float) -> AdmissionStats:
        """A frozen snapshot at ``now``."""
        return AdmissionStats(
            budgets=tuple(policy.usage(now) for policy in self.policies),
            waiting=self.waiting,
            admitted=self.admitted,
            waited=self.waited,
            refused=self.refused,
            fallbacks=self.fallbacks,
            held_for=max(0.0, self.held_until - now),
            handling_time=self.handling_time,
        )

    # -- the waiting messages ---------------------------------------------------------------------

    def wait(self, entry: Any, priority: int, *, first: bool = False) -> None:
        """``entry`` waits behind those of its ``priority`` (ahead of them if ``first``)."""
        lane = self._lanes[priority]
        if first:
            lane.appendleft(entry)
        else:
            lane.append(entry)

    def next_waiting(self) -> Any:
        """The entry to admit next (highest priority, oldest), still waiting; ``None``."""
        for lane in reversed(self._lanes):
            if lane:
                return lane[0]
        return None

    def take_next(self) -> Any:
        """Remove and return :meth:`next_waiting`."""
        for lane in reversed(self._lanes):
            if lane:
                return lane.popleft()
        return None

    def take_all(self) -> list[Any]:
        """Remove and return every waiting entry, highest priority first."""
        entries = [entry for lane in reversed(self._lanes) for entry in lane]
        for lane in self._lanes:
            lane.clear()
        return entries

    def take_if(self, chosen: Callable[[Any], bool]) -> list[Any]:
        """Remove and return the waiting entries ``chosen`` picks, highest priority first;
        the others keep their places."""
        taken: list[Any] = []
        for lane in reversed(self._lanes):
            entries = list(lane)
            lane.clear()
            for entry in entries:
                (taken if chosen(entry) else lane).append(entry)
        return taken

    @property
    def waiting(self) -> int:
        """How many messages wait for admission."""
        return sum(map(len, self._lanes))


def budgets_from(admission: object) -> Budgets | None:
    """The budgets ``spawn(..., admission=...)`` gives: a list or tuple of budgets (``None``
    if it is empty).

    Raises:
        InvalidConfig: ``admission`` is not a list or tuple of ``RateLimit``,
            ``TokenBudget`` or ``ConcurrencyLimit`` objects.
    """
    if not isinstance(admission, list | tuple) or not all(
        isinstance(policy, Budget) for policy in admission
    ):
        raise InvalidConfig(
            "admission must be a list of RateLimit, TokenBudget or ConcurrencyLimit,"
            f" got {bounded_repr(admission)}"
        )
    return Budgets(admission) if admission else None
