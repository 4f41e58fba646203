"""What every admission budget answers, and the frozen record of its use."""

from __future__ import annotations

import attrs

__all__ = ["Budget", "BudgetUsage"]


@attrs.frozen(kw_only=True)
class BudgetUsage:
    """One budget's use at a moment: ``used`` of ``limit`` (requests or tokens in the last
    ``per`` seconds, or messages in handlers at once, ``per`` then ``None``)."""

    #: ``"requests"``, ``"tokens"`` or ``"concurrent"``.
    kind: str
    used: int
    limit: int
    per: float | None


class Budget:
    """The base of a budget: an ``AdmissionPolicy`` (``admit``, ``would_admit``,
    ``retry_at``, ``record``) that is also told what a message cost (:meth:`charge`) and when
    one it let through left its handler (:meth:`release`). Each budget needs only some of
    these; the others do nothing.

    One object is one budget: given to a pool, it is shared by the members; given to two
    agents, by both.
    """

    __slots__ = ()

    def would_admit(self, now: float) -> bool:
        """Whether :meth:`admit` would let a message through at ``now`` (counts nothing)."""
        raise NotImplementedError

    def admit(self, now: float) -> bool:
        """Let a message through at ``now`` if the budget allows, and count it."""
        raise NotImplementedError

    def retry_at(self, now: float) -> float | None:
        """The earliest time a message refused at ``now`` may be let through (``now`` itself
        when that hangs on messages under way); ``None`` if one would be now."""
        raise NotImplementedError

    def admit_at(self, now: float, ahead: int, handling_time: float) -> float:
        """An estimate of when a message with ``ahead`` others to be let through first would
        be let through, messages taking ``handling_time`` seconds in their handlers: for a
        deadline that cannot be met. Here, when the next place frees (:meth:`retry_at`)."""
        ready = self.retry_at(now)
        return now if ready is None else ready

    def record(self, succeeded: bool | None, now: float) -> None:
        """How a message it let through ended: no budget here cares."""

    def charge(self, tokens: int, now: float) -> None:
        """A message it let through cost ``tokens`` (``ctx.charge``)."""

    def release(self, now: float) -> None:
        """A message it let through has left its handler (or never reached one)."""

    def usage(self, now: float) -> BudgetUsage:
        """Its use at ``now``."""
        raise NotImplementedError
