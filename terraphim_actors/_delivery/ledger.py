"""The delivery layer's books: the only code that counts messages, and the one that tells the
journal of them.

Every message the delivery layer accepts is counted once on its way in and once on its way out
(acknowledged, a suppressed duplicate, failed, dead-lettered, or forwarded to another node), by
the named methods here and nowhere else, so that ``sent == acknowledged + duplicates_suppressed
+ failed + dead_lettered + forwarded + pending`` holds by construction. A journal hears of the
same two events through the same calls (a dead letter's record too), and so does a settlement
listener (a cluster node acknowledging what it took from JetStream): a :class:`JournalingLedger`
tells them, a plain :class:`Ledger` (the default, with neither) does not, which keeps both seams
free on the hot path. Two events are the books' alone: a message replayed from the journal
(which holds it already) is accepted without telling it, and one the shutdown stopped
(``SYSTEM_STOPPED``) is settled without telling it (the journal keeps it for its next open: a
clean exit is not a crash). This module is the one place that rule is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .._core.ids import MessageId
from .._core.messages import Envelope
from .._core.protocols import Commit, Journal
from .._core.settlement import Settlement
from .dead_letters import DeadLetterReason
from .journal import NO_JOURNAL

__all__ = ["DeliveryStats", "JournalingLedger", "Ledger", "SettlementListener", "ledger_for"]

#: Told of each settlement (the message's id and how it ended), after the journal: how a
#: cluster node acknowledges to JetStream a message it took, once it is settled here.
SettlementListener = Callable[[MessageId, Settlement], None]


@attrs.frozen(kw_only=True)
class DeliveryStats:
    """A snapshot of the delivery layer's counters.

    ``sent == acknowledged + duplicates_suppressed + failed + dead_lettered + forwarded +
    pending``.
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
    #: Messages handed to the cluster for an agent on another node (stored by JetStream, or
    #: published or answered over core NATS): settled here, counted there from their arrival.
    forwarded: int = 0
    #: Of the pending, messages waiting for their destination's admission budgets.
    admission_waiting: int = 0
    #: Messages a pool sent to its fallback (its circuit open, or its budgets spent beyond
    #: the message's deadline).
    fallbacks: int = 0


class Ledger:
    """The counters behind :class:`DeliveryStats`, each moved by one named method.

    The accept methods (:meth:`accepted`, :meth:`accepted_and_delivered`, :meth:`replayed`)
    and the settle methods (:meth:`acknowledged`, :meth:`duplicate`, :meth:`failed`,
    :meth:`dead_lettered`, :meth:`refused`) are the one accept point and the one settle point
    of every message.

    The counts of the common send and its acknowledgement are plain attributes as well:
    where a plain ledger has no one to tell (:attr:`counts_only`: no journal) and no
    instrument listens, delivery and the agent loop move ``sent_count``, ``delivered_count``
    and ``acknowledged_count`` in place, as :meth:`accepted_and_delivered` and
    :meth:`acknowledged` would, because a method call costs a cast about a tenth of its time.
    """

    __slots__ = (
        "_dead_lettered",
        "_duplicates",
        "_failed",
        "_forwarded",
        "_retried",
        "acknowledged_count",
        "delivered_count",
        "sent_count",
    )

    #: Whether the ledger only counts: a journaling one must hear of each message.
    counts_only = True

    def __init__(self) -> None:
        self.sent_count = 0
        self.delivered_count = 0
        self.acknowledged_count = 0
        self._retried = 0
        self._failed = 0
        self._duplicates = 0
        self._dead_lettered = 0
        self._forwarded = 0

    # -- the way in --------------------------------------------------------------------------

    def accepted(self, envelope: Envelope) -> Commit | None:
        """Delivery took ``envelope`` on: it is pending until settled. Returns the commit
        that makes it durable, for a sender to wait on (``None``: none to wait for)."""
        self.sent_count += 1
        return None

    def replayed(self, envelope: Envelope) -> None:
        """A message the journal kept before a restart is delivered again: accepted in
        these books, as any message, but not told to the journal, which holds it already."""
        self.sent_count += 1

    def accepted_and_delivered(self, envelope: Envelope) -> None:
        """:meth:`accepted`, and put at once into a mailbox: the common send in one call."""
        self.sent_count += 1
        self.delivered_count += 1

    def delivered(self) -> None:
        """A message accepted earlier went into a mailbox (a first try or a retry)."""
        self.delivered_count += 1

    def retried(self) -> None:
        """A redelivery of a pending message was scheduled."""
        self._retried += 1

    def started(self, envelope: Envelope) -> Commit | None:
        """A handler run of ``envelope`` begins: the commit that counts it durably, to be
        waited on before the handler runs (``None``: none to wait for)."""
        return None

    # -- the way out -------------------------------------------------------------------------

    def acknowledged(self, envelope: Envelope) -> None:
        """``envelope``'s handler returned normally."""
        self.acknowledged_count += 1

    def duplicate(self, envelope: Envelope) -> None:
        """``envelope`` was completed before (exactly-once): not handled again."""
        self._duplicates += 1

    def failed(self, envelope: Envelope) -> None:
        """``envelope``, a call, ended in an error for its caller."""
        self._failed += 1

    def dead_lettered(self, envelope: Envelope, reason: DeadLetterReason, detail: str) -> None:
        """``envelope`` was given up on, for ``reason``, and is filed as a dead letter."""
        self._dead_lettered += 1

    def forwarded(self, envelope: Envelope) -> None:
        """``envelope`` was handed to the cluster for an agent on another node, which counts it
        from its arrival."""
        self._forwarded += 1

    def refused(self, envelope: Envelope) -> None:
        """``envelope``, accepted, turned out never to be the delivery layer's (its sender
        waited for room in its own full mailbox): as if it had never been sent."""
        self.sent_count -= 1

    def acknowledged_then_failed(self) -> None:
        """A deferred call, acknowledged when its handler returned, was then failed: it counts
        as failed instead. (It was settled once; a journal hears nothing new.)"""
        self.acknowledged_count -= 1
        self._failed += 1

    # -- reading -----------------------------------------------------------------------------

    def stats(self) -> DeliveryStats:
        """A frozen snapshot of the counters."""
        settled = (
            self.acknowledged_count
            + self._duplicates
            + self._failed
            + self._dead_lettered
            + self._forwarded
        )
        return DeliveryStats(
            sent=self.sent_count,
            delivered=self.delivered_count,
            acknowledged=self.acknowledged_count,
            retried=self._retried,
            failed=self._failed,
            duplicates_suppressed=self._duplicates,
            dead_lettered=self._dead_lettered,
            pending=self.sent_count - settled,
            forwarded=self._forwarded,
        )


class JournalingLedger(Ledger):
    """A :class:`Ledger` that also tells a journal of each accept and each settlement, and a
    settlement listener (if any) of each settlement."""

    __slots__ = ("journal", "listener")

    counts_only = False

    def __init__(self, journal: Journal, listener: SettlementListener | None = None) -> None:
        super().__init__()
        self.journal = journal
        self.listener = listener

    def accepted(self, envelope: Envelope) -> Commit | None:
        # The journal first: a message it cannot encode raises before anything is counted.
        commit = self.journal.accepted(envelope)
        self.sent_count += 1
        return commit

    def replayed(self, envelope: Envelope) -> None:
        """The journal holds ``envelope`` already: told again, it writes nothing, but counts
        this copy, so that its row stays until every copy of it is settled."""
        super().replayed(envelope)
        self.journal.accepted(envelope)

    def accepted_and_delivered(self, envelope: Envelope) -> None:
        self.journal.accepted(envelope)
        super().accepted_and_delivered(envelope)

    def started(self, envelope: Envelope) -> Commit | None:
        return self.journal.started(envelope)

    def acknowledged(self, envelope: Envelope) -> None:
        super().acknowledged(envelope)
        self._settled(envelope, Settlement.ACKNOWLEDGED)

    def duplicate(self, envelope: Envelope) -> None:
        super().duplicate(envelope)
        self._settled(envelope, Settlement.DUPLICATE)

    def failed(self, envelope: Envelope) -> None:
        super().failed(envelope)
        self._settled(envelope, Settlement.FAILED)

    def dead_lettered(self, envelope: Envelope, reason: DeadLetterReason, detail: str) -> None:
        super().dead_lettered(envelope, reason, detail)
        if reason is DeadLetterReason.SYSTEM_STOPPED:
            # Not handled before the system shut down: a dead letter in these books only. The
            # journal keeps it and delivers it again at its next open (a clean exit is not a
            # crash, and loses nothing it kept); JetStream, unacknowledged, delivers it again.
            return
        self._settled(envelope, Settlement.DEAD_LETTERED)
        self.journal.filed(envelope, reason.value, detail)

    def forwarded(self, envelope: Envelope) -> None:
        super().forwarded(envelope)
        self._settled(envelope, Settlement.FORWARDED)

    def refused(self, envelope: Envelope) -> None:
        super().refused(envelope)
        self._settled(envelope, Settlement.REFUSED)

    def _settled(self, envelope: Envelope, outcome: Settlement) -> None:
        self.journal.settled(envelope.id, outcome)
        if self.listener is not None:
            self.listener(envelope.id, outcome)


def ledger_for(journal: Journal, listener: SettlementListener | None = None) -> Ledger:
    """The ledger for a system with ``journal`` and settlement ``listener``: a plain one (no
    calls) for ``NO_JOURNAL`` and no listener."""
    if journal is NO_JOURNAL and listener is None:
        return Ledger()
    return JournalingLedger(journal, listener)
