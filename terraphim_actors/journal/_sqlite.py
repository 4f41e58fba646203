"""``SqliteJournal``: the durable journal, one SQLite file written with group commit."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import Any

import attrs
import trio

from .._core.checks import check_seconds
from .._core.codec import decode, encode
from .._core.ids import MessageId
from .._core.messages import DeliveryGuarantee, Envelope, now
from .._core.settlement import Settlement
from .._delivery.dead_letters import DeadLetter, DeadLetterReason
from .._delivery.durability import journaled, recipient_name
from ..errors import InvalidConfig, JournalError, MessagingError
from ._commit import COMPLETE, DELETE, FILE, INSERT, RETRIED, RUN, Commit, Operation, write
from ._schema import StoredMessage, inspect, load, open_journal

__all__ = ["SqliteJournal"]

logger = logging.getLogger("terraphim_actors.journal")

_SYNCHRONOUS = ("NORMAL", "FULL")
_NEW, _OPENING, _OPEN, _CLOSED = range(4)


@attrs.define
class _Kept:
    """A kept message not settled yet: how many of its acceptances are open, where its
    exactly-once completion goes, and the commit that holds its row."""

    open: int
    recipient: str
    exactly_once: bool
    commit: Commit


@attrs.define
class _Replayed:
    """A message the file held unsettled at open: its bytes, runs so far, wall-clock birth."""

    data: bytes
    runs: int
    created_wall: float


class SqliteJournal:
    """A durable journal in one SQLite file (standard library ``sqlite3``, WAL mode): what a
    crash or a clean exit leaves unsettled is delivered again at the next open.

    It keeps the messages worth replaying (casts and infos addressed by name, at least once or
    exactly once) and ignores the rest. Each kept message is encoded by the codec when it is
    accepted and written with every other operation told meanwhile in one transaction (group
    commit), in a worker thread, by the task :meth:`run`: a send that waits for its commit
    shares the cost of a disk sync with every send waiting with it.

    Args:
        path: the file; made if missing (its directory must exist).
        synchronous: ``"NORMAL"`` (the default: a committed message survives a crash of the
            process; a power loss may lose the last commits) or ``"FULL"`` (it survives a
            power loss too, at about twice the time per commit: one more disk sync each).
        busy_timeout: seconds a commit waits for a file locked by another connection before
            it fails with ``JournalError``.
        dedup_window: seconds an exactly-once completion is remembered across restarts: a
            replayed duplicate that old or younger is not handled again.

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
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise InvalidConfig(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        check_seconds("busy_timeout", busy_timeout)
        check_seconds("dedup_window", dedup_window)
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self.dedup_window = float(dedup_window)
        #: Transactions committed by :meth:`run` so far (one per group commit).
        self.commits = 0
        self._state = _NEW
        self._connection: sqlite3.Connection | None = None
        self._limiter: trio.CapacityLimiter | None = None
        self._operations: list[Operation] = []
        self._queued = Commit()
        self._writing: Commit | None = None
        self._wake = trio.Event()
        self._kept: dict[int, _Kept] = {}
        self._replayed: dict[int, _Replayed] = {}
        self._completions: list[tuple[str, MessageId, float]] = []

    def __repr__(self) -> str:
        return f"SqliteJournal({self.path!r})"

    # -- what delivery tells it ------------------------------------------------------------

    def accepted(self, envelope: Envelope) -> Commit | None:
        """Keep ``envelope`` if it is journaled: encoded now, written at the next commit,
        which is returned; ``None`` if it is not kept. A message kept already (the same
        envelope sent again, or a replayed one) gets no second row: the commit that wrote its
        row is returned.

        Raises:
            InvalidMessage, UnencodablePayload: it cannot be encoded (nothing is kept).
            JournalError: the journal has closed.
        """
        if not journaled(envelope):
            return None
        self._check_not_closed()
        kept = self._kept.get(envelope.id)
        if kept is not None:
            kept.open += 1
            return kept.commit
        data = encode(envelope)
        name = recipient_name(envelope)
        assert name is not None  # journaled() saw to it
        sender = envelope.sender
        created_wall = time.time() - (now() - envelope.created_at)
        commit = self._queue(
            INSERT,
            (
                str(envelope.id),
                name,
                None if sender is None else sender.uid.hex,
                envelope.kind.value,
                envelope.options.guarantee.value,  # type: ignore[union-attr]
                created_wall,
                data,
            ),
        )
        exactly_once = envelope.options.guarantee is DeliveryGuarantee.EXACTLY_ONCE
        self._kept[envelope.id] = _Kept(1, name, exactly_once, commit)
        return commit

    def started(self, envelope: Envelope) -> Commit | None:
        """Count a handler run of ``envelope`` durably: the commit that counts it, or ``None``
        if the message is not kept.

        Raises:
            JournalError: the journal has closed.
        """
        if envelope.id not in self._kept:
            return None
        self._check_not_closed()
        replayed = self._replayed.get(envelope.id)
        if replayed is not None:
            replayed.runs += 1
        return self._queue(RUN, (str(envelope.id),))

    def settled(self, message_id: MessageId, outcome: Settlement) -> None:
        """Forget ``message_id`` once each of its acceptances is settled (its row is deleted
        at the next commit); an acknowledged exactly-once message is recorded as completed in
        the same commit. An id not kept is ignored."""
        kept = self._kept.get(message_id)
        if kept is None or self._refused_after_close("settlement", message_id):
            return
        key = str(message_id)
        if outcome is Settlement.ACKNOWLEDGED and kept.exactly_once:
            self._queue(COMPLETE, (key, kept.recipient, time.time()))
        kept.open -= 1
        if kept.open <= 0:
            del self._kept[message_id]
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
        self._queue(
            FILE, (str(envelope.id), recipient_name(envelope), reason, detail, filed_wall, data)
        )

    async def flush(self) -> None:
        """Return once everything told so far is committed; at once if nothing is pending.

        Raises:
            JournalError: the commit that held it failed.
        """
        if self._operations:
            self._wake.set()
            await self._queued.wait()
        elif self._writing is not None:
            await self._writing.wait()

    # -- the writer ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the file, read what it holds unsettled, report started, then commit what is
        told, a group at a time, until cancelled. On cancellation it commits what is queued
        (shielded: a commit in the worker thread cannot be interrupted, and waits at most
        ``busy_timeout`` for a lock) and closes the file. A journal runs once.

        A failed commit fails its ``Commit`` with ``JournalError`` (and is logged); its
        settlements and dead letters are tried again with the next commit, and the writer
        keeps running. Anything else that goes wrong in it ends it, failing every commit
        pending, and the journal refuses new messages.

        Raises:
            JournalError: the file cannot be used as a journal (before it reports started);
                nothing in it was changed.
        """
        if self._state != _NEW:
            raise JournalError(f"{self!r} has run already: a journal runs once")
        self._state = _OPENING
        self._limiter = limiter = trio.CapacityLimiter(1)
        try:
            connection, messages, completions = await trio.to_thread.run_sync(
                self._open, limiter=limiter
            )
        except BaseException as error:
            self._close(error)
            raise
        self._connection = connection
        try:
            self._adopt(messages, completions)
            self._state = _OPEN
            task_status.started()
            while True:
                await self._wake.wait()
                # Whatever else runs in this scheduler tick joins the same commit.
                await trio.lowlevel.checkpoint()
                await self._commit()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    # What was queued during the last commit, and what that one left to retry.
                    for _ in range(2):
                        if self._operations and self._state == _OPEN:
                            await self._commit()
                finally:
                    self._close(None)
                    await trio.to_thread.run_sync(connection.close, limiter=limiter)

    def _open(self) -> tuple[sqlite3.Connection, list[StoredMessage], list[tuple[str, str, float]]]:
        connection = open_journal(
            self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout
        )
        try:
            messages, completions = load(connection, self.path, self.dedup_window)
        except BaseException:
            connection.close()
            raise
        return connection, messages, completions

    def _adopt(
        self, messages: list[StoredMessage], completions: list[tuple[str, str, float]]
    ) -> None:
        loaded = Commit()
        loaded.resolve()
        for key, recipient, guarantee, runs, created_wall, data in messages:
            message_id = int(key)
            exactly_once = guarantee == DeliveryGuarantee.EXACTLY_ONCE.value
            # No acceptance open in this run yet: the replay's acceptance will be the one.
            self._kept[message_id] = _Kept(0, recipient, exactly_once, loaded)
            self._replayed[message_id] = _Replayed(data, runs, created_wall)
        self._completions = [
            (recipient, MessageId(int(key)), wall) for recipient, key, wall in completions
        ]

    async def _commit(self) -> None:
        """Write what is queued in one transaction, and resolve its commit."""
        assert self._connection is not None
        assert self._limiter is not None
        operations, commit = self._operations, self._queued
        self._operations, self._queued, self._wake = [], Commit(), trio.Event()
        self._writing = commit
        try:
            # Shielded so that a cancellation cannot take the operations out of the queue
            # without writing them; the thread cannot be interrupted anyway.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    write,
                    self._connection,
                    operations,
                    time.time() - self.dedup_window,
                    limiter=self._limiter,
                )
        except sqlite3.Error as e:
            error = JournalError(f"the journal {self.path!r} could not commit: {e}")
            error.__cause__ = e
            logger.error("%s", error)
            self._operations[:0] = [op for op in operations if op[0] in RETRIED]
            commit.resolve(error)
        except BaseException as e:
            commit.resolve(JournalError(f"the journal {self.path!r} failed: {e!r}"))
            raise
        else:
            self.commits += 1
            commit.resolve()
        finally:
            self._writing = None

    def _queue(self, statement: str, parameters: tuple[Any, ...]) -> Commit:
        self._operations.append((statement, parameters))
        self._wake.set()
        return self._queued

    def _check_not_closed(self) -> None:
        if self._state == _CLOSED:
            raise JournalError(f"the journal {self.path!r} has closed: it keeps nothing more")

    def _refused_after_close(self, what: str, message_id: MessageId) -> bool:
        """Whether the journal has closed, so that ``what`` of ``message_id`` cannot be kept:
        said in the log, and harmless (the message stays unsettled, and is delivered again
        at the next open: at least once allows it)."""
        if self._state != _CLOSED:
            return False
        logger.warning("%s of message %s after %r closed: not journaled", what, message_id, self)
        return True

    def _close(self, error: BaseException | None) -> None:
        """The writer has ended: what is still queued will never be written."""
        self._state = _CLOSED
        if self._operations or not self._queued.done:
            reason = f"the journal {self.path!r} closed before committing it"
            if error is not None:
                reason += f" ({error})"
            self._queued.resolve(JournalError(reason))
        self._operations = []

    # -- what a reopened journal holds -----------------------------------------------------

    def unsettled(self) -> list[Envelope]:
        """The kept messages the file held unsettled when :meth:`run` opened it and not
        settled since, in commit order; each with its original id, sender, recipient, options
        and payload (decoded), ``attempt`` the handler runs it began so far, and ``created_at``
        on the current Trio clock, so that it expires when it would have.

        Raises:
            JournalError: :meth:`run` has not opened the file yet.
            InvalidMessage: a payload's type is not registered (``register_payload``).
        """
        self._check_opened()
        wall, trio_now = time.time(), now()
        return [
            decode(replayed.data).evolve(
                attempt=replayed.runs, created_at=trio_now - (wall - replayed.created_wall)
            )
            for replayed in self._replayed.values()
        ]

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
        """The dead letters of kept messages committed to the file, oldest first, each with
        its payload decoded, its reason and detail, and ``at`` on the current clock (Trio's
        inside a run). It reads the file through a connection of its own, so it works whether
        or not :meth:`run` is running (after a crash: on a journal made just to read it), and
        sees only what is committed. It blocks on the disk: a Trio task calls it through
        ``trio.to_thread.run_sync`` if the file is large.

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
