"""The admission seam: the circuit breaker is an ``AdmissionPolicy``, with the same behaviour
through the seam's generic calls."""

from __future__ import annotations

from terraphim_actors import CircuitBreakerConfig
from terraphim_actors._core.protocols import AdmissionPolicy
from terraphim_actors._primitives.circuit import CircuitBreaker

CONFIG = CircuitBreakerConfig(failure_threshold=2, reset_timeout=10.0)


def policy() -> AdmissionPolicy:
    """A breaker, seen only through the seam (mypy checks that it fits)."""
    return CircuitBreaker(CONFIG)


class TestCircuitBreakerAsAdmissionPolicy:
    def test_a_closed_circuit_admits_and_names_no_retry_time(self) -> None:
        """Nothing refused: no time to wait for."""
        breaker = policy()
        assert breaker.would_admit(0.0)
        assert breaker.admit(0.0)
        assert breaker.retry_at(0.0) is None

    def test_failures_recorded_open_it_until_the_reset_timeout(self) -> None:
        """record(False, now) counts a failure; once open, retry_at is when it turns
        half-open."""
        breaker = policy()
        breaker.record(False, 1.0)
        breaker.record(False, 2.0)
        assert not breaker.admit(3.0)
        assert breaker.retry_at(3.0) == 12.0
        assert breaker.admit(12.0)  # the trial

    def test_a_recorded_success_closes_it(self) -> None:
        """record(True, now) closes a half-open circuit."""
        breaker = policy()
        breaker.record(False, 1.0)
        breaker.record(False, 1.0)
        assert breaker.admit(11.0)
        # Its one trial is out: refused, but its success may close the circuit at any moment,
        # so the earliest time is now (a retry waits only its backoff), not the reset timeout.
        assert not breaker.would_admit(11.0)
        assert breaker.retry_at(11.0) == 11.0
        breaker.record(True, 11.5)
        assert breaker.retry_at(11.5) is None

    def test_the_seam_changes_nothing_of_the_breaker(self) -> None:
        """record() is record_success / record_failure: two breakers fed the same outcomes,
        one through each, stand alike."""
        through_seam, direct = CircuitBreaker(CONFIG), CircuitBreaker(CONFIG)
        outcomes = [False, True, False, False, True, False, False]
        for step, succeeded in enumerate(outcomes):
            now = float(step * 4)
            through_seam.record(succeeded, now)
            if succeeded:
                direct.record_success()
            else:
                direct.record_failure(now)
            assert through_seam.state(now) is direct.state(now)
            assert through_seam.would_admit(now) == direct.would_admit(now)
        assert through_seam.times_opened == direct.times_opened
