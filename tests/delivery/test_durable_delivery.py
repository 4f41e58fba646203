"""Delivery with a durable journal, on the in-memory fake of tests/fake_journal.py: what is
journaled, what an awaited send waits for, what the agent loop tells before a handler runs,
what a dead letter and a shutdown tell, and flush."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from fake_journal import FakeJournal

from terraphim_actors import (
    Agent,
    AgentId,
    Context,
    DeliveryConfig,
    DeliveryGuarantee,
    Envelope,
    MessageKind,
    MessageOptions,
    MessageSystemConfig,
    cast,
    open_message_system,
)
from terraphim_actors._delivery.durability import journaled
from terraphim_actors.errors import (
    InvalidConfig,
    InvalidMessage,
    JournalError,
    NonRetryable,
    UnencodablePayload,
)

AT_MOST_ONCE = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
AT_LEAST_ONCE = MessageOptions(guarantee=DeliveryGuarantee.AT_LEAST_ONCE)
EXACTLY_ONCE = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)


def config(journal: FakeJournal, **delivery: Any) -> MessageSystemConfig:
    delivery.setdefault("jitter", 0.0)
    return MessageSystemConfig(journal=journal, delivery=DeliveryConfig(**delivery))


class Recorder(Agent):
    """Records each payload it handles; "reject" raises NonRetryable, "block" waits forever."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if message == "block":
            await trio.sleep_forever()
        if message == "reject":
            raise NonRetryable("no")
        self.log.append(message)

    async def handle_info(self, message: Any, ctx: Context) -> None:
        self.log.append(message)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        self.log.append(message)
        return message


def message(
    kind: MessageKind, options: MessageOptions, recipient: AgentId | str | None
) -> Envelope:
    return Envelope(kind=kind, payload="x", recipient=recipient, options=options)


class TestWhatIsJournaled:
    @pytest.mark.parametrize("kind", [MessageKind.CAST, MessageKind.INFO])
    @pytest.mark.parametrize("options", [AT_LEAST_ONCE, EXACTLY_ONCE])
    def test_casts_and_infos_by_name_that_promise_delivery(
        self, kind: MessageKind, options: MessageOptions
    ) -> None:
        assert journaled(message(kind, options, "worker"))
        assert journaled(message(kind, options, AgentId(name="worker")))

    def test_not_at_most_once(self) -> None:
        assert not journaled(message(MessageKind.CAST, AT_MOST_ONCE, "worker"))

    def test_not_a_call(self) -> None:
        assert not journaled(message(MessageKind.CALL, AT_LEAST_ONCE, "worker"))

    def test_not_an_agent_without_a_name(self) -> None:
        assert not journaled(message(MessageKind.CAST, AT_LEAST_ONCE, AgentId()))
        assert not journaled(message(MessageKind.CAST, AT_LEAST_ONCE, None))


class TestTheConfig:
    def test_a_journal_must_have_the_protocols_methods(self) -> None:
        with pytest.raises(InvalidConfig, match="journal"):
            MessageSystemConfig(journal=object())  # type: ignore[arg-type]

    def test_a_journal_is_taken(self) -> None:
        journal = FakeJournal()
        assert MessageSystemConfig(journal=journal).journal is journal


class TestAwaitedSends:
    async def test_await_cast_returns_once_its_commit_is_done(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(hold=True)
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, [], name="worker")
            returned = trio.Event()

            async def send() -> None:
                await ref.cast("x")
                returned.set()

            system.nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            assert not returned.is_set()
            journal.release()
            await returned.wait()

    async def test_a_cast_cancelled_while_its_commit_is_written_returns_sent(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cast that raises ``Cancelled`` has not sent its message. One the journal keeps is
        in the mailbox before it waits for its commit, so a cancellation that comes during
        that wait waits for the commit too: the cast returns, its message handled, and the
        caller's next checkpoint raises."""
        journal = FakeJournal(hold=True)
        handled: list[Any] = []
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, handled, name="worker")
            returned: list[bool] = []

            async def send() -> None:
                with trio.CancelScope() as scope:
                    system.nursery.start_soon(cancel_then_release, scope)
                    await ref.cast("x")
                    returned.append(scope.cancel_called)
                    await trio.lowlevel.checkpoint()

            async def cancel_then_release(scope: trio.CancelScope) -> None:
                await trio.testing.wait_all_tasks_blocked()  # the cast waits for its commit
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                journal.release()

            system.nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
        assert (returned, handled) == ([True], ["x"])

    async def test_await_info_and_send_message_wait_too(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(hold=True)
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, [], name="worker")
            done: list[str] = []

            async def send_info() -> None:
                await ref.info("i")
                done.append("info")

            async def send_message() -> None:
                await system.send_message(cast(None, "m", recipient="worker"))
                done.append("send_message")

            system.nursery.start_soon(send_info)
            system.nursery.start_soon(send_message)
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            journal.release()
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(done) == ["info", "send_message"]

    async def test_cast_nowait_does_not_wait(self, autojump_clock: trio.testing.MockClock) -> None:
        journal = FakeJournal(hold=True)
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, [], name="worker")
            ref.cast_nowait("x")
            assert [envelope.payload for envelope in journal.rows.values()] == ["x"]
            journal.release()

    async def test_a_message_not_journaled_does_not_wait(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(hold=True)
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, [], name="worker")
            unnamed = await system.spawn(Recorder, [])
            with trio.fail_after(1):
                await ref.cast("once", options=AT_MOST_ONCE)
                await unnamed.cast("unnamed")
            assert journal.rows == {}
            journal.release()

    async def test_a_failed_commit_fails_the_sender(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(hold=True)
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, [], name="worker")
            failed: list[BaseException] = []

            async def send() -> None:
                try:
                    await ref.cast("x")
                except JournalError as error:
                    failed.append(error)

            system.nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            journal.release(JournalError("disk full"))
            await trio.testing.wait_all_tasks_blocked()
            assert [str(error) for error in failed] == ["disk full"]

    async def test_a_message_whose_commit_failed_is_still_delivered_in_this_run(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(accept_error=JournalError("disk full"))
        log: list[Any] = []
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, log, name="worker")
            with pytest.raises(JournalError):
                await ref.cast("x")
            await trio.sleep(1)
            assert system.delivery.get_stats().acknowledged == 1
        assert log == ["x"]


class TestEncodeFailures:
    async def test_an_unencodable_payload_raises_at_the_send_and_counts_nothing(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal()
        log: list[Any] = []
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, log, name="worker")
            await ref.cast("before")
            await trio.sleep(1)
            books = system.delivery.get_stats()
            with pytest.raises((InvalidMessage, UnencodablePayload)):
                await ref.cast(object())
            with pytest.raises((InvalidMessage, UnencodablePayload)):
                ref.cast_nowait(object())
            with pytest.raises((InvalidMessage, UnencodablePayload)):
                await system.send_message(cast(None, object(), recipient="worker"))
            await trio.sleep(1)
            assert system.delivery.get_stats() == books
            assert log == ["before"]
            assert journal.rows == {}


class TestTheAgentLoop:
    async def test_started_is_told_and_awaited_before_the_handler_runs(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(hold=True)
        log: list[Any] = []
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, log, name="worker")
            ref.cast_nowait("x")
            journal.release()  # the accept
            await trio.testing.wait_all_tasks_blocked()
            assert [event for event, _ in journal.events[-2:]] == ["accepted", "started"]
            assert log == []
            journal.release()  # the run counted
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["x"]
            [message_id] = journal.runs
            assert journal.runs[message_id] == 1
            assert journal.settlements[0][0] == message_id

    async def test_a_run_that_cannot_be_counted_restarts_the_agent_and_is_retried(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(hold=True)
        log: list[Any] = []
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, log, name="worker")
            ref.cast_nowait("x")
            journal.release()  # the accept
            await trio.testing.wait_all_tasks_blocked()
            journal.release(JournalError("disk full"))  # the run's count
            await trio.testing.wait_all_tasks_blocked()
            assert log == []
            journal.hold = False
            journal.release()
            await trio.sleep(1)
            books = system.delivery.get_stats()
            assert system.get_stats()[0].agent_restarts == 1
        assert log == ["x"]
        assert (books.retried, books.acknowledged) == (1, 1)

    async def test_a_call_runs_without_a_commit(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(hold=True)
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, [], name="worker")
            with trio.fail_after(1):
                assert await ref.call("c") == "c"


class TestDeadLetters:
    async def test_a_dead_letter_of_a_journaled_message_is_filed(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal()
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, [], name="worker")
            await ref.cast("reject")
            await trio.sleep(1)
            [(message_id, reason, detail)] = journal.filings
            assert message_id in journal.runs  # the message it kept
            assert reason == "rejected"
            assert "no" in detail
            assert journal.rows == {}

    async def test_a_shutdown_settles_nothing_in_the_journal(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A clean exit is not a crash: the messages it stopped are dead letters in this run's
        books, and stay unsettled in the journal for its next open."""
        journal = FakeJournal()
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, [], name="worker", shutdown=1.0)
            await ref.cast("block")
            await ref.cast("a")
            await ref.cast("b")
            await trio.sleep(1)
        assert sorted(envelope.payload for envelope in journal.rows.values()) == [
            "a",
            "b",
            "block",
        ]
        assert journal.filings == []
        assert journal.settlements == []
        assert system.delivery.get_stats().dead_lettered == 3


class TestTheJournalsRun:
    async def test_it_runs_before_anything_and_stops_after_every_settlement(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal()

        class Slow(Agent):
            async def handle_cast(self, message: Any, ctx: Context) -> None:
                await trio.sleep(2)

        async with open_message_system(config(journal)) as system:
            assert journal.running
            ref = await system.spawn(Slow, name="slow", shutdown=5.0)
            await ref.cast("x")
            await trio.sleep(1)  # in its handler when the block ends: it finishes
        assert journal.events[0] == ("run", None)
        assert [event for event, _ in journal.events[-2:]] == ["settled", "stopped"]

    async def test_a_journal_that_cannot_open_makes_the_system_raise_its_error(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(open_error=JournalError("corrupt.db is not a journal"))
        entered = False
        with pytest.raises(JournalError, match=r"corrupt\.db"):
            async with open_message_system(config(journal)):
                entered = True
        assert not entered


class TestFlush:
    async def test_flush_returns_once_everything_told_is_committed(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        journal = FakeJournal(hold=True)
        async with open_message_system(config(journal)) as system:
            ref = await system.spawn(Recorder, [], name="worker")
            ref.cast_nowait("x")
            flushed = trio.Event()

            async def flush() -> None:
                await system.flush()
                flushed.set()

            system.nursery.start_soon(flush)
            await trio.testing.wait_all_tasks_blocked()
            assert not flushed.is_set()
            journal.release()
            await flushed.wait()
            journal.hold = False
            journal.release()

    async def test_flush_without_a_journal_returns_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with open_message_system() as system:
            with trio.fail_after(0.001):
                await system.flush()
