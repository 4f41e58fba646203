"""SqliteJournal on real files: what it keeps, what a reopened journal gives back, group commit,
flush, and the rows it deletes. Driven directly, as delivery and the agent loop would tell it."""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from stores import AT_LEAST_ONCE, EXACTLY_ONCE, journaled_cast, reopened, rows, running

from terraphim_actors import (
    AgentId,
    DeadLetterReason,
    DeliveryGuarantee,
    Envelope,
    MessageKind,
    MessageOptions,
    Priority,
    cast,
)
from terraphim_actors._core.codec import encode
from terraphim_actors._core.settlement import Settlement
from terraphim_actors.errors import InvalidConfig, InvalidMessage, JournalError, UnencodablePayload
from terraphim_actors.journal import SqliteJournal
from terraphim_actors.journal._commit import COMPLETE, DELETE, INSERT, RUN, Operation, write


class WallClock:
    """``time.time`` under the test's hand: the wall clock a journal stores times by."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    clock = WallClock()
    monkeypatch.setattr(time, "time", clock)
    return clock


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "agents.db"


async def test_unsettled_messages_come_back_as_they_were_sent(path: Path) -> None:
    """A reopened journal gives back the messages not settled, in commit order, with their
    ids, kinds, senders, recipients, options, headers and payloads."""
    sender = AgentId(name="planner")
    options = MessageOptions(
        priority=Priority.HIGH,
        timeout=60.0,
        max_retries=4,
        retry_delay=0.5,
        guarantee=DeliveryGuarantee.EXACTLY_ONCE,
    )
    sent = [
        journaled_cast({"task": 1, "data": b"\x00\x01"}),
        cast(sender, ("a", 1.5), options, recipient=AgentId(name="worker")),
        Envelope(
            kind=MessageKind.INFO,
            payload=[None, True],
            recipient="other",
            options=AT_LEAST_ONCE,
            headers={"trace": "abc"},
        ),
    ]
    async with running(SqliteJournal(path)) as journal:
        for envelope in sent:
            commit = journal.accepted(envelope)
            assert commit is not None
        await journal.flush()
    unsettled, _ = await reopened(path)
    assert [e.id for e in unsettled] == [e.id for e in sent]
    for back, envelope in zip(unsettled, sent, strict=True):
        assert back.kind is envelope.kind
        assert back.payload == envelope.payload
        assert back.sender == envelope.sender
        assert back.recipient == envelope.recipient
        assert back.options == envelope.options
        assert dict(back.headers) == dict(envelope.headers)
        assert back.attempt == 0


async def test_an_awaited_commit_is_on_disk(path: Path) -> None:
    """Once a message's commit returns, its row is in the file for any reader to see."""
    async with running(SqliteJournal(path)) as journal:
        commit = journal.accepted(journaled_cast("x"))
        assert commit is not None
        await commit.wait()
        assert rows(path, "messages") == 1


async def test_a_replayed_message_counts_the_runs_it_began(path: Path) -> None:
    """The attempt of a replayed message is the handler runs told by ``started``."""
    once, twice, never = journaled_cast(1), journaled_cast(2), journaled_cast(3)
    async with running(SqliteJournal(path)) as journal:
        for envelope in (once, twice, never):
            journal.accepted(envelope)
        for envelope in (once, twice, twice):
            commit = journal.started(envelope)
            assert commit is not None
            await commit.wait()
    unsettled, _ = await reopened(path)
    assert [(e.payload, e.attempt) for e in unsettled] == [(1, 1), (2, 2), (3, 0)]


async def test_runs_add_up_across_restarts(path: Path) -> None:
    """A replayed message started again counts on from its runs before the restart."""
    envelope = journaled_cast("again")
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(envelope)
        await journal.started(envelope).wait()  # type: ignore[union-attr]
    async with running(SqliteJournal(path)) as journal:
        [replayed] = journal.unsettled()
        await journal.started(replayed).wait()  # type: ignore[union-attr]
    unsettled, _ = await reopened(path)
    assert [e.attempt for e in unsettled] == [2]


async def test_a_replayed_message_keeps_its_remaining_time(
    path: Path, wall: WallClock, autojump_clock: trio.testing.MockClock
) -> None:
    """``created_at`` is carried by the wall clock across a restart and put on the current
    Trio clock: a message made 3 s before it was journaled, replayed 10 s of wall time
    later, is 13 s old, whatever the Trio clock of the new run says."""
    envelope = journaled_cast("aging")
    await trio.sleep(3.0)
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(envelope)
        await journal.flush()
    await trio.sleep(500.0)  # the Trio clock means nothing across a restart
    wall.now += 10.0
    [replayed], _ = await reopened(path)
    assert trio.current_time() - replayed.created_at == pytest.approx(13.0)


@pytest.mark.parametrize(
    "outcome",
    [
        Settlement.ACKNOWLEDGED,
        Settlement.DUPLICATE,
        Settlement.FAILED,
        Settlement.DEAD_LETTERED,
        Settlement.REFUSED,
    ],
)
async def test_a_settled_message_is_not_replayed(path: Path, outcome: Settlement) -> None:
    """However a message was settled, a reopened journal does not give it back."""
    settled, open_ = journaled_cast("settled"), journaled_cast("open")
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(settled)
        journal.accepted(open_)
        journal.settled(settled.id, outcome)
        await journal.flush()
    unsettled, _ = await reopened(path)
    assert [e.id for e in unsettled] == [open_.id]


async def test_settling_before_the_commit_leaves_nothing(path: Path) -> None:
    """A message accepted and settled between two commits leaves no row behind."""
    async with running(SqliteJournal(path)) as journal:
        for number in range(100):
            envelope = journaled_cast(number)
            journal.accepted(envelope)
            journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        await journal.flush()
        assert rows(path, "messages") == 0


async def test_settled_rows_are_deleted_from_the_file(path: Path) -> None:
    """Rows of settled messages are deleted, not marked: the table holds only what is open."""
    envelopes = [journaled_cast(number) for number in range(200)]
    async with running(SqliteJournal(path)) as journal:
        for envelope in envelopes:
            journal.accepted(envelope)
        await journal.flush()
        assert rows(path, "messages") == 200
        for envelope in envelopes[:150]:
            journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        await journal.flush()
        assert rows(path, "messages") == 50


def _checkpointed_size(path: Path) -> int:
    """The size of the file once the write-ahead log is copied into it."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return path.stat().st_size


async def test_the_file_follows_the_open_messages_not_the_history(path: Path) -> None:
    """Rounds of messages accepted and then settled leave the file the size the first round
    made it: the space of deleted rows is used again."""
    sizes = []
    async with running(SqliteJournal(path)) as journal:
        for _ in range(5):
            envelopes = [journaled_cast("x" * 300 + str(number)) for number in range(300)]
            for envelope in envelopes:
                journal.accepted(envelope)
            await journal.flush()
            for envelope in envelopes:
                journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
            await journal.flush()
            sizes.append(_checkpointed_size(path))
    assert sizes == [sizes[0]] * 5


async def test_an_exactly_once_completion_is_remembered_within_the_window(
    path: Path, wall: WallClock
) -> None:
    """An acknowledged exactly-once message is recorded as completed with the settlement: a
    reopened journal lists it (recipient, id, age) while it is inside the dedup window."""
    envelope = journaled_cast("once", recipient="worker", options=EXACTLY_ONCE)
    async with running(SqliteJournal(path, dedup_window=60.0)) as journal:
        journal.accepted(envelope)
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        await journal.flush()
    wall.now += 59.0
    unsettled, completed = await reopened(path, dedup_window=60.0)
    assert unsettled == []
    assert completed == [("worker", envelope.id, pytest.approx(59.0))]


async def test_a_completion_is_forgotten_after_the_window(path: Path, wall: WallClock) -> None:
    """Past the dedup window a completion is not listed, and its row is deleted."""
    envelope = journaled_cast("once", options=EXACTLY_ONCE)
    async with running(SqliteJournal(path, dedup_window=60.0)) as journal:
        journal.accepted(envelope)
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        await journal.flush()
    wall.now += 61.0
    async with running(SqliteJournal(path, dedup_window=60.0)) as journal:
        assert journal.completed() == []
        journal.accepted(journaled_cast("later"))
        await journal.flush()
        assert rows(path, "completions") == 0


async def test_a_completion_expiring_while_the_journal_runs_is_deleted_within_a_second(
    path: Path, wall: WallClock
) -> None:
    """Commits forget expired completions at most once a second (wall clock): a completion
    past the window stays until a commit comes a second after the last one that forgot."""
    envelope = journaled_cast("once", options=EXACTLY_ONCE)
    async with running(SqliteJournal(path, dedup_window=60.0)) as journal:
        journal.accepted(envelope)
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        await journal.flush()
        wall.now += 59.8  # this commit forgets, but the completion is inside the window
        journal.accepted(journaled_cast("before it expires"))
        await journal.flush()
        wall.now += 0.7  # expired, and less than a second after the last forgetting
        journal.accepted(journaled_cast("within the second"))
        await journal.flush()
        assert rows(path, "completions") == 1
        wall.now += 0.4
        journal.accepted(journaled_cast("a second later"))
        await journal.flush()
        assert rows(path, "completions") == 0


@pytest.mark.parametrize(
    ("options", "outcome"),
    [
        (AT_LEAST_ONCE, Settlement.ACKNOWLEDGED),
        (EXACTLY_ONCE, Settlement.DEAD_LETTERED),
        (EXACTLY_ONCE, Settlement.DUPLICATE),
    ],
)
async def test_only_an_acknowledged_exactly_once_message_is_completed(
    path: Path, options: MessageOptions, outcome: Settlement
) -> None:
    envelope = journaled_cast("x", options=options)
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(envelope)
        journal.settled(envelope.id, outcome)
        await journal.flush()
    _, completed = await reopened(path)
    assert completed == []


async def test_dead_letters_are_read_back_after_a_restart(path: Path) -> None:
    """Filed dead letters of kept messages are in the file, with payload, reason and detail,
    for a journal made just to read them (its writer never run)."""
    first, second = journaled_cast({"n": 1}), journaled_cast({"n": 2})
    async with running(SqliteJournal(path)) as journal:
        for envelope in (first, second):
            journal.accepted(envelope)
        journal.filed(first, DeadLetterReason.EXPIRED.value, "too late")
        journal.settled(first.id, Settlement.DEAD_LETTERED)
        journal.filed(second, DeadLetterReason.RETRIES_EXHAUSTED.value, "crashed 4 times")
        journal.settled(second.id, Settlement.DEAD_LETTERED)
        await journal.flush()
    letters = SqliteJournal(path).dead_letters()
    assert [(d.envelope.id, d.envelope.payload, d.reason, d.detail) for d in letters] == [
        (first.id, {"n": 1}, DeadLetterReason.EXPIRED, "too late"),
        (second.id, {"n": 2}, DeadLetterReason.RETRIES_EXHAUSTED, "crashed 4 times"),
    ]


async def test_dead_letters_can_be_read_while_the_journal_runs(path: Path) -> None:
    envelope = journaled_cast("late")
    async with running(SqliteJournal(path)) as journal:
        journal.filed(envelope, DeadLetterReason.EXPIRED.value, "")
        await journal.flush()
        assert [d.envelope.id for d in journal.dead_letters()] == [envelope.id]


async def test_messages_queued_together_share_one_commit(path: Path) -> None:
    """Group commit: every message told before the writer's turn goes into one transaction."""
    async with running(SqliteJournal(path)) as journal:
        commits = [journal.accepted(journaled_cast(number)) for number in range(100)]
        assert len({id(commit) for commit in commits}) == 1
        await journal.flush()
        assert journal.commits == 1


async def test_senders_waiting_at_once_share_one_commit(path: Path) -> None:
    """Many senders, each waiting for its own message's commit, started in one scheduler
    tick, are served by one transaction."""

    async def send(journal: SqliteJournal, number: int) -> None:
        commit = journal.accepted(journaled_cast(number))
        assert commit is not None
        await commit.wait()

    async with running(SqliteJournal(path)) as journal:
        async with trio.open_nursery() as senders:
            for number in range(50):
                senders.start_soon(send, journal, number)
        assert journal.commits == 1
        assert rows(path, "messages") == 50


async def test_messages_told_during_a_commit_form_the_next(path: Path) -> None:
    async with running(SqliteJournal(path)) as journal:
        first = journal.accepted(journaled_cast(1))
        await trio.testing.wait_all_tasks_blocked()  # the first commit is under way
        second = journal.accepted(journaled_cast(2))
        assert second is not first
        await second.wait()  # type: ignore[union-attr]
        assert journal.commits == 2


async def test_flush_returns_at_once_with_nothing_outstanding(path: Path) -> None:
    async with running(SqliteJournal(path)) as journal:
        await journal.flush()
        assert journal.commits == 0


async def test_flush_commits_settlements_nobody_waits_for(path: Path) -> None:
    """A settlement is never awaited; flush is what makes it durable."""
    envelope = journaled_cast("x")
    async with running(SqliteJournal(path)) as journal:
        await journal.accepted(envelope).wait()  # type: ignore[union-attr]
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        await journal.flush()
        assert rows(path, "messages") == 0


async def test_stopping_commits_what_is_queued(path: Path) -> None:
    """A writer cancelled with operations queued commits them before it closes the file."""
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(journaled_cast("last words"))
    unsettled, _ = await reopened(path)
    assert [e.payload for e in unsettled] == ["last words"]


@pytest.mark.parametrize(
    "envelope",
    [
        pytest.param(
            Envelope(kind=MessageKind.CALL, payload="x", recipient="worker", options=AT_LEAST_ONCE),
            id="call",
        ),
        pytest.param(
            journaled_cast("x", options=MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)),
            id="at-most-once",
        ),
        pytest.param(cast(None, "x", AT_LEAST_ONCE, recipient=AgentId()), id="unnamed id"),
        pytest.param(cast(None, "x", AT_LEAST_ONCE), id="no recipient"),
    ],
)
async def test_messages_not_journaled_are_ignored(path: Path, envelope: Envelope) -> None:
    """Calls, at-most-once messages and messages not addressed by name are not kept: no
    commit to wait for, no run counted, nothing in the file."""
    async with running(SqliteJournal(path)) as journal:
        assert journal.accepted(envelope) is None
        assert journal.started(envelope) is None
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        journal.filed(envelope, DeadLetterReason.EXPIRED.value, "")
        await journal.flush()
        assert journal.commits == 0
    assert rows(path, "messages") == 0
    assert rows(path, "dead_letters") == 0


async def test_an_unencodable_payload_is_refused_and_nothing_is_kept(path: Path) -> None:
    async with running(SqliteJournal(path)) as journal:
        with pytest.raises(UnencodablePayload):
            journal.accepted(journaled_cast(object()))
        await journal.flush()
        assert journal.commits == 0


async def test_a_recipient_name_sqlite_cannot_store_is_refused_and_the_writer_goes_on(
    path: Path,
) -> None:
    """A name holding a lone surrogate (a Python string may; UTF-8 text may not) is refused
    at the send with ``InvalidMessage``: it once reached the commit, where it stopped the
    writer for good, failing the messages sent with it."""
    async with running(SqliteJournal(path)) as journal:
        with pytest.raises(InvalidMessage):
            journal.accepted(journaled_cast("x", recipient="bad\udc80name"))
        commit = journal.accepted(journaled_cast("fine"))
        assert commit is not None
        await commit.wait()
        journal.filed(
            journaled_cast("filed", recipient="bad\udc80name"), DeadLetterReason.EXPIRED.value, ""
        )
        await journal.flush()
    assert rows(path, "messages") == 1
    assert rows(path, "dead_letters") == 1


async def test_the_same_message_accepted_twice_is_one_row_kept_until_both_settle(
    path: Path,
) -> None:
    """An envelope sent twice (a resend) is one message in the file, open until each of its
    acceptances is settled."""
    envelope = journaled_cast("twice")
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(envelope)
        journal.accepted(envelope)
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        await journal.flush()
        assert rows(path, "messages") == 1
        journal.settled(envelope.id, Settlement.DUPLICATE)
        await journal.flush()
        assert rows(path, "messages") == 0


async def test_a_replayed_message_accepted_again_gets_no_second_row(path: Path) -> None:
    envelope = journaled_cast("replayed")
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(envelope)
    async with running(SqliteJournal(path)) as journal:
        [replayed] = journal.unsettled()
        commit = journal.accepted(replayed)
        assert commit is not None
        await commit.wait()
        assert rows(path, "messages") == 1
        journal.settled(replayed.id, Settlement.ACKNOWLEDGED)
        await journal.flush()
        assert journal.unsettled() == []
    unsettled, _ = await reopened(path)
    assert unsettled == []


async def test_a_replayed_message_settled_without_a_new_acceptance_is_gone(path: Path) -> None:
    """A replayed message dead-lettered at once (its runs used up) is settled without being
    accepted again: that settles it too."""
    envelope = journaled_cast("spent")
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(envelope)
    async with running(SqliteJournal(path)) as journal:
        journal.settled(envelope.id, Settlement.DEAD_LETTERED)
    unsettled, _ = await reopened(path)
    assert unsettled == []


async def test_full_synchronous_mode_commits(path: Path) -> None:
    async with running(SqliteJournal(path, synchronous="FULL")) as journal:
        journal.accepted(journaled_cast("durable"))
    unsettled, _ = await reopened(path)
    assert [e.payload for e in unsettled] == ["durable"]


@pytest.mark.parametrize(
    "options",
    [
        {"synchronous": "OFF"},
        {"synchronous": "normal"},
        {"busy_timeout": 0},
        {"busy_timeout": -1.0},
        {"busy_timeout": math.nan},
        {"busy_timeout": math.inf},
        {"dedup_window": 0},
        {"dedup_window": math.inf},
        {"dead_letters_kept": 0},
        {"dead_letters_kept": -1},
        {"dead_letters_kept": 1.5},
        {"dead_letters_kept": True},
    ],
)
def test_bad_options_are_refused(path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidConfig):
        SqliteJournal(path, **options)


async def test_a_journal_runs_once(path: Path) -> None:
    journal = SqliteJournal(path)
    async with running(journal):
        pass
    with pytest.raises(JournalError):
        await journal.run()


async def test_what_it_holds_is_unknown_before_it_opens(path: Path) -> None:
    journal = SqliteJournal(path)
    with pytest.raises(JournalError):
        journal.unsettled()
    with pytest.raises(JournalError):
        journal.completed()


async def test_a_closed_journal_refuses_new_messages(path: Path) -> None:
    """Once its writer has stopped, nothing more can be made durable: a send that needs it
    fails loudly rather than waiting for a commit that will never come."""
    async with running(SqliteJournal(path)) as journal:
        pass
    with pytest.raises(JournalError):
        journal.accepted(journaled_cast("too late"))


class _CountingConnection(sqlite3.Connection):
    """A real connection that counts the statements given to ``executemany``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[str, int]] = []

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        parameters = list(parameters)
        self.batches.append((sql, len(parameters)))
        return super().executemany(sql, parameters)


async def test_runs_counted_in_the_commit_that_inserts_their_message_need_no_update(
    path: Path,
) -> None:
    """Runs of a message counted in the commit that inserts it are written in its row's insert
    (one statement); a run of a message inserted before is an update; both come back."""
    earlier, fresh = journaled_cast("earlier"), journaled_cast("fresh")
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(earlier)
    row = (str(fresh.id), "worker", None, "cast", "at-least-once", 1.0, encode(fresh), 0)
    operations: list[Operation] = [
        (INSERT, row),
        (RUN, (str(fresh.id),)),
        (RUN, (str(earlier.id),)),
        (RUN, (str(fresh.id),)),
    ]
    connection = sqlite3.connect(path, isolation_level=None, factory=_CountingConnection)
    try:
        write(connection, operations, None, 10)
        batches = connection.batches
    finally:
        connection.close()
    assert [(sql.split()[0], size) for sql, size in batches] == [("INSERT", 1), ("UPDATE", 1)]
    unsettled, _ = await reopened(path)
    assert [(envelope.id, envelope.attempt) for envelope in unsettled] == [
        (earlier.id, 1),
        (fresh.id, 2),
    ]


async def test_settled_rows_are_deleted_in_one_batch_per_commit(path: Path) -> None:
    """Exactly-once messages settled one after another (completion, deletion, completion, ...)
    are written as one batch of completions and one of deletions."""
    envelopes = [journaled_cast(number, options=EXACTLY_ONCE) for number in range(20)]
    async with running(SqliteJournal(path)) as journal:
        for envelope in envelopes:
            journal.accepted(envelope)
    settled: list[Operation] = []
    for envelope in envelopes:  # as settled() queues them
        settled += [(COMPLETE, (str(envelope.id), "worker", 1.0)), (DELETE, (str(envelope.id),))]
    connection = sqlite3.connect(path, isolation_level=None, factory=_CountingConnection)
    try:
        write(connection, settled, 0.0, 10)
        batches = connection.batches
    finally:
        connection.close()
    assert [size for _, size in batches] == [20, 20]
    assert [sql.split()[0] for sql, _ in batches] == ["INSERT", "DELETE"]  # completions first
    assert rows(path, "messages") == 0
    assert rows(path, "completions") == 20


async def test_a_message_sent_again_after_it_settled_in_one_commit_stays(path: Path) -> None:
    """Accepted, settled and accepted again before the writer's turn: batching by statement
    must not delete the second acceptance's row."""
    envelope = journaled_cast("again")
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(envelope)
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        journal.accepted(envelope)
        await journal.flush()
        assert journal.commits == 1
    unsettled, _ = await reopened(path)
    assert [e.id for e in unsettled] == [envelope.id]


async def test_the_file_keeps_the_most_recent_dead_letters(path: Path) -> None:
    envelopes = [journaled_cast(number) for number in range(5)]
    async with running(SqliteJournal(path, dead_letters_kept=3)) as journal:
        for envelope in envelopes[:2]:
            journal.filed(envelope, DeadLetterReason.EXPIRED.value, "")
        await journal.flush()
        for envelope in envelopes[2:]:
            journal.filed(envelope, DeadLetterReason.EXPIRED.value, "")
        await journal.flush()
        assert [d.envelope.payload for d in journal.dead_letters()] == [2, 3, 4]
    assert rows(path, "dead_letters") == 3


async def test_a_replayed_message_accepted_in_copies_stays_until_every_copy_settles(
    path: Path,
) -> None:
    """A replay a router fans out into copies (the message's id, each addressed to an agent,
    named or not) is accepted once per copy and settled once per copy: the row goes with the
    last settlement, not the first."""
    envelope = journaled_cast("fan out")
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(envelope)
    async with running(SqliteJournal(path)) as journal:
        [replayed] = journal.unsettled()
        copies = [
            replayed.evolve(recipient=AgentId(name="worker")),
            replayed.evolve(recipient=AgentId()),
        ]
        for copy in copies:
            journal.accepted(copy)
        journal.settled(replayed.id, Settlement.ACKNOWLEDGED)
        await journal.flush()
    unsettled, _ = await reopened(path)
    assert [e.id for e in unsettled] == [envelope.id]
    async with running(SqliteJournal(path)) as journal:
        for copy in copies:
            journal.accepted(copy)
        for _ in copies:
            journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
    unsettled, _ = await reopened(path)
    assert unsettled == []
