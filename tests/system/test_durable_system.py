"""A system on a SQLite journal, opened twice on the same file: what the first left unsettled
the second delivers, in order, with its attempts; what it completed exactly once is not handled
again; a message out of runs ends as a dead letter; a file that is not a journal is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    DeliveryConfig,
    DeliveryGuarantee,
    Envelope,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    RouterConfig,
    cast,
    open_message_system,
)
from terraphim_actors._delivery.dead_letters import DeadLetterReason
from terraphim_actors.errors import JournalError, UnencodablePayload
from terraphim_actors.journal import SqliteJournal

EXACTLY_ONCE = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)


def config(path: Path, **delivery: Any) -> MessageSystemConfig:
    delivery.setdefault("jitter", 0.0)
    return MessageSystemConfig(
        journal=SqliteJournal(path), delivery=DeliveryConfig(**delivery), shutdown_timeout=1.0
    )


class Recorder(Agent):
    """Records (payload, attempt) of what it handles, and sets ``seen`` once it has handled
    ``expected`` messages; "block" blocks its handler for good (until the shutdown)."""

    def __init__(self, log: list[Any], expected: int, seen: trio.Event) -> None:
        self.log = log
        self.expected = expected
        self.seen = seen

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.log.append((message, ctx.envelope.attempt))
        if len(self.log) >= self.expected:
            self.seen.set()
        if message == "block":
            await trio.sleep_forever()


class Unblocked(Recorder):
    """A Recorder for which "block" is a message like any other."""

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.log.append((message, ctx.envelope.attempt))
        if len(self.log) >= self.expected:
            self.seen.set()


# The journal commits in a worker thread, which an autojump clock does not wait for: each
# test waits for what it needs to have happened (an event), never for a length of time.


async def run_once(
    path: Path,
    agent: type[Recorder],
    expected: int,
    *payloads: Any,
    **delivery: Any,
) -> tuple[list[Any], Any]:
    """Open a system on ``path``, spawn ``agent`` as "worker", cast it ``payloads``, wait until
    it handled ``expected`` messages, and shut down; what it handled, and the books."""
    log: list[Any] = []
    seen = trio.Event()
    async with open_message_system(config(path, **delivery)) as system:
        ref = await system.spawn(agent, log, expected, seen, name="worker")
        for payload in payloads:
            await ref.cast(payload)
        await seen.wait()
        books = system.delivery.get_stats()
    return log, books


async def test_what_a_shutdown_left_unhandled_is_replayed_in_order_with_its_attempts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "agents.db"
    first, _ = await run_once(path, Recorder, 1, "block", 0, 1, 2)
    assert first == [("block", 0)]  # its handler ran once, and the shutdown stopped it

    second, books = await run_once(path, Unblocked, 5, "after")
    assert second == [("block", 1), (0, 0), (1, 0), (2, 0), ("after", 0)]
    assert books.sent == 5
    assert books.acknowledged == 5

    third, books = await run_once(path, Unblocked, 1, "fresh")
    assert third == [("fresh", 0)]  # nothing left from before
    assert books.sent == 1


class StopsSlowly(Agent):
    """Takes half a second to stop: its stop holds its supervisor's lock that long."""

    async def on_stop(self, reason: object) -> None:
        await trio.sleep(0.5)


async def test_a_spawn_cancelled_while_it_waits_leaves_what_was_kept_for_the_next_spawn(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "agents.db"
    await run_once(path, Recorder, 1, "block", 0, 1)
    log: list[Any] = []
    seen = trio.Event()
    async with open_message_system(config(path)) as system:
        slow = await system.spawn(StopsSlowly)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(system.stop, slow)  # holds the root supervisor's lock
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.1):
                await system.spawn(Unblocked, [], 3, trio.Event(), name="worker")
        await system.spawn(Unblocked, log, 3, seen, name="worker")
        await seen.wait()
    assert log == [("block", 1), (0, 0), (1, 0)]


async def test_attempts_add_up_across_restarts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "agents.db"
    await run_once(path, Recorder, 1, "block")
    second, _ = await run_once(path, Recorder, 1)
    third, _ = await run_once(path, Recorder, 1)
    assert (second, third) == ([("block", 1)], [("block", 2)])


async def test_a_run_counted_ahead_and_cut_short_by_the_shutdown_costs_one_retry(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The runs of the messages waiting behind "block" were counted with its own, in one
    commit: none of them ran, and each comes back with one retry spent."""
    path = tmp_path / "agents.db"
    log: list[Any] = []
    seen = trio.Event()
    async with open_message_system(config(path)) as system:
        ref = await system.spawn(Recorder, log, 1, seen, name="worker")
        for payload in ["block", 0, 1]:
            ref.cast_nowait(payload)  # all waiting when "block" is taken
        await system.flush()
        await seen.wait()
    assert log == [("block", 0)]

    second, _ = await run_once(path, Unblocked, 3)
    assert second == [("block", 1), (0, 1), (1, 1)]


async def test_an_exactly_once_message_completed_before_a_restart_is_not_handled_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "agents.db"
    envelope = cast(None, "pay", EXACTLY_ONCE, recipient="worker")
    for run, expected in enumerate([[("pay", 0)], [("marker", 0)]]):
        log: list[Any] = []
        seen = trio.Event()
        async with open_message_system(config(path)) as system:
            ref = await system.spawn(Recorder, log, 1, seen, name="worker")
            await system.send_message(envelope)
            if run:
                await ref.cast("marker")  # handled after the duplicate was taken
            await seen.wait()
            suppressed = system.delivery.get_stats().duplicates_suppressed
        assert log == expected
        assert suppressed == run


async def test_a_replayed_message_out_of_runs_is_a_retries_exhausted_dead_letter(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With no retries, a message gets one run: one cut short by the shutdown has had it."""
    path = tmp_path / "agents.db"
    await run_once(path, Recorder, 1, "block", max_retries=0)

    log: list[Any] = []
    journal = SqliteJournal(path)
    async with open_message_system(MessageSystemConfig(journal=journal)) as system:
        await system.spawn(Recorder, log, 1, trio.Event(), name="worker")
        [letter] = system.dead_letters
    assert letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
    assert letter.envelope.payload == "block"
    assert log == []
    [kept] = journal.dead_letters()
    assert (kept.reason, kept.envelope.payload) == (DeadLetterReason.RETRIES_EXHAUSTED, "block")


async def test_a_cast_through_a_pool_ref_is_replayed_to_the_pool_of_that_name(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Kept with the first run's pool id, it reaches the second run's pool of the name."""
    path = tmp_path / "agents.db"
    first: list[Any] = []
    async with open_message_system(config(path)) as system:
        pool = await system.spawn_pool(Recorder, first, 1, trio.Event(), size=1, name="pool")
        await pool.cast("block")  # cut short by the shutdown
        await pool.cast("waiting")  # left in the mailbox

    second: list[Any] = []
    seen = trio.Event()
    async with open_message_system(config(path)) as system:
        await system.spawn_pool(Unblocked, second, 2, seen, size=1, name="pool")
        await seen.wait()
        assert system.dead_letters == ()
    assert second == [("block", 1), ("waiting", 0)]


class EverythingToTheAuditor:
    """A custom router that sends every message to the agent named "auditor"."""

    def route(self, envelope: Envelope, system: MessageSystem) -> list[AgentRef]:
        return [system.ref("auditor")]


async def test_a_pools_replay_does_not_go_through_a_custom_router(tmp_path: Path) -> None:
    """Replay goes to the agent or pool of the name it was kept for, as a send through its
    ref would, whatever a custom router would make of it. (On Trio's own clock, the first
    run's retry ten seconds away: a jumping clock would spend it while the journal commits.)"""
    path = tmp_path / "agents.db"
    later = MessageOptions(retry_delay=10.0)
    async with open_message_system(config(path)) as system:
        # Nobody has the name yet: kept, waiting for a retry, when the shutdown comes.
        await system.send_message(cast(None, "job", later, recipient="workers"))

    audited: list[Any] = []
    worked: list[Any] = []
    seen = trio.Event()
    routed = attrs.evolve(config(path), router=RouterConfig(custom_router=EverythingToTheAuditor()))
    async with open_message_system(routed) as system:
        await system.spawn(Unblocked, audited, 1, trio.Event(), name="auditor")
        await system.spawn_pool(Unblocked, worked, 1, seen, size=1, name="workers")
        with trio.fail_after(10):
            await seen.wait()
    assert (worked, audited) == ([("job", 0)], [])


async def test_a_file_that_is_not_a_journal_is_refused_bare(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "agents.db"
    path.write_bytes(b"not a database at all, but long enough to be read as one" * 100)
    with pytest.raises(JournalError):
        async with open_message_system(config(path)):
            pass
    assert path.read_bytes().startswith(b"not a database")


async def test_a_cast_whose_payload_holds_itself_raises_unencodable_payload(
    tmp_path: Path,
) -> None:
    """The journal encodes a durable cast at the send: a payload that holds itself is refused
    there with the typed error, not a RecursionError, and the system goes on."""
    payload: list[Any] = []
    payload.append(payload)
    log: list[Any] = []
    seen = trio.Event()
    async with open_message_system(config(tmp_path / "agents.db")) as system:
        ref = await system.spawn(Recorder, log, 1, seen, name="worker")
        with pytest.raises(UnencodablePayload):
            await ref.cast(payload)
        await ref.cast("after")
        with trio.fail_after(10):
            await seen.wait()
    assert log == [("after", 0)]
