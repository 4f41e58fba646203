"""A program for ``test_crash.py``: a message system on a journal, killed at random points.

    python crash_producer.py produce JOURNAL RESULTS LOG INCARNATION
    python crash_producer.py recover JOURNAL RESULTS LOG INCARNATION

Both open a message system on the journal file ``JOURNAL`` and spawn three named agents,
``alo``, ``eo`` and ``batch``; the journal hands each what an earlier run left unsettled. Both
wait until that replay is over (nothing pending in the books). Then ``produce`` casts numbered
messages, at least once to ``alo`` and exactly once to ``eo`` with ``await ref.cast``, and at
least once to ``batch`` with ``cast_nowait`` in batches of :data:`BATCH`, each followed by
``await system.flush()``, from one sender task each, for ever (the test kills it); ``recover``
flushes the journal and exits.

Each handler records the number it handles into ``RESULTS``, a SQLite file of the program's own
(WAL mode, one autocommitted insert per run, before the handler returns), as a user's handler
with a side effect in a database would: a run recorded there happened, whatever the framework
knows. Committed in WAL mode, a row survives SIGKILL (not a power loss, which is not tested).

``LOG`` gets one line per event, each written and flushed at once, so the test can tell how far
the program got when it was killed: ``spawned``, ``replayed``, then ``<agent> <number>`` after
each ``await ref.cast`` returned (the message was committed) or, for ``batch``, after the flush
that followed it returned, and ``recovered`` at the end of a recovery. Numbers are unique across
the whole test: ``INCARNATION * 1_000_000``, plus :data:`OFFSETS` of the agent, plus the count
of casts so far.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any, TextIO

import trio

from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    open_message_system,
)
from terraphim_actors.journal import SqliteJournal

#: The agents and the guarantee of the messages each is sent.
GUARANTEES = {
    "alo": DeliveryGuarantee.AT_LEAST_ONCE,
    "eo": DeliveryGuarantee.EXACTLY_ONCE,
    "batch": DeliveryGuarantee.AT_LEAST_ONCE,
}
#: Added to a message's number by agent, so that a number names one message of the whole test.
OFFSETS = {"alo": 0, "batch": 250_000, "eo": 500_000}
#: Casts ``cast_nowait`` to ``batch`` before each flush.
BATCH = 8
#: Casts a producer makes at most (per agent) if nobody kills it.
MAX_CASTS = 100_000
#: Seconds the program waits at most for the replay to be over.
REPLAY_SECONDS = 30.0


def open_results(path: str) -> sqlite3.Connection:
    """The results file: one row per handler run, in the order the runs recorded them."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS runs (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " agent TEXT NOT NULL, number INTEGER NOT NULL, incarnation INTEGER NOT NULL,"
        " attempt INTEGER NOT NULL)"
    )
    return connection


class Recorder(Agent):
    """Records each number it handles, committed before its handler returns."""

    def __init__(self, name: str, results: sqlite3.Connection, incarnation: int) -> None:
        self.name = name
        self.results = results
        self.incarnation = incarnation

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.results.execute(
            "INSERT INTO runs (agent, number, incarnation, attempt) VALUES (?, ?, ?, ?)",
            (self.name, message, self.incarnation, ctx.envelope.attempt),
        )


def note(log: TextIO, line: str) -> None:
    log.write(line + "\n")
    log.flush()


async def replay_over(system: MessageSystem) -> None:
    """Return once every replayed message is settled here (handled or a dead letter)."""
    with trio.fail_after(REPLAY_SECONDS):
        # The books have no event for "nothing pending": they are looked at each millisecond.
        while system.delivery.get_stats().pending:  # noqa: ASYNC110
            await trio.sleep(0.001)


async def send_numbers(
    system: MessageSystem, ref: AgentRef, name: str, incarnation: int, log: TextIO
) -> None:
    options = MessageOptions(guarantee=GUARANTEES[name], timeout=3_600.0)
    base = incarnation * 1_000_000 + OFFSETS[name]
    if name == "batch":
        for start in range(base, base + MAX_CASTS, BATCH):
            for number in range(start, start + BATCH):
                ref.cast_nowait(number, options=options)
            await system.flush()
            for number in range(start, start + BATCH):
                note(log, f"{name} {number}")
        return
    for number in range(base, base + MAX_CASTS):
        await ref.cast(number, options=options)
        note(log, f"{name} {number}")


async def main(mode: str, journal: str, results: str, log: TextIO, incarnation: int) -> None:
    connection = open_results(results)
    config = MessageSystemConfig(journal=SqliteJournal(journal))
    async with open_message_system(config) as system:
        refs = {
            name: await system.spawn(Recorder, name, connection, incarnation, name=name)
            for name in GUARANTEES
        }
        note(log, "spawned")
        await replay_over(system)
        await system.flush()
        note(log, "replayed")
        if mode == "produce":
            async with trio.open_nursery() as nursery:
                for name, ref in refs.items():
                    nursery.start_soon(send_numbers, system, ref, name, incarnation, log)
        await system.flush()
    note(log, "recovered")


def run(arguments: list[str]) -> None:
    """What ``python crash_producer.py ARGUMENTS`` does (``crash_zygote.py`` calls it in a
    forked child)."""
    mode, journal_path, results_path, log_file, incarnation_text = arguments
    if mode not in {"produce", "recover"}:
        raise SystemExit(f"unknown mode {mode!r}")
    with open(log_file, "a") as log_stream:
        trio.run(main, mode, journal_path, results_path, log_stream, int(incarnation_text))


if __name__ == "__main__":
    run(sys.argv[1:])
