"""The delivery middleware: guarantees, acknowledgements, the retry schedule, dedup, and the
accounting that makes every message end somewhere.

Every message a system accepts ends in exactly one of five ways: acknowledged (a handler
returned normally), suppressed as a duplicate (exactly-once), failed (a waiting caller was told
why), dead-lettered with a reason, or forwarded to the node of its agent in a cluster. Until
then it is *pending*: in a mailbox, in a handler, or waiting for a retry. Retries wait as timers
on the system's timer service, so that a failure never costs the sender a wait.

Each message is accepted at one point (the ledger's ``accepted``) and settled at one point (its
``acknowledged``, ``duplicate``, ``failed``, ``dead_lettered`` or ``forwarded``): the ledger in
``ledger.py`` keeps the books and tells the journal; the schedule of retries is
``retries.py``'s; what the configuration fills into a message's options is ``options.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
import trio

from .._core.bounded_repr import bounded_repr
from .._core.ids import AgentId
from .._core.instruments import MESSAGE_HOOKS, Instruments
from .._core.messages import DeliveryGuarantee, Envelope, MessageOptions, Priority
from .._core.protocols import Journal
from .._core.reply import KeptAnswer
from .._primitives.admission import AdmissionGate, Budgets
from .._primitives.circuit import CircuitBreaker, CircuitBreakerConfig
from .._primitives.dedup import NO_REPLY, UNSEEN, HandledMessages
from .._primitives.mailbox import Mailbox, OwnMailboxFull, spend_send_budget
from .._primitives.timers import TimerService
from .._routing.router import Router
from ..errors import (
    AgentNotFound,
    AgentStopped,
    CircuitOpen,
    ClusterError,
    DeliveryFailed,
    InvalidMessage,
    MailboxClosed,
    MailboxFull,
    MessagingError,
    SystemClosed,
    UnencodablePayload,
)
from .admission import AdmissionDesk, Entered
from .dead_letters import DeadLetterReason
from .journal import NO_JOURNAL
from .ledger import DeliveryStats, SettlementListener, ledger_for
from .options import DeliveryConfig, FilledOptions
from .retries import NoRetry, RetryCandidate, RetryScheduler
from .runs import count_run, forget_run

if TYPE_CHECKING:
    from .._routing.endpoint import Endpoint

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
        DeadLetterReason.UNREACHABLE,
    }
)

#: Failures an at-most-once sender hears of as an exception (besides the dead letter). A cast to
#: an agent that has stopped is dropped quietly, as a send to a dead process is in Erlang.
_RAISED = frozenset(
    {DeadLetterReason.NOT_FOUND, DeadLetterReason.MAILBOX_FULL, DeadLetterReason.CIRCUIT_OPEN}
)

#: What an inbox raises for a message that never becomes the delivery layer's: a sender waiting
#: for room in its own full mailbox, or a message for another node that cannot be encoded. It
#: is refused (counted as never sent), and the sender hears the error.
_NOT_TAKEN = (OwnMailboxFull, InvalidMessage, UnencodablePayload)

#: Failures that say nothing of the agent's health, so do not count against its circuit
#: (``EXPIRED``: its budgets could not admit the message before its deadline;
#: ``SYSTEM_STOPPED``: the system shut down before they did; ``AGENT_STOPPED``: it stopped
#: for good, and its refusals must keep saying so, not that its circuit is open;
#: ``NOT_FOUND``: nobody holds its name now, as for a local name, which has no endpoint to
#: count against: an agent on another node whose node died must not find its circuit open
#: when it is back).
_NOT_THE_AGENTS = frozenset(
    {
        DeadLetterReason.NOT_FOUND,
        DeadLetterReason.AGENT_STOPPED,
        DeadLetterReason.CIRCUIT_OPEN,
        DeadLetterReason.UNREACHABLE,
        DeadLetterReason.EXPIRED,
        DeadLetterReason.SYSTEM_STOPPED,
    }
)

#: What an inbox raises for a message it cannot take now: a full or closed mailbox, a cluster
#: that did not take it in time, or (for an agent on another node) no node holding its name.
_PUT_FAILURES = (MailboxFull, MailboxClosed, ClusterError, AgentNotFound)


class DeliveryManager:
    """Applies each message's guarantee on its way to a mailbox and after its handler ran.

    Reached as ``system.delivery``. The sending side (``send``, ``send_nowait``,
    ``put_call_nowait``, ``send_call``, ``post``) is called by refs and the system, and each
    accepts a message through the ledger once; the outcome side (``acknowledge``,
    ``suppress_duplicate``, ``undelivered``, ``failed_through_caller``, ``abandoned``) by the
    recipient's loop, the only caller, and each settles a message through the ledger once.
    """

    def __init__(
        self,
        config: DeliveryConfig,
        breakers: CircuitBreakerConfig | None,
        *,
        clock: trio.abc.Clock,
        timers: TimerService,
        router: Router,
        has_stopped: Callable[[AgentId | str | None], bool],
        file_dead_letter: Callable[[Envelope, DeadLetterReason, str], None],
        describe: Callable[[Envelope], str],
        closing: Callable[[], bool],
        journal: Journal = NO_JOURNAL,
        settlement_listener: SettlementListener | None = None,
        instruments: Instruments | None = None,
    ) -> None:
        """Delivery is given what it works with, not the system: the clock; the timer service
        its retries wait on; the router that resolves a retry's recipient again; whether an
        address stopped for good (the directory); where a message given up on is filed (the
        dead-letter office); how a message is described in a log; whether the system is
        shutting down; and the journal and settlement listener its ledger tells."""
        self.config = config
        self._breakers = breakers
        self._clock = clock
        self._router = router
        self._has_stopped = has_stopped
        self._file_dead_letter = file_dead_letter
        self._describe = describe
        self._closing = closing
        #: Told of each accept, put and retry; each hook one dict lookup when none is installed.
        self._instruments = Instruments() if instruments is None else instruments
        filled = FilledOptions(config)
        #: Options with every delivery field filled in from ``config``, indexed by priority:
        #: what a message sent without options carries.
        self.defaults = filled.defaults
        #: ``options`` with what it leaves to the system filled in from the configuration.
        self.resolve = filled.resolve
        #: System notifications' options: never retried, never expired.
        self._notices = filled.notices
        #: The books: the only counts of what was accepted and how it was settled.
        self.ledger = ledger_for(journal, settlement_listener)
        #: Whether a journal hears of each message: then each handler run is counted before
        #: it begins (:meth:`started`).
        self.journaling = journal is not NO_JOURNAL
        #: Nobody to tell of an accepted message (no journal, no message instrument): the
        #: common send only moves the ledger's counts.
        self._quiet = self.ledger.counts_only and MESSAGE_HOOKS not in self._instruments
        #: The retry schedule, on the system's one timer service.
        self._retries_waiting = RetryScheduler(config, timers, clock, self._retry)
        #: Where messages wait for their destinations' budgets.
        self.admissions = AdmissionDesk(self, clock, timers, self._instruments)
        #: True while a message is put into a fallback (whose own fallback is not followed).
        self.in_fallback = False

    # -- options ---------------------------------------------------------------------------

    def notice_options(self, priority: Priority = Priority.NORMAL) -> MessageOptions:
        """Options for a notification the system sends (at most once)."""
        return self._notices[priority]

    # -- sending ---------------------------------------------------------------------------

    async def send(self, endpoint: Endpoint | None, envelope: Envelope) -> None:
        """Deliver a cast or an info to ``endpoint``, waiting for room in a mailbox that blocks.

        A failure is retried later (retrying guarantees) or dead-lettered (at-most-once).

        Raises:
            MailboxFull, CircuitOpen, AgentNotFound: at-most-once only, when the message could
                not be delivered (it is also a dead letter).
            OwnMailboxFull: the agent sent it from its own task into its own mailbox, full and
                blocking; the message is not accepted.
            InvalidMessage, UnencodablePayload: a journal keeps the message and cannot encode
                it; nothing was accepted.
            JournalError: the journal keeps the message and could not commit it.

        A message the journal keeps is durable when this returns: it waits for its commit.
        """
        commit = self.ledger.accepted(envelope)
        if "message_accepted" in self._instruments:
            self._instruments.call("message_accepted", envelope)
        try:
            failure = await self._put(endpoint, envelope)
        except trio.Cancelled:
            self._give_up(envelope, DeadLetterReason.EXPIRED, "the sender gave up waiting for room")
            raise
        except _NOT_TAKEN:
            self.ledger.refused(envelope)  # not accepted: it was never the delivery layer's
            raise
        if failure is not None and type(failure) is tuple:  # not taken by a fallback
            self._failed(endpoint, envelope, *failure)
        if commit is not None:
            # The message is in its mailbox: a cast that raises ``Cancelled`` must not have
            # sent it, so a cancellation now waits for the commit, which the journal ends, well
            # or not, within one write (a lock is waited for at most its ``busy_timeout``).
            with trio.CancelScope(shield=True):
                await commit.wait()

    def send_nowait(self, endpoint: Endpoint | None, envelope: Envelope) -> None:
        """:meth:`send` without waiting: a full mailbox is a failure (retried or raised). A
        message a journal keeps is committed with the journal's next group commit; nothing
        waits for it."""
        if self._quiet and endpoint is not None and endpoint.admission is None:
            # The common case, spelled out: a put into the mailbox of a healthy agent, with
            # nobody to tell (a journal must hear of a message before it is put, to refuse
            # one it cannot encode: that takes the general way below).
            try:
                endpoint.inbox.put_nowait(envelope)
            except (MailboxFull, MailboxClosed) as error:
                self.ledger.accepted(envelope)
                self._failed(endpoint, envelope, *_failure_of(error, endpoint))
            else:
                ledger = self.ledger  # spelled out too: a call would cost a tenth of the send
                ledger.sent_count += 1
                ledger.delivered_count += 1
            return
        self.ledger.accepted(envelope)
        if "message_accepted" in self._instruments:
            self._instruments.call("message_accepted", envelope)
        try:
            failure = self._put_nowait(endpoint, envelope)
        except _NOT_TAKEN:
            self.ledger.refused(envelope)
            raise
        if failure is not None:
            self._failed(endpoint, envelope, *failure)

    def post(self, endpoint: Endpoint, envelope: Envelope) -> None:
        """Deliver a notification the system originates, at most once; never raises.

        The circuit breaker does not apply: a ``Down`` or a timer must reach a struggling agent.
        """
        try:
            endpoint.inbox.put_nowait(envelope)
        except (MailboxFull, MailboxClosed) as error:
            self.ledger.accepted(envelope)
            if "message_accepted" in self._instruments:
                self._instruments.call("message_accepted", envelope)
            self._give_up(envelope, self._final_reason(_failure_of(error, endpoint)[0]), str(error))
        else:
            self._accepted_and_delivered(envelope)

    def put_cast_nowait(self, endpoint: Endpoint | None, envelope: Envelope) -> bool:
        """Deliver a cast or an info at once if that is all :meth:`send` would do: nobody to
        tell (no journal, no instrument that hears of messages), an agent of this process
        without budgets, with room in its mailbox. Returns False, having done nothing, when
        the message must take :meth:`send`'s way.

        The awaited send's common case, spelled out: through :meth:`send` and
        ``Mailbox.put`` it costs four more coroutines, a sixth of the send."""
        if (
            not self._quiet
            or endpoint is None
            or endpoint.admission is not None
            or endpoint.inbox.__class__ is not Mailbox
            or not endpoint.inbox.has_room()
        ):
            return False
        self.send_nowait(endpoint, envelope)
        return True

    def put_call_nowait(self, endpoint: Endpoint | None, envelope: Envelope) -> bool:
        """Deliver a call at once if nothing stands in its way: a live agent without a circuit
        breaker, with room in its mailbox. Returns False, having done nothing, when the call
        must take :meth:`send_call`'s way, which may wait and retry."""
        if endpoint is None or endpoint.admission is not None or not endpoint.inbox.has_room():
            return False
        endpoint.inbox.put_nowait(envelope)
        self._accepted_and_delivered(envelope)
        return True

    def replay(self, endpoint: Endpoint | None, envelope: Envelope) -> None:
        """Deliver again a message the journal kept across a restart, into the mailbox of the
        agent of its name, just registered: accepted in the books (not told to the journal,
        which holds it), or, when its handler already ran as often as its retries allow, a
        ``RETRIES_EXHAUSTED`` dead letter. A full mailbox is retried as for any message."""
        self.ledger.replayed(envelope)
        if "message_accepted" in self._instruments:
            self._instruments.call("message_accepted", envelope)
        max_retries = self.resolve(envelope.options).max_retries
        assert max_retries is not None  # resolved
        if envelope.attempt > max_retries:
            self._give_up(
                envelope,
                DeadLetterReason.RETRIES_EXHAUSTED,
                f"its handler ran {envelope.attempt} times before a restart",
            )
            return
        failure = self._put_nowait(endpoint, envelope)
        if failure is not None:
            self._failed(endpoint, envelope, *failure)

    def _accepted_and_delivered(self, envelope: Envelope) -> None:
        """Accept ``envelope``, just put into its mailbox: in the books and to the instruments."""
        if self._quiet:
            ledger = self.ledger
            ledger.sent_count += 1
            ledger.delivered_count += 1
            return
        self.ledger.accepted_and_delivered(envelope)
        if MESSAGE_HOOKS in self._instruments:
            self._instruments.accepted_and_delivered(envelope)

    async def send_call(self, endpoint: Endpoint | None, envelope: Envelope) -> Endpoint:
        """Deliver a call, in the caller's task: a failure before the handler ran (recipient
        missing, mailbox full, circuit open) is retried with backoff when its guarantee
        retries, within the caller's deadline, which the caller's cancel scope enforces.
        Returns the agent it was delivered to.

        Raises:
            AgentStopped: the agent has stopped for good.
            MailboxFull, CircuitOpen, AgentNotFound: at-most-once, the failure.
            DeliveryFailed: its retries ran out (the last failure is the cause).
            SystemClosed: the system shut down while it waited for a retry.
            OwnMailboxFull: as for :meth:`send`; the call is not accepted.
        """
        self.ledger.accepted(envelope)
        if "message_accepted" in self._instruments:
            self._instruments.call("message_accepted", envelope)
        try:
            while True:
                failure = await self._put(endpoint, envelope)
                if failure is None:
                    assert endpoint is not None
                    return endpoint
                if not isinstance(failure, tuple):
                    return failure  # its pool's fallback took it
                reason, error = failure
                self._count_failure(endpoint, reason)
                if not self._retries(envelope, reason):
                    raise error
                # A try at the caller's deadline is too late: the caller has gone by then.
                due = self._retries_waiting.next_try(
                    envelope,
                    reason,
                    None if endpoint is None else endpoint.admission,
                    limit=math.nextafter(envelope.deadline, -math.inf),
                )
                if due is NoRetry.EXHAUSTED:
                    raise DeliveryFailed(
                        f"{_describe(endpoint, envelope)} not delivered after {envelope.attempt}"
                        f" retries: {error}"
                    ) from error
                if due is NoRetry.TOO_LATE:
                    raise DeliveryFailed(
                        f"{_describe(endpoint, envelope)} not delivered: its next try would come"
                        f" after its caller's deadline: {error}"
                    ) from error
                self.ledger.retried()
                if "retry_scheduled" in self._instruments:
                    delay = due - self._clock.current_time()
                    self._instruments.call("retry_scheduled", envelope, delay)
                if not await self._retries_waiting.wait(envelope, due, reason):  # caller's task
                    raise SystemClosed(
                        f"{_describe(endpoint, envelope)} not delivered: the system shut down"
                        f" while it waited for its retry ({error})"
                    )
                [(endpoint, envelope)] = self._router.targets_of(envelope, retry=True)[:1]
        except _NOT_TAKEN:
            self.ledger.refused(envelope)  # not accepted: it was never the delivery layer's
            raise
        except MessagingError:
            self.ledger.failed(envelope)
            raise
        except BaseException:
            self._give_up(envelope, DeadLetterReason.EXPIRED, "the caller gave up before delivery")
            raise

    async def _put(
        self, endpoint: Endpoint | None, envelope: Envelope
    ) -> _Failure | Endpoint | None:
        """Put ``envelope`` in ``endpoint``'s inbox, waiting if it blocks; or say why not, or
        where it went instead (the endpoint of its pool's fallback).

        A cancellation point either way, and a schedule point when it waits, or by the send
        budget (see ``Mailbox.put``)."""
        if endpoint is None or endpoint.admission is not None:
            failure = self._obstacle(endpoint, envelope)
            if failure is Entered.WAITING:  # it waits for admission: not the sender's now
                await spend_send_budget()
                return None
            if failure is not None:
                if type(failure) is tuple:
                    await trio.lowlevel.checkpoint_if_cancelled()
                await spend_send_budget()
                return failure
            assert endpoint is not None
        try:
            await endpoint.inbox.put(envelope)
        except _NOT_TAKEN:
            self._release(envelope)
            raise  # no retry would find room that only the sender could make, or encode it
        except _PUT_FAILURES as error:
            self._release(envelope)
            await spend_send_budget()  # refused before the inbox spent it: a send all the same
            return _failure_of(error, endpoint)
        self._delivered(envelope)
        return None

    def _put_nowait(self, endpoint: Endpoint | None, envelope: Envelope) -> _Failure | None:
        """:meth:`_put` without waiting: a full mailbox is a failure."""
        if endpoint is None or endpoint.admission is not None:
            failure = self._obstacle(endpoint, envelope)
            if failure is not None and type(failure) is tuple:
                return failure
            if failure is not None:
                return None  # it waits for admission, or its pool's fallback took it
            assert endpoint is not None
        return self._put_now(endpoint, envelope)

    def put_admitted(
        self, endpoint: Endpoint, envelope: Envelope, *, fallback: bool = False
    ) -> _Failure | None:
        """Put ``envelope``, past its admission, into ``endpoint``'s inbox now, or say why
        not (:meth:`_put_nowait`'s put, for a message that waited). A ``fallback`` put goes
        through the fallback's own admission first (and follows no further fallback)."""
        if fallback:
            self.in_fallback = True
            try:
                return self._put_nowait(endpoint, envelope)
            finally:
                self.in_fallback = False
        return self._put_now(endpoint, envelope)

    def _put_now(self, endpoint: Endpoint, envelope: Envelope) -> _Failure | None:
        """Put ``envelope``, with nothing left in its way, into ``endpoint``'s inbox now, or
        say why not: the mailbox's refusal."""
        try:
            endpoint.inbox.put_nowait(envelope)
        except _PUT_FAILURES as error:
            self._release(envelope)
            return _failure_of(error, endpoint)
        self._delivered(envelope)
        return None

    def _delivered(self, envelope: Envelope) -> None:
        """Count ``envelope``, accepted before, as put into its mailbox, and tell the
        instruments."""
        self.ledger.delivered()
        if "message_delivered" in self._instruments:
            self._instruments.call("message_delivered", envelope)

    def _obstacle(
        self, endpoint: Endpoint | None, envelope: Envelope
    ) -> _Failure | Entered | Endpoint | None:
        """Why ``envelope`` cannot go into ``endpoint``'s inbox now, or ``None`` if it may try;
        ``Entered.WAITING`` if its destination's budgets made it wait; the endpoint it went to
        instead if its pool's fallback took it."""
        if endpoint is None:
            if self._has_stopped(envelope.recipient):
                return DeadLetterReason.AGENT_STOPPED, AgentStopped(
                    f"{bounded_repr(envelope.recipient)} has stopped"
                )
            return DeadLetterReason.NOT_FOUND, AgentNotFound(
                f"no agent is registered as {bounded_repr(envelope.recipient)}"
            )
        admission = endpoint.admission
        if type(admission) is AdmissionGate:
            return self.admissions.enter(endpoint, admission, envelope)
        if admission is not None and not admission.admit(self._clock.current_time()):
            fallback = self.admissions.fallback(endpoint, envelope)
            return self.circuit_open(endpoint) if fallback is None else fallback
        return None

    def circuit_open(self, endpoint: Endpoint) -> _Failure:
        """The failure of a message ``endpoint``'s open circuit refuses."""
        return DeadLetterReason.CIRCUIT_OPEN, CircuitOpen(
            f"the circuit of {endpoint.id!r} is open: failing fast"
        )

    def failed_at(self, endpoint: Endpoint, envelope: Envelope, failure: _Failure) -> None:
        """A message that left its sender's hands (it waited for admission, or went to a
        fallback) could not be put into ``endpoint``'s inbox: a cast is retried or given up
        on as any; a call fails for its waiting caller. Never raises: its sender is not here."""
        reason, error = failure
        if envelope.reply is not None:
            self._count_failure(endpoint, reason)
            self.undelivered(envelope, reason, error)
            return
        # What an at-most-once sender would hear, its dead letter says.
        with contextlib.suppress(MessagingError):
            self._failed(endpoint, envelope, reason, error)

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
            and not self._closing()
        )

    def _final_reason(self, reason: DeadLetterReason) -> DeadLetterReason:
        """The dead-letter reason of a failure not retried: at shutdown, the shutdown."""
        if self._closing() and reason in (_RETRIED | {DeadLetterReason.AGENT_STOPPED}):
            return DeadLetterReason.SYSTEM_STOPPED
        return reason

    # -- what the recipient reports ---------------------------------------------------------

    async def started(
        self,
        endpoint: Endpoint,
        envelope: Envelope,
        waiting: Callable[[int], list[Envelope]],
    ) -> None:
        """A handler run of ``envelope`` at ``endpoint`` is about to begin: a journal that
        keeps the message counts the run durably first, so that runs across crashes stay
        within its retries; with it, the next runs of the kept messages ``waiting(n)`` gives
        (the next ``n`` in the agent's mailbox), in one commit (see ``runs.py``).

        Raises:
            JournalError: the run could not be counted (the handler must not run).
        """
        await count_run(self.ledger, endpoint, envelope, waiting)

    def not_run(self, endpoint: Endpoint, envelope: Envelope) -> None:
        """``envelope``, taken out of the mailbox at ``endpoint``, will not run (expired, or a
        duplicate): a run counted ahead for it is spent."""
        forget_run(endpoint, envelope)

    def acknowledge(self, endpoint: Endpoint, envelope: Envelope, reply: Any = NO_REPLY) -> None:
        """The handler of ``envelope`` returned normally (a call's ``reply`` is kept for its
        duplicates under exactly-once). The loop settles the common case with
        ``ledger.acknowledged`` alone."""
        self.ledger.acknowledged(envelope)
        self._release(envelope)
        admission = endpoint.admission
        handle = envelope.reply
        if (
            admission is not None
            and (handle is None or not handle.pending)  # a deferred call: when answered
            and envelope.options not in self._notices  # they pass an open circuit
        ):
            admission.record(True, self._clock.current_time())
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
        self.ledger.duplicate(envelope)
        self._release(envelope)
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
        self._release(envelope)
        handle = envelope.reply
        if handle is not None and not handle.abandoned:
            if handle.pending:
                handle.fail(error)
            if handle.replied:  # answered through ctx.caller, then the handler raised
                self.ledger.acknowledged(envelope)
            else:
                self.ledger.failed(envelope)
            return
        if handle is None and self._retries(envelope, why, runs_again=runs_again):
            self._schedule_retry(envelope, why, str(error))
            return
        self._give_up(envelope, self._final_reason(why), str(error))

    def failed_through_caller(self, endpoint: Endpoint, envelope: Envelope) -> None:
        """The handler of the call ``envelope`` returned after failing its caller through
        ``ctx.caller.fail``: settled as failed, counted against the circuit; an exactly-once
        call keeps that answer for its resends."""
        self.ledger.failed(envelope)
        self._release(envelope)
        self.record_failure(endpoint)
        if envelope.options.guarantee is EXACTLY_ONCE:
            handle = envelope.reply
            assert handle is not None
            self.remember(endpoint, envelope, handle.keep_answer())

    def abandoned(self, endpoint: Endpoint, envelope: Envelope) -> None:
        """The handler of the call ``envelope`` was cut short because its caller gave up:
        settled as failed, and counted against the circuit once (a caller's ``CallTimeout``
        counts already; one that gave up through its own cancel scope does not)."""
        self.ledger.failed(envelope)
        self._release(envelope)
        handle = envelope.reply
        assert handle is not None
        if not handle.expired:
            self.record_failure(endpoint)

    def call_timed_out(self, endpoint: Endpoint, envelope: Envelope) -> None:
        """The call ``envelope`` delivered to ``endpoint`` got no answer by its deadline: a
        failure of the agent's, counted against its circuit, unless it was still waiting for
        admission (its budgets kept it, the agent never saw it)."""
        if self.admissions.is_waiting(envelope):
            return
        self.record_failure(endpoint)

    def deferred_call_failed(self, endpoint: Endpoint) -> None:
        """A call acknowledged when its handler returned (deferred) was then failed by the
        agent: count it as failed, and against ``endpoint``'s circuit breaker."""
        self.ledger.acknowledged_then_failed()
        self.record_failure(endpoint)

    def deferred_call_stopped(self) -> None:
        """A call acknowledged when its handler returned (deferred) failed as its agent
        stopped: count it as failed, though not against the circuit (a stop is not a fault)."""
        self.ledger.acknowledged_then_failed()

    def forwarded(self, envelope: Envelope) -> None:
        """The cluster took ``envelope`` for an agent on another node (JetStream stored it; it
        went out over core NATS; or, a call, its answer came back): settled here, and counted
        by that node from its arrival."""
        self.ledger.forwarded(envelope)

    def forward_failed(self, endpoint: Endpoint, envelope: Envelope, error: ClusterError) -> None:
        """The cluster could not take ``envelope`` (no NATS server answered in time): a cast or
        an info waits in this delivery layer for a retry by its guarantee, or becomes a dead
        letter at its expiry; a call has failed (its caller was told ``error``)."""
        if envelope.reply is not None:
            self.ledger.failed(envelope)
            return
        self._failed(endpoint, envelope, DeadLetterReason.UNREACHABLE, error)

    def refuse_arrival(self, envelope: Envelope, reason: DeadLetterReason, detail: str) -> None:
        """A message arrived that cannot be delivered at all (from another node, unreadable):
        accepted and at once a dead letter, so that the books account for it."""
        self.ledger.accepted(envelope)
        self._give_up(envelope, reason, detail)

    def record_success(self, endpoint: Endpoint) -> None:
        """Report a success to ``endpoint``'s admission (a deferred reply was sent)."""
        admission = endpoint.admission
        if admission is not None:
            admission.record(True, self._clock.current_time())

    def record_neither(self, endpoint: Endpoint) -> None:
        """Report to ``endpoint``'s admission a message its agent refused as bad or does not
        handle: no sign of its health either way, but the end of a half-open circuit's trial."""
        admission = endpoint.admission
        if admission is not None:
            admission.record(None, self._clock.current_time())

    def record_failure(self, endpoint: Endpoint) -> None:
        """Report a failure to ``endpoint``'s admission. The one place that knows the policy
        is a circuit breaker: it makes one on the endpoint's first failure (while the circuit
        breaker is configured), so that a healthy endpoint has nothing to consult."""
        admission = endpoint.admission
        if admission is None:
            if self._breakers is None:
                return
            admission = endpoint.admission = CircuitBreaker(self._breakers)
        elif type(admission) is AdmissionGate and admission.breaker is None:
            if self._breakers is None:
                return
            admission.breaker = CircuitBreaker(self._breakers)
        admission.record(False, self._clock.current_time())

    # -- admission budgets -------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether the system is shutting down (nothing waits for admission then)."""
        return self._closing()

    def _release(self, envelope: Envelope) -> None:
        """``envelope`` left its handler, or will never reach one: if budgets admitted it,
        its place there is free again."""
        if self.admissions.admitted:
            self.admissions.release(envelope)

    def take_stopped(self, endpoint: Endpoint) -> list[Envelope]:
        """The messages waiting for the admission of ``endpoint``, which has stopped for
        good, that no other agent can take: taken out, for its cell to settle."""
        return self.admissions.take_stopped(endpoint)

    def gate(self, endpoint: Endpoint) -> AdmissionGate:
        """``endpoint``'s admission gate, made now if it has none (for a pool member, one
        for every member, sharing one set of budgets): what a ``retry_after`` holds."""
        admission = endpoint.admission
        if type(admission) is AdmissionGate:
            return admission
        group = endpoint.group
        if group is None:
            return endpoint.install_budgets(Budgets(()))
        group.budgets = Budgets(())
        for member in group.positions:
            if member is not None:
                member.install_budgets(group.budgets)
        gate = endpoint.admission
        assert type(gate) is AdmissionGate
        return gate

    def charge(self, endpoint: Endpoint, tokens: int) -> None:
        """A handler at ``endpoint`` reports that its message cost ``tokens``: charged to
        its token budgets (nothing without any)."""
        admission = endpoint.admission
        if type(admission) is AdmissionGate:
            admission.budgets.charge(tokens, self._clock.current_time())

    def retry_later(self, endpoint: Endpoint, envelope: Envelope, seconds: float) -> None:
        """The handler of ``envelope`` returned having called ``ctx.retry_after(seconds)``:
        it is delivered again once that has passed, with the endpoint's admission held until
        then; not a failure, and no retry spent (see ``AdmissionDesk.retry_after``)."""
        self.admissions.retry_after(self.gate(endpoint), endpoint, envelope, seconds)

    def _count_failure(self, endpoint: Endpoint | None, reason: DeadLetterReason) -> None:
        """Count a failed delivery against ``endpoint``'s circuit: not one its circuit itself
        refused, nor one the cluster's transport could not carry (the agent did not fail;
        retries wait for NATS), nor one for a name no node holds now (no agent to fail)."""
        if endpoint is not None and reason not in _NOT_THE_AGENTS:
            self.record_failure(endpoint)

    # -- retries -----------------------------------------------------------------------------

    def _schedule_retry(
        self,
        envelope: Envelope,
        reason: DeadLetterReason,
        detail: str,
        endpoint: Endpoint | None = None,
    ) -> None:
        """Have the retry scheduler try ``envelope`` again after its backoff, or give up on it
        if it has had all its retries, or if its next try would come after its timeout."""
        due = self._retries_waiting.next_try(
            envelope,
            reason,
            None if endpoint is None else endpoint.admission,
            limit=envelope.created_at + envelope.options.timeout,
        )
        if due is NoRetry.EXHAUSTED:
            self._give_up(
                envelope,
                DeadLetterReason.RETRIES_EXHAUSTED,
                f"after {envelope.attempt} retries; last failure: {reason.value}: {detail}",
            )
            return
        if due is NoRetry.TOO_LATE:
            self._give_up(
                envelope,
                DeadLetterReason.EXPIRED,
                f"its next try would come after its timeout; last failure: {reason.value}",
            )
            return
        self.ledger.retried()
        if "retry_scheduled" in self._instruments:
            self._instruments.call("retry_scheduled", envelope, due - self._clock.current_time())
        self._retries_waiting.schedule(envelope, due, reason)

    def _retry(self, candidate: RetryCandidate) -> None:
        """Redeliver a message whose retry is due (in the timer service's task)."""
        envelope = candidate.envelope
        if self._closing():
            self._give_up(envelope, DeadLetterReason.SYSTEM_STOPPED, "before its retry")
            return
        if envelope.created_at + envelope.options.timeout < self._clock.current_time():
            self._give_up(envelope, DeadLetterReason.EXPIRED, "its timeout passed before a retry")
            return
        try:
            targets = self._router.targets_of(envelope, retry=True)
        except Exception as error:  # a custom router or a pool's key function: user code
            described = self._describe(envelope)
            logger.error("routing a retry of %s raised", described, exc_info=error)
            self._give_up(
                envelope, DeadLetterReason.NOT_FOUND, f"routing it raised {bounded_repr(error)}"
            )
            return
        for _, copy in targets[1:]:  # each copy fanned out is a message of its own
            self.ledger.accepted(copy)
            if "message_accepted" in self._instruments:
                self._instruments.call("message_accepted", copy)
        for endpoint, copy in targets:
            try:
                failure = self._put_nowait(endpoint, copy)
            except _NOT_TAKEN as error:
                # Its new destination cannot take it (an agent on another node, and a payload
                # the codec cannot carry): no retry would encode it.
                self._give_up(copy, DeadLetterReason.REJECTED, str(error))
                continue
            if failure is not None:
                self._failed(endpoint, copy, *failure)

    @property
    def waiting(self) -> int:
        """How many messages wait for a retry."""
        return self._retries_waiting.waiting

    def get_retry_candidates(self) -> tuple[RetryCandidate, ...]:
        """The messages waiting for a retry, soonest first."""
        return self._retries_waiting.candidates()

    def settle_waiting(self) -> None:
        """At shutdown: every message waiting for a retry becomes a dead letter (a call's
        caller settles it when it wakes)."""
        for candidate in self._retries_waiting.cancel_all():
            self._give_up(candidate.envelope, DeadLetterReason.SYSTEM_STOPPED, "before its retry")
        self.admissions.settle_all()

    # -- the end of the line -----------------------------------------------------------------

    def _give_up(self, envelope: Envelope, reason: DeadLetterReason, detail: str) -> None:
        """The end of the line for a message: settle it in the books (which tell the journal,
        and know what a shutdown leaves it) and file it as a dead letter."""
        self._release(envelope)
        self.ledger.dead_lettered(envelope, reason, detail)
        self._file_dead_letter(envelope, reason, detail)

    def get_stats(self) -> DeliveryStats:
        """A frozen snapshot of the counters."""
        stats = self.ledger.stats()
        admissions = self.admissions
        if admissions.fallbacks or admissions.waiting:
            waiting = admissions.waiting
            return attrs.evolve(stats, admission_waiting=waiting, fallbacks=admissions.fallbacks)
        return stats


def _failure_of(error: MessagingError, endpoint: Endpoint) -> _Failure:
    """Why a put into ``endpoint``'s inbox failed with ``error`` (one of ``_PUT_FAILURES``)."""
    if isinstance(error, MailboxFull):
        return DeadLetterReason.MAILBOX_FULL, error
    if isinstance(error, ClusterError):
        return DeadLetterReason.UNREACHABLE, error
    if isinstance(error, AgentNotFound):
        return DeadLetterReason.NOT_FOUND, error
    return DeadLetterReason.AGENT_STOPPED, endpoint.occupant.refusal()


def _describe(endpoint: Endpoint | None, envelope: Envelope) -> str:
    """``envelope`` for a log or an error message, as its recipient's ``format_message`` shows
    its payload (the bounded repr when there is no such agent)."""
    return repr(envelope) if endpoint is None else endpoint.occupant.describe(envelope)
