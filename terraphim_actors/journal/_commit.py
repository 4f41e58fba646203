"""Group commit: the operations told to the journal between two commits, written in one
transaction, and the ``Commit`` their senders wait on.

One transaction per message would cost a sync of the disk each (hundreds of microseconds, see
NOTES.md); sharing it among every message queued meanwhile makes the cost per message small
when many are sent at once, and no larger when one is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import trio

from ..errors import JournalError

__all__ = [
    "COMPLETE",
    "DELETE",
    "FILE",
    "INSERT",
    "RETRIED",
    "RUN",
    "Commit",
    "Operation",
    "write",
]

INSERT = (
    "INSERT OR IGNORE INTO messages (id, recipient, sender, kind, guarantee, created_wall,"
    " envelope, runs) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
RUN = "UPDATE messages SET runs = runs + 1 WHERE id = ?"
DELETE = "DELETE FROM messages WHERE id = ?"
COMPLETE = "INSERT OR REPLACE INTO completions (id, recipient, completed_wall) VALUES (?, ?, ?)"
FILE = (
    "INSERT INTO dead_letters (id, recipient, reason, detail, filed_wall, envelope)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_FORGET = "DELETE FROM completions WHERE completed_wall < ?"
_PRUNE = "DELETE FROM dead_letters WHERE seq <= (SELECT max(seq) FROM dead_letters) - ?"

#: The order a commit runs its statements in, each kind as one ``executemany``: a row is
#: inserted before its runs are counted or it is deleted, and a completion is recorded before
#: (in the same transaction as) the row it completes is deleted.
_ORDER = (INSERT, RUN, COMPLETE, DELETE, FILE)

#: What a failed commit leaves to the next one: settlements and dead letters, which nobody
#: waits on and which must not be lost. A failed insert or run count is not retried: its
#: sender was told (its ``Commit`` raised), and a message whose run was not counted is not run.
RETRIED = frozenset({DELETE, COMPLETE, FILE})

#: One statement and its parameters.
Operation = tuple[str, tuple[Any, ...]]


class Commit:
    """One group commit, as its senders wait on it (``_core.protocols.Commit``)."""

    __slots__ = ("_done", "_error")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._error: JournalError | None = None

    @property
    def done(self) -> bool:
        """Whether the commit has ended, well or not."""
        return self._done.is_set()

    @property
    def error(self) -> JournalError | None:
        """Why the commit failed, once it has; ``None`` while it runs or if it committed."""
        return self._error

    async def ended(self) -> None:
        """Return once the commit is done, well or not (:meth:`wait` raises if not)."""
        await self._done.wait()

    def resolve(self, error: JournalError | None = None) -> None:
        """The commit ended: committed (``error`` None) or failed with ``error``."""
        self._error = error
        self._done.set()

    async def wait(self) -> None:
        """Return once the commit is done.

        Raises:
            JournalError: it failed; nothing it held is durable.
        """
        await self._done.wait()
        if self._error is not None:
            # A fresh error per waiter: one instance raised in many tasks would pile up their
            # tracebacks.
            raise JournalError(*self._error.args) from self._error.__cause__


def write(
    connection: sqlite3.Connection,
    operations: Sequence[Operation],
    forget_before: float | None,
    dead_letters_kept: int,
) -> None:
    """Apply ``operations`` in one transaction, forget the completions older than the
    wall-clock time ``forget_before`` (none if it is ``None``), and keep only the
    ``dead_letters_kept`` most recent dead letters: all of it, or (raising) nothing.

    Each kind of statement goes to SQLite as one ``executemany`` (settled rows are deleted in
    batches), in :data:`_ORDER`; the one order that kinds cannot express, a message deleted and
    then inserted again (the same envelope sent again after it was settled), starts a new
    round of batches. A run counted in the round that inserts its message is written in the
    insert's ``runs`` (its last parameter) instead of an update of its own.

    Raises:
        sqlite3.Error: the transaction failed and was rolled back.
        Exception: a value SQLite cannot take (the transaction was rolled back too).
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        for batches in _rounds(operations):
            for statement in _ORDER:
                if statement in batches:
                    connection.executemany(statement, batches[statement])
        if forget_before is not None:
            connection.execute(_FORGET, (forget_before,))
        if any(statement == FILE for statement, _ in operations):
            connection.execute(_PRUNE, (dead_letters_kept,))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _rounds(operations: Sequence[Operation]) -> list[dict[str, list[tuple[Any, ...]]]]:
    """``operations`` as batches by statement, in rounds: a new round begins where a message
    deleted in the current one is inserted again; a run of a message inserted in the same
    round (and not deleted since) is added to the insert's ``runs``.

    The fold relies on an insert never being ignored: the journal inserts only a message it
    does not hold, and deletes it first if it held it (``SqliteJournal.accepted``)."""
    rounds: list[dict[str, list[tuple[Any, ...]]]] = [{}]
    deleted: set[Any] = set()
    #: Where each message inserted in the current round is, in its batch of inserts.
    inserted: dict[Any, int] = {}
    for statement, parameters in operations:
        batches = rounds[-1]
        if statement == RUN:
            at = inserted.get(parameters[0])
            if at is not None:
                inserts = batches[INSERT]
                row = inserts[at]
                inserts[at] = (*row[:-1], row[-1] + 1)
                continue
        elif statement == INSERT:
            if parameters[0] in deleted:
                batches = {}
                rounds.append(batches)
                deleted = set()
                inserted = {}
            inserted[parameters[0]] = len(batches.get(INSERT, ()))
        elif statement == DELETE:
            deleted.add(parameters[0])
            inserted.pop(parameters[0], None)
        batches.setdefault(statement, []).append(parameters)
    return rounds
