"""Admission: messages that wait in delivery for their destination's budgets.

A message for an endpoint with budgets (``spawn(..., admission=[...])``, or after a handler's
``ctx.retry_after``) passes its circuit breaker as any message does, then its budgets: let
through, it is put into the mailbox at once; refused, it waits here (not in its sender's task,
not in a handler), counted as pending, until the budgets let it through, highest priority
first and first come first served within one. What wakes the waiting is the time the budgets
name (``retry_at``: a rate window or a token charge ageing out, a hold ending), on the
system's timer service, or a message leaving its handler (which frees a concurrency place).

A message that could not be admitted and handled before its deadline is refused at once
rather than spending a request nobody will wait for: a call with ``CallTimeout``, a cast as an
``EXPIRED`` dead letter; or, sent through a pool that has a fallback, it goes to the fallback.
The estimate is each budget's time to let it through behind the messages waiting at its
priority or above (a rate window's repeats, a concurrency place's handling times) plus the
moving average of how long admitted messages took; it is checked again when its turn comes.
So does a message a pool member's open circuit refuses, on arrival or when its turn comes.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeAlias

import trio

from .._core.ids import AgentId
from .._core.instruments import Instruments
from .._core.messages import Envelope
from .._primitives.admission import AdmissionGate, AdmissionStats, Budgets
from .._primitives.timers import Timer, TimerService
from ..errors import CallTimeout, CallToSelf, DeliveryFailed, MessagingError, SystemClosed
from .dead_letters import DeadLetterReason

if TYPE_CHECKING:
    from .._routing.endpoint import Endpoint
    from .pipeline import DeliveryManager

__all__ = ["AdmissionDesk", "Entered", "admission_stats"]

#: What a waiting message is kept as: its destination, itself, and when it began to wait.
_Entry: TypeAlias = tuple["Endpoint", Envelope, float]
#: Why a message was refused: its dead-letter reason, and the error its sender hears.
_Failure: TypeAlias = tuple[DeadLetterReason, MessagingError]


class Entered(enum.Enum):
    """What became of a message at its destination's budgets, when neither let through nor
    refused nor sent to a fallback."""

    #: It waits in the budgets' waiting room: its sender has nothing to put.
    WAITING = "waiting"


def deadline_of(envelope: Envelope) -> float:
    """The time after which nobody wants ``envelope`` handled: a call's caller's deadline, a
    cast's or an info's expiry."""
    if envelope.reply is not None:
        return envelope.deadline
    return envelope.created_at + envelope.options.timeout


class AdmissionDesk:
    """Delivery's side of the budgets: admits, parks, wakes and refuses messages, and gives
    back their places when they leave their handlers.

    It works through the pipeline it belongs to (``DeliveryManager``) for what happens to a
    message after admission (the put into its inbox, a failure, a dead letter), so that the
    books are kept where they always are.
    """

    def __init__(
        self,
        delivery: DeliveryManager,
        clock: trio.abc.Clock,
        timers: TimerService,
        instruments: Instruments,
    ) -> None:
        self._delivery = delivery
        self._clock = clock
        self._timers = timers
        self._instruments = instruments
        #: Messages admitted by budgets and not yet out of their handlers, by ``id()``: each
        #: with its budgets and the time it was admitted.
        self.admitted: dict[int, tuple[Envelope, Budgets, float]] = {}
        #: Budgets with messages waiting (for the shutdown to settle).
        self._rooms: dict[Budgets, None] = {}
        #: The ``id()`` of each message waiting (its entry keeps it alive meanwhile), for a
        #: call that timed out to ask whether it was one.
        self._waiting: set[int] = set()
        #: Messages sent to a fallback.
        self.fallbacks = 0
        #: Budgets whose waiting messages are being let through now: a message of theirs that
        #: fails on its way in frees its place, which the loop under way hands on.
        self._draining: set[Budgets] = set()

    # -- on the way in ------------------------------------------------------------------------

    def enter(
        self, endpoint: Endpoint, gate: AdmissionGate, envelope: Envelope
    ) -> _Failure | Entered | Endpoint | None:
        """``envelope`` reaches ``endpoint``'s gate: ``None`` if let through (its sender puts
        it into the inbox), ``Entered.WAITING`` if it waits here, the endpoint it went to
        instead if its pool's fallback took it, or the failure (a delivery failure tuple, as
        the pipeline's obstacles are) if refused."""
        now = self._clock.current_time()
        if gate.circuit_refuses(now):
            circuit_open = self._delivery.circuit_open(endpoint)
            return self._turned_away(endpoint, gate, envelope, circuit_open)
        budgets = gate.budgets
        if not budgets.waiting and gate.admit(now):
            self.admitted[id(envelope)] = (envelope, budgets, now)
            return None
        if self._delivery.closing:
            # Nothing would let it through any more: settled as a send to a stopped agent is.
            return DeadLetterReason.SYSTEM_STOPPED, SystemClosed(
                "the system is shutting down: nothing waits for admission"
            )
        admit_at = budgets.admit_at(now, envelope.options.priority)
        if admit_at + budgets.handling_time > deadline_of(envelope):
            too_late = _unmeetable(endpoint, envelope, admit_at)
            return self._turned_away(endpoint, gate, envelope, too_late)
        budgets.waited += 1
        budgets.wait((endpoint, envelope, now), envelope.options.priority)
        self._waiting.add(id(envelope))
        self._rooms[budgets] = None
        if budgets.would_admit(now):
            self.drain(budgets)  # it came in behind others, or ahead of lower priorities
        else:
            self._wake_at(budgets, budgets.retry_at(now))
        return Entered.WAITING

    def _turned_away(
        self, endpoint: Endpoint, gate: AdmissionGate, envelope: Envelope, failure: _Failure
    ) -> _Failure | Endpoint:
        """``envelope`` cannot go to ``endpoint``: its circuit is open, or (an ``EXPIRED``
        ``failure``) its deadline would pass first. Its pool's fallback takes it if it has one
        (the endpoint it went to is returned); else it is refused with ``failure``, counted in
        the budgets when for its deadline."""
        went_to = self.fallback(endpoint, envelope)
        if went_to is not None:
            return went_to
        if failure[0] is DeadLetterReason.EXPIRED:
            gate.budgets.refused += 1
        return failure

    def _settle_turned_away(
        self, endpoint: Endpoint, gate: AdmissionGate, envelope: Envelope, failure: _Failure
    ) -> None:
        """:meth:`_turned_away` for a message that waited (its sender is not here to hear of
        it): refused for its deadline, its caller gets ``CallTimeout``, a cast is an
        ``EXPIRED`` dead letter; refused by an open circuit, it failed as any (a cast is
        retried by its guarantee)."""
        outcome = self._turned_away(endpoint, gate, envelope, failure)
        if not isinstance(outcome, tuple):
            return
        if outcome[0] is DeadLetterReason.EXPIRED:
            self._delivery.undelivered(envelope, *outcome)
        else:
            self._delivery.failed_at(endpoint, envelope, outcome)

    def fallback(self, endpoint: Endpoint, envelope: Envelope) -> Endpoint | None:
        """Send ``envelope`` to its pool's fallback, if it came through a pool that has one,
        and return the endpoint it went to (a call's timeout counts against that one's
        circuit); ``None`` otherwise. One hop: a fallback's own fallback is not followed."""
        group = endpoint.group
        if (
            group is None
            or group.fallback is None
            or self._delivery.in_fallback
            or not group.addressed_by(envelope.recipient)
        ):
            return None
        target = group.fallback.route(envelope)
        if target is endpoint or target is None or target.group is group:
            return None
        self.fallbacks += 1
        if group.budgets is not None:
            group.budgets.fallbacks += 1
        failure = self._delivery.put_admitted(target, envelope, fallback=True)
        if failure is not None:
            self._delivery.failed_at(target, envelope, failure)
        return target

    # -- waking the waiting -------------------------------------------------------------------

    def _wake_at(self, budgets: Budgets, ready: float | None) -> None:
        """Have :meth:`drain` run for ``budgets`` at ``ready`` (a time their budgets name),
        unless a wake-up comes sooner. With no time to name (only a message leaving its
        handler frees a place), the release wakes them."""
        now = self._clock.current_time()
        if ready is None or ready <= now:
            return
        timer: Timer | None = budgets.timer
        if timer is not None and timer.pending:
            if timer.deadline <= ready:
                return
            timer.cancel()
        budgets.timer = self._timers.call_at(ready, lambda: self.drain(budgets))

    def drain(self, budgets: Budgets) -> None:
        """Let through as many waiting messages as ``budgets`` admit now, best first; settle
        those nobody waits for any more; then wait for the next time the budgets name."""
        if budgets in self._draining:
            return
        self._draining.add(budgets)
        try:
            self._let_through(budgets)
        finally:
            self._draining.discard(budgets)

    def _let_through(self, budgets: Budgets) -> None:
        delivery = self._delivery
        now = self._clock.current_time()
        while True:
            entry: _Entry | None = budgets.next_waiting()
            if entry is None:
                break
            endpoint, envelope, since = entry
            handle = envelope.reply
            if handle is None:
                unwanted = deadline_of(envelope) < now
            else:
                unwanted = handle.abandoned or not handle.pending
            if unwanted:
                self._take_next(budgets, envelope)
                delivery.undelivered(envelope, DeadLetterReason.EXPIRED, _expired(envelope))
                continue
            target = _member_for(endpoint, envelope)
            gate = target.admission
            assert isinstance(gate, AdmissionGate)
            if gate.circuit_refuses(now):
                self._take_next(budgets, envelope)
                self._settle_turned_away(target, gate, envelope, delivery.circuit_open(target))
                continue
            if not budgets.would_admit(now):
                break
            self._take_next(budgets, envelope)
            if now + budgets.handling_time > deadline_of(envelope):
                too_late = _unmeetable(target, envelope, now)
                self._settle_turned_away(target, gate, envelope, too_late)
                continue
            gate.admit(now)
            self.admitted[id(envelope)] = (envelope, budgets, now)
            if "admission_waited" in self._instruments:
                self._instruments.call("admission_waited", target.id, envelope, now - since)
            failure = delivery.put_admitted(target, envelope)
            if failure is not None:
                delivery.failed_at(target, envelope, failure)
        if budgets.waiting:
            self._wake_at(budgets, budgets.retry_at(now))
        else:
            self._rooms.pop(budgets, None)

    def _take_next(self, budgets: Budgets, envelope: Envelope) -> None:
        """``envelope``, first in line at ``budgets``, waits no more."""
        budgets.take_next()
        self._waiting.discard(id(envelope))

    # -- on the way out -----------------------------------------------------------------------

    def release(self, envelope: Envelope) -> None:
        """``envelope`` left its handler (or will never reach one): give back its place in
        its budgets, learn how long it took, and let the next waiting one through."""
        admitted = self.admitted.pop(id(envelope), None)
        if admitted is None or admitted[0] is not envelope:
            return
        _, budgets, since = admitted
        now = self._clock.current_time()
        budgets.release(now, now - since)
        if budgets.waiting:
            self.drain(budgets)

    def retry_after(
        self, gate: AdmissionGate, endpoint: Endpoint, envelope: Envelope, seconds: float
    ) -> None:
        """``envelope``'s handler said "retry after ``seconds``": hold the budgets that long
        and have it wait first in line, neither failed nor spending a retry; or, if it could
        not be handled by its deadline then, refuse it now."""
        budgets = gate.budgets
        now = self._clock.current_time()
        # Held before the place is given back: else the release lets the next message through.
        budgets.hold(now + seconds)
        self.release(envelope)
        if self._delivery.closing:
            self._delivery.undelivered(
                envelope,
                DeadLetterReason.SYSTEM_STOPPED,
                SystemClosed("the system shut down before it could be tried again"),
            )
            return
        if now + seconds + budgets.handling_time > deadline_of(envelope):
            budgets.refused += 1
            self._delivery.undelivered(envelope, *_unmeetable(endpoint, envelope, now + seconds))
            return
        budgets.wait((endpoint, envelope, now), envelope.options.priority, first=True)
        self._waiting.add(id(envelope))
        self._rooms[budgets] = None
        if budgets.would_admit(now):
            self.drain(budgets)  # a wait of no time: no hold stands in its way
        else:
            self._wake_at(budgets, budgets.retry_at(now))

    def settle_all(self) -> None:
        """At shutdown: every waiting message is settled as the shutdown settles a retry's
        (a cast a dead letter, a call failed for its caller)."""
        for budgets in list(self._rooms):
            timer = budgets.timer
            if timer is not None:
                timer.cancel()
            for _, envelope, _ in budgets.take_all():
                self._delivery.undelivered(
                    envelope,
                    DeadLetterReason.SYSTEM_STOPPED,
                    SystemClosed("the system shut down before it was admitted"),
                )
        self._rooms.clear()
        self._waiting.clear()

    def take_stopped(self, endpoint: Endpoint) -> list[Envelope]:
        """``endpoint`` has stopped for good: take out the messages waiting for its budgets
        that nothing can take now, for it to settle with the rest of its mailbox (a caller
        hears of the stop at once, not when the budgets would have let its call through).
        A message that came through a pool stays while another member is left: it goes to
        that member when let through."""
        gate = endpoint.admission
        if type(gate) is not AdmissionGate or not gate.budgets.waiting:
            return []
        budgets = gate.budgets
        taken = budgets.take_if(lambda entry: _member_for(entry[0], entry[1]).occupant.gone)
        if not budgets.waiting:
            self._rooms.pop(budgets, None)
        envelopes = [envelope for _, envelope, _ in taken]
        self._waiting.difference_update(map(id, envelopes))
        return envelopes

    def is_waiting(self, envelope: Envelope) -> bool:
        """Whether ``envelope`` waits for admission now (for a call that timed out)."""
        return id(envelope) in self._waiting

    @property
    def waiting(self) -> int:
        """How many messages wait for admission."""
        return sum(budgets.waiting for budgets in self._rooms)


def admission_stats(endpoints: Iterable[Endpoint], now: float) -> dict[AgentId, AdmissionStats]:
    """The admission statistics of each agent and pool among ``endpoints`` that has budgets
    (a pool's under the pool's id, once)."""
    stats: dict[AgentId, AdmissionStats] = {}
    for endpoint in endpoints:
        gate = endpoint.admission
        if type(gate) is not AdmissionGate:
            continue
        group = endpoint.group
        owner = group.id if group is not None and group.budgets is gate.budgets else endpoint.id
        if owner not in stats:
            stats[owner] = gate.budgets.stats(now)
    return stats


def _member_for(endpoint: Endpoint, envelope: Envelope) -> Endpoint:
    """Where a waiting message goes now: through its pool, the member the pool chooses now
    (the one chosen when it arrived may have stopped, or be busier); else ``endpoint``."""
    group = endpoint.group
    if group is not None and group.addressed_by(envelope.recipient):
        with contextlib.suppress(CallToSelf):  # only its caller is left: where it was
            chosen = group.choose(envelope)
            if chosen is not None:
                return chosen
    return endpoint


def _unmeetable(endpoint: Endpoint, envelope: Envelope, ready: float) -> _Failure:
    """The refusal of ``envelope`` for its deadline, which its admission at ``ready`` (the
    estimate) and handling would pass: ``CallTimeout`` to a caller, an ``EXPIRED`` dead
    letter for a cast."""
    kind = "call" if envelope.reply is not None else envelope.kind.value
    return DeadLetterReason.EXPIRED, CallTimeout(
        f"the {kind}'s deadline could not be met: {endpoint.id!r}'s budgets admit it at"
        f" {ready:.3f} at the earliest, and its deadline is {deadline_of(envelope):.3f}"
    )


def _expired(envelope: Envelope) -> MessagingError:
    """The error (and dead-letter detail) of a message nobody wanted any more as it waited."""
    if envelope.reply is not None:
        return DeliveryFailed("the caller gave up while it waited for admission")
    timeout = envelope.options.timeout
    return DeliveryFailed(f"its timeout ({timeout} s) passed while it waited for admission")
