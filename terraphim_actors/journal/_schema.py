"""The journal's file: its tables, and opening a file as a journal or refusing it.

A file is taken as a journal only if it is one already (our version in ``PRAGMA user_version``,
our tables) or is empty (a new file): anything else is refused with ``JournalError`` before
anything is written to it, so that a wrong path never damages someone else's database and a
newer program's journal is never rewritten by an older one.

Every function here runs in the journal's worker thread (they block on the disk).
"""

from __future__ import annotations

import os
import sqlite3
import time

from ..errors import JournalError

__all__ = ["SCHEMA_VERSION", "StoredMessage", "inspect", "load", "open_journal"]

#: The schema this code writes and reads; a file with a higher one was written by newer code.
SCHEMA_VERSION = 1

#: Message ids are 128-bit ints, past SQLite's 64-bit integers: they are stored as decimal text.
#: ``seq`` (the rowid) is commit order; ``envelope`` is the codec's bytes for the whole message;
#: ``runs`` counts handler runs begun; ``created_wall`` is the wall-clock creation time, which
#: survives a restart where a Trio time does not.
_CREATE = (
    """CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        recipient TEXT NOT NULL,
        sender TEXT,
        kind TEXT NOT NULL,
        guarantee TEXT NOT NULL,
        created_wall REAL NOT NULL,
        runs INTEGER NOT NULL DEFAULT 0,
        envelope BLOB NOT NULL
    )""",
    """CREATE TABLE completions (
        id TEXT PRIMARY KEY,
        recipient TEXT NOT NULL,
        completed_wall REAL NOT NULL
    )""",
    "CREATE INDEX completions_by_age ON completions (completed_wall)",
    """CREATE TABLE dead_letters (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        recipient TEXT,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        filed_wall REAL NOT NULL,
        envelope BLOB NOT NULL
    )""",
)
_TABLES = frozenset({"messages", "completions", "dead_letters"})

#: One unsettled message as the file holds it: id, recipient name, guarantee, handler runs,
#: wall-clock creation time, the codec's bytes.
StoredMessage = tuple[str, str, str, int, float, bytes]


def open_journal(path: str, *, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the journal at ``path`` (made if the file is new or empty), in WAL mode,
    for use from one thread at a time.

    Raises:
        JournalError: the file cannot be opened or written, is not a SQLite database, holds
            tables of some other program, or has a newer schema; nothing was written to it.
    """
    if os.path.isdir(path):
        raise JournalError(f"the journal {path!r} is a directory, not a file")
    try:
        connection = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as e:
        raise JournalError(f"cannot open the journal {path!r}: {e}") from e
    try:
        version = inspect(connection, path)
        _take(connection, path, version, synchronous)
    except BaseException:
        connection.close()
        raise
    return connection


def inspect(connection: sqlite3.Connection, path: str) -> int:
    """The schema version of the file behind ``connection``, reading only (0: a new file).

    Raises:
        JournalError: the file is not a SQLite database, is another program's, or is newer.
    """
    try:
        version: int = connection.execute("PRAGMA user_version").fetchone()[0]
        tables = {
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    except sqlite3.Error as e:
        raise JournalError(
            f"{path!r} is not a journal (not a SQLite database, or corrupt): {e}"
        ) from e
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the journal {path!r} has schema version {version}, newer than this version reads"
            f" ({SCHEMA_VERSION}): open it with the newer version that wrote it"
        )
    if version == 0 and tables:
        raise JournalError(
            f"{path!r} is a SQLite database of some other program (tables {sorted(tables)}),"
            " not a journal"
        )
    if version == SCHEMA_VERSION and not _TABLES.issubset(tables):
        raise JournalError(
            f"the journal {path!r} lacks its tables {sorted(_TABLES - tables)}: it is damaged"
        )
    return version


def _take(connection: sqlite3.Connection, path: str, version: int, synchronous: str) -> None:
    """Put the file in WAL mode and make its tables if it is new; otherwise prove that it can be
    written by a write rolled back, so that a read-only file fails here and not at the first
    send."""
    try:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(f"the journal {path!r} cannot be put in WAL mode (it is {mode!r})")
        connection.execute(f"PRAGMA synchronous = {synchronous}")
        connection.execute("BEGIN IMMEDIATE")
        try:
            if version == 0:
                for statement in _CREATE:
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT" if version == 0 else "ROLLBACK")
        except BaseException:
            connection.rollback()
            raise
    except sqlite3.Error as e:
        raise JournalError(f"the journal {path!r} cannot be written: {e}") from e


def load(
    connection: sqlite3.Connection, path: str, dedup_window: float
) -> tuple[list[StoredMessage], list[tuple[str, str, float]]]:
    """The unsettled messages in commit order, and the exactly-once completions younger than
    ``dedup_window`` seconds (recipient, id, wall-clock completion time), oldest first.

    Raises:
        JournalError: the file is damaged.
    """
    try:
        messages: list[StoredMessage] = connection.execute(
            "SELECT id, recipient, guarantee, runs, created_wall, envelope FROM messages"
            " ORDER BY seq"
        ).fetchall()
        completions: list[tuple[str, str, float]] = connection.execute(
            "SELECT recipient, id, completed_wall FROM completions WHERE completed_wall >= ?"
            " ORDER BY completed_wall",
            (time.time() - dedup_window,),
        ).fetchall()
    except sqlite3.Error as e:
        raise JournalError(f"the journal {path!r} cannot be read (it is damaged): {e}") from e
    return messages, completions
