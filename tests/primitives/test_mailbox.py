"""The mailbox contract: every operation, priority order, the bound, closing, statistics."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    ReceiveStep,
    SendStep,
    mailbox_scripts,
    priorities,
    selectable_messages,
    sender_plans,
)

from terraphim_actors import (
    AgentId,
    Envelope,
    Mailbox,
    MailboxConfig,
    MailboxStats,
    MessageOptions,
    OverflowPolicy,
    Priority,
    cast,
)
from terraphim_actors.errors import (
    InvalidConfig,
    InvalidMessage,
    MailboxClosed,
    MailboxFull,
    MessageTimeout,
)


def message(payload: object, priority: Priority = Priority.NORMAL) -> Envelope:
    """A cast carrying ``payload`` at ``priority``."""
    return cast(None, payload, MessageOptions(priority=priority))


def payloads(envelopes: Iterable[Envelope]) -> list[object]:
    return [envelope.payload for envelope in envelopes]


def bounded(capacity: int, overflow: OverflowPolicy) -> Mailbox:
    return Mailbox(AgentId(), MailboxConfig(capacity=capacity, overflow=overflow))


def accept_all(_envelope: Envelope) -> bool:
    return True


def receive_order(sent: Iterable[tuple[Priority, int]]) -> list[int]:
    """The sequence numbers of ``(priority, sequence)`` sends, in the order a receive yields."""
    return [
        sequence for _, sequence in sorted((-priority, sequence) for priority, sequence in sent)
    ]


class TestMailboxConfig:
    def test_default_is_unbounded_and_blocking(self) -> None:
        """A default config has no capacity and would block senders if it had one."""
        config = MailboxConfig()
        assert config.capacity is None
        assert config.overflow is OverflowPolicy.BLOCK

    def test_positive_capacity_is_accepted(self) -> None:
        """A capacity of one or more is a valid bound."""
        assert MailboxConfig(capacity=1, overflow=OverflowPolicy.REJECT).capacity == 1

    @pytest.mark.parametrize("capacity", [0, -1, True, False, 2.0, 1.5, "3", math.inf])
    def test_invalid_capacity_is_refused(self, capacity: object) -> None:
        """Zero, negative, bool, float or str capacities raise InvalidConfig."""
        with pytest.raises(InvalidConfig, match="capacity"):
            MailboxConfig(capacity=capacity)  # type: ignore[arg-type]

    @pytest.mark.parametrize("overflow", ["block", None, 1])
    def test_overflow_must_be_an_overflow_policy(self, overflow: object) -> None:
        """An overflow that is not an OverflowPolicy raises InvalidConfig."""
        with pytest.raises(InvalidConfig, match="overflow"):
            MailboxConfig(capacity=1, overflow=overflow)  # type: ignore[arg-type]

    def test_invalid_config_is_a_value_error(self) -> None:
        """Existing ``except ValueError`` clauses catch a bad capacity."""
        with pytest.raises(ValueError, match="capacity"):
            MailboxConfig(capacity=0)

    def test_mailbox_without_config_is_unbounded(self) -> None:
        """``Mailbox(agent_id)`` takes any number of messages."""
        mailbox = Mailbox(AgentId())
        for number in range(1000):
            mailbox.send_nowait(message(number))
        assert len(mailbox) == 1000


class TestSend:
    async def test_send_puts_the_message_in(self) -> None:
        """``await send`` makes the message available to receive."""
        mailbox = Mailbox(AgentId())
        envelope = message("hello")
        await mailbox.send(envelope)
        assert len(mailbox) == 1
        assert await mailbox.receive() is envelope

    def test_send_nowait_puts_the_message_in(self) -> None:
        """``send_nowait`` works without awaiting, even outside a Trio run."""
        mailbox = Mailbox(AgentId())
        envelope = message("hello")
        mailbox.send_nowait(envelope)
        assert mailbox.try_receive() is envelope

    async def test_send_is_a_checkpoint(self) -> None:
        """``await send`` honours a cancellation, and then delivers nothing."""
        mailbox = Mailbox(AgentId())
        with trio.CancelScope() as scope:
            scope.cancel()
            await mailbox.send(message("never"))
        assert scope.cancelled_caught
        assert len(mailbox) == 0

    async def test_the_receiver_wakes_on_a_send(self) -> None:
        """A receiver waiting on an empty mailbox gets the message sent later."""
        mailbox = Mailbox(AgentId())
        received: list[Envelope] = []

        async def receiver() -> None:
            received.append(await mailbox.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            assert received == []
            mailbox.send_nowait(message("wake"))
        assert payloads(received) == ["wake"]


class TestReceive:
    async def test_receive_returns_messages_in_sending_order(self) -> None:
        """Messages of one priority come out in the order they went in."""
        mailbox = Mailbox(AgentId())
        for number in range(5):
            mailbox.send_nowait(message(number))
        assert [(await mailbox.receive()).payload for _ in range(5)] == [0, 1, 2, 3, 4]

    async def test_receive_waits_for_a_message(self) -> None:
        """``receive`` on an empty mailbox stays blocked until something arrives."""
        mailbox = Mailbox(AgentId())
        received: list[Envelope] = []

        async def receiver() -> None:
            received.append(await mailbox.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            assert received == []
            await mailbox.send(message(1))
        assert payloads(received) == [1]

    async def test_receive_after_a_batch_arrived_keeps_priority_order(self) -> None:
        """A receiver woken by a batch of sends takes the highest priority of the batch first."""
        mailbox = Mailbox(AgentId())
        received: list[Envelope] = []

        async def receiver() -> None:
            received.append(await mailbox.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.send_nowait(message("low", Priority.LOW))
            mailbox.send_nowait(message("critical", Priority.CRITICAL))
        assert payloads(received) == ["critical"]
        assert payloads(mailbox.drain()) == ["low"]


class TestReceiveTimeout:
    async def test_returns_a_waiting_message(self, autojump_clock: trio.testing.MockClock) -> None:
        """A message already waiting is returned without any time passing."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("ready"))
        start = trio.current_time()
        assert (await mailbox.receive_timeout(5.0)).payload == "ready"
        assert trio.current_time() == start

    async def test_returns_a_message_that_arrives_in_time(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A message arriving before the timeout is returned when it arrives."""
        mailbox = Mailbox(AgentId())
        received: list[Envelope] = []

        async def receiver() -> None:
            received.append(await mailbox.receive_timeout(10.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.sleep(3.0)
            mailbox.send_nowait(message("in time"))
        assert payloads(received) == ["in time"]

    async def test_raises_message_timeout_after_the_timeout(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Nothing arriving raises MessageTimeout exactly when the timeout has passed."""
        mailbox = Mailbox(AgentId())
        start = trio.current_time()
        with pytest.raises(MessageTimeout):
            await mailbox.receive_timeout(2.5)
        assert trio.current_time() - start == pytest.approx(2.5)

    async def test_zero_timeout_returns_a_waiting_message(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``receive_timeout(0)`` polls: it returns a message that is already there."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("polled"))
        assert (await mailbox.receive_timeout(0)).payload == "polled"

    async def test_zero_timeout_on_empty_mailbox_raises_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``receive_timeout(0)`` on an empty mailbox raises MessageTimeout without waiting."""
        mailbox = Mailbox(AgentId())
        start = trio.current_time()
        with pytest.raises(MessageTimeout):
            await mailbox.receive_timeout(0)
        assert trio.current_time() == start

    @pytest.mark.parametrize("seconds", [-1.0, math.nan, True, "1"])
    async def test_invalid_timeout_is_refused(self, seconds: object) -> None:
        """A negative, NaN, bool or str timeout raises InvalidConfig."""
        mailbox = Mailbox(AgentId())
        with pytest.raises(InvalidConfig, match="timeout"):
            await mailbox.receive_timeout(seconds)  # type: ignore[arg-type]

    async def test_a_timed_out_receive_loses_no_later_message(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After a timeout, a message sent later is still there for the next receive."""
        mailbox = Mailbox(AgentId())
        with pytest.raises(MessageTimeout):
            await mailbox.receive_timeout(1.0)
        mailbox.send_nowait(message("later"))
        assert (await mailbox.receive()).payload == "later"


class TestTryReceive:
    def test_returns_none_when_empty(self) -> None:
        """``try_receive`` on an empty mailbox returns None."""
        assert Mailbox(AgentId()).try_receive() is None

    def test_is_a_plain_function_usable_outside_trio(self) -> None:
        """``try_receive`` needs no Trio run: it hands out what waits, then None."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message(1))
        first = mailbox.try_receive()
        assert first is not None
        assert first.payload == 1
        assert mailbox.try_receive() is None

    def test_takes_the_highest_priority_first(self) -> None:
        """``try_receive`` follows the same order as ``receive``."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("normal"))
        mailbox.send_nowait(message("high", Priority.HIGH))
        taken = mailbox.try_receive()
        assert taken is not None
        assert taken.payload == "high"


class TestReceiveMatching:
    async def test_returns_the_first_match_in_receive_order(self) -> None:
        """Of several matches, the one ``receive`` would hand out first is taken."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message(("match", "low"), Priority.LOW))
        mailbox.send_nowait(message(("skip", "high"), Priority.HIGH))
        mailbox.send_nowait(message(("match", "normal-1")))
        mailbox.send_nowait(message(("match", "normal-2")))
        found = await mailbox.receive_matching(lambda envelope: envelope.payload[0] == "match")
        assert found.payload == ("match", "normal-1")

    async def test_leaves_the_rest_in_their_order(self) -> None:
        """Messages the predicate declines stay in the mailbox, in receive order."""
        mailbox = Mailbox(AgentId())
        for number in range(6):
            mailbox.send_nowait(message(number))
        found = await mailbox.receive_matching(lambda envelope: envelope.payload == 3)
        assert found.payload == 3
        assert payloads(mailbox.drain()) == [0, 1, 2, 4, 5]

    async def test_waits_for_a_matching_message(self) -> None:
        """Non-matching arrivals do not end the wait; the first matching one does."""
        mailbox = Mailbox(AgentId())
        found: list[Envelope] = []

        async def selective() -> None:
            found.append(await mailbox.receive_matching(lambda envelope: envelope.payload == "yes"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(selective)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.send_nowait(message("no"))
            await trio.testing.wait_all_tasks_blocked()
            assert found == []
            mailbox.send_nowait(message("yes"))
        assert payloads(found) == ["yes"]
        assert payloads(mailbox.drain()) == ["no"]

    async def test_raises_message_timeout_when_nothing_matches(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With no match within the timeout, MessageTimeout is raised at the timeout."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("no"))
        start = trio.current_time()
        with pytest.raises(MessageTimeout):
            await mailbox.receive_matching(lambda envelope: False, timeout=4.0)
        assert trio.current_time() - start == pytest.approx(4.0)
        assert payloads(mailbox.drain()) == ["no"]

    async def test_zero_timeout_returns_a_waiting_match(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A zero timeout still finds a match that is already there."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("there"))
        assert (await mailbox.receive_matching(accept_all, timeout=0)).payload == "there"

    async def test_predicate_error_leaves_the_mailbox_unchanged(self) -> None:
        """A predicate that raises propagates its error and takes nothing."""
        mailbox = Mailbox(AgentId())
        for number in range(3):
            mailbox.send_nowait(message(number, Priority.HIGH if number == 2 else Priority.NORMAL))

        def broken(envelope: Envelope) -> bool:
            if envelope.payload == 0:
                raise KeyError("broken predicate")
            return False

        with pytest.raises(KeyError, match="broken predicate"):
            await mailbox.receive_matching(broken)
        assert mailbox.stats().messages_processed == 0
        assert payloads(mailbox.drain()) == [2, 0, 1]

    async def test_predicate_error_on_an_arrival_leaves_the_mailbox_unchanged(self) -> None:
        """A predicate raising on a message that arrived during the wait takes nothing."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("old"))

        def broken(envelope: Envelope) -> bool:
            if envelope.payload == "new":
                raise KeyError("broken predicate")
            return False

        async def selective() -> None:
            with pytest.raises(KeyError, match="broken predicate"):
                await mailbox.receive_matching(broken)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(selective)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.send_nowait(message("new"))
        assert len(mailbox) == 2
        assert payloads(mailbox.drain()) == ["old", "new"]

    async def test_invalid_timeout_is_refused(self) -> None:
        """A negative timeout raises InvalidConfig."""
        mailbox = Mailbox(AgentId())
        with pytest.raises(InvalidConfig, match="timeout"):
            await mailbox.receive_matching(accept_all, timeout=-1.0)

    async def test_closed_mailbox_without_a_match_raises_mailbox_closed(self) -> None:
        """On a closed mailbox holding no match, selective receive raises MailboxClosed."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("no"))
        mailbox.close()
        with pytest.raises(MailboxClosed):
            await mailbox.receive_matching(lambda envelope: False)
        assert payloads(mailbox.drain()) == ["no"]

    @given(messages=selectable_messages)
    def test_property_first_match_taken_rest_kept_in_order(
        self, messages: list[tuple[Priority, bool]]
    ) -> None:
        """For any mailbox content, the first match in receive order is taken, the rest kept."""

        async def scenario() -> None:
            mailbox = Mailbox(AgentId())
            for sequence, (priority, accepted) in enumerate(messages):
                mailbox.send_nowait(message((sequence, accepted), priority))
            order = receive_order((priority, seq) for seq, (priority, _) in enumerate(messages))
            matches = [sequence for sequence in order if messages[sequence][1]]
            if matches:
                found = await mailbox.receive_matching(lambda envelope: envelope.payload[1])
                assert found.payload[0] == matches[0]
                order.remove(matches[0])
            else:
                with pytest.raises(MessageTimeout):
                    await mailbox.receive_matching(lambda envelope: envelope.payload[1], timeout=1)
            assert [envelope.payload[0] for envelope in mailbox.drain()] == order

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    @given(waiting=st.lists(priorities, max_size=10), arriving=selectable_messages, last=priorities)
    def test_property_match_among_arrivals_keeps_the_rest_in_order(
        self, waiting: list[Priority], arriving: list[tuple[Priority, bool]], last: Priority
    ) -> None:
        """A selective receive woken by a batch takes its first match in receive order."""
        sent = [(priority, False) for priority in waiting] + [*arriving, (last, True)]

        async def scenario() -> None:
            mailbox = Mailbox(AgentId())
            for sequence, (priority, _) in enumerate(sent[: len(waiting)]):
                mailbox.send_nowait(message((sequence, False), priority))
            found: list[Envelope] = []

            async def selective() -> None:
                found.append(await mailbox.receive_matching(lambda envelope: envelope.payload[1]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(selective)
                await trio.testing.wait_all_tasks_blocked()
                assert found == []
                for sequence, (priority, accepted) in enumerate(sent):
                    if sequence >= len(waiting):
                        mailbox.send_nowait(message((sequence, accepted), priority))
            order = receive_order((priority, seq) for seq, (priority, _) in enumerate(sent))
            first_match = next(sequence for sequence in order if sent[sequence][1])
            assert [envelope.payload[0] for envelope in found] == [first_match]
            order.remove(first_match)
            assert [envelope.payload[0] for envelope in mailbox.drain()] == order

        trio.run(scenario)


class TestPriorityOrdering:
    def test_higher_priority_first(self) -> None:
        """A later, more urgent message overtakes earlier, less urgent ones."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("low", Priority.LOW))
        mailbox.send_nowait(message("normal", Priority.NORMAL))
        mailbox.send_nowait(message("critical", Priority.CRITICAL))
        mailbox.send_nowait(message("high", Priority.HIGH))
        assert payloads(mailbox.drain()) == ["critical", "high", "normal", "low"]

    def test_fifo_within_a_priority(self) -> None:
        """Messages of the same priority keep their sending order around other priorities."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("high-1", Priority.HIGH))
        mailbox.send_nowait(message("low-1", Priority.LOW))
        mailbox.send_nowait(message("high-2", Priority.HIGH))
        mailbox.send_nowait(message("low-2", Priority.LOW))
        assert payloads(mailbox.drain()) == ["high-1", "high-2", "low-1", "low-2"]

    @given(script=mailbox_scripts)
    def test_property_any_interleaving_is_priority_first_then_fifo(
        self, script: list[SendStep | ReceiveStep]
    ) -> None:
        """Any interleaving of sends and receives: priority first, FIFO within, none lost."""

        async def scenario() -> None:
            mailbox = Mailbox(AgentId())
            waiting: list[tuple[Priority, int]] = []
            taken: list[object] = []
            for sequence, step in enumerate(script):
                if isinstance(step, SendStep):
                    envelope = message(sequence, step.priority)
                    if step.blocking:
                        await mailbox.send(envelope)
                    else:
                        mailbox.send_nowait(envelope)
                    waiting.append((step.priority, sequence))
                    continue
                if not waiting:
                    assert mailbox.try_receive() is None
                    continue
                expected = receive_order(waiting)[0]
                waiting = [item for item in waiting if item[1] != expected]
                if step.how == "receive":
                    got = await mailbox.receive()
                elif step.how == "receive_timeout":
                    got = await mailbox.receive_timeout(1.0)
                elif step.how == "receive_matching":
                    got = await mailbox.receive_matching(accept_all)
                else:
                    maybe = mailbox.try_receive()
                    assert maybe is not None
                    got = maybe
                assert got.payload == expected
                taken.append(got.payload)
            rest = payloads(mailbox.drain())
            assert rest == receive_order(waiting)
            everything = taken + rest
            sent = [sequence for sequence, step in enumerate(script) if isinstance(step, SendStep)]
            assert sorted(everything) == sent  # type: ignore[type-var]
            assert len(set(everything)) == len(everything)

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    @given(plans=sender_plans)
    def test_property_concurrent_senders_fifo_per_sender_within_priority(
        self, plans: list[list[tuple[Priority, int]]]
    ) -> None:
        """Concurrent senders: priority first, each sender's FIFO kept within a priority."""

        async def scenario() -> list[Envelope]:
            mailbox = Mailbox(AgentId())

            async def sender(index: int, plan: list[tuple[Priority, int]]) -> None:
                for position, (priority, checkpoints) in enumerate(plan):
                    for _ in range(checkpoints):
                        await trio.lowlevel.checkpoint()
                    await mailbox.send(message((index, position), priority))

            async with trio.open_nursery() as nursery:
                for index, plan in enumerate(plans):
                    nursery.start_soon(sender, index, plan)
            return mailbox.drain()

        out = trio.run(scenario)
        order = [envelope.priority for envelope in out]
        assert order == sorted(order, reverse=True)
        assert_per_sender_fifo(out, plans)

    @given(plans=sender_plans, receiver_pauses=st.lists(st.integers(0, 3), max_size=40))
    def test_property_concurrent_senders_and_receiver_lose_nothing(
        self, plans: list[list[tuple[Priority, int]]], receiver_pauses: list[int]
    ) -> None:
        """With a receiver taking messages as they come (often handed over while it waits),
        nothing is lost or doubled and each sender's FIFO holds within a priority."""

        async def scenario() -> list[Envelope]:
            mailbox = Mailbox(AgentId())
            received: list[Envelope] = []

            async def sender(index: int, plan: list[tuple[Priority, int]]) -> None:
                for position, (priority, checkpoints) in enumerate(plan):
                    for _ in range(checkpoints):
                        await trio.lowlevel.checkpoint()
                    mailbox.send_nowait(message((index, position), priority))

            async def receiver() -> None:
                pauses = iter(receiver_pauses)
                with contextlib.suppress(MailboxClosed):
                    while True:
                        received.append(await mailbox.receive())
                        for _ in range(next(pauses, 0)):
                            await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as receiving:
                receiving.start_soon(receiver)
                async with trio.open_nursery() as sending:
                    for index, plan in enumerate(plans):
                        sending.start_soon(sender, index, plan)
                mailbox.close()
            return received

        assert_per_sender_fifo(trio.run(scenario), plans)


def assert_per_sender_fifo(out: list[Envelope], plans: list[list[tuple[Priority, int]]]) -> None:
    """Every planned message came out once, each sender's in its order within a priority."""
    sent = sorted(
        (index, position) for index, plan in enumerate(plans) for position in range(len(plan))
    )
    assert sorted(envelope.payload for envelope in out) == sent
    for index, plan in enumerate(plans):
        for priority in Priority:
            positions = [
                envelope.payload[1]
                for envelope in out
                if envelope.payload[0] == index and envelope.priority is priority
            ]
            assert positions == [pos for pos, (prio, _) in enumerate(plan) if prio is priority]


class TestRejectingBound:
    def test_full_mailbox_rejects_with_mailbox_full(self) -> None:
        """A send beyond the capacity raises MailboxFull and keeps the message out."""
        mailbox = bounded(2, OverflowPolicy.REJECT)
        mailbox.send_nowait(message(1))
        mailbox.send_nowait(message(2))
        with pytest.raises(MailboxFull):
            mailbox.send_nowait(message(3))
        assert payloads(mailbox.drain()) == [1, 2]

    async def test_async_send_rejects_too(self) -> None:
        """``await send`` on a full rejecting mailbox raises MailboxFull instead of waiting."""
        mailbox = bounded(1, OverflowPolicy.REJECT)
        await mailbox.send(message(1))
        with pytest.raises(MailboxFull):
            await mailbox.send(message(2))
        assert len(mailbox) == 1

    def test_mailbox_full_is_would_block(self) -> None:
        """The rejection is a ``trio.WouldBlock``, like Trio's own ``*_nowait`` failures."""
        mailbox = bounded(1, OverflowPolicy.REJECT)
        mailbox.send_nowait(message(1))
        with pytest.raises(trio.WouldBlock):
            mailbox.send_nowait(message(2))

    async def test_rejections_are_counted(self) -> None:
        """Every refused send adds one to ``messages_rejected``, and none to received."""
        mailbox = bounded(1, OverflowPolicy.REJECT)
        mailbox.send_nowait(message(1))
        for number in range(3):
            with pytest.raises(MailboxFull):
                mailbox.send_nowait(message(number))
        with pytest.raises(MailboxFull):
            await mailbox.send(message("async"))
        stats = mailbox.stats()
        assert stats.messages_rejected == 4
        assert stats.messages_received == 1

    def test_room_made_by_a_receive_is_usable(self) -> None:
        """After a receive frees a slot, the next send is accepted."""
        mailbox = bounded(1, OverflowPolicy.REJECT)
        mailbox.send_nowait(message(1))
        assert mailbox.try_receive() is not None
        mailbox.send_nowait(message(2))
        assert payloads(mailbox.drain()) == [2]

    @given(capacity=st.integers(min_value=1, max_value=4), script=mailbox_scripts)
    def test_property_bound_holds_on_every_path(
        self, capacity: int, script: list[SendStep | ReceiveStep]
    ) -> None:
        """Any mix of sends and receives: accepted exactly while below capacity."""

        async def scenario() -> None:
            mailbox = bounded(capacity, OverflowPolicy.REJECT)
            size = rejected = 0
            for step in script:
                if isinstance(step, ReceiveStep):
                    if mailbox.try_receive() is not None:
                        size -= 1
                    continue
                envelope = message(step, step.priority)
                if size == capacity:
                    with pytest.raises(MailboxFull):
                        await (
                            mailbox.send(envelope) if step.blocking else nowait(mailbox, envelope)
                        )
                    rejected += 1
                else:
                    await (mailbox.send(envelope) if step.blocking else nowait(mailbox, envelope))
                    size += 1
                assert len(mailbox) == size <= capacity
            stats = mailbox.stats()
            assert stats.messages_rejected == rejected
            assert stats.peak_queue_size <= capacity

        trio.run(scenario)


async def nowait(mailbox: Mailbox, envelope: Envelope) -> None:
    """``send_nowait`` in an awaitable shape, so one expression can pick either send."""
    mailbox.send_nowait(envelope)


class TestBlockingBound:
    async def test_send_waits_until_there_is_room(self) -> None:
        """On a full blocking mailbox, ``await send`` waits until a receive makes room."""
        mailbox = bounded(1, OverflowPolicy.BLOCK)
        mailbox.send_nowait(message(1))
        sent: list[str] = []

        async def sender() -> None:
            await mailbox.send(message(2))
            sent.append("done")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == []
            assert len(mailbox) == 1
            assert (await mailbox.receive()).payload == 1
            await trio.testing.wait_all_tasks_blocked()
            assert sent == ["done"]
        assert payloads(mailbox.drain()) == [2]

    async def test_drain_wakes_blocked_senders(self) -> None:
        """Room made by ``drain`` lets every waiting sender in, up to the capacity."""
        mailbox = bounded(2, OverflowPolicy.BLOCK)
        mailbox.send_nowait(message("a"))
        mailbox.send_nowait(message("b"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mailbox.send, message("c"))
            nursery.start_soon(mailbox.send, message("d"))
            await trio.testing.wait_all_tasks_blocked()
            assert payloads(mailbox.drain()) == ["a", "b"]
        assert sorted(payloads(mailbox.drain())) == ["c", "d"]  # type: ignore[type-var]

    def test_send_nowait_raises_mailbox_full(self) -> None:
        """The non-blocking twin never waits: a full blocking mailbox raises MailboxFull."""
        mailbox = bounded(1, OverflowPolicy.BLOCK)
        mailbox.send_nowait(message(1))
        with pytest.raises(MailboxFull):
            mailbox.send_nowait(message(2))
        assert mailbox.stats().messages_rejected == 1

    async def test_owner_waiting_for_room_is_refused_at_once(self) -> None:
        """The task that empties the mailbox would wait forever for room only it can make: its
        send raises ``MailboxFull`` at once, the message not taken and counted as rejected."""
        mailbox = bounded(1, OverflowPolicy.BLOCK)
        mailbox.owner = trio.lowlevel.current_task()
        mailbox.send_nowait(message(1))
        with trio.fail_after(1), pytest.raises(MailboxFull, match="its own mailbox"):
            await mailbox.send(message(2))
        assert payloads(mailbox.drain()) == [1]
        assert mailbox.stats().messages_rejected == 1

    async def test_cancelled_blocked_sender_delivers_nothing(self) -> None:
        """A sender cancelled while waiting for room leaves no message behind."""
        mailbox = bounded(1, OverflowPolicy.BLOCK)
        mailbox.send_nowait(message(1))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mailbox.send, message("cancelled"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert payloads(mailbox.drain()) == [1]
        assert mailbox.stats().messages_received == 1

    async def test_waiting_senders_never_exceed_the_capacity(self) -> None:
        """Many blocked senders, woken one receive at a time, keep the mailbox within bound."""
        mailbox = bounded(2, OverflowPolicy.BLOCK)
        received: list[object] = []
        async with trio.open_nursery() as nursery:
            for number in range(10):
                nursery.start_soon(mailbox.send, message(number))
            await trio.testing.wait_all_tasks_blocked()
            assert len(mailbox) == 2
            while len(received) < 10:
                received.append((await mailbox.receive()).payload)
                assert len(mailbox) <= 2
        assert sorted(received) == list(range(10))  # type: ignore[type-var]
        assert mailbox.stats().peak_queue_size == 2

    @given(capacity=st.integers(min_value=1, max_value=4), plans=sender_plans)
    def test_property_bound_holds_with_concurrent_senders_and_receiver(
        self, capacity: int, plans: list[list[tuple[Priority, int]]]
    ) -> None:
        """Concurrent senders and a receiver: never over capacity, nothing lost or doubled."""
        total = sum(len(plan) for plan in plans)

        async def scenario() -> tuple[list[Envelope], MailboxStats]:
            mailbox = bounded(capacity, OverflowPolicy.BLOCK)
            received: list[Envelope] = []

            async def sender(index: int, plan: list[tuple[Priority, int]]) -> None:
                for position, (priority, checkpoints) in enumerate(plan):
                    for _ in range(checkpoints):
                        await trio.lowlevel.checkpoint()
                    await mailbox.send(message((index, position), priority))
                    assert len(mailbox) <= capacity

            async def receiver() -> None:
                while len(received) < total:
                    received.append(await mailbox.receive())
                    assert len(mailbox) <= capacity

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                for index, plan in enumerate(plans):
                    nursery.start_soon(sender, index, plan)
            return received, mailbox.stats()

        received, stats = trio.run(scenario)
        assert_per_sender_fifo(received, plans)
        assert stats.peak_queue_size <= capacity
        assert stats.messages_rejected == 0
        assert stats.current_queue_size == 0


class TestClose:
    def test_closed_flag(self) -> None:
        """``closed`` turns True on ``close()``, which may be called twice."""
        mailbox = Mailbox(AgentId())
        assert not mailbox.closed
        mailbox.close()
        mailbox.close()
        assert mailbox.closed

    async def test_sends_after_close_raise_mailbox_closed(self) -> None:
        """Both sends refuse a message once the mailbox is closed."""
        mailbox = Mailbox(AgentId())
        mailbox.close()
        with pytest.raises(MailboxClosed):
            mailbox.send_nowait(message(1))
        with pytest.raises(MailboxClosed):
            await mailbox.send(message(2))
        assert mailbox.stats().messages_received == 0

    async def test_blocked_senders_wake_with_mailbox_closed(self) -> None:
        """Senders waiting for room on a full mailbox get MailboxClosed when it closes."""
        mailbox = bounded(1, OverflowPolicy.BLOCK)
        mailbox.send_nowait(message("kept"))
        outcomes: list[str] = []

        async def sender(name: str) -> None:
            with pytest.raises(MailboxClosed):
                await mailbox.send(message(name))
            outcomes.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, "a")
            nursery.start_soon(sender, "b")
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close()
        assert sorted(outcomes) == ["a", "b"]
        assert payloads(mailbox.drain()) == ["kept"]

    async def test_receive_on_closed_empty_mailbox_raises(self) -> None:
        """Receiving from a closed, empty mailbox raises MailboxClosed."""
        mailbox = Mailbox(AgentId())
        mailbox.close()
        with pytest.raises(MailboxClosed):
            await mailbox.receive()

    async def test_waiting_receiver_wakes_with_mailbox_closed(self) -> None:
        """A receiver blocked on an empty mailbox gets MailboxClosed when it closes."""
        mailbox = Mailbox(AgentId())
        outcomes: list[str] = []

        async def receiver() -> None:
            with pytest.raises(MailboxClosed):
                await mailbox.receive()
            outcomes.append("closed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close()
        assert outcomes == ["closed"]

    async def test_buffered_messages_still_drain_after_close(self) -> None:
        """Messages in the mailbox when it closes are still received, in order, then it ends."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("first"))
        mailbox.send_nowait(message("urgent", Priority.HIGH))
        mailbox.close()
        assert (await mailbox.receive()).payload == "urgent"
        assert (await mailbox.receive()).payload == "first"
        with pytest.raises(MailboxClosed):
            await mailbox.receive()

    async def test_receive_timeout_on_closed_empty_mailbox_raises_closed(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A timed receive on a closed, empty mailbox raises MailboxClosed, not a timeout."""
        mailbox = Mailbox(AgentId())
        mailbox.close()
        with pytest.raises(MailboxClosed):
            await mailbox.receive_timeout(5.0)

    def test_try_receive_on_closed_empty_mailbox_returns_none(self) -> None:
        """``try_receive`` stays non-raising on a closed mailbox."""
        mailbox = Mailbox(AgentId())
        mailbox.close()
        assert mailbox.try_receive() is None


class TestDrain:
    def test_drain_takes_everything_in_receive_order(self) -> None:
        """``drain`` returns every waiting message, highest priority first, and empties it."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message(1, Priority.LOW))
        mailbox.send_nowait(message(2))
        mailbox.send_nowait(message(3, Priority.CRITICAL))
        mailbox.send_nowait(message(4))
        assert payloads(mailbox.drain()) == [3, 2, 4, 1]
        assert len(mailbox) == 0
        assert mailbox.drain() == []

    def test_drain_counts_messages_processed(self) -> None:
        """Drained messages count as processed."""
        mailbox = Mailbox(AgentId())
        for number in range(3):
            mailbox.send_nowait(message(number))
        mailbox.drain()
        assert mailbox.stats().messages_processed == 3


class TestSecondReceiver:
    """A task that drains or polls while another is blocked in ``receive``."""

    async def test_drain_while_a_receiver_waits_loses_nothing(self) -> None:
        """Close and drain beside a waiting receiver: drain takes every message, and the
        receiver, woken to an empty closed mailbox, gets MailboxClosed."""
        mailbox = Mailbox(AgentId())
        outcome: list[object] = []

        async def receiver() -> None:
            try:
                outcome.append(await mailbox.receive())
            except MailboxClosed as closed:
                outcome.append(closed)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.send_nowait(message("first"))
            mailbox.send_nowait(message("second"))
            mailbox.close()
            drained = mailbox.drain()
        assert payloads(drained) == ["first", "second"]
        assert len(outcome) == 1
        assert isinstance(outcome[0], MailboxClosed)
        assert len(mailbox) == 0

    async def test_a_message_taken_before_the_woken_receiver_runs_is_not_lost(self) -> None:
        """A message that woke a receiver but was taken by ``try_receive`` first is not handed
        out twice: the receiver waits on for the next one."""
        mailbox = Mailbox(AgentId())
        received: list[Envelope] = []

        async def receiver() -> None:
            received.append(await mailbox.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.send_nowait(message("taken"))
            taken = mailbox.try_receive()
            await trio.testing.wait_all_tasks_blocked()
            assert received == []
            mailbox.send_nowait(message("next"))
        assert taken is not None
        assert taken.payload == "taken"
        assert payloads(received) == ["next"]

    async def test_a_waking_receiver_takes_the_highest_priority_that_arrived(self) -> None:
        """Messages arriving together while the agent waits are handed out by priority: the
        first arrival only wakes the receiver, it does not jump the queue."""
        mailbox = Mailbox(AgentId())
        received: list[Envelope] = []

        async def receiver() -> None:
            for _ in range(2):
                received.append(await mailbox.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.send_nowait(message("low", Priority.LOW))
            mailbox.send_nowait(message("critical", Priority.CRITICAL))
        assert payloads(received) == ["critical", "low"]


class TestStats:
    def test_fresh_mailbox_stats(self) -> None:
        """A new mailbox reports zero counters and no activity."""
        agent_id = AgentId(name="fresh")
        stats = Mailbox(agent_id).stats()
        assert stats == MailboxStats(
            agent_id=agent_id,
            messages_received=0,
            messages_processed=0,
            current_queue_size=0,
            peak_queue_size=0,
            messages_rejected=0,
            total_processing_time=0.0,
            average_processing_time=0.0,
            last_activity=None,
        )

    async def test_counters_follow_sends_and_receives(self) -> None:
        """Received, processed, current and peak sizes track what went in and out."""
        mailbox = Mailbox(AgentId())
        for number in range(4):
            mailbox.send_nowait(message(number))
        await mailbox.receive()
        mailbox.try_receive()
        mailbox.send_nowait(message(4))
        stats = mailbox.stats()
        assert stats.messages_received == 5
        assert stats.messages_processed == 2
        assert stats.current_queue_size == 3
        assert stats.peak_queue_size == 4
        assert stats.messages_rejected == 0

    def test_processing_time_total_and_average(self) -> None:
        """Recorded processing time adds up and is averaged over processed messages."""
        mailbox = Mailbox(AgentId())
        for number in range(4):
            mailbox.send_nowait(message(number))
        mailbox.drain()
        mailbox.record_processing_time(1.5)
        mailbox.record_processing_time(0.5)
        stats = mailbox.stats()
        assert stats.total_processing_time == pytest.approx(2.0)
        assert stats.average_processing_time == pytest.approx(0.5)

    async def test_last_activity_is_the_trio_time_of_a_blocking_operation(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``last_activity`` records the Trio time of the last send or receive."""
        mailbox = Mailbox(AgentId())
        await trio.sleep(3.0)
        await mailbox.send(message(1))
        assert mailbox.stats().last_activity == trio.current_time()
        await trio.sleep(2.0)
        await mailbox.receive()
        assert mailbox.stats().last_activity == trio.current_time()

    def test_stats_are_a_frozen_snapshot(self) -> None:
        """A stats record does not change as the mailbox does, and cannot be changed."""
        mailbox = Mailbox(AgentId())
        before = mailbox.stats()
        mailbox.send_nowait(message(1))
        assert before.current_queue_size == 0
        with pytest.raises(AttributeError):
            before.current_queue_size = 5  # type: ignore[misc]


class TestCancellation:
    async def test_cancelled_waiting_receive_loses_no_message(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A receive cancelled while waiting leaves later messages for the next receive."""
        mailbox = Mailbox(AgentId())
        with trio.move_on_after(1.0) as scope:
            await mailbox.receive()
        assert scope.cancelled_caught
        mailbox.send_nowait(message("after"))
        assert (await mailbox.receive()).payload == "after"

    async def test_receive_in_cancelled_scope_leaves_the_message(self) -> None:
        """A receive that is cancelled before it starts takes nothing."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("stays"))
        with trio.CancelScope() as scope:
            scope.cancel()
            await mailbox.receive()
        assert scope.cancelled_caught
        assert payloads(mailbox.drain()) == ["stays"]

    async def test_cancel_racing_a_send_loses_no_message(self) -> None:
        """Cancelling a receiver just as its message arrives: the message ends up somewhere."""
        mailbox = Mailbox(AgentId())
        received: list[Envelope] = []

        async def receiver(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                received.append(await mailbox.receive())

        async with trio.open_nursery() as nursery:
            scope = await nursery.start(receiver)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.send_nowait(message("raced"))
            scope.cancel()
        assert payloads(received) + payloads(mailbox.drain()) == ["raced"]

    async def test_cancelled_selective_receive_keeps_every_message(self) -> None:
        """A selective receive cancelled while waiting keeps what it declined and what came."""
        mailbox = Mailbox(AgentId())
        mailbox.send_nowait(message("declined"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mailbox.receive_matching, lambda envelope: False)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.send_nowait(message("arrived"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert payloads(mailbox.drain()) == ["declined", "arrived"]


async def record_length_on_wake(mailbox: Mailbox, woke: list[int]) -> None:
    """Wait for an arrival, then note how many messages the mailbox holds."""
    await mailbox.wait_for_arrival()
    woke.append(len(mailbox))


class TestWaitForArrival:
    async def test_returns_on_an_arrival_without_taking_it(self) -> None:
        """``wait_for_arrival`` wakes when a message comes and leaves it to be received."""
        mailbox = Mailbox(AgentId())
        woke: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(record_length_on_wake, mailbox, woke)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            mailbox.send_nowait(message("came"))
        assert woke == [1]
        assert payloads(mailbox.drain()) == ["came"]

    async def test_interrupt_wakes_a_waiter_without_a_message(self) -> None:
        """``interrupt_receivers`` ends the wait with nothing in the mailbox (how an agent is
        asked to stop while idle)."""
        mailbox = Mailbox(AgentId())
        woke: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(record_length_on_wake, mailbox, woke)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.interrupt_receivers()
        assert woke == [0]

    async def test_a_closed_mailbox_raises_mailbox_closed(self) -> None:
        """Waiting on a closed mailbox raises MailboxClosed at once."""
        mailbox = Mailbox(AgentId())
        mailbox.close()
        with pytest.raises(MailboxClosed):
            await mailbox.wait_for_arrival()

    async def test_a_cancelled_wait_is_not_woken_by_a_later_arrival(self) -> None:
        """A wait cancelled while parked leaves no stale waiter behind: the next arrival
        wakes the next waiter."""
        mailbox = Mailbox(AgentId())
        woke: list[str] = []

        async def waiter(name: str) -> None:
            await mailbox.wait_for_arrival()
            woke.append(name)

        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as cancelled:
                cancelled.start_soon(waiter, "cancelled")
                await trio.testing.wait_all_tasks_blocked()
                cancelled.cancel_scope.cancel()
            nursery.start_soon(waiter, "second")
            await trio.testing.wait_all_tasks_blocked()
            mailbox.send_nowait(message("came"))
        assert woke == ["second"]

    def test_has_room_follows_the_bound_and_the_close(self) -> None:
        """``has_room`` is True while a put would go in: open and below its capacity."""
        mailbox = Mailbox(AgentId(), MailboxConfig(capacity=1))
        assert mailbox.has_room()
        mailbox.send_nowait(message(1))
        assert not mailbox.has_room()
        mailbox.drain()
        assert mailbox.has_room()
        mailbox.close()
        assert not mailbox.has_room()


class TestWaitingSendersAndBadInput:
    async def test_a_freed_slot_goes_to_the_longest_waiting_sender(self) -> None:
        """A sender that starts after others began waiting cannot take the slot they wait for."""
        mailbox = bounded(1, OverflowPolicy.BLOCK)
        mailbox.send_nowait(message("first"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mailbox.send, message("waited"))
            await trio.testing.wait_all_tasks_blocked()
            assert payloads([mailbox.try_receive()]) == ["first"]  # type: ignore[list-item]
            with pytest.raises(MailboxFull):
                mailbox.send_nowait(message("newcomer"))
        assert payloads(mailbox.drain()) == ["waited"]

    async def test_something_not_an_envelope_is_refused_and_nothing_counted(self) -> None:
        """``send_nowait`` of a non-envelope raises ``InvalidMessage``; the mailbox is unchanged."""
        mailbox = Mailbox(AgentId())
        with pytest.raises(InvalidMessage):
            mailbox.send_nowait("hello")  # type: ignore[arg-type]
        assert len(mailbox) == 0
        assert mailbox.stats().messages_received == 0
        mailbox.send_nowait(message("fine"))
        assert payloads(mailbox.drain()) == ["fine"]

    def test_a_config_of_the_wrong_type_is_invalid_config(self) -> None:
        """``Mailbox(agent_id, config)`` needs a ``MailboxConfig``."""
        with pytest.raises(InvalidConfig):
            Mailbox(AgentId(), {"capacity": 3})  # type: ignore[arg-type]


class TestSenderCancelledWhileParked:
    async def test_a_cancelled_blocked_sender_does_not_leave_a_bounded_mailbox_full_forever(
        self,
        autojump_clock: trio.abc.Clock,
    ) -> None:
        """A sender blocked on a full mailbox is cancelled, and in the same scheduler round the
        receiver takes the waiting message: the mailbox is then empty and must take a new one.

        The rewrite counts parked senders in ``_senders``; the cancelled sender leaves the lot at
        once but decrements the counter only when it next runs, so the take in between reserves
        the freed slot for a sender that is gone, and the mailbox stays "full" with nothing in it.
        """
        mailbox = Mailbox(AgentId(), MailboxConfig(capacity=1, overflow=OverflowPolicy.BLOCK))
        mailbox.send_nowait(message("first"))
        scope = trio.CancelScope()

        async def blocked_sender() -> None:
            with scope:
                await mailbox.send(message("given up"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_sender)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # its wait is aborted at once; it runs again only later
            taken = mailbox.try_receive()
        assert taken is not None
        assert taken.payload == "first"
        assert len(mailbox) == 0
        mailbox.send_nowait(message("second"))  # raises MailboxFull: the slot is kept for nobody
        assert len(mailbox) == 1


class TestWaiting:
    def test_gives_the_first_messages_in_receive_order_and_leaves_them(self) -> None:
        mailbox = Mailbox(AgentId())
        for payload, priority in [(0, Priority.LOW), (1, Priority.NORMAL), (2, Priority.HIGH)]:
            mailbox.send_nowait(message(payload, priority))
        mailbox.send_nowait(message(3))
        assert payloads(mailbox.waiting(3)) == [2, 1, 3]
        assert payloads(mailbox.waiting(10)) == [2, 1, 3, 0]
        assert payloads(mailbox.drain()) == [2, 1, 3, 0]
