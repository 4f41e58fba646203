"""``SqliteJournal``: the durable journal, one SQLite file written with group commit."""

from __future__ import annotations

import collections
import logging
import math
import os
import sqlite3
import time
from typing import Any

import attrs
import outcome
import trio

from .._core.bounded_repr import bounded_repr
from .._core.checks import check_count, check_seconds
from .._core.codec import decode, encode
from .._core.ids import MessageId
from .._core.messages import DeliveryGuarantee, Envelope, now
from .._core.settlement import Settlement
from .._delivery.dead_letters import DeadLetter, DeadLetterReason
from .._delivery.durability import journaled, recipient_name
from ..errors import InvalidConfig, InvalidMessage, JournalError, MessagingError
from ._commit import COMPLETE, DELETE, FILE, INSERT, RETRIED, RUN, Commit, Operation, write
from ._schema import StoredMessage, inspect, load, open_journal
from ._thread import JournalThread

__all__ = ["SqliteJournal"]

logger = logging.getLogger("terraphim_actors.journal")

_SYNCHRONOUS = ("NORMAL", "FULL")
_NEW, _OPENING, _OPEN, _CLOSED = range(4)

#: After a failed commit the settlements and dead letters it held are tried again this many
#: seconds later (doubling while the fault lasts, up to the most), or sooner with new ones.
_RETRY_FIRST, _RETRY_MOST = 0.1, 5.0

#: Seconds of wall-clock time between two commits that forget expired completions: a statement
#: in every commit would cost one sender a tenth of its commit, for rows that expire in minutes.
_FORGET_EVERY = 1.0

#: What each statement writes, for the log of what a closing journal could not write.
_WHAT = {
    INSERT: "message",
    RUN: "run count",
    DELETE: "settlement",
    COMPLETE: "completion",
    FILE: "dead letter",
}


@attrs.define
class _Journaled:
    """A journaled message not settled yet: how many acceptances of it in this run are not
    settled yet, where its exactly-once completion goes, and the commit that holds its row."""

    unsettled_acceptances: int
    recipient: str
    exactly_once: bool
    commit: Commit


@attrs.define(frozen=True)
class _Replayed:
    """A message the file held unsettled at open, decoded as it is replayed (its attempt and
    birth from the row), and its recipient's name."""

    envelope: Envelope
    recipient: str


class SqliteJournal:
    """A durable journal in one SQLite file (standard library ``sqlite3``, WAL mode): what a
    crash or a clean exit leaves unsettled is delivered again at the next open.

    It journals the messages worth replaying (casts and infos addressed by name, at least once
    or exactly once) and ignores the rest. Each journaled message is encoded by the codec when
    it is accepted and written with every other operation told meanwhile in one transaction
    (group commit), in a worker thread, by the task :meth:`run`: a send that waits for its
    commit shares the cost of a disk sync with every send waiting with it.

    A failed commit fails every sender waiting on it. What nobody waits on (a message sent
    without waiting, a settlement) is covered by :meth:`flush`: it raises ``JournalError`` if
    any commit failed since the last flush (since :meth:`run` began, for the first), even if
    the commits after it succeeded, because a message whose insert failed is not journaled and
    is not tried again; the flush after that one starts afresh. Settlements and dead letters
    of a failed commit are tried again with a later one.

    The file holds the unsettled messages, the exactly-once completions of the dedup window
    and the most recent dead letters: settled rows are deleted, and so are expired
    completions and dead letters past ``dead_letters_kept``.

    Args:
        path: the file; made if missing (its directory must exist).
        synchronous: ``"NORMAL"`` (the default: a committed message survives a crash of the
            process; a power loss may lose the last commits) or ``"FULL"`` (it survives a
            power loss too, at about three times the time per commit: it syncs the log to the
            disk at every commit; measured in the README).
        busy_timeout: seconds a commit waits for a file locked by another connection before
            it fails with ``JournalError``.
        dedup_window: seconds an exactly-once completion is kept across restarts; a duplicate
            that old or younger is not handled again while the agent's own window
            (``DeliveryConfig.dedup_window``, 300 s by default) also remembers it: the shorter
            of the two applies.
        dead_letters_kept: how many dead letters the file keeps, the most recent ones (for
            :meth:`dead_letters`); older ones are deleted as new ones are filed.

    Raises:
        InvalidConfig: an argument out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        dedup_window: float = 300.0,
        dead_letters_kept: int = 10_000,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise InvalidConfig(
                f"synchronous must be 'NORMAL' or 'FULL', got {bounded_repr(synchronous)}"
            )
        check_seconds("busy_timeout", busy_timeout)
        check_seconds("dedup_window", dedup_window)
        check_count("dead_letters_kept", dead_letters_kept, minimum=1)
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self.dedup_window = float(dedup_window)
        self.dead_letters_kept = dead_letters_kept
        #: Transactions committed by :meth:`run` so far (one per group commit).
        self.commits = 0
        self._state = _NEW
        self._connection: sqlite3.Connection | None = None
        self._thread = JournalThread(f"journal {os.path.basename(self.path)}")
        self._operations: list[Operation] = []
        self._queued = Commit()
        self._writing: Commit | None = None
        self._wake = trio.Event()
        #: When the writer tries again what a failed commit left (never while none failed).
        self._retry_at = math.inf
        self._retry_delay = _RETRY_FIRST
        #: When (wall clock) a commit last forgot the expired completions: never, at first.
        self._forgot_at = -math.inf
        #: Commits failed so far, and how many of them a flush has reported.
        self._failures = 0
        self._failures_reported = 0
        self._last_failure: JournalError | None = None
        self._journaled: dict[int, _Journaled] = {}
        self._replayed: dict[int, _Replayed] = {}
        self._completions: list[tuple[str, MessageId, float]] = []

    def __repr__(self) -> str:
        return f"SqliteJournal({self.path!r})"

    # -- what delivery tells it ------------------------------------------------------------

    def accepted(self, envelope: Envelope) -> Commit | None:
        """Journal ``envelope`` if :func:`journaled` says so: encoded now, written at the next
        commit, which is returned; ``None`` if it is not journaled. A message journaled already
        (the same envelope sent again, a replayed one, or a copy a router made of either,
        whatever it is addressed to) gets no second row: the commit that wrote its row is
        returned (or, if that commit failed, a new one that writes it), and the row stays
        until every acceptance is settled.

        Raises:
            InvalidMessage, UnencodablePayload: it cannot be encoded (nothing is journaled).
            JournalError: the journal has closed.
        """
        entry = self._journaled.get(envelope.id)
        if entry is not None:
            # Its settlement comes by id, as every copy's does: each is counted.
            self._check_not_closed()
            entry.unsettled_acceptances += 1
            if entry.commit.error is not None:
                # The commit that was to write its row failed, and a failed commit's rows are
                # not written again: this acceptance writes it (a client's resend).
                entry.commit = self._insert(envelope, entry.recipient)
            return entry.commit
        if not journaled(envelope):
            return None
        self._check_not_closed()
        name = recipient_name(envelope)
        assert name is not None  # journaled() saw to it
        commit = self._insert(envelope, name)
        exactly_once = envelope.options.guarantee is DeliveryGuarantee.EXACTLY_ONCE
        self._journaled[envelope.id] = _Journaled(1, name, exactly_once, commit)
        return commit

    def _insert(self, envelope: Envelope, name: str) -> Commit:
        """Queue the row of ``envelope``, for recipient ``name``: the commit that writes it.

        Raises:
            InvalidMessage, UnencodablePayload: it cannot be encoded or stored.
        """
        data = encode(envelope)
        if not _is_utf8(name):
            # SQLite would refuse it in the commit, where it would stop the writer.
            raise InvalidMessage(
                f"{bounded_repr(name)} cannot name a journaled message's recipient: a lone"
                " surrogate is not text SQLite can store"
            )
        sender = envelope.sender
        created_wall = time.time() - (now() - envelope.created_at)
        return self._queue(
            INSERT,
            (
                str(envelope.id),
                name,
                None if sender is None else sender.uid.hex,
                envelope.kind.value,
                envelope.options.guarantee.value,  # type: ignore[union-attr]
                created_wall,
                data,
                0,  # handler runs, counted by started()
            ),
        )

    def started(self, envelope: Envelope) -> Commit | None:
        """Count a handler run of ``envelope`` durably: the commit that counts it, or ``None``
        if the message is not journaled, or its row was never written (the commit that was
        to write it failed: no restart will replay it, so its runs need no count, and it is
        delivered in this run as its sender was told).

        Raises:
            JournalError: the journal has closed.
        """
        entry = self._journaled.get(envelope.id)
        if entry is None or entry.commit.error is not None:
            return None
        self._check_not_closed()
        return self._queue(RUN, (str(envelope.id),))

    def settled(self, message_id: MessageId, outcome: Settlement) -> None:
        """Forget ``message_id`` once each of its acceptances is settled (its row is deleted
        at the next commit); an acknowledged exactly-once message is recorded as completed in
        the same commit. A replayed message settled without an acceptance in this run (one
        dead-lettered at its replay) is forgotten at once. An id not journaled is ignored."""
        entry = self._journaled.get(message_id)
        if entry is None or self._refused_after_close("settlement", message_id):
            return
        key = str(message_id)
        if outcome is Settlement.ACKNOWLEDGED and entry.exactly_once:
            self._queue(COMPLETE, (key, entry.recipient, time.time()))
        entry.unsettled_acceptances -= 1
        if entry.unsettled_acceptances <= 0:
            del self._journaled[message_id]
            self._replayed.pop(message_id, None)
            self._queue(DELETE, (key,))

    def filed(self, envelope: Envelope, reason: str, detail: str) -> None:
        """Keep the dead letter of a journaled message, for :meth:`dead_letters`; others are
        ignored."""
        if not journaled(envelope) or self._refused_after_close("dead letter", envelope.id):
            return
        try:
            data = encode(envelope)
        except MessagingError:
            logger.exception("dead letter %s cannot be journaled", envelope.id)
            return
        filed_wall = time.time()
        # The detail quotes a user's error: text UTF-8 cannot carry is kept escaped.
        detail = _escaped(detail)
        name = recipient_name(envelope)
        name = name if name is None else _escaped(name)
        self._queue(FILE, (str(envelope.id), name, reason, detail, filed_wall, data))

    async def flush(self) -> None:
        """Return once everything told so far is committed; at once if nothing is pending
        and no commit failed since the last flush.

        Raises:
            JournalError: the commit that held what is pending failed, or an earlier commit
                failed since the last flush (what it held is not journaled).
        """
        reported = self._failures_reported
        commit = self._queued if self._operations else self._writing
        if commit is self._queued:
            self._wake.set()
        if commit is not None:
            await commit.ended()
        failed = commit.error if commit is not None and commit.error is not None else None
        if failed is None and self._failures > reported:
            failed = self._last_failure
        self._failures_reported = max(self._failures_reported, self._failures)
        if failed is not None:
            raise JournalError(*failed.args) from failed.__cause__

    # -- the writer ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the file, read what it holds unsettled, report started, then commit what is
        told, a group at a time, until cancelled. On cancellation it commits what is queued
        (shielded: a commit in the worker thread cannot be interrupted, and waits at most
        ``busy_timeout`` for a lock) and closes the file. A journal runs once.

        A failed commit fails its ``Commit`` with ``JournalError`` (and is logged); its
        settlements and dead letters are tried again with the next commit (or, if nothing
        else comes, after a delay that grows while the fault lasts), and the writer keeps
        running. Anything else that goes wrong in a commit (an exception not from SQLite) ends
        the writer: every pending commit fails, what was not written is logged, and the
        journal refuses new messages.

        Raises:
            JournalError: the file cannot be used as a journal (before it reports started),
                or holds a message that cannot be read back (naming it); nothing in it was
                changed. Or the writer failed (the cause is chained).
        """
        if self._state != _NEW:
            raise JournalError(f"{self!r} has run already: a journal runs once")
        self._state = _OPENING
        thread = self._thread
        try:
            # The Trio clock's time at a wall-clock time, for the replayed messages' births.
            connection, replayed, completions = await thread.run(self._open, time.time() - now())
        except BaseException as error:
            thread.stop()
            self._close(error)
            raise
        self._connection = connection
        try:
            self._adopt(replayed, completions)
            self._state = _OPEN
            task_status.started()
            while True:
                # Operations told while the last commit was written need no wait, only the one
                # scheduler round below, in which whatever runs may join them (a lone sender's
                # cast: 3.4 rounds instead of 4.0). A wait with no retry due needs no scope.
                if self._wake.is_set():
                    pass
                elif self._retry_at == math.inf:
                    await self._wake.wait()
                else:
                    with trio.move_on_at(self._retry_at):
                        await self._wake.wait()
                # Whatever else runs in this scheduler tick joins the same commit.
                await trio.lowlevel.checkpoint()
                if self._operations:
                    await self._commit()
                else:
                    self._retry_at, self._wake = math.inf, trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    # What was queued during the last commit, and what that one left to retry.
                    for _ in range(2):
                        if self._operations and self._state == _OPEN:
                            await self._commit()
                finally:
                    self._close(None)
                    await thread.run(connection.close)
                    thread.stop()

    def _open(
        self, wall_ahead: float
    ) -> tuple[sqlite3.Connection, list[_Replayed], list[tuple[str, MessageId, float]]]:
        connection = open_journal(
            self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout
        )
        try:
            messages, completions = load(connection, self.path, self.dedup_window)
            # Decoded here, in the thread and before run() reports started, so that a damaged
            # row is refused at open rather than at the replay.
            replayed = [self._read_back(message, wall_ahead) for message in messages]
            window = [
                (recipient, self._stored_id(key), wall) for recipient, key, wall in completions
            ]
        except BaseException:
            connection.close()
            raise
        return connection, replayed, window

    def _read_back(self, message: StoredMessage, wall_ahead: float) -> _Replayed:
        """An unsettled row as it is replayed: on the attempt after its runs, created at its
        wall-clock birth on the Trio clock (``wall_ahead``: how far the wall clock is ahead).

        Raises:
            JournalError: the row's id or bytes cannot be read back (damaged, or a payload
                type not registered with ``register_payload``).
        """
        key, recipient, _, runs, created_wall, data = message
        message_id = self._stored_id(key)
        try:
            envelope = decode(data, attempt=runs, created_at=created_wall - wall_ahead)
        except Exception as e:
            raise JournalError(
                f"the journal {self.path!r} holds message {key}, which cannot be read back"
                f" ({e}): register its payload type, or move the file away"
            ) from e
        if envelope.id != message_id:
            raise JournalError(
                f"the journal {self.path!r} holds message {key} with the bytes of message"
                f" {envelope.id}: it is damaged"
            )
        return _Replayed(envelope, recipient)

    def _stored_id(self, key: str) -> MessageId:
        try:
            return MessageId(int(key))
        except (TypeError, ValueError) as e:
            raise JournalError(
                f"the journal {self.path!r} holds a malformed message id {bounded_repr(key)}:"
                " it is damaged"
            ) from e

    def _adopt(
        self, replayed: list[_Replayed], completions: list[tuple[str, MessageId, float]]
    ) -> None:
        loaded = Commit()
        loaded.resolve()
        for message in replayed:
            envelope = message.envelope
            exactly_once = envelope.options.guarantee is DeliveryGuarantee.EXACTLY_ONCE
            # No acceptance in this run yet: a replay that delivers it accepts it.
            self._journaled[envelope.id] = _Journaled(0, message.recipient, exactly_once, loaded)
            self._replayed[envelope.id] = message
        self._completions = completions

    async def _commit(self) -> None:
        """Write what is queued in one transaction, and resolve its commit."""
        assert self._connection is not None
        operations, commit = self._operations, self._queued
        self._operations, self._queued, self._wake = [], Commit(), trio.Event()
        self._writing = commit
        wall = time.time()
        forgetting = wall - self._forgot_at >= _FORGET_EVERY
        forget_before = wall - self.dedup_window if forgetting else None

        def ended(result: outcome.Outcome[None]) -> None:
            # In the Trio thread as the write ends: its senders wake with the writer, not a
            # scheduler round after it.
            if type(result) is outcome.Value:
                self.commits += 1
                self._retry_at, self._retry_delay = math.inf, _RETRY_FIRST
                if forgetting:
                    self._forgot_at = wall
                commit.resolve()

        try:
            # The thread's call cannot be interrupted, so a cancellation cannot take the
            # operations out of the queue without writing them.
            await self._thread.run(
                write,
                self._connection,
                operations,
                forget_before,
                self.dead_letters_kept,
                then=ended,
            )
        except sqlite3.Error as e:
            error = JournalError(f"the journal {self.path!r} could not commit: {e}")
            error.__cause__ = e
            logger.error("%s", error)
            self._failed(error)
            retried = [op for op in operations if op[0] in RETRIED]
            if retried:
                self._operations[:0] = retried
                self._retry_at = trio.current_time() + self._retry_delay
                self._retry_delay = min(2 * self._retry_delay, _RETRY_MOST)
            commit.resolve(error)
        except Exception as e:
            error = JournalError(f"the journal {self.path!r} failed in a commit: {bounded_repr(e)}")
            error.__cause__ = e
            logger.error("%s: its writer stops", error, exc_info=e)
            self._failed(error)
            commit.resolve(error)
            self._operations[:0] = operations
            self._close(error)
            raise error from e
        finally:
            self._writing = None

    def _failed(self, error: JournalError) -> None:
        self._failures += 1
        self._last_failure = error

    def _queue(self, statement: str, parameters: tuple[Any, ...]) -> Commit:
        self._operations.append((statement, parameters))
        self._wake.set()
        return self._queued

    def _check_not_closed(self) -> None:
        if self._state == _CLOSED:
            raise JournalError(f"the journal {self.path!r} has closed: it keeps nothing more")

    def _refused_after_close(self, what: str, message_id: MessageId) -> bool:
        """Whether the journal has closed, so that ``what`` of ``message_id`` cannot be
        journaled: said in the log, and harmless (the message stays unsettled, and is
        delivered again at the next open: at least once allows it)."""
        if self._state != _CLOSED:
            return False
        logger.warning("%s of message %s after %r closed: not journaled", what, message_id, self)
        return True

    def _close(self, error: BaseException | None) -> None:
        """The writer has ended: what is still queued will never be written (said in the
        log: the messages it concerns stay as the file last had them)."""
        self._state = _CLOSED
        reason = f" ({error})" if error is not None else ""
        if self._operations:
            counts = collections.Counter(_WHAT[statement] for statement, _ in self._operations)
            logger.warning(
                "%r closed without writing %s%s",
                self,
                ", ".join(f"{what}s: {count}" for what, count in counts.items()),
                reason,
            )
        if self._operations or not self._queued.done:
            self._queued.resolve(
                JournalError(f"the journal {self.path!r} closed before committing it{reason}")
            )
        self._operations = []

    # -- what a reopened journal holds -----------------------------------------------------

    def unsettled(self) -> list[Envelope]:
        """The journaled messages the file held unsettled when :meth:`run` opened it and not
        settled since, in commit order; each with its original id, sender, recipient, options
        and payload (decoded), ``attempt`` the handler runs it began before the file was
        opened, and ``created_at`` on the Trio clock (its wall-clock birth, moved by the
        distance between the clocks when the file was opened), so that it expires when it
        would have.

        Raises:
            JournalError: :meth:`run` has not opened the file yet.
        """
        self._check_opened()
        return [replayed.envelope for replayed in self._replayed.values()]

    def completed(self) -> list[tuple[str, MessageId, float]]:
        """The exactly-once completions the file held when :meth:`run` opened it that are
        still inside the dedup window: (recipient name, message id, age in seconds), oldest
        first.

        Raises:
            JournalError: :meth:`run` has not opened the file yet.
        """
        self._check_opened()
        wall = time.time()
        return [
            (recipient, message_id, wall - completed_wall)
            for recipient, message_id, completed_wall in self._completions
            if wall - completed_wall <= self.dedup_window
        ]

    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters of journaled messages committed to the file (the most recent
        ``dead_letters_kept``), oldest first, each with its payload decoded, its reason and
        detail, and ``at`` on the current clock (Trio's inside a run). It reads the file
        through a connection of its own, so it works whether or not :meth:`run` is running
        (after a crash: on a journal made just to read it), and sees only what is committed.
        It blocks on the disk: a Trio task calls it through ``trio.to_thread.run_sync`` if
        the file is large.

        Raises:
            JournalError: there is no journal at the path, or the file is not one.
            InvalidMessage: a payload's type is not registered (``register_payload``).
        """
        if not os.path.isfile(self.path):
            raise JournalError(f"there is no journal at {self.path!r}")
        try:
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout)
        except sqlite3.Error as e:
            raise JournalError(f"cannot open the journal {self.path!r}: {e}") from e
        try:
            if inspect(connection, self.path) == 0:
                return []
            rows = connection.execute(
                "SELECT reason, detail, filed_wall, envelope FROM dead_letters ORDER BY seq"
            ).fetchall()
        except sqlite3.Error as e:
            raise JournalError(f"the journal {self.path!r} cannot be read: {e}") from e
        finally:
            connection.close()
        wall, clock = time.time(), now()
        return [
            DeadLetter(decode(data), DeadLetterReason(reason), detail, clock - (wall - filed))
            for reason, detail, filed, data in rows
        ]

    def _check_opened(self) -> None:
        if self._state in (_NEW, _OPENING) or self._connection is None:
            raise JournalError(f"the journal {self.path!r} is not open yet: run() opens it")


def _is_utf8(text: str) -> bool:
    """Whether SQLite can store ``text``: Python strings may hold lone surrogates; UTF-8 not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    """``text`` with what UTF-8 cannot carry kept escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
