"""What durable delivery costs: casts journaled in SQLite, and their replay at open, beside the
same casts in memory and bare SQLite doing the same writes and reads, in one run.

Throughput: N casts of an int (``await ref.cast``, at least once) to an agent named ``sink``,
from 1 and from 64 concurrent senders, with a ``SqliteJournal`` on a temporary file
(synchronous NORMAL): each send waits for its commit; timed until the agent has handled every
cast and ``system.flush()`` has committed their settlements. Beside it, the same casts with no
journal (in memory), and the floor: the journal's rows (the codec's bytes of each message, in
a table of the journal's columns) inserted in transactions of one row per sender, each
transaction also deleting the rows of the one before, on a file in WAL mode with synchronous
NORMAL, from plain Python: no framework, no thread, no event loop. Per-message costs are
printed, and the durable cost's ratio to the floor's (target: at most 1.5x), with the casts
per commit the journal made (its commits hold the senders' rows, the settlements, and the run
count that the agent loop commits before each handler run).

Replay: M messages left unsettled in a journal (a clean shutdown while its agent was busy with
the first), then a system opened on the file: the time until every one is in the mailbox of
the agent spawned for them, and until each is handled; beside a bare read of the same rows
with ``sqlite3`` and a decode of each with the codec (target: replay within 2x).

    uv run python benchmarks/durable_delivery.py [--quick] [--runs R] [--messages N] [--replay M]
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from _harness import Options, Report, run_trio, settle
from _workloads import Counter, Tally

from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystemConfig,
    cast,
    open_message_system,
)
from terraphim_actors._core.codec import decode, encode
from terraphim_actors.journal import SqliteJournal

#: The concurrent senders of each throughput measurement.
SENDERS = (1, 64)
NAME = "sink"
#: Seconds a measurement may take per message before it is reported as stuck (generous: a
#: journaled cast costs about a hundred microseconds on a shared machine).
STUCK_PER_MESSAGE = 0.01
AT_LEAST_ONCE = MessageOptions(guarantee=DeliveryGuarantee.AT_LEAST_ONCE)


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=3, quick_runs=1)
    choice.size("--messages", full=20_000, quick=2_000, help="casts per throughput run")
    choice.size("--replay", full=100_000, quick=5_000, help="unsettled messages replayed")
    return choice


# -- throughput ------------------------------------------------------------------------------


async def _send_share(ref: AgentRef, numbers: range) -> None:
    for number in numbers:
        await ref.cast(number, options=AT_LEAST_ONCE)


async def casts(messages: int, senders: int, journal: Path | None) -> tuple[float, int]:
    """Seconds until ``messages`` casts from ``senders`` tasks, each awaited, are handled (and,
    with a journal at ``journal``, their settlements committed); and the journal's commits."""
    tally = Tally(messages)
    durable = None if journal is None else SqliteJournal(journal)
    config = MessageSystemConfig() if durable is None else MessageSystemConfig(journal=durable)
    async with open_message_system(config) as system:
        ref = await system.spawn(Counter, tally, name=NAME)
        await settle()
        commits = 0 if durable is None else durable.commits
        started = time.perf_counter()
        with trio.fail_after(10 + messages * STUCK_PER_MESSAGE):
            async with trio.open_nursery() as nursery:
                for sender in range(senders):
                    nursery.start_soon(_send_share, ref, range(sender, messages, senders))
            await tally.done.wait()
            await system.flush()
        elapsed = time.perf_counter() - started
        commits = 0 if durable is None else durable.commits - commits
    return elapsed, commits


#: The journal's columns, for the floor's table: the same rows, the same indexes.
FLOOR_TABLE = """CREATE TABLE messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    recipient TEXT NOT NULL,
    sender TEXT,
    kind TEXT NOT NULL,
    guarantee TEXT NOT NULL,
    created_wall REAL NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    envelope BLOB NOT NULL
)"""
FLOOR_INSERT = (
    "INSERT INTO messages (id, recipient, sender, kind, guarantee, created_wall, envelope)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def floor_rows(messages: int) -> list[tuple[Any, ...]]:
    """The rows the journal writes for ``messages`` casts to :data:`NAME`, made in advance."""
    rows = []
    for number in range(messages):
        envelope = cast(None, number, AT_LEAST_ONCE, recipient=NAME)
        rows.append(
            (
                str(envelope.id),
                NAME,
                None,
                "cast",
                "at-least-once",
                time.time(),
                encode(envelope),
            )
        )
    return rows


def floor_writes(path: Path, rows: Sequence[tuple[Any, ...]], batch: int) -> float:
    """Seconds to insert ``rows`` in transactions of ``batch`` rows, each transaction deleting
    the rows the one before inserted (the last ones deleted in one more): bare ``sqlite3``."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute(FLOOR_TABLE)
        batches = [rows[start : start + batch] for start in range(0, len(rows), batch)]
        previous: list[tuple[str]] = []
        started = time.perf_counter()
        for rows_now in batches:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(FLOOR_INSERT, rows_now)
            connection.executemany("DELETE FROM messages WHERE id = ?", previous)
            connection.execute("COMMIT")
            previous = [(row[0],) for row in rows_now]
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany("DELETE FROM messages WHERE id = ?", previous)
        connection.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        connection.close()


# -- replay ----------------------------------------------------------------------------------


class Busy(Agent):
    """Takes its first message and never finishes it: what it is sent stays in its mailbox."""

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        await trio.sleep_forever()


async def leave_unsettled(path: Path, messages: int) -> None:
    """Make ``path`` a journal with about ``messages`` casts to :data:`NAME` unsettled: sent,
    committed, and left in a busy agent's mailbox at a clean shutdown."""
    config = MessageSystemConfig(
        journal=SqliteJournal(path), shutdown_timeout=0.05, dead_letter_capacity=1
    )
    async with open_message_system(config) as system:
        ref = await system.spawn(Busy, name=NAME)
        for number in range(messages):
            ref.cast_nowait(number, options=AT_LEAST_ONCE)
        await system.flush()


async def replay(path: Path, messages: int) -> tuple[float, float]:
    """Seconds from opening a system on the journal at ``path`` until its ``messages``
    unsettled messages are in the mailbox of the agent spawned for them, and until handled
    (their settlements committed)."""
    tally = Tally(messages)
    started = time.perf_counter()
    async with open_message_system(MessageSystemConfig(journal=SqliteJournal(path))) as system:
        await system.spawn(Counter, tally, name=NAME)
        delivered = time.perf_counter() - started
        with trio.fail_after(10 + messages * STUCK_PER_MESSAGE):
            await tally.done.wait()
            await system.flush()
        handled = time.perf_counter() - started
    return delivered, handled


def unsettled_count(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        count: int = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        connection.close()
    return count


def bare_read(path: Path) -> float:
    """Seconds to read the unsettled rows at ``path`` in commit order and decode each."""
    started = time.perf_counter()
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(
            "SELECT id, recipient, guarantee, runs, created_wall, envelope FROM messages"
            " ORDER BY seq"
        ).fetchall()
    finally:
        connection.close()
    for row in rows:
        decode(row[5])
    return time.perf_counter() - started


# -- the report ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    count, replayed = arguments.messages, arguments.replay
    report = Report(
        "durable_delivery",
        arguments,
        {"messages": count, "senders": list(SENDERS), "replay": replayed, "synchronous": "NORMAL"},
    )
    rows = floor_rows(count)
    costs: dict[str, list[float]] = {}
    per_commit: dict[int, list[float]] = {}
    replays: dict[str, list[float]] = {}
    for run in range(arguments.runs):  # each run measures every side, so that drift hits all
        with tempfile.TemporaryDirectory(prefix="durable-") as directory:
            folder = Path(directory)
            for senders in SENDERS:
                file = folder / f"journal-{run}-{senders}.db"
                seconds, commits = run_trio(casts, count, senders, file)
                costs.setdefault(f"durable_{senders}", []).append(seconds / count * 1e6)
                per_commit.setdefault(senders, []).append(count / max(commits, 1))
                seconds, _ = run_trio(casts, count, senders, None)
                costs.setdefault(f"memory_{senders}", []).append(seconds / count * 1e6)
                seconds = floor_writes(folder / f"floor-{run}-{senders}.db", rows, senders)
                costs.setdefault(f"floor_{senders}", []).append(seconds / count * 1e6)
            journal = folder / f"replay-{run}.db"
            run_trio(leave_unsettled, journal, replayed)
            unsettled = unsettled_count(journal)
            replays.setdefault("bare", []).append(bare_read(journal))
            delivered, handled = run_trio(replay, journal, unsettled)
            replays.setdefault("delivered", []).append(delivered)
            replays.setdefault("handled", []).append(handled)
    for senders in SENDERS:
        many = f"{senders} sender{'s' * (senders != 1)}"
        floor = report.measure(
            f"floor_{senders}", f"bare SQLite, {many}", "µs/msg", costs[f"floor_{senders}"]
        )
        memory = report.measure(
            f"memory_{senders}", f"in memory, {many}", "µs/msg", costs[f"memory_{senders}"]
        )
        durable = report.measure(
            f"durable_{senders}", f"journaled, {many}", "µs/msg", costs[f"durable_{senders}"]
        )
        report.measure(
            f"durable_{senders}_per_commit",
            f"casts per commit, {many}",
            "msgs",
            per_commit[senders],
        )
        report.ratio(f"durable_{senders}_cost_ratio_to_floor", durable.median / floor.median)
        report.ratio(f"durable_{senders}_cost_ratio_to_memory", durable.median / memory.median)
    bare = report.measure("replay_bare", "bare read and decode", "s", replays["bare"])
    delivered = report.measure(
        "replay_delivered", "replayed into the mailbox", "s", replays["delivered"]
    )
    handled = report.measure("replay_handled", "replayed and handled", "s", replays["handled"])
    report.ratio("replay_time_ratio_to_bare_read", delivered.median / bare.median)
    report.ratio("replay_handled_time_ratio_to_bare_read", handled.median / bare.median)
    report.print(
        f"durable delivery, {count:_} casts, {replayed:_} replayed",
        notes=(
            "targets: journaled cast at most 1.5x the floor's cost per message;"
            " replay into the mailbox within 2x the bare read and decode",
        ),
    )


if __name__ == "__main__":
    main()
