"""An agent's mailbox: a Trio memory channel, ordered by priority, optionally bounded.

Messages arrive through an unbounded ``trio`` memory channel, which gives the receiving agent
Trio's wake-up and close semantics. On the receiving side they are sorted into one FIFO lane
per priority, so a receive always takes the oldest message of the highest priority present.
The bound, when there is one, counts both places, so it holds on every path a message can
take in.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Callable

import attrs
import trio

from ._checks import check_count, check_instance, check_seconds, validator
from ._ids import AgentId
from ._messages import Envelope, MessageOptions, Priority, now
from .errors import InvalidMessage, MailboxClosed, MailboxFull, MessageTimeout

__all__ = ["Mailbox", "MailboxConfig", "MailboxStats", "OverflowPolicy"]


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
    #: Trio time of the last blocking send or receive, or of the end of the agent's last
    #: batch of messages; ``None`` if there was none. (Reading the clock costs more than a
    #: non-blocking send, so those do not stamp it.)
    last_activity: float | None


class Mailbox:
    """A priority-ordered, optionally bounded queue of envelopes for one agent.

    Blocking operations are ``async`` and always checkpoint; each has a non-blocking twin
    (``send_nowait``, ``try_receive``). Any number of tasks may send; one task (the agent)
    is expected to receive.
    """

    __slots__ = (
        "_capacity",
        "_closed",
        "_in_channel",
        "_inbox_receive",
        "_inbox_send",
        "_lanes",
        "_last_activity",
        "_overflow",
        "_peak",
        "_processed",
        "_processing_time",
        "_received",
        "_rejected",
        "_reserved",
        "_size",
        "_space",
        "agent_id",
        "config",
    )

    def __init__(self, agent_id: AgentId, config: MailboxConfig | None = None) -> None:
        if config is not None:
            check_instance("config", config, MailboxConfig)
        self.agent_id = agent_id
        self.config = MailboxConfig() if config is None else config
        self._capacity = self.config.capacity
        self._overflow = self.config.overflow
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[Envelope](math.inf)
        self._lanes: tuple[collections.deque[Envelope], ...] = tuple(
            collections.deque() for _ in Priority
        )
        self._space = trio.lowlevel.ParkingLot()
        self._closed = False
        self._size = 0  # in the channel plus in the lanes
        self._reserved = 0  # free slots promised to woken senders
        self._in_channel = 0
        self._received = 0
        self._processed = 0
        self._rejected = 0
        self._peak = 0
        self._processing_time = 0.0
        self._last_activity: float | None = None

    def __repr__(self) -> str:
        return f"<Mailbox of {self.agent_id!r}: {self._size} waiting>"

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: no message gets in any more."""
        return self._closed

    # -- sending ---------------------------------------------------------------------------

    def send_nowait(self, envelope: Envelope) -> None:
        """Put ``envelope`` in the mailbox without waiting.

        Raises:
            MailboxFull: the mailbox is bounded and full (whatever its overflow policy).
            MailboxClosed: the mailbox is closed.
            InvalidMessage: ``envelope`` is not an ``Envelope`` with ``MessageOptions``.
        """
        if self._closed:
            raise MailboxClosed(f"the mailbox of {self.agent_id!r} is closed")
        if self._capacity is not None and self._size + self._reserved >= self._capacity:
            self._rejected += 1
            raise MailboxFull(f"the mailbox of {self.agent_id!r} is full ({self._capacity})")
        self._put(envelope)

    def _put(self, envelope: Envelope) -> None:
        if not isinstance(envelope, Envelope):
            raise InvalidMessage(f"expected an Envelope, got {type(envelope).__name__}")
        if not isinstance(envelope.options, MessageOptions):
            raise InvalidMessage(f"envelope options must be MessageOptions: {envelope.options!r}")
        self._inbox_send.send_nowait(envelope)
        self._in_channel += 1
        self._size += 1
        self._received += 1
        if self._size > self._peak:
            self._peak = self._size

    async def send(self, envelope: Envelope) -> None:
        """Put ``envelope`` in the mailbox; when it is full, wait (``BLOCK``) or fail (``REJECT``).

        Senders waiting for room get it in the order they started waiting: a freed slot is
        kept for the sender woken to take it.

        Raises:
            MailboxFull: the mailbox is full and its policy is ``REJECT``.
            MailboxClosed: the mailbox is closed, or was closed while the sender waited.
            InvalidMessage: ``envelope`` is not an ``Envelope`` with ``MessageOptions``.
        """
        if self._must_wait():
            await self._space.park()
            if self._closed:
                raise MailboxClosed(f"the mailbox of {self.agent_id!r} closed while waiting")
            self._reserved -= 1
            self._put(envelope)
            self._last_activity = now()
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.send_nowait(envelope)
            self._last_activity = now()
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _must_wait(self) -> bool:
        return (
            self._overflow is OverflowPolicy.BLOCK
            and not self._closed
            and self._capacity is not None
            and self._size + self._reserved >= self._capacity
        )

    # -- receiving -------------------------------------------------------------------------

    def try_receive(self) -> Envelope | None:
        """Take the next message (highest priority, then oldest), or ``None`` if there is none.

        Never blocks and never checkpoints. A message already handed to a task blocked in
        :meth:`receive` belongs to that task and is not offered here.
        """
        self._pull()
        if self._size == 0:
            return None
        for lane in reversed(self._lanes):
            if lane:
                return self._took(lane.popleft())
        return None

    async def receive(self) -> Envelope:
        """Take the next message (highest priority, then oldest), waiting for one if need be.

        Raises:
            MailboxClosed: the mailbox is closed and empty.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        envelope = self.try_receive()
        self._last_activity = now()
        if envelope is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return envelope
        await self._wait_for_arrival()
        envelope = self.try_receive()
        assert envelope is not None
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
        predicate declines stay in the mailbox, in their order.

        Raises:
            MessageTimeout: no matching message within ``timeout`` seconds.
            MailboxClosed: the mailbox is closed and holds no matching message.
            InvalidConfig: ``timeout`` is negative or not a number.
        """
        if timeout is not None:
            check_seconds("timeout", timeout, allow_zero=True)
        await trio.lowlevel.checkpoint_if_cancelled()
        self._pull()
        found = self._take_first(predicate, self._in_receive_order())
        if found is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return found
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                fresh = await self._wait_for_arrival()
                fresh.sort(key=lambda envelope: -envelope.options.priority)
                found = self._take_first(predicate, fresh)
                if found is not None:
                    return found
        raise MessageTimeout(f"no matching message for {self.agent_id!r} within {timeout} s")

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
        if self._closed:
            return
        self._closed = True
        self._inbox_send.close()
        self._space.unpark_all()

    # -- statistics ------------------------------------------------------------------------

    def record_processing_time(self, seconds: float) -> None:
        """Add time the agent spent handling messages taken from this mailbox."""
        self._processing_time += seconds
        self._last_activity = now()

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

    def _pull(self, fresh: list[Envelope] | None = None) -> None:
        """Move what waits in the channel into the priority lanes (never blocks).

        Trio hands a message straight to a task blocked in the channel's ``receive``, so the
        oldest ones counted in ``_in_channel`` may be on their way to such a task rather than
        buffered: those stay counted, and that task sorts them in when it wakes. The pulled
        envelopes are also appended to ``fresh`` when it is given.
        """
        count = self._in_channel
        if not count:
            return
        receive_nowait = self._inbox_receive.receive_nowait
        lanes = self._lanes
        for pulled in range(count):
            try:
                envelope = receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                self._in_channel = count - pulled
                return
            lanes[envelope.options.priority].append(envelope)
            if fresh is not None:
                fresh.append(envelope)
        self._in_channel = 0

    async def _wait_for_arrival(self) -> list[Envelope]:
        """Wait until at least one message arrives; sort the arrivals into lanes and return them."""
        try:
            first = await self._inbox_receive.receive()
        except trio.EndOfChannel:
            raise MailboxClosed(f"the mailbox of {self.agent_id!r} is closed") from None
        self._in_channel -= 1
        self._lanes[first.options.priority].append(first)
        fresh = [first]
        self._pull(fresh)
        return fresh

    def _in_receive_order(self) -> list[Envelope]:
        """Every message in the lanes, in the order receives would hand them out."""
        return [envelope for lane in reversed(self._lanes) for envelope in lane]

    def _take_first(
        self, predicate: Callable[[Envelope], bool], ordered: list[Envelope]
    ) -> Envelope | None:
        """Remove and return the first of ``ordered`` that ``predicate`` accepts."""
        for envelope in ordered:
            if predicate(envelope):
                self._lanes[envelope.options.priority].remove(envelope)
                return self._took(envelope)
        return None

    def _took(self, envelope: Envelope) -> Envelope:
        self._size -= 1
        self._processed += 1
        if self._space:
            self._reserved += 1  # the slot is the woken sender's, not a newcomer's
            self._space.unpark()
        return envelope
