"""SqliteJournal's own faults: a file it must not take (changed in nothing), a file it cannot
write, a full disk and a lock held too long during a commit. Each is a ``JournalError``."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import trio
from stores import journaled_cast, reopened, rows, running

from terraphim_actors import DeadLetterReason, Envelope
from terraphim_actors._core.settlement import Settlement
from terraphim_actors.errors import JournalError
from terraphim_actors.journal import SqliteJournal, _sqlite


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "agents.db"


async def _refused(path: Path) -> JournalError:
    """The error ``run`` raises on ``path``, checking that it came before the journal said it
    had started."""
    async with trio.open_nursery() as nursery:
        with pytest.raises(JournalError) as caught:
            await nursery.start(SqliteJournal(path).run)
    assert str(path) in str(caught.value)
    return caught.value


def _contents(path: Path) -> bytes:
    return path.read_bytes()


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _sqlite_file(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


async def _journal_with_messages(path: Path, count: int) -> None:
    async with running(SqliteJournal(path)) as journal:
        for number in range(count):
            journal.accepted(journaled_cast("x" * 200 + str(number)))


async def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(path: Path) -> None:
    _write(path, b"my notes, not a database\n" * 100)
    before = _contents(path)
    error = await _refused(path)
    assert "not a journal" in str(error)
    assert _contents(path) == before


async def test_another_programs_database_is_refused_and_left_alone(path: Path) -> None:
    _sqlite_file(path, "CREATE TABLE accounts (id INTEGER, balance REAL)")
    before = _contents(path)
    error = await _refused(path)
    assert "other program" in str(error)
    assert _contents(path) == before


async def test_a_newer_schema_is_refused_and_left_alone(path: Path) -> None:
    await _journal_with_messages(path, 3)
    _sqlite_file(path, "PRAGMA user_version = 99")
    before = _contents(path)
    error = await _refused(path)
    assert "newer" in str(error)
    assert _contents(path) == before
    assert rows(path, "messages") == 3


async def test_a_journal_missing_its_tables_is_refused(path: Path) -> None:
    await _journal_with_messages(path, 1)
    _sqlite_file(path, "DROP TABLE messages")
    before = _contents(path)
    await _refused(path)
    assert _contents(path) == before


async def test_a_journal_with_damaged_pages_is_refused_and_left_alone(path: Path) -> None:
    """Garbage over the pages that hold its messages: the file reads as SQLite, its rows do
    not."""
    await _journal_with_messages(path, 200)
    data = bytearray(_contents(path))
    page = 4096
    data[page:] = b"\xa5" * (len(data) - page)
    _write(path, bytes(data))
    before = _contents(path)
    await _refused(path)
    assert _contents(path) == before


async def test_a_path_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "agents.db"
    await _refused(path)
    assert not path.parent.exists()


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    await _refused(tmp_path)


async def test_a_path_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a directory")
    await _refused(tmp_path / "plain" / "agents.db")


async def test_a_journal_that_cannot_open_fails_what_was_told_before(path: Path) -> None:
    """A message accepted before the writer ran, on a file it then refuses: its commit fails
    rather than waiting for ever."""
    _write(path, b"not a database")
    journal = SqliteJournal(path)
    commit = journal.accepted(journaled_cast("early"))
    assert commit is not None
    with pytest.raises(JournalError):
        await journal.run()
    with pytest.raises(JournalError):
        await commit.wait()


async def _fill_the_disk(journal: SqliteJournal) -> None:
    """Cap the writer's file at its current size (SQLite's own page limit): a commit that
    needs another page fails as on a full disk."""

    def cap() -> None:
        assert journal._connection is not None
        journal._connection.execute("PRAGMA max_page_count = 1")

    await journal._thread.run(cap)  # on the connection's own thread, between commits


async def _free_the_disk(journal: SqliteJournal) -> None:
    def uncap() -> None:
        assert journal._connection is not None
        journal._connection.execute("PRAGMA max_page_count = 1000000")

    await journal._thread.run(uncap)


async def test_a_full_disk_fails_the_commit_and_the_writer_goes_on(path: Path) -> None:
    """A commit that finds the disk full fails every sender waiting on it with JournalError;
    the writer keeps running, and commits again once there is room."""
    async with running(SqliteJournal(path)) as journal:
        await _fill_the_disk(journal)
        big = journaled_cast("x" * 100_000)
        commit = journal.accepted(big)
        assert commit is not None
        with pytest.raises(JournalError, match="full"):
            await commit.wait()
        with pytest.raises(JournalError):
            await commit.wait()  # every waiter is told
        await _free_the_disk(journal)
        after = journaled_cast("after")
        await journal.accepted(after).wait()  # type: ignore[union-attr]
    unsettled, _ = await reopened(path)
    assert [e.id for e in unsettled] == [after.id]


async def test_a_settlement_in_a_failed_commit_is_tried_again(path: Path) -> None:
    """Settlements are not awaited, so a failed commit must not lose them: they go with the
    next commit."""
    envelope = journaled_cast("settle me")
    async with running(SqliteJournal(path)) as journal:
        await journal.accepted(envelope).wait()  # type: ignore[union-attr]
        await _fill_the_disk(journal)
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        journal.accepted(journaled_cast("y" * 100_000))
        with pytest.raises(JournalError):
            await journal.flush()
        assert rows(path, "messages") == 1
        await _free_the_disk(journal)
        await journal.flush()
        assert rows(path, "messages") == 0


async def test_a_file_locked_past_the_busy_timeout_fails_the_commit(path: Path) -> None:
    """Another connection holding the write lock longer than ``busy_timeout`` fails the
    commit with JournalError; once the lock is gone, commits go through."""
    async with running(SqliteJournal(path, busy_timeout=0.05)) as journal:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            commit = journal.accepted(journaled_cast("blocked"))
            assert commit is not None
            with pytest.raises(JournalError, match="locked"):
                await commit.wait()
        finally:
            other.close()
        await journal.accepted(journaled_cast("free")).wait()  # type: ignore[union-attr]


async def accepted_while_locked(journal: SqliteJournal, path: Path, envelope: Envelope) -> None:
    """Have ``journal`` accept ``envelope`` while another connection holds the file's write
    lock past the journal's ``busy_timeout``: the commit that was to write its row fails."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        failed = journal.accepted(envelope)
        assert failed is not None
        with pytest.raises(JournalError, match="locked"):
            await failed.wait()
    finally:
        other.close()


async def test_a_message_sent_again_after_its_commit_failed_is_written_then(path: Path) -> None:
    """A client's resend of a message whose first send raised JournalError (the same
    message, by id) writes its row, once the fault is gone: it once got the first commit's
    failure again, and the message was never journaled."""
    envelope = journaled_cast("resent")
    async with running(SqliteJournal(path, busy_timeout=0.05)) as journal:
        await accepted_while_locked(journal, path, envelope)
        resent = journal.accepted(envelope)
        assert resent is not None
        await resent.wait()
    assert rows(path, "messages") == 1


async def test_a_message_whose_row_was_never_written_counts_no_run(path: Path) -> None:
    """Its send failed (JournalError: accepted, delivered in this run), so no restart will
    replay it: its handler runs uncounted, rather than waiting on a count that the fault
    would fail too, which turned such a message into a dead letter that never ran."""
    envelope = journaled_cast("not kept")
    async with running(SqliteJournal(path, busy_timeout=0.05)) as journal:
        await accepted_while_locked(journal, path, envelope)
        assert journal.started(envelope) is None


async def test_a_journal_locked_at_open_past_the_busy_timeout_is_refused(path: Path) -> None:
    """Opening proves the file can be written (a write rolled back): a file another
    connection keeps locked fails the open with JournalError, and its rows stay."""
    await _journal_with_messages(path, 2)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            with pytest.raises(JournalError, match="locked"):
                await nursery.start(SqliteJournal(path, busy_timeout=0.05).run)
    finally:
        other.close()
    assert rows(path, "messages") == 2


def test_dead_letters_of_a_missing_file_are_an_error(path: Path) -> None:
    with pytest.raises(JournalError):
        SqliteJournal(path).dead_letters()
    assert not path.exists()


def test_dead_letters_of_a_foreign_file_are_an_error(path: Path) -> None:
    _write(path, b"not a database")
    with pytest.raises(JournalError):
        SqliteJournal(path).dead_letters()


async def test_a_settlement_left_by_a_failed_commit_is_written_with_nothing_else_told(
    path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The writer tries again on its own what a failed commit left: it does not wait for the
    next message to come."""
    envelope = journaled_cast("settle me")
    async with running(SqliteJournal(path)) as journal:
        await journal.accepted(envelope).wait()  # type: ignore[union-attr]
        await _fill_the_disk(journal)
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        with pytest.raises(JournalError):
            await journal.accepted(journaled_cast("y" * 100_000)).wait()  # type: ignore[union-attr]
        await _free_the_disk(journal)
        with trio.fail_after(60):
            # The commit runs in a worker thread, which no Trio event reports: look, on the
            # test's virtual clock.
            while rows(path, "messages") == 1:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert rows(path, "messages") == 0


async def test_flush_raises_after_a_failed_commit_nobody_waited_on(path: Path) -> None:
    """A message sent without waiting (cast_nowait) whose commit failed is not journaled: the
    next flush says so, even though nothing is pending by then; the flush after it does not
    repeat it."""
    async with running(SqliteJournal(path)) as journal:
        await _fill_the_disk(journal)
        commit = journal.accepted(journaled_cast("z" * 100_000))
        assert commit is not None
        with pytest.raises(JournalError):
            await commit.wait()  # the test looks; the sender did not
        await _free_the_disk(journal)
        with pytest.raises(JournalError, match="full"):
            await journal.flush()
        await journal.flush()


async def test_flush_raises_for_a_failure_in_a_commit_under_way(path: Path) -> None:
    """Two flushes waiting on one failed commit both raise."""
    async with running(SqliteJournal(path)) as journal:
        await _fill_the_disk(journal)
        journal.accepted(journaled_cast("z" * 100_000))
        failures: list[BaseException] = []

        async def flush() -> None:
            try:
                await journal.flush()
            except JournalError as error:
                failures.append(error)

        async with trio.open_nursery() as flushes:
            flushes.start_soon(flush)
            flushes.start_soon(flush)
        assert len(failures) == 2


async def test_a_journal_closing_with_writes_it_cannot_make_logs_them(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = journaled_cast("settle me")
    async with running(SqliteJournal(path)) as journal:
        await journal.accepted(envelope).wait()  # type: ignore[union-attr]
        await _fill_the_disk(journal)
        journal.settled(envelope.id, Settlement.ACKNOWLEDGED)
        journal.filed(journaled_cast("y" * 100_000), DeadLetterReason.EXPIRED.value, "")
    [record] = [
        r
        for r in caplog.records
        if r.name == "terraphim_actors.journal" and r.levelno == logging.WARNING
    ]
    assert "settlements: 1" in record.getMessage()
    assert "dead letters: 1" in record.getMessage()
    assert rows(path, "messages") == 1


async def test_a_dead_letter_whose_detail_is_not_utf8_is_kept_escaped(path: Path) -> None:
    """A dead letter's detail quotes a user's error, which may hold text UTF-8 cannot carry
    (a lone surrogate): it is kept with that character escaped, and the journal goes on."""
    envelope = journaled_cast("dead")
    async with running(SqliteJournal(path)) as journal:
        journal.filed(envelope, DeadLetterReason.EXPIRED.value, "bad \ud800 text")
        await journal.flush()
        await journal.accepted(journaled_cast("after")).wait()  # type: ignore[union-attr]
    [letter] = SqliteJournal(path).dead_letters()
    assert letter.detail == "bad \\ud800 text"
    assert letter.envelope.id == envelope.id


class NotFromSqlite(Exception):
    """A fault in a commit that is not SQLite's: a bug, which no retry mends."""


async def test_an_exception_not_from_sqlite_in_a_commit_ends_the_writer_loudly(
    path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that raises what SQLite does not fails the commit's waiters with
    JournalError, its cause chained, is logged, and run() raises JournalError."""

    def write(*args: object, **kwargs: object) -> None:
        raise NotFromSqlite("a bug in the commit")

    monkeypatch.setattr(_sqlite, "write", write)
    journal = SqliteJournal(path)
    waited: list[BaseException] = []

    async def send() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            commit = journal.accepted(journaled_cast("with it"))
            assert commit is not None
            try:
                await commit.wait()
            except JournalError as error:
                waited.append(error)

    with pytest.raises(ExceptionGroup) as caught:
        await send()
    [sender_error] = waited
    assert isinstance(sender_error.__cause__, NotFromSqlite)
    [error] = caught.value.exceptions
    assert isinstance(error, JournalError)
    assert isinstance(error.__cause__, NotFromSqlite)
    assert any(
        r.name == "terraphim_actors.journal" and r.levelno == logging.ERROR for r in caplog.records
    )
    with pytest.raises(JournalError):
        journal.accepted(journaled_cast("after"))
    assert rows(path, "messages") == 0


def _damage_row(path: Path, statement: str) -> None:
    _sqlite_file(path, statement)


async def test_a_message_that_cannot_be_decoded_is_refused_at_open_by_id(path: Path) -> None:
    envelope = journaled_cast("damaged")
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(envelope)
    _damage_row(path, "UPDATE messages SET envelope = x'00c1c1c1'")
    before = _contents(path)
    error = await _refused(path)
    assert str(envelope.id) in str(error)
    assert _contents(path) == before


async def test_a_malformed_message_id_is_refused_at_open(path: Path) -> None:
    async with running(SqliteJournal(path)) as journal:
        journal.accepted(journaled_cast("renamed"))
    _damage_row(path, "UPDATE messages SET id = 'not-a-number'")
    before = _contents(path)
    error = await _refused(path)
    assert "not-a-number" in str(error)
    assert _contents(path) == before
