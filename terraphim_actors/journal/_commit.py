"""Group commit: the operations told to the journal between two commits, written in one
transaction, and the ``Commit`` their senders wait on.

One transaction per message would cost a sync of the disk each (hundreds of microseconds, see
NOTES.md); sharing it among every message queued meanwhile makes the cost per message small
when many are sent at once, and no larger when one is.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from operator import itemgetter
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
    "INSERT OR IGNORE INTO messages"
    " (id, recipient, sender, kind, guarantee, created_wall, envelope) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
RUN = "UPDATE messages SET runs = runs + 1 WHERE id = ?"
DELETE = "DELETE FROM messages WHERE id = ?"
COMPLETE = "INSERT OR REPLACE INTO completions (id, recipient, completed_wall) VALUES (?, ?, ?)"
FILE = (
    "INSERT INTO dead_letters (id, recipient, reason, detail, filed_wall, envelope)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_FORGET = "DELETE FROM completions WHERE completed_wall < ?"

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
    connection: sqlite3.Connection, operations: Sequence[Operation], forget_before: float
) -> None:
    """Apply ``operations`` in order in one transaction, and forget the completions older than
    the wall-clock time ``forget_before``: all of it, or (raising) nothing.

    Runs of the same statement go to SQLite as one ``executemany``: settled rows are deleted
    in batches.

    Raises:
        sqlite3.Error: the transaction failed and was rolled back.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement, group in itertools.groupby(operations, key=itemgetter(0)):
            connection.executemany(statement, [parameters for _, parameters in group])
        connection.execute(_FORGET, (forget_before,))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
