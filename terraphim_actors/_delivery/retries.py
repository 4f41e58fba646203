"""The retry schedule: when a message's next try is due, and the wait until then.

One rule says when a failed message is tried again, for casts (whose retries wait as timers
on the system's one ``TimerService``) and for calls (whose caller waits in its own task, within
its deadline): the backoff (``supervisor``'s exponential delay with jitter, the formula its
restarts use), and, after its destination's admission (an open circuit) refused it, not
before that admission may let it through. The scheduler keeps what waits, so that it can be
listed and settled at shutdown.
"""

from __future__ import annotations

import enum
import functools
import random
from collections.abc import Callable

import attrs
import trio

from supervisor._backoff import exponential_delay

from .._core.messages import Envelope
from .._core.protocols import AdmissionPolicy
from .._primitives.timers import Timer, TimerService
from .dead_letters import DeadLetterReason
from .options import DeliveryConfig

__all__ = ["NoRetry", "RetryCandidate", "RetryScheduler"]


@attrs.frozen(eq=False)
class RetryCandidate:
    """A message waiting for its next delivery."""

    envelope: Envelope
    #: Which redelivery this will be (1 for the first; a try that spends no retry, refused by
    #: a half-open circuit or the cluster's transport, keeps the attempt before it).
    attempt: int
    #: Trio time it is due.
    due: float
    #: Why the previous try failed.
    last_failure: DeadLetterReason


#: Seconds between tries of a message the cluster could not carry (no NATS server took it, or
#: JetStream was electing a stream leader): such tries spend none of its retries.
UNREACHABLE_WAIT = 0.5
#: Seconds at least between tries of a message refused while a half-open circuit's trial is
#: out, which spend none of its retries: so that a retry delay of 0 does not spin.
TRIAL_WAIT = 0.1


class NoRetry(enum.Enum):
    """Why a failed message gets no next try."""

    #: It has had all its retries.
    EXHAUSTED = "exhausted"
    #: Its next try would come after the time it must be settled by.
    TOO_LATE = "too late"


class RetryScheduler:
    """Decides each retry's due time and keeps the messages waiting for one.

    A cast's or an info's retry is a timer on the system's ``TimerService`` that hands the
    message to ``redeliver`` when due; a call's retry is waited out by its caller
    (:meth:`wait`), listed here meanwhile.
    """

    def __init__(
        self,
        config: DeliveryConfig,
        timers: TimerService,
        clock: trio.abc.Clock,
        redeliver: Callable[[RetryCandidate], None],
    ) -> None:
        self._config = config
        self._timers = timers
        self._clock = clock
        self._redeliver = redeliver
        self._random = random.Random(config.seed)
        #: Each message waiting for a retry, with its timer; for a call, whose caller waits in
        #: its own task, the scope of that wait (which the shutdown cancels to wake it).
        self._waiting: dict[RetryCandidate, Timer | trio.CancelScope] = {}

    def backoff(self, envelope: Envelope, attempt: int | None = None) -> float:
        """Seconds before redelivery number ``attempt`` (1 for the first; by default
        ``envelope.attempt``)."""
        config = self._config
        base = envelope.options.retry_delay
        assert base is not None  # filled in when the message was accepted
        return exponential_delay(
            envelope.attempt if attempt is None else attempt,
            initial=base,
            multiplier=config.retry_backoff_multiplier,
            maximum=config.max_retry_delay,
            jitter=config.jitter,
            rng=self._random,
        )

    def next_try(
        self,
        envelope: Envelope,
        reason: DeadLetterReason,
        admission: AdmissionPolicy | None,
        *,
        limit: float,
    ) -> float | NoRetry:
        """The Trio time of ``envelope``'s next try after a failure for ``reason``, counted in
        ``envelope.attempt``; or why there is none: its retries are spent, or that time would
        be past ``limit``.

        A failure of the cluster's transport (``UNREACHABLE``) spends no retry: the message is
        tried again every :data:`UNREACHABLE_WAIT` seconds until ``limit``. Otherwise the time
        is its backoff from now; refused by its destination's ``admission``, not before
        that may let it through (its ``retry_at``: for an open circuit, when it lets a trial
        through), since sooner it would only fail again. Refused while that hangs on outcomes
        under way (a half-open circuit's trial), it spends no retry either, and asks again
        after the backoff of its next retry (at least :data:`TRIAL_WAIT`): a trial as long as
        a model call would otherwise use up the retries of every message behind it, though
        the agent may be well.
        """
        now = self._clock.current_time()
        if reason is DeadLetterReason.UNREACHABLE:
            # The cluster could not carry it: the message was never tried, so no retry is
            # spent; it waits for NATS until its expiry.
            due = now + UNREACHABLE_WAIT
            return NoRetry.TOO_LATE if due > limit else due
        retry_at = None
        if reason is DeadLetterReason.CIRCUIT_OPEN and admission is not None:
            retry_at = admission.retry_at(now)
            if retry_at is not None and retry_at <= now:
                due = now + max(self.backoff(envelope, envelope.attempt + 1), TRIAL_WAIT)
                return NoRetry.TOO_LATE if due > limit else due
        retries = envelope.options.max_retries
        assert retries is not None  # filled in when the message was accepted
        if envelope.attempt >= retries:
            return NoRetry.EXHAUSTED
        envelope.attempt += 1
        due = now + self.backoff(envelope)
        if retry_at is not None:
            due = max(due, retry_at)
        return NoRetry.TOO_LATE if due > limit else due

    def schedule(self, envelope: Envelope, due: float, reason: DeadLetterReason) -> None:
        """Hand ``envelope`` to ``redeliver`` at Trio time ``due``, in the timer service's
        task."""
        candidate = RetryCandidate(envelope, envelope.attempt, due, reason)
        self._waiting[candidate] = self._timers.call_at(
            due, functools.partial(self._fire, candidate)
        )

    def _fire(self, candidate: RetryCandidate) -> None:
        del self._waiting[candidate]
        self._redeliver(candidate)

    async def wait(self, envelope: Envelope, due: float, reason: DeadLetterReason) -> bool:
        """Wait in the caller's task until ``due``, listed as waiting meanwhile (a call).
        Returns False if :meth:`cancel_all` ended the wait first: the system shuts down."""
        candidate = RetryCandidate(envelope, envelope.attempt, due, reason)
        with trio.CancelScope(deadline=due) as waiting:
            self._waiting[candidate] = waiting
            try:
                await trio.sleep_forever()
            finally:
                # ``cancel_all`` takes it off the list as it wakes the caller.
                still_listed = self._waiting.pop(candidate, None) is not None
        return still_listed

    @property
    def waiting(self) -> int:
        """How many messages wait for a retry."""
        return len(self._waiting)

    def candidates(self) -> tuple[RetryCandidate, ...]:
        """The messages waiting for a retry, soonest first."""
        return tuple(sorted(self._waiting, key=lambda candidate: candidate.due))

    def cancel_all(self) -> list[RetryCandidate]:
        """Cancel every timed retry and return what waited for one; wake the callers of the
        calls that wait for one, who settle them (their :meth:`wait` returns False)."""
        cancelled = []
        for candidate, waiting in list(self._waiting.items()):
            del self._waiting[candidate]
            waiting.cancel()
            if type(waiting) is Timer:
                cancelled.append(candidate)
        return cancelled
