"""An agent's mailbox: one FIFO lane per priority, optionally bounded.

A send appends the envelope to the lane of its priority and, if the agent is parked waiting for
mail, wakes it; a receive takes the oldest message of the highest priority present. The lanes
are plain deques and the wake-up is ``trio.lowlevel.reschedule``, rather than a memory
channel, because a channel's ``send_nowait`` costs several times a deque append and its items
would have to be sorted into lanes once more on the receiving side. The blocking operations keep
Trio's semantics: each is a checkpoint, and cancellation leaves the mailbox unchanged.
"""

from __future__ import annotations

import collections
import enum
import itertools
import math
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

import attrs
import trio

from .._core.bounded_repr import bounded_repr
from .._core.checks import check_count, check_instance, check_seconds, validator
from .._core.ids import AgentId
from .._core.messages import Envelope, MessageOptions, Priority, now
from .._core.threads import check_thread
from ..errors import InvalidConfig, InvalidMessage, MailboxClosed, MailboxFull, MessageTimeout

__all__ = ["Mailbox", "MailboxConfig", "MailboxStats", "OverflowPolicy", "OwnMailboxFull"]


#: Puts that find room and complete without a schedule point in a row, in one thread's Trio
#: run: each task sending without waiting yields at least this often, so it cannot starve the
#: others, while a send costs no scheduler round of its own.
SEND_BUDGET = 64


class _SendBudget(threading.local):
    """What is left of the budget of puts without a schedule point, in this thread."""

    def __init__(self) -> None:
        self.left = SEND_BUDGET


_send_budget = _SendBudget()


def send_budget_spent() -> bool:
    """Count one send that did not wait; True when that spent the budget, and the sender is
    to take a schedule point (``trio.lowlevel.cancel_shielded_checkpoint``). A function, not
    a coroutine, for a send's fast path to count with."""
    budget = _send_budget
    budget.left -= 1
    if budget.left > 0:
        return False
    budget.left = SEND_BUDGET
    return True


def refill_send_budget() -> None:
    """Give this thread's senders the whole budget again: a new message system calls it, so
    where its senders first yield does not depend on what ran earlier in the same thread
    (a program under a ``MockClock`` is scheduled the same way in every run)."""
    _send_budget.left = SEND_BUDGET


async def spend_send_budget() -> None:
    """Count one send that did not wait; a schedule point when the budget is spent."""
    if send_budget_spent():
        await trio.lowlevel.cancel_shielded_checkpoint()


class OverflowPolicy(enum.Enum):
    """What a bounded mailbox does with a message that arrives when it is full."""

    #: The sender waits until there is room: backpressure.
    BLOCK = "block"
    #: The send fails at once with ``MailboxFull``.
    REJECT = "reject"


@attrs.frozen(kw_only=True)
class MailboxConfig:
    """How big a mailbox may grow and what happens beyond that.

    Attributes:
        capacity: ``None`` for unbounded (Erlang's default), else the most messages it holds.
        overflow: what a send into a full bounded mailbox does.
    """

    capacity: int | None = attrs.field(
        default=None, validator=validator(check_count, minimum=1, optional=True)
    )
    overflow: OverflowPolicy = attrs.field(
        default=OverflowPolicy.BLOCK, validator=validator(check_instance, OverflowPolicy)
    )


@attrs.frozen(kw_only=True)
class MailboxStats:
    """A snapshot of one mailbox's counters."""

    agent_id: AgentId
    #: Messages accepted into the mailbox.
    messages_received: int
    #: Messages taken out of the mailbox by a receive.
    messages_processed: int
    #: Messages waiting now.
    current_queue_size: int
    #: The most messages ever waiting at once.
    peak_queue_size: int
    #: Sends refused because the mailbox was full.
    messages_rejected: int
    #: Seconds the agent spent serving its messages (0 for a mailbox driven by hand).
    total_processing_time: float
    #: ``total_processing_time`` per processed message.
    average_processing_time: float
    #: Trio time of the last ``send`` or blocking receive made on the mailbox itself, or of
    #: the end of the agent's last batch of messages; ``None`` if there was none. The sends
    #: of refs and of the system do not stamp it, whichever way they take (reading the clock
    #: costs more than a send that finds room): the agent's batches say when it was active.
    last_activity: float | None


class OwnMailboxFull(MailboxFull):
    """The task that empties a full mailbox that blocks tried to wait for room in it.

    Only that task could make the room, so it would wait forever (and every other sender with
    it): it is refused at once instead. It is a ``MailboxFull`` (catch that); its own type lets
    the delivery layer tell it from a full mailbox that a later retry would get into.
    """


#: The lanes of a mailbox that has had no message yet, shared by every such mailbox.
_NO_LANES: tuple[None, ...] = (None,) * len(Priority)
#: A closed mailbox's room for newcomers: none, whatever waits in it or was promised.
_CLOSED = -math.inf


class Mailbox:
    """A priority-ordered, optionally bounded queue of envelopes for one agent.

    Blocking operations are ``async`` and always checkpoint; each has a non-blocking twin
    (``send_nowait``, ``try_receive``). Any number of tasks may send; one task (the agent)
    is expected to receive, and is refused rather than parked if it waits for room itself.
    """

    __slots__ = (
        "_lanes",
        "_last_activity",
        "_limit",
        "_peak",
        "_processed",
        "_processing_time",
        "_receive_order",
        "_received",
        "_receivers",
        "_rejected",
        "_size",
        "_space",
        "agent_id",
        "config",
        "owner",
    )

    def __init__(self, agent_id: AgentId, config: MailboxConfig | None = None) -> None:
        if config is not None:
            check_instance("config", config, MailboxConfig)
        self.agent_id = agent_id
        self.config = MailboxConfig() if config is None else config
        capacity = self.config.capacity
        # Room for newcomers: the capacity less the slots promised to woken senders (only a
        # blocking mailbox promises any), or ``_CLOSED``; one number, so that a put that finds
        # room checks one thing, and a mailbox keeps two slots fewer.
        self._limit: float = math.inf if capacity is None else capacity
        # One FIFO lane per priority, made when its first message comes: an empty deque
        # takes more memory than an idle Trio task's whole stack. Until then both lists are
        # the shared tuple of no lanes (many mailboxes never get a message).
        self._lanes: Sequence[collections.deque[Envelope] | None] = _NO_LANES
        #: The same lanes in the order receives empty them: highest priority first.
        self._receive_order: Sequence[collections.deque[Envelope] | None] = _NO_LANES
        #: Tasks parked until a message arrives, oldest first; made at the first wait and let
        #: go when the owner falls asleep (a hibernated agent keeps no list).
        self._receivers: list[trio.lowlevel.Task] | None = None
        #: Senders waiting for room (only a bounded mailbox that blocks has any).
        self._space = (
            trio.lowlevel.ParkingLot()
            if capacity is not None and self.config.overflow is OverflowPolicy.BLOCK
            else None
        )
        self._size = 0
        self._received = 0
        self._processed = 0
        self._rejected = 0
        self._peak = 0
        self._processing_time = 0.0
        self._last_activity: float | None = None
        #: The task that empties this mailbox (its agent's, while an instance runs), if known.
        #: A send from it into the mailbox full and blocking raises ``OwnMailboxFull``.
        self.owner: trio.lowlevel.Task | None = None

    def __repr__(self) -> str:
        return f"<Mailbox of {self.agent_id!r}: {self._size} waiting>"

    def disown(self) -> None:
        """Its owner's task has ended with the agent asleep: forget the task, the list of
        parked receivers if nobody else waits, and the lanes if they are empty (a sleeper
        that once had messages would otherwise keep a deque and two lists: 940 bytes, more
        than the rest of it; the message that wakes it makes its lane again)."""
        self.owner = None
        if not self._receivers:
            self._receivers = None
        if not self._size:
            self._lanes = self._receive_order = _NO_LANES

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: no message gets in any more."""
        return self._limit == _CLOSED

    # -- sending ---------------------------------------------------------------------------

    def send_nowait(self, envelope: Envelope) -> None:
        """Put ``envelope`` in the mailbox without waiting.

        Raises:
            MailboxFull: the mailbox is bounded and full (whatever its overflow policy).
            MailboxClosed: the mailbox is closed.
            InvalidMessage: ``envelope`` is not an ``Envelope`` with ``MessageOptions``.
        """
        _check_envelope(envelope)
        self.put_nowait(envelope)

    def put_nowait(self, envelope: Envelope) -> None:
        """:meth:`send_nowait` for an envelope the caller built itself and knows to be valid:
        the delivery layer's path, which skips the type checks.

        Raises:
            MailboxFull: the mailbox is bounded and full (whatever its overflow policy).
            MailboxClosed: the mailbox is closed.
        """
        size = self._size
        if size >= self._limit:
            if self._limit == _CLOSED:
                raise MailboxClosed(f"the mailbox of {self.agent_id!r} is closed")
            self._rejected += 1
            raise MailboxFull(f"the mailbox of {self.agent_id!r} is full ({self.config.capacity})")
        priority = envelope.options.priority
        lane = self._lanes[priority]
        if lane is None:
            lane = self._new_lane(priority)
        lane.append(envelope)
        self._size = size = size + 1
        self._received += 1
        if size > self._peak:
            self._peak = size
        receivers = self._receivers
        if receivers:
            trio.lowlevel.reschedule(receivers.pop(0))

    async def send(self, envelope: Envelope) -> None:
        """Put ``envelope`` in the mailbox; when it is full, wait (``BLOCK``) or fail (``REJECT``).

        Senders waiting for room get it in the order they started waiting: a freed slot is
        kept for the sender woken to take it.

        Raises:
            MailboxFull: the mailbox is full and its policy is ``REJECT``; or it blocks and the
                sender is its :attr:`owner` (an ``OwnMailboxFull``), who alone could make room.
            MailboxClosed: the mailbox is closed, or was closed while the sender waited.
            InvalidMessage: ``envelope`` is not an ``Envelope`` with ``MessageOptions``.
        """
        _check_envelope(envelope)
        await self.put(envelope)
        self._last_activity = now()

    async def put(self, envelope: Envelope) -> None:
        """:meth:`send` for an envelope known to be valid (see :meth:`put_nowait`).

        A cancellation point every time (a put that raises ``Cancelled`` put nothing); a
        schedule point when it waits for room, and otherwise once every :data:`SEND_BUDGET`
        puts: a put that finds room completes without yielding until the budget is spent,
        as Tokio's cooperative budget does, because a scheduler round per send would cost
        more than the send."""
        if self._space is not None and self._must_wait():
            if self.owner is trio.lowlevel.current_task():
                await self._refuse_owner()
            await self._space.park()
            if self._limit == _CLOSED:
                raise MailboxClosed(f"the mailbox of {self.agent_id!r} closed while waiting")
            self._limit += 1  # the slot promised to this sender
            self.put_nowait(envelope)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        self.put_nowait(envelope)
        await spend_send_budget()

    async def _refuse_owner(self) -> NoReturn:
        """Refuse the owner room that only it could make (checkpointing, as any send does)."""
        await trio.lowlevel.checkpoint()
        self._rejected += 1
        raise OwnMailboxFull(
            f"{self.agent_id!r} cannot wait for room in its own mailbox: it is full"
            f" ({self.config.capacity}), and only the agent itself takes messages out"
        )

    def has_room(self) -> bool:
        """True when a put now would go in: the mailbox is open and not full."""
        return self._size < self._limit

    def _must_wait(self) -> bool:
        """Whether a put must wait for room (asked only of a mailbox that blocks: one with
        ``_space``)."""
        return self._limit != _CLOSED and self._size >= self._limit

    # -- receiving -------------------------------------------------------------------------

    def try_receive(self) -> Envelope | None:
        """Take the next message (highest priority, then oldest), or ``None`` if there is none.

        Never blocks and never checkpoints.
        """
        if not self._size:
            return None
        for lane in self._receive_order:
            if lane:
                # What _took does, spelled out: this is the agent's loop's path per message.
                self._size -= 1
                self._processed += 1
                if self._space:  # None unless bounded and blocking; else its parked senders
                    self._room_for_a_sender()
                return lane.popleft()
        raise AssertionError("the size counts a message that no lane holds")  # pragma: no cover

    async def receive(self) -> Envelope:
        """Take the next message (highest priority, then oldest), waiting for one if need be.

        Raises:
            MailboxClosed: the mailbox is closed and empty.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        envelope = self.try_receive()
        if envelope is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            while envelope is None:
                await self.wait_for_arrival()
                envelope = self.try_receive()
        self._last_activity = now()
        return envelope

    async def receive_timeout(self, seconds: float) -> Envelope:
        """:meth:`receive`, giving up after ``seconds``.

        Raises:
            MessageTimeout: nothing arrived in time.
            MailboxClosed: the mailbox is closed and empty.
            InvalidConfig: ``seconds`` is negative or not a number.
        """
        check_seconds("timeout", seconds, allow_zero=True)
        # A message already waiting is returned even with a zero timeout (Erlang's ``after 0``).
        await trio.lowlevel.checkpoint_if_cancelled()
        envelope = self.try_receive()
        if envelope is not None:
            self._last_activity = now()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return envelope
        with trio.move_on_after(seconds):
            return await self.receive()
        raise MessageTimeout(f"no message for {self.agent_id!r} within {seconds} s")

    async def receive_matching(
        self, predicate: Callable[[Envelope], bool], timeout: float | None = None
    ) -> Envelope:
        """Selective receive: take the first message ``predicate`` accepts, waiting if need be.

        Messages are tried in the order :meth:`receive` would hand them out; those the
        predicate declines stay in the mailbox, in their order. (Each wake-up tries them all
        again, so the predicate should depend on the message alone.)

        Raises:
            MessageTimeout: no matching message within ``timeout`` seconds.
            MailboxClosed: the mailbox is closed and holds no matching message.
            InvalidConfig: ``timeout`` is negative or not a number.
        """
        if not callable(predicate):
            raise InvalidConfig(
                f"predicate must be a function of the envelope, got {bounded_repr(predicate)}"
            )
        if timeout is not None:
            check_seconds("timeout", timeout, allow_zero=True)
        await trio.lowlevel.checkpoint_if_cancelled()
        found = self._take_first(predicate)
        if found is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return found
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                await self.wait_for_arrival()
                found = self._take_first(predicate)
                if found is not None:
                    return found
        raise MessageTimeout(f"no matching message for {self.agent_id!r} within {timeout} s")

    def waiting(self, limit: int) -> list[Envelope]:
        """The first ``limit`` messages waiting, in receive order, left where they are (a
        message arriving later with a higher priority will still come before them)."""
        found: list[Envelope] = []
        for lane in self._receive_order:
            if lane:
                found.extend(itertools.islice(lane, limit - len(found)))
                if len(found) >= limit:
                    break
        return found

    def drain(self) -> list[Envelope]:
        """Take every waiting message at once, in receive order. Never blocks."""
        drained: list[Envelope] = []
        while (envelope := self.try_receive()) is not None:
            drained.append(envelope)
        return drained

    def close(self) -> None:
        """Let no more messages in. Waiting messages can still be received or drained.

        Senders blocked on a full mailbox wake up with ``MailboxClosed``; a receiver waiting
        on an empty one gets ``MailboxClosed``.
        """
        if self._limit == _CLOSED:
            return
        self._limit = _CLOSED
        self.interrupt_receivers()
        if self._space is not None:
            self._space.unpark_all()

    # -- statistics ------------------------------------------------------------------------

    def record_processing_time(self, seconds: float, finished_at: float | None = None) -> None:
        """Add time the agent spent handling messages taken from this mailbox, up to the Trio
        time ``finished_at`` (now, if not given)."""
        self._processing_time += seconds
        self._last_activity = now() if finished_at is None else finished_at

    @property
    def counts(self) -> tuple[int, int]:
        """Messages received and processed so far (what :meth:`stats` counts, without the
        snapshot: an agent's mailbox is counted once more as it stops for good)."""
        return self._received, self._processed

    def stats(self) -> MailboxStats:
        """A frozen snapshot of this mailbox's counters."""
        processed = self._processed
        return MailboxStats(
            agent_id=self.agent_id,
            messages_received=self._received,
            messages_processed=processed,
            current_queue_size=self._size,
            peak_queue_size=self._peak,
            messages_rejected=self._rejected,
            total_processing_time=self._processing_time,
            average_processing_time=self._processing_time / processed if processed else 0.0,
            last_activity=self._last_activity,
        )

    # -- internals -------------------------------------------------------------------------

    def wait_for_arrival(self) -> Coroutine[Any, Any, object]:
        """Park until a message arrives, the mailbox closes, or :meth:`interrupt_receivers`
        (``await`` what it returns, at once).

        Takes nothing: the caller receives what arrived, if anything, without waiting. This
        is the agent's own loop's way to wait, so that stopping it needs no cancel scope. It
        returns Trio's own wait rather than awaiting it: an idle agent keeps one coroutine
        frame fewer.

        Raises:
            MailboxClosed: the mailbox is closed (the caller takes what waits first).
        """
        if self._limit == _CLOSED:
            raise MailboxClosed(f"the mailbox of {self.agent_id!r} is closed")
        task = trio.lowlevel.current_task()
        receivers = self._receivers
        if receivers is None:
            receivers = self._receivers = []
        receivers.append(task)
        if task is self.owner:
            # A bound method rather than a closure: an idle agent waits here all the time, and
            # a closure (its function and cells) keeps 220 bytes more than a method.
            return trio.lowlevel.wait_task_rescheduled(self._owner_stops_waiting)  # noqa: ASYNC105

        def cancelled(_: object) -> trio.lowlevel.Abort:
            receivers.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        return trio.lowlevel.wait_task_rescheduled(cancelled)  # noqa: ASYNC105 - the caller awaits

    def _owner_stops_waiting(self, _: object) -> trio.lowlevel.Abort:
        """The abort of the owner's wait: it was cancelled, so it is no longer a receiver."""
        receivers, owner = self._receivers, self.owner
        assert receivers is not None
        assert owner is not None
        receivers.remove(owner)
        return trio.lowlevel.Abort.SUCCEEDED

    def interrupt_receivers(self) -> None:
        """Wake every task parked in :meth:`wait_for_arrival`, with or without a message."""
        receivers, self._receivers = self._receivers, None
        for task in receivers or ():
            trio.lowlevel.reschedule(task)

    def _take_first(self, predicate: Callable[[Envelope], bool]) -> Envelope | None:
        """Remove and return the first message in receive order that ``predicate`` accepts."""
        for lane in self._receive_order:
            if lane is None:
                continue
            for envelope in lane:
                if predicate(envelope):
                    lane.remove(envelope)
                    return self._took(envelope)
        return None

    def _new_lane(self, priority: int) -> collections.deque[Envelope]:
        """The lane of ``priority``, made now (with the mailbox's lists, at its first)."""
        lanes, order = list(self._lanes), list(self._receive_order)
        lane: collections.deque[Envelope] = collections.deque()
        lanes[priority] = order[-1 - priority] = lane
        self._lanes, self._receive_order = lanes, order
        return lane

    def _took(self, envelope: Envelope) -> Envelope:
        self._size -= 1
        self._processed += 1
        if self._space:
            self._room_for_a_sender()
        return envelope

    def _room_for_a_sender(self) -> None:
        """A slot came free: wake the sender that waited longest, and keep the slot for it."""
        assert self._space is not None
        self._limit -= 1  # the slot is the woken sender's, not a newcomer's
        self._space.unpark()


class ThreadBoundMailbox(Mailbox):
    """A mailbox driven by hand (``MessageSystem.register_agent``), which belongs to its
    system's thread: a send, receive or close from any other thread raises ``WrongThread``
    having changed nothing, since its wake-ups are Trio's and only work in that thread.

    A subclass, so that agents' own mailboxes, which only the system's code touches, pay
    nothing for the check on their hot path.
    """

    __slots__ = ("_thread_id",)

    def __init__(
        self, agent_id: AgentId, config: MailboxConfig | None = None, *, thread_id: int
    ) -> None:
        super().__init__(agent_id, config)
        self._thread_id = thread_id

    def send_nowait(self, envelope: Envelope) -> None:
        check_thread(self._thread_id, "mailbox.send_nowait", sync=True)
        super().send_nowait(envelope)

    async def send(self, envelope: Envelope) -> None:
        check_thread(self._thread_id, "mailbox.send")
        await super().send(envelope)

    def try_receive(self) -> Envelope | None:
        check_thread(self._thread_id, "mailbox.try_receive", sync=True)
        return super().try_receive()

    async def receive(self) -> Envelope:
        check_thread(self._thread_id, "mailbox.receive")
        return await super().receive()

    async def receive_timeout(self, seconds: float) -> Envelope:
        check_thread(self._thread_id, "mailbox.receive_timeout")
        return await super().receive_timeout(seconds)

    async def receive_matching(
        self, predicate: Callable[[Envelope], bool], timeout: float | None = None
    ) -> Envelope:
        check_thread(self._thread_id, "mailbox.receive_matching")
        return await super().receive_matching(predicate, timeout)

    def close(self) -> None:
        check_thread(self._thread_id, "mailbox.close", sync=True)
        super().close()


def _check_envelope(envelope: object) -> None:
    if not isinstance(envelope, Envelope):
        raise InvalidMessage(f"expected an Envelope, got {type(envelope).__name__}")
    if not isinstance(envelope.options, MessageOptions):
        raise InvalidMessage(
            f"envelope options must be MessageOptions: {bounded_repr(envelope.options)}"
        )
