"""Replay at spawn, on the in-memory fake journal: what a journal kept for a name goes into
the mailbox of the agent spawned with that name before anything sent after, in order, counted
in the books; a message out of runs is a dead letter; completed messages seed the window."""

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
    MailboxConfig,
    MessageOptions,
    MessageSystemConfig,
    OverflowPolicy,
    cast,
    open_message_system,
)
from terraphim_actors._delivery.dead_letters import DeadLetterReason
from terraphim_actors.errors import AgentStartFailed

AT_LEAST_ONCE = MessageOptions(
    guarantee=DeliveryGuarantee.AT_LEAST_ONCE, max_retries=2, retry_delay=0.1, timeout=60.0
)
EXACTLY_ONCE = MessageOptions(
    guarantee=DeliveryGuarantee.EXACTLY_ONCE, max_retries=2, retry_delay=0.1, timeout=60.0
)


def config(journal: FakeJournal) -> MessageSystemConfig:
    return MessageSystemConfig(journal=journal, delivery=DeliveryConfig(jitter=0.0))


def kept(
    payload: Any,
    recipient: str | AgentId = "worker",
    attempt: int = 0,
    options: MessageOptions = AT_LEAST_ONCE,
) -> Envelope:
    """A message as a journal gives it back: options filled in, its runs as its attempt."""
    envelope = cast(None, payload, options, recipient=recipient)
    return envelope.evolve(attempt=attempt, created_at=trio.current_time())


class Recorder(Agent):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.log.append((message, ctx.envelope.attempt))


async def test_kept_messages_come_first_in_order_with_their_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    unsettled = [kept("one"), kept("two", attempt=1), kept("three")]
    journal = FakeJournal(unsettled=unsettled)
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        ref = await system.spawn(Recorder, log, name="worker")
        ref.cast_nowait("after")
        await trio.sleep(1)
        books = system.delivery.get_stats()
    assert log == [("one", 0), ("two", 1), ("three", 0), ("after", 0)]
    assert books.sent == 4
    assert books.acknowledged == 4
    assert journal.rows == {}


async def test_an_agent_of_another_name_gets_none_of_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = FakeJournal(unsettled=[kept("one")])
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        await system.spawn(Recorder, log, name="other")
        await trio.sleep(1)
        assert system.delivery.get_stats().sent == 0
    assert log == []


async def test_a_message_out_of_runs_is_a_dead_letter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_retries=2 allows three runs: a message that ran three times before the restart is
    not run again."""
    spent = kept("spent", attempt=3)
    journal = FakeJournal(unsettled=[spent, kept("fresh", attempt=2)])
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        await system.spawn(Recorder, log, name="worker")
        await trio.sleep(1)
        [letter] = system.dead_letters
        books = system.delivery.get_stats()
    assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
    assert letter.envelope.id == spent.id
    assert log == [("fresh", 2)]
    assert [(message_id, reason) for message_id, reason, _ in journal.filings] == [
        (spent.id, DeadLetterReason.RETRIES_EXHAUSTED.value)
    ]
    assert books.sent == 2
    assert books.dead_lettered == 1


async def test_a_completed_message_is_suppressed_when_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    done = kept("done", options=EXACTLY_ONCE)
    journal = FakeJournal(completed=[("worker", done.id, 5.0)])
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        await system.spawn(Recorder, log, name="worker")
        await system.send_message(done)
        await trio.sleep(1)
        assert system.delivery.get_stats().duplicates_suppressed == 1
    assert log == []


async def test_a_pool_takes_what_was_kept_for_its_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = FakeJournal(unsettled=[kept("one", recipient="pool"), kept("two", "pool")])
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        await system.spawn_pool(Recorder, log, size=2, name="pool")
        await trio.sleep(1)
    assert sorted(log) == [("one", 0), ("two", 0)]


async def test_a_message_kept_for_an_earlier_runs_pool_id_goes_to_the_pool_of_its_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cast through a pool's ref is kept with the pool's id of that run, which nothing
    answers to after a restart: the pool now holding the name takes it."""
    earlier_pool = AgentId(name="pool")
    journal = FakeJournal(unsettled=[kept("one", earlier_pool), kept("two", earlier_pool)])
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        await system.spawn_pool(Recorder, log, size=2, name="pool")
        await trio.sleep(1)
        assert system.dead_letters == ()
    assert sorted(log) == [("one", 0), ("two", 0)]
    assert journal.rows == {}


class CrashesFirst(Recorder):
    """Records each run, and crashes on the first."""

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        await super().handle_cast(message, ctx)
        if len(self.log) == 1:
            raise RuntimeError("first run")


async def test_a_replayed_message_whose_handler_crashes_is_retried_into_the_new_agent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Kept with the agent's id of an earlier run: its retry goes to the agent of its name."""
    journal = FakeJournal(unsettled=[kept("task", AgentId(name="worker"))])
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        await system.spawn(CrashesFirst, log, name="worker")
        await trio.sleep(1)
        assert system.dead_letters == ()
        books = system.delivery.get_stats()
    assert log == [("task", 0), ("task", 1)]
    assert (books.retried, books.acknowledged) == (1, 1)
    assert journal.rows == {}


class FailsToStart(Agent):
    async def on_start(self, ctx: Context) -> None:
        raise RuntimeError("no model")


async def test_an_agent_that_fails_to_start_leaves_what_it_took_as_dead_letters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    message = kept("one")
    journal = FakeJournal(unsettled=[message])
    async with open_message_system(config(journal)) as system:
        with pytest.raises(AgentStartFailed):
            await system.spawn(FailsToStart, name="worker")
        await trio.sleep(1)
        books = system.delivery.get_stats()
    assert [message_id for message_id, _, _ in journal.filings] == [message.id]
    assert journal.rows == {}
    assert (books.sent, books.dead_lettered, books.pending) == (1, 1, 0)


async def test_a_kept_message_past_its_timeout_expires_instead_of_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its creation time is kept across the restart: a 60 s timeout that passed meanwhile."""
    stale = kept("stale").evolve(created_at=trio.current_time() - 61.0)
    journal = FakeJournal(unsettled=[stale, kept("fresh")])
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        await system.spawn(Recorder, log, name="worker")
        await trio.sleep(1)
        [letter] = system.dead_letters
    assert (letter.reason, letter.envelope.id) == (DeadLetterReason.EXPIRED, stale.id)
    assert log == [("fresh", 0)]


async def test_what_does_not_fit_a_bounded_mailbox_follows_as_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = FakeJournal(unsettled=[kept(number) for number in range(4)])
    log: list[Any] = []
    small = MailboxConfig(capacity=2, overflow=OverflowPolicy.REJECT)
    async with open_message_system(config(journal)) as system:
        await system.spawn(Recorder, log, name="worker", mailbox=small)
        await trio.sleep(1)
        books = system.delivery.get_stats()
    assert log[:2] == [(0, 0), (1, 0)]
    assert sorted(number for number, _ in log) == [0, 1, 2, 3]
    assert (books.sent, books.retried, books.acknowledged) == (4, 2, 4)


async def test_an_agent_of_a_subtree_takes_what_was_kept_for_its_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = FakeJournal(unsettled=[kept("one", recipient="tool")])
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        await system.start_supervisor([system.agent_spec(Recorder, log, name="tool")])
        await trio.sleep(1)
    assert log == [("one", 0)]
