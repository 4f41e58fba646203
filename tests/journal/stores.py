"""Helpers for the journal's tests: journaled messages, a running journal, a look at its file."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from terraphim_actors import DeliveryGuarantee, Envelope, MessageOptions, cast
from terraphim_actors.journal import SqliteJournal

AT_LEAST_ONCE = MessageOptions(guarantee=DeliveryGuarantee.AT_LEAST_ONCE)
EXACTLY_ONCE = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)


def journaled_cast(
    payload: Any, recipient: str = "worker", options: MessageOptions = AT_LEAST_ONCE
) -> Envelope:
    """A cast that is journaled: at least once (unless told), addressed by name."""
    return cast(None, payload, options, recipient=recipient)


@contextlib.asynccontextmanager
async def running(journal: SqliteJournal) -> AsyncIterator[SqliteJournal]:
    """``journal`` with its writer running, stopped (as a system stops it) on leaving."""
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        yield journal
        nursery.cancel_scope.cancel()


async def reopened(
    path: Path, **options: Any
) -> tuple[list[Envelope], list[tuple[str, Any, float]]]:
    """What a journal opened again on ``path`` holds: its unsettled messages and completions."""
    async with running(SqliteJournal(path, **options)) as journal:
        return journal.unsettled(), journal.completed()


def rows(path: Path, table: str) -> int:
    """The rows in ``table`` of the file, read through a connection of the test's own."""
    connection = sqlite3.connect(path)
    try:
        count: int = connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        connection.close()
    return count
