"""The delivery middleware: guarantees, acknowledgements, the retry schedule, dedup, and the
accounting that makes every message end somewhere.

Every message a system accepts ends in exactly one of four ways: acknowledged (a handler
returned normally), suppressed as a duplicate (exactly-once), failed (a waiting caller was
told why), or dead-lettered with a reason. Until then it is *pending*: in a mailbox, in a
handler, or waiting for a retry. Retries wait in the router's task, so that a failure never
costs the sender a wait.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
import trio

from .._core.bounded_repr import bounded_repr
from .._core.checks import check_count, check_factor, check_instance, check_seconds, validator
from .._core.messages import DeliveryGuarantee, Envelope, MessageOptions, Priority, never_expiring
from .._core.messages import options_for as shared_options
from .._primitives.circuit import CircuitBreaker, CircuitBreakerConfig, CircuitState
from .._primitives.dedup import NO_REPLY, UNSEEN, DedupWindow, HandledMessages
from .._primitives.mailbox import OwnMailboxFull
from .._primitives.reply import KeptAnswer
from .._primitives.timers import Timer
from ..errors import (
    AgentNotFound,
    AgentStopped,
    CircuitOpen,
    DeliveryFailed,
    MailboxClosed,
    MailboxFull,
    MessagingError,
)
from .dead_letters import DeadLetterReason

if TYPE_CHECKING:
    from .._routing.endpoint import Endpoint
    from .._system.system import MessageSystem

__all__ = ["DeliveryConfig", "DeliveryManager", "DeliveryStats", "RetryCandidate"]

logger = logging.getLogger("terraphim_actors.delivery")

AT_MOST_ONCE = DeliveryGuarantee.AT_MOST_ONCE
EXACTLY_ONCE = DeliveryGuarantee.EXACTLY_ONCE

#: Why a delivery failed: the dead-letter reason it would be filed under, and the error a
#: sender that hears of it gets.
_Failure: TypeAlias = tuple[DeadLetterReason, MessagingError]

#: Failures that a retrying guarantee retries. Any other is final: an agent that stopped for
#: good refuses at once, as a dead process does in Erlang. (A message whose handler a restart
#: cut short is retried too, see ``DeliveryManager.undelivered``.)
_RETRIED = frozenset(
    {
        DeadLetterReason.NOT_FOUND,
        DeadLetterReason.MAILBOX_FULL,
        DeadLetterReason.CIRCUIT_OPEN,
        DeadLetterReason.HANDLER_CRASHED,
    }
)

#: Failures an at-most-once sender hears of as an exception (besides the dead letter). A cast to
#: an agent that has stopped is dropped quietly, as a send to a dead process is in Erlang.
_RAISED = frozenset(
    {DeadLetterReason.NOT_FOUND, DeadLetterReason.MAILBOX_FULL, DeadLetterReason.CIRCUIT_OPEN}
)


#: Distinct per-message options kept filled in; past that the cache starts afresh.
_RESOLVED_KEPT = 1024


@attrs.frozen(kw_only=True)
class DeliveryConfig:
    """How hard a system tries to deliver messages; ``MessageOptions`` overrides it per message.

    Attributes:
        guarantee: the default guarantee (at-least-once, as in the original crate).
        max_retries: redeliveries after the first try: 3 means at most 4 handler runs.
        retry_delay: seconds before the first redelivery.
        retry_backoff_multiplier: the n-th redelivery waits
            ``retry_delay * retry_backoff_multiplier ** (n - 1)`` seconds...
        max_retry_delay: ...but never more than this...
        jitter: ...plus a random fraction up to this of that wait (0 turns it off), so that
            retries of many messages do not arrive in lockstep.
        dedup_window: how long an exactly-once recipient remembers what it handled.
        seed: seeds the jitter, for runs that must repeat exactly.

    Times are at most ``MAX_SECONDS`` (10**9 s), the multiplier and the jitter at most
    ``MAX_FACTOR`` (1000), counts at most ``MAX_COUNT``: whatever is accepted keeps every
    retry's due time a finite number.
    """

    guarantee: DeliveryGuarantee = attrs.field(
        default=DeliveryGuarantee.AT_LEAST_ONCE,
        validator=validator(check_instance, DeliveryGuarantee),
    )
    max_retries: int = attrs.field(default=3, validator=validator(check_count, minimum=0))
    retry_delay: float = attrs.field(
        default=0.1, validator=validator(check_seconds, allow_zero=True)
    )
    retry_backoff_multiplier: float = attrs.field(
        default=2.0, validator=validator(check_factor, minimum=1)
    )
    max_retry_delay: float = attrs.field(default=30.0, validator=validator(check_seconds))
    jitter: float = attrs.field(default=0.1, validator=validator(check_factor, minimum=0))
    dedup_window: DedupWindow = attrs.field(
        factory=DedupWindow, validator=validator(check_instance, DedupWindow)
    )
    seed: int | None = attrs.field(
        default=None, validator=validator(check_count, minimum=0, optional=True)
    )


@attrs.frozen(kw_only=True)
class DeliveryStats:
    """A snapshot of the delivery layer's counters.

    ``sent == acknowledged + duplicates_suppressed + failed + dead_lettered + pending``.
    """

    #: Messages accepted for delivery (a message sent again with the same id counts again).
    sent: int
    #: Puts into a mailbox, redeliveries included.
    delivered: int
    #: Messages whose handler returned normally. (A mailbox driven by hand is outside the
    #: delivery layer: what is sent to it is not counted here.)
    acknowledged: int
    #: Redeliveries scheduled.
    retried: int
    #: Calls that ended in an error for their waiting caller (callee raised, stopped, or could
    #: not be reached).
    failed: int
    #: Exactly-once messages not handled again because their recipient had completed them.
    duplicates_suppressed: int
    #: Messages given up on, each filed as a dead letter with its reason.
    dead_lettered: int
    #: Messages not settled yet: in a mailbox, in a handler, or waiting for a retry.
    pending: int


@attrs.frozen(eq=False)
class RetryCandidate:
    """A message waiting in the router for its next delivery."""

    envelope: Envelope
    #: Which redelivery this will be (1 for the first).
    attempt: int
    #: Trio time it is due.
    due: float
    #: Why the previous try failed.
    last_failure: DeadLetterReason


class DeliveryManager:
    """Applies each message's guarantee on its way to a mailbox and after its handler ran.

    Reached as ``system.delivery``. The sending side (``send``, ``send_nowait``,
    ``send_call``, ``post``) is called by refs and the system; the outcome side
    (``acknowledge``, ``suppress_duplicate``, ``undelivered``) by the recipient's loop.
    """

    def __init__(
        self,
        config: DeliveryConfig,
        breakers: CircuitBreakerConfig | None,
        system: MessageSystem,
    ) -> None:
        self.config = config
        self._breakers = breakers
        self._system = system
        self._clock = system.clock
        self._random = random.Random(config.seed)
        #: Options with every delivery field filled in from ``config``, indexed by priority:
        #: what a message sent without options carries.
        self.defaults: tuple[MessageOptions, ...] = tuple(
            self._filled(MessageOptions(priority=priority)) for priority in Priority
        )
        #: Options given per message, filled in (``attrs.evolve`` with its validators costs
        #: more than a send, and a sender usually reuses one options object).
        self._resolved: dict[MessageOptions, MessageOptions] = {}
        #: System notifications: never retried, whatever the system's default, and never
        #: expired (a ``Down`` must reach a monitor, however busy it was).
        self._notices: tuple[MessageOptions, ...] = tuple(
            never_expiring(attrs.evolve(options, guarantee=AT_MOST_ONCE))
            for options in self.defaults
        )
        #: Each message waiting for a retry, with the router's timer for it (``None`` for a
        #: call, whose caller waits in its own task).
        self._waiting: dict[RetryCandidate, Timer | None] = {}
        self.sent = 0
        self.delivered = 0
        self.acknowledged = 0
        self.retried = 0
        self.failed = 0
        self.duplicates_suppressed = 0
        self.dead_lettered = 0

    # -- options ---------------------------------------------------------------------------

    def notice_options(self, priority: Priority = Priority.NORMAL) -> MessageOptions:
        """Options for a notification the system sends (at most once)."""
        return self._notices[priority]

    def resolve(self, options: MessageOptions) -> MessageOptions:
        """``options`` with what it leaves to the system filled in from the configuration."""
        if options is shared_options(options.priority):
            return self.defaults[options.priority]
        if options.guarantee is None or options.max_retries is None or options.retry_delay is None:
            filled = self._resolved.get(options)
            if filled is None:
                if len(self._resolved) >= _RESOLVED_KEPT:
                    self._resolved.clear()
                filled = self._resolved[options] = self._filled(options)
            return filled
        return options

    def _filled(self, options: MessageOptions) -> MessageOptions:
        config = self.config
        return attrs.evolve(
            options,
            guarantee=config.guarantee if options.guarantee is None else options.guarantee,
            max_retries=config.max_retries if options.max_retries is None else options.max_retries,
            retry_delay=config.retry_delay if options.retry_delay is None else options.retry_delay,
        )

    # -- sending ---------------------------------------------------------------------------

    async def send(self, endpoint: Endpoint | None, envelope: Envelope) -> None:
        """Deliver a cast or an info to ``endpoint``, waiting for room in a mailbox that blocks.

        A failure is retried later (retrying guarantees) or dead-lettered (at-most-once).

        Raises:
            MailboxFull, CircuitOpen, AgentNotFound: at-most-once only, when the message could
                not be delivered (it is also a dead letter).
            OwnMailboxFull: the agent sent it from its own task into its own mailbox, full and
                blocking; the message is not accepted.
        """
        self.sent += 1
        try:
            failure = await self._put(endpoint, envelope)
        except trio.Cancelled:
            self._give_up(envelope, DeadLetterReason.EXPIRED, "the sender gave up waiting for room")
            raise
        except OwnMailboxFull:
            self.sent -= 1  # refused, not accepted: it was never the delivery layer's
            raise
        if failure is not None:
            self._failed(endpoint, envelope, *failure)

    def send_nowait(self, endpoint: Endpoint | None, envelope: Envelope) -> None:
        """:meth:`send` without waiting: a full mailbox is a failure (retried or raised)."""
        self.sent += 1
        if endpoint is not None and endpoint.admission is None:
            # The common case, spelled out: a put into the mailbox of a healthy agent.
            try:
                endpoint.inbox.put_nowait(envelope)
            except (MailboxFull, MailboxClosed) as error:
                self._failed(endpoint, envelope, *_failure_of(error, endpoint))
            else:
                self.delivered += 1
            return
        failure = self._put_nowait(endpoint, envelope)
        if failure is not None:
            self._failed(endpoint, envelope, *failure)

    def post(self, endpoint: Endpoint, envelope: Envelope) -> None:
        """Deliver a notification the system originates, at most once; never raises.

        The circuit breaker does not apply: a ``Down`` or a timer must reach a struggling agent.
        """
        self.sent += 1
        try:
            endpoint.inbox.put_nowait(envelope)
        except (MailboxFull, MailboxClosed) as error:
            self._give_up(envelope, self._final_reason(_failure_of(error, endpoint)[0]), str(error))
        else:
            self.delivered += 1

    def put_call_nowait(self, endpoint: Endpoint | None, envelope: Envelope) -> bool:
        """Deliver a call at once if nothing stands in its way: a live agent without a circuit
        breaker, with room in its mailbox. Returns False, having done nothing, when the call
        must take :meth:`send_call`'s way, which may wait and retry."""
        if endpoint is None or endpoint.admission is not None or not endpoint.inbox.has_room():
            return False
        endpoint.inbox.put_nowait(envelope)
        self.sent += 1
        self.delivered += 1
        return True

    async def send_call(self, endpoint: Endpoint | None, envelope: Envelope) -> Endpoint:
        """Deliver a call, in the caller's task: a failure before the handler ran (recipient
        missing, mailbox full, circuit open) is retried with backoff when its guarantee
        retries, within the caller's deadline, which the caller's cancel scope enforces.
        Returns the agent it was delivered to.

        Raises:
            AgentStopped: the agent has stopped for good.
            MailboxFull, CircuitOpen, AgentNotFound: at-most-once, the failure.
            DeliveryFailed: its retries ran out (the last failure is the cause).
            OwnMailboxFull: as for :meth:`send`; the call is not accepted.
        """
        self.sent += 1
        try:
            while True:
                failure = await self._put(endpoint, envelope)
                if failure is None:
                    assert endpoint is not None
                    return endpoint
                reason, error = failure
                self._count_failure(endpoint, reason)
                if not self._retries(envelope, reason):
                    raise error
                if envelope.attempt >= _max_retries(envelope):
                    raise DeliveryFailed(
                        f"{_describe(endpoint, envelope)} not delivered after {envelope.attempt}"
                        f" retries: {error}"
                    ) from error
                envelope.attempt += 1
                due = self._retry_time(endpoint, envelope, reason)
                if due >= envelope.deadline:
                    raise DeliveryFailed(
                        f"{_describe(endpoint, envelope)} not delivered: its next try would come"
                        f" after its caller's deadline: {error}"
                    ) from error
                self.retried += 1
                waiting = RetryCandidate(envelope, envelope.attempt, due, reason)
                self._waiting[waiting] = None  # the caller's own task waits it out
                try:
                    await trio.sleep_until(due)
                finally:
                    del self._waiting[waiting]
                [(endpoint, envelope)] = self._system.router.targets_of(envelope, retry=True)[:1]
        except OwnMailboxFull:
            self.sent -= 1  # refused, not accepted: it was never the delivery layer's
            raise
        except MessagingError:
            self.failed += 1
            raise
        except BaseException:
            self._give_up(envelope, DeadLetterReason.EXPIRED, "the caller gave up before delivery")
            raise

    async def _put(self, endpoint: Endpoint | None, envelope: Envelope) -> _Failure | None:
        """Put ``envelope`` in ``endpoint``'s inbox, waiting if it blocks; or say why not.

        Checkpoints either way, as every blocking operation in Trio does."""
        if endpoint is None or endpoint.admission is not None:
            failure = self._obstacle(endpoint, envelope)
            if failure is not None:
                await trio.lowlevel.checkpoint()
                return failure
            assert endpoint is not None
        try:
            await endpoint.inbox.put(envelope)
        except OwnMailboxFull:
            raise  # no retry would find room that only the sender could make
        except (MailboxFull, MailboxClosed) as error:
            return _failure_of(error, endpoint)
        self.delivered += 1
        return None

    def _put_nowait(self, endpoint: Endpoint | None, envelope: Envelope) -> _Failure | None:
        """:meth:`_put` without waiting: a full mailbox is a failure."""
        if endpoint is None or endpoint.admission is not None:
            failure = self._obstacle(endpoint, envelope)
            if failure is not None:
                return failure
            assert endpoint is not None
        try:
            endpoint.inbox.put_nowait(envelope)
        except (MailboxFull, MailboxClosed) as error:
            return _failure_of(error, endpoint)
        self.delivered += 1
        return None

    def _obstacle(self, endpoint: Endpoint | None, envelope: Envelope) -> _Failure | None:
        """Why ``envelope`` cannot go into ``endpoint``'s inbox now, or ``None`` if it may try."""
        if endpoint is None:
            if self._system.has_stopped(envelope.recipient):
                return DeadLetterReason.AGENT_STOPPED, AgentStopped(
                    f"{envelope.recipient!r} has stopped"
                )
            return DeadLetterReason.NOT_FOUND, AgentNotFound(
                f"no agent is registered as {envelope.recipient!r}"
            )
        breaker = endpoint.admission
        if breaker is not None and not breaker.admit(self._clock.current_time()):
            return DeadLetterReason.CIRCUIT_OPEN, CircuitOpen(
                f"the circuit of {endpoint.id!r} is open: failing fast"
            )
        return None

    def _failed(
        self,
        endpoint: Endpoint | None,
        envelope: Envelope,
        reason: DeadLetterReason,
        error: MessagingError,
    ) -> None:
        """A cast or info could not be delivered: retry it later, or give up on it (and raise
        to an at-most-once sender what it should hear of)."""
        self._count_failure(endpoint, reason)
        if self._retries(envelope, reason):
            self._schedule_retry(envelope, reason, str(error), endpoint)
            return
        self._give_up(envelope, self._final_reason(reason), str(error))
        if envelope.options.guarantee is AT_MOST_ONCE and reason in _RAISED:
            raise error

    def _retries(
        self, envelope: Envelope, reason: DeadLetterReason, *, runs_again: bool = False
    ) -> bool:
        """Whether a failure for ``reason`` is retried: by the message's guarantee, never once
        the system is shutting down."""
        return (
            (reason in _RETRIED or runs_again)
            and envelope.options.guarantee is not AT_MOST_ONCE
            and not self._system.closing
        )

    def _final_reason(self, reason: DeadLetterReason) -> DeadLetterReason:
        """The dead-letter reason of a failure not retried: at shutdown, the shutdown."""
        if self._system.closing and reason in (_RETRIED | {DeadLetterReason.AGENT_STOPPED}):
            return DeadLetterReason.SYSTEM_STOPPED
        return reason

    # -- what the recipient reports ---------------------------------------------------------

    def acknowledge(self, endpoint: Endpoint, envelope: Envelope, reply: Any = NO_REPLY) -> None:
        """The handler of ``envelope`` returned normally (a call's ``reply`` is kept for its
        duplicates under exactly-once). the gen_server loop counts the common case itself."""
        self.acknowledged += 1
        breaker = endpoint.admission
        handle = envelope.reply
        if (
            breaker is not None
            and (handle is None or not handle.pending)  # a deferred call: when answered
            and envelope.options not in self._notices  # they pass an open circuit
        ):
            breaker.record_success()
        if envelope.options.guarantee is EXACTLY_ONCE:
            if reply is NO_REPLY and handle is not None:
                reply = handle.keep_answer()  # deferred: its answer, whenever it is given
            self.remember(endpoint, envelope, reply)

    def remember(self, endpoint: Endpoint, envelope: Envelope, reply: Any = NO_REPLY) -> None:
        """Record an exactly-once message as handled, with the reply a call gave (for a
        deferred call, the ``KeptAnswer`` that learns it)."""
        handled = self._window(endpoint, envelope)
        handled.remember(envelope.id, self._clock.current_time(), reply)

    def suppress_duplicate(self, endpoint: Endpoint, envelope: Envelope) -> bool:
        """If the exactly-once ``envelope`` was handled within the window, settle it without
        handling it again (a duplicate call gets the reply the first one got, or, if that reply
        was deferred, its answer once given); return True."""
        reply = self._window(endpoint, envelope).reply_for(envelope.id, self._clock.current_time())
        if reply is UNSEEN:
            return False
        self.duplicates_suppressed += 1
        handle = envelope.reply
        if handle is not None and handle.pending:
            if reply is NO_REPLY:
                described = endpoint.occupant.describe(envelope)
                handle.fail(DeliveryFailed(f"{described} was handled before, with no reply kept"))
            elif isinstance(reply, KeptAnswer):
                reply.answer(handle)
            else:
                handle.reply(reply)
        return True

    def _window(self, endpoint: Endpoint, envelope: Envelope) -> HandledMessages:
        """The dedup window for ``envelope`` at ``endpoint``: its group's, if it came through
        the group (so that no member handles it again), else the endpoint's own."""
        group = endpoint.group
        if group is not None and group.addressed_by(envelope.recipient):
            return group.window
        window = endpoint.window
        if window is None:
            window = endpoint.window = HandledMessages(self.config.dedup_window)
        return window

    def undelivered(
        self,
        envelope: Envelope,
        why: DeadLetterReason,
        error: Exception,
        *,
        runs_again: bool = False,
    ) -> None:
        """A message taken in (or left in a mailbox) that no handler completed.

        A waiting caller gets ``error`` (one already answered counts as acknowledged); a cast
        or info is retried by its guarantee if it failed for a reason retries fix, or its agent
        ``runs_again`` (a restart cut its handler short); anything else becomes a dead letter.
        """
        handle = envelope.reply
        if handle is not None and not handle.abandoned:
            if handle.pending:
                handle.fail(error)
            if handle.replied:
                self.acknowledged += 1  # answered through ctx.caller, then the handler raised
            else:
                self.failed += 1
            return
        if handle is None and self._retries(envelope, why, runs_again=runs_again):
            self._schedule_retry(envelope, why, str(error))
            return
        self._give_up(envelope, self._final_reason(why), str(error))

    def deferred_call_failed(self, endpoint: Endpoint) -> None:
        """A call acknowledged when its handler returned (deferred) was then failed by the
        agent: count it as failed, and against ``endpoint``'s circuit breaker."""
        self.acknowledged -= 1
        self.failed += 1
        self.record_failure(endpoint)

    def record_success(self, endpoint: Endpoint) -> None:
        """Count a success for ``endpoint``'s circuit breaker (a deferred reply was sent)."""
        if endpoint.admission is not None:
            endpoint.admission.record_success()

    def record_failure(self, endpoint: Endpoint) -> None:
        """Count a failure against ``endpoint``'s circuit breaker (made on its first failure)."""
        if self._breakers is None:
            return
        breaker = endpoint.admission
        if breaker is None:
            breaker = endpoint.admission = CircuitBreaker(self._breakers)
        breaker.record_failure(self._clock.current_time())

    def _count_failure(self, endpoint: Endpoint | None, reason: DeadLetterReason) -> None:
        if endpoint is not None and reason is not DeadLetterReason.CIRCUIT_OPEN:
            self.record_failure(endpoint)

    # -- retries -----------------------------------------------------------------------------

    def backoff(self, envelope: Envelope) -> float:
        """Seconds before redelivery number ``envelope.attempt`` (1 for the first)."""
        config = self.config
        base = envelope.options.retry_delay
        assert base is not None
        try:  # in floats: an int multiplier would build ever larger ints, retry after retry
            growth = float(config.retry_backoff_multiplier) ** (envelope.attempt - 1)
        except OverflowError:  # past a thousand retries or so: long since at the cap
            growth = math.inf
        delay = min(base * growth, config.max_retry_delay) if base else 0.0
        if config.jitter:
            delay *= 1 + self._random.uniform(0, config.jitter)
        return delay

    def _retry_time(
        self, endpoint: Endpoint | None, envelope: Envelope, reason: DeadLetterReason
    ) -> float:
        """When the next try of ``envelope`` is due, by the backoff (``attempt`` is that next
        try's number); not before an open circuit lets a trial through, since sooner it would
        only fail again. (Refused by a half-open circuit, it waits only its backoff: the trial
        under way will soon have closed the circuit, or opened it again.)"""
        now = self._clock.current_time()
        due = now + self.backoff(envelope)
        breaker = None if endpoint is None else endpoint.admission
        if (
            reason is DeadLetterReason.CIRCUIT_OPEN
            and breaker is not None
            and breaker.state(now) is CircuitState.OPEN
        ):
            due = max(due, breaker.reopens_at)
        return due

    def _schedule_retry(
        self,
        envelope: Envelope,
        reason: DeadLetterReason,
        detail: str,
        endpoint: Endpoint | None = None,
    ) -> None:
        """Have the router try ``envelope`` again after its backoff, or give up on it if it
        has had all its retries, or if its next try would come after its timeout."""
        if envelope.attempt >= _max_retries(envelope):
            self._give_up(
                envelope,
                DeadLetterReason.RETRIES_EXHAUSTED,
                f"after {envelope.attempt} retries; last failure: {reason.value}: {detail}",
            )
            return
        envelope.attempt += 1
        due = self._retry_time(endpoint, envelope, reason)
        if due > envelope.created_at + envelope.options.timeout:
            self._give_up(
                envelope,
                DeadLetterReason.EXPIRED,
                f"its next try would come after its timeout; last failure: {reason.value}",
            )
            return
        self.retried += 1
        candidate = RetryCandidate(envelope, envelope.attempt, due, reason)
        timer = self._system.router.call_at(due, functools.partial(self._retry, candidate))
        self._waiting[candidate] = timer

    def _retry(self, candidate: RetryCandidate) -> None:
        """Redeliver a message whose retry is due (in the router's task)."""
        del self._waiting[candidate]
        envelope = candidate.envelope
        if self._system.closing:
            self._give_up(envelope, DeadLetterReason.SYSTEM_STOPPED, "before its retry")
            return
        if envelope.created_at + envelope.options.timeout < self._clock.current_time():
            self._give_up(envelope, DeadLetterReason.EXPIRED, "its timeout passed before a retry")
            return
        try:
            targets = self._system.router.targets_of(envelope, retry=True)
        except Exception as error:  # a custom router or a pool's key function: user code
            described = self._system.describe(envelope)
            logger.error("routing a retry of %s raised", described, exc_info=error)
            self._give_up(
                envelope, DeadLetterReason.NOT_FOUND, f"routing it raised {bounded_repr(error)}"
            )
            return
        self.sent += len(targets) - 1  # each copy fanned out is a message of its own
        for endpoint, copy in targets:
            failure = self._put_nowait(endpoint, copy)
            if failure is not None:
                self._failed(endpoint, copy, *failure)

    @property
    def waiting(self) -> int:
        """How many messages wait for a retry."""
        return len(self._waiting)

    def get_retry_candidates(self) -> tuple[RetryCandidate, ...]:
        """The messages waiting for a retry, soonest first."""
        return tuple(sorted(self._waiting, key=lambda candidate: candidate.due))

    def settle_waiting(self) -> None:
        """At shutdown: every message waiting for a retry becomes a dead letter."""
        for candidate, timer in list(self._waiting.items()):
            if timer is not None:  # a call's caller settles it when it wakes
                del self._waiting[candidate]
                timer.cancel()
                self._give_up(
                    candidate.envelope, DeadLetterReason.SYSTEM_STOPPED, "before its retry"
                )

    # -- the end of the line -----------------------------------------------------------------

    def _give_up(self, envelope: Envelope, reason: DeadLetterReason, detail: str) -> None:
        """The end of the line for a message: count it and file it as a dead letter."""
        self.dead_lettered += 1
        self._system.file_dead_letter(envelope, reason, detail)

    def get_stats(self) -> DeliveryStats:
        """A frozen snapshot of the counters."""
        settled = self.acknowledged + self.duplicates_suppressed + self.failed + self.dead_lettered
        return DeliveryStats(
            sent=self.sent,
            delivered=self.delivered,
            acknowledged=self.acknowledged,
            retried=self.retried,
            failed=self.failed,
            duplicates_suppressed=self.duplicates_suppressed,
            dead_lettered=self.dead_lettered,
            pending=self.sent - settled,
        )


def _max_retries(envelope: Envelope) -> int:
    retries = envelope.options.max_retries
    assert retries is not None  # filled in when the message was accepted
    return retries


def _failure_of(error: MailboxFull | MailboxClosed, endpoint: Endpoint) -> _Failure:
    if isinstance(error, MailboxFull):
        return DeadLetterReason.MAILBOX_FULL, error
    return DeadLetterReason.AGENT_STOPPED, endpoint.occupant.refusal()


def _describe(endpoint: Endpoint | None, envelope: Envelope) -> str:
    """``envelope`` for a log or an error message, as its recipient's ``format_message`` shows
    its payload (the bounded repr when there is no such agent)."""
    return repr(envelope) if endpoint is None else endpoint.occupant.describe(envelope)
