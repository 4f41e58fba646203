"""AdmissionGate: an endpoint's admission once it has budgets: its own circuit breaker ahead
of the budgets it shares with its pool."""

from __future__ import annotations

from ..circuit import CircuitBreaker
from .budgets import Budgets

__all__ = ["AdmissionGate"]


class AdmissionGate:
    """The ``AdmissionPolicy`` of an endpoint with budgets: a message goes through when the
    endpoint's circuit (each member of a pool has its own) and the budgets (one for the whole
    pool) both let it, and counts in both only then (a half-open circuit's trial is not spent
    on a message the budgets refuse).

    Delivery tells the two apart when they refuse (:meth:`circuit_refuses`): an open circuit
    fails fast, as without budgets; spent budgets make the message wait.
    """

    __slots__ = ("breaker", "budgets")

    def __init__(self, budgets: Budgets, breaker: CircuitBreaker | None = None) -> None:
        self.budgets = budgets
        #: The endpoint's circuit breaker, if one is configured (made with the gate).
        self.breaker = breaker

    def __repr__(self) -> str:
        return f"<AdmissionGate {self.breaker!r} {self.budgets!r}>"

    def circuit_refuses(self, now: float) -> bool:
        """Whether the circuit, not the budgets, keeps a message out at ``now``."""
        breaker = self.breaker
        return breaker is not None and not breaker.would_admit(now)

    def would_admit(self, now: float) -> bool:
        return not self.circuit_refuses(now) and self.budgets.would_admit(now)

    def admit(self, now: float) -> bool:
        if not self.would_admit(now):
            return False
        if self.breaker is not None:
            self.breaker.admit(now)
        return self.budgets.admit(now)

    def retry_at(self, now: float) -> float | None:
        breaker_at = None if self.breaker is None else self.breaker.retry_at(now)
        budgets_at = self.budgets.retry_at(now)
        if breaker_at is None:
            return budgets_at
        return breaker_at if budgets_at is None else max(breaker_at, budgets_at)

    def record(self, succeeded: bool | None, now: float) -> None:
        if self.breaker is not None:
            self.breaker.record(succeeded, now)
