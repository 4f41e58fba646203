"""The retry schedule as a plain object: when a failed message's next try is due, by the one
backoff formula the project has (the supervisor's restarts use the same), and when it gets
none. No Trio run: the clock is a ``MockClock`` read, the timer service is never started."""

from __future__ import annotations

import random

import pytest
import trio.testing

from supervisor import RestartBackoff
from terraphim_actors import DeadLetterReason, DeliveryConfig, MessageOptions, cast
from terraphim_actors._core.messages import Envelope
from terraphim_actors._delivery.options import FilledOptions
from terraphim_actors._delivery.retries import TRIAL_WAIT, NoRetry, RetryCandidate, RetryScheduler
from terraphim_actors._primitives.circuit import CircuitBreaker, CircuitBreakerConfig
from terraphim_actors._primitives.timers import TimerService

CRASHED = DeadLetterReason.HANDLER_CRASHED


def scheduler(
    config: DeliveryConfig, clock: trio.testing.MockClock | None = None
) -> RetryScheduler:
    def redeliver(candidate: RetryCandidate) -> None:
        raise AssertionError("no timer fires in these tests")

    return RetryScheduler(config, TimerService(), clock or trio.testing.MockClock(), redeliver)


def message(config: DeliveryConfig) -> Envelope:
    """A cast made at time 0 with its options filled in from ``config``."""
    return cast(None, "job", FilledOptions(config).resolve(MessageOptions())).evolve(created_at=0.0)


class TestBackoff:
    def test_the_documented_schedule_without_jitter(self) -> None:
        """The n-th redelivery waits retry_delay * multiplier ** (n - 1), at most the cap."""
        config = DeliveryConfig(
            retry_delay=0.5, retry_backoff_multiplier=3.0, max_retry_delay=10.0, jitter=0
        )
        retries = scheduler(config)
        envelope = message(config)
        delays = []
        for attempt in range(1, 6):
            envelope.attempt = attempt
            delays.append(retries.backoff(envelope))
        assert delays == pytest.approx([0.5, 1.5, 4.5, 10.0, 10.0])

    def test_no_delay_stays_no_delay_after_many_retries(self) -> None:
        config = DeliveryConfig(retry_delay=0, jitter=0.5)
        envelope = message(config)
        envelope.attempt = 5000
        assert scheduler(config).backoff(envelope) == 0.0

    def test_a_seeded_jitter_repeats(self) -> None:
        """Two schedulers with the same seed draw the same delays; the jitter stays within its
        fraction of the wait."""
        config = DeliveryConfig(seed=7, jitter=0.5)
        first, second = scheduler(config), scheduler(config)
        envelope = message(config)
        drawn = []
        for attempt in range(1, 8):
            envelope.attempt = attempt
            drawn.append((first.backoff(envelope), second.backoff(envelope)))
        assert all(a == b for a, b in drawn)
        bare = [min(0.1 * 2.0 ** (n - 1), 30.0) for n in range(1, 8)]
        assert all(base <= a <= base * 1.5 for (a, _), base in zip(drawn, bare, strict=True))

    def test_the_same_formula_as_restart_backoff(self) -> None:
        """Delivery's retries and the supervisor's restarts wait by one formula: with the same
        parameters and seed they wait the same."""
        config = DeliveryConfig(
            retry_delay=0.2, retry_backoff_multiplier=2.5, max_retry_delay=9.0, jitter=0.3, seed=3
        )
        restarts = RestartBackoff(
            initial=0.2, multiplier=2.5, maximum=9.0, jitter=0.3, rng=random.Random(3)
        )
        retries = scheduler(config)
        envelope = message(config)
        for attempt in range(1, 10):
            envelope.attempt = attempt
            assert retries.backoff(envelope) == restarts.delay(attempt)


class TestNextTry:
    def test_counts_the_attempt_and_gives_its_due_time(self) -> None:
        config = DeliveryConfig(retry_delay=1.0, jitter=0)
        clock = trio.testing.MockClock()
        clock.jump(5.0)
        envelope = message(config)
        due = scheduler(config, clock).next_try(envelope, CRASHED, None, limit=100.0)
        assert (envelope.attempt, due) == (1, 6.0)

    def test_none_once_the_retries_are_spent(self) -> None:
        config = DeliveryConfig(max_retries=2, jitter=0)
        retries = scheduler(config)
        envelope = message(config)
        assert isinstance(retries.next_try(envelope, CRASHED, None, limit=100.0), float)
        assert isinstance(retries.next_try(envelope, CRASHED, None, limit=100.0), float)
        assert retries.next_try(envelope, CRASHED, None, limit=100.0) is NoRetry.EXHAUSTED
        assert envelope.attempt == 2

    def test_none_past_the_limit(self) -> None:
        config = DeliveryConfig(retry_delay=1.0, jitter=0)
        envelope = message(config)
        assert scheduler(config).next_try(envelope, CRASHED, None, limit=0.5) is NoRetry.TOO_LATE

    def test_not_before_an_open_circuit_lets_a_trial_through(self) -> None:
        """Refused by an open circuit, the next try waits for the circuit's reset timeout if
        that is later than the backoff; for another failure the backoff alone decides."""
        config = DeliveryConfig(retry_delay=1.0, jitter=0)
        clock = trio.testing.MockClock()
        breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1, reset_timeout=10.0))
        breaker.record_failure(0.0)
        retries = scheduler(config, clock)
        refused = retries.next_try(
            message(config), DeadLetterReason.CIRCUIT_OPEN, breaker, limit=100.0
        )
        crashed = retries.next_try(message(config), CRASHED, breaker, limit=100.0)
        assert (refused, crashed) == (breaker.reopens_at, 1.0)

    def test_refused_by_a_half_open_circuit_it_waits_only_its_backoff(self) -> None:
        """A half-open circuit whose one trial is out refuses, but the trial's outcome will
        soon decide: the next try waits its backoff, not another reset timeout, and spends
        no retry."""
        config = DeliveryConfig(retry_delay=1.0, jitter=0)
        clock = trio.testing.MockClock()
        breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1, reset_timeout=10.0))
        breaker.record_failure(0.0)
        clock.jump(10.0)
        assert breaker.admit(10.0)  # the trial
        assert not breaker.would_admit(10.0)
        envelope = message(config)
        refused = scheduler(config, clock).next_try(
            envelope, DeadLetterReason.CIRCUIT_OPEN, breaker, limit=100.0
        )
        assert (refused, envelope.attempt) == (11.0, 0)

    def test_refused_by_a_half_open_circuit_with_no_retry_delay_it_waits_a_little(self) -> None:
        """With a retry delay of 0, a message refused during a trial still waits
        ``TRIAL_WAIT``: tries that spend no retry must not spin at one instant."""
        config = DeliveryConfig(retry_delay=0.0, jitter=0)
        clock = trio.testing.MockClock()
        breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1, reset_timeout=10.0))
        breaker.record_failure(0.0)
        clock.jump(10.0)
        assert breaker.admit(10.0)
        refused = scheduler(config, clock).next_try(
            message(config), DeadLetterReason.CIRCUIT_OPEN, breaker, limit=100.0
        )
        assert refused == 10.0 + TRIAL_WAIT
