"""The circuit breaker: stop sending to a recipient that keeps failing, then probe it."""

from __future__ import annotations

import enum

import attrs

from .._core.checks import check_count, check_seconds, validator

__all__ = ["CircuitBreaker", "CircuitBreakerConfig", "CircuitState"]


class CircuitState(enum.Enum):
    """Where a recipient's circuit breaker stands."""

    #: Messages flow; consecutive failures are counted.
    CLOSED = "closed"
    #: Too many failures in a row: messages fail fast until the reset timeout.
    OPEN = "open"
    #: The reset timeout has passed: a few trial messages decide between closed and open.
    HALF_OPEN = "half-open"


@attrs.frozen(kw_only=True)
class CircuitBreakerConfig:
    """When a recipient's circuit opens and how it recovers.

    Attributes:
        failure_threshold: consecutive failures that open the circuit.
        reset_timeout: seconds an open circuit waits before it lets trial messages through.
        half_open_max_calls: trial messages let through at once while half-open.
    """

    failure_threshold: int = attrs.field(default=5, validator=validator(check_count, minimum=1))
    reset_timeout: float = attrs.field(default=30.0, validator=validator(check_seconds))
    half_open_max_calls: int = attrs.field(default=1, validator=validator(check_count, minimum=1))


class CircuitBreaker:
    """One recipient's breaker: closed → open after ``failure_threshold`` failures in a row →
    half-open once ``reset_timeout`` has passed → closed on a success, open again on a failure.

    The half-open state is computed from the clock when asked, so an open circuit costs no
    timer. Times are Trio times passed in by the caller, which keeps the breaker a plain object.
    Any success closes the circuit, including one of a message let through before it opened:
    the recipient has shown it works. Trials whose outcome never comes (a trial message that
    expired, say) do not hold the circuit half-open for ever: after another reset timeout, new
    trials go through.
    """

    __slots__ = ("_config", "_failures", "_opened_at", "_state", "_trials", "times_opened")

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self._config = config
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0
        #: How often this circuit has opened.
        self.times_opened = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._state.value}, {self._failures} failures>"

    def state(self, now: float) -> CircuitState:
        """The state at Trio time ``now``."""
        if self._state is not CircuitState.CLOSED and now >= self.reopens_at:
            # Open long enough, or half-open with trials that never reported: try again.
            self._state = CircuitState.HALF_OPEN
            self._opened_at = now
            self._trials = 0
        return self._state

    @property
    def reopens_at(self) -> float:
        """Trio time at which an open circuit turns half-open."""
        return self._opened_at + self._config.reset_timeout

    def would_admit(self, now: float) -> bool:
        """Whether :meth:`admit` would let a message through at ``now`` (counts nothing)."""
        state = self.state(now)
        return state is CircuitState.CLOSED or (
            state is CircuitState.HALF_OPEN and self._trials < self._config.half_open_max_calls
        )

    def admit(self, now: float) -> bool:
        """May a message go through at ``now``? A half-open circuit counts it as a trial."""
        state = self.state(now)
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and self._trials < self._config.half_open_max_calls:
            self._trials += 1
            return True
        return False

    def retry_at(self, now: float) -> float | None:
        """The earliest time a message this breaker refuses at ``now`` may be let through:
        when an open circuit turns half-open; ``now`` for a half-open one whose trials are
        out, since a trial's success may close it at any moment (so a retry it refused waits
        only its backoff); ``None`` if one would be let through now."""
        if self.would_admit(now):
            return None
        return self.reopens_at if self._state is CircuitState.OPEN else now

    def record(self, succeeded: bool | None, now: float) -> None:
        """How a message let through ended: :meth:`record_success`, :meth:`record_failure`
        or (``None``) :meth:`record_neither`, as the ``AdmissionPolicy`` seam reports outcomes
        to any policy."""
        if succeeded is None:
            self.record_neither(now)
        elif succeeded:
            self.record_success()
        else:
            self.record_failure(now)

    def record_neither(self, now: float) -> None:
        """A message ended saying nothing of the recipient's health (it refused it as bad):
        nothing is counted, but a half-open circuit's trial is over, so another may go rather
        than every message waiting one more reset timeout. As resilience4j's ignored errors
        do, it frees a trial's place even if it was let through before the circuit opened."""
        if self.state(now) is CircuitState.HALF_OPEN and self._trials:
            self._trials -= 1

    def record_success(self) -> None:
        """A message was handled: the circuit closes and the failure count starts over."""
        self._state = CircuitState.CLOSED
        self._failures = 0

    def record_failure(self, now: float) -> None:
        """A message failed: a trial failure reopens the circuit, enough failures open it."""
        state = self.state(now)
        if state is CircuitState.OPEN:
            return
        self._failures += 1
        if state is CircuitState.HALF_OPEN or self._failures >= self._config.failure_threshold:
            self._state = CircuitState.OPEN
            self._opened_at = now
            self.times_opened += 1
