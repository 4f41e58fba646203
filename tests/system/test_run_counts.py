"""Handler runs counted ahead, on the in-memory fake journal: when a kept message is about to
run, the runs of the kept messages waiting behind it in the mailbox are counted with its own
(RUN_BATCH at most), each before it runs and none twice."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from fake_journal import FakeJournal

from terraphim_actors import (
    Agent,
    Context,
    DeliveryConfig,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystemConfig,
    open_message_system,
)
from terraphim_actors._delivery.runs import RUN_BATCH

AT_LEAST_ONCE = MessageOptions(guarantee=DeliveryGuarantee.AT_LEAST_ONCE)


def config(journal: FakeJournal) -> MessageSystemConfig:
    return MessageSystemConfig(journal=journal, delivery=DeliveryConfig(jitter=0.0))


class Recorder(Agent):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.log.append(message)


def started_before_the_first_settlement(journal: FakeJournal) -> int:
    """How many runs the journal was told of before it heard of any settlement."""
    kinds = [event for event, _ in journal.events if event in ("started", "settled")]
    return kinds.index("settled") if "settled" in kinds else len(kinds)


async def test_the_runs_of_the_waiting_messages_are_counted_with_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = FakeJournal()
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        ref = await system.spawn(Recorder, log, name="worker")
        for number in range(5):
            ref.cast_nowait(number, options=AT_LEAST_ONCE)  # all waiting when the first runs
        await trio.sleep(1)
    assert log == [0, 1, 2, 3, 4]
    assert started_before_the_first_settlement(journal) == 5
    assert sorted(journal.runs.values()) == [1] * 5  # each run counted once


async def test_at_most_run_batch_runs_are_counted_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = FakeJournal()
    log: list[Any] = []
    async with open_message_system(config(journal)) as system:
        ref = await system.spawn(Recorder, log, name="worker")
        for number in range(RUN_BATCH + 10):
            ref.cast_nowait(number, options=AT_LEAST_ONCE)
        await trio.sleep(1)
    assert len(log) == RUN_BATCH + 10
    assert started_before_the_first_settlement(journal) == RUN_BATCH
    assert sorted(journal.runs.values()) == [1] * (RUN_BATCH + 10)
