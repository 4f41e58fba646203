"""``demo --journal PATH``: the research assistant killed mid-run, and started again on its journal.

The scenario runs in a child process on a ``SqliteJournal`` at ``PATH``, with the application's
own records (questions asked, plans, tasks, answers) in a SQLite file beside it,
``PATH.records``, written through as a database would be. Mid-run the child is killed with
SIGKILL; a second child is started on the same two files: the journal hands its agents every
message the first left unsettled (questions not planned, tasks not answered, answers not
stored), the user asks the questions not asked yet, and it runs until every task is settled
and exits cleanly. Then the parent accounts for every task across the crash from the records
and the journal: answered before the crash or after it, a dead letter in the journal, or
still unsettled in it (delivered at the next open); lost is what is none of those.

Every wait is bounded, and a child still running when the parent leaves is killed.
"""

from __future__ import annotations

import collections
import json
import math
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

import attrs
import trio

from terraphim_actors import register_payload
from terraphim_actors.journal import SqliteJournal

from .._words import plural
from .ledger import Ledger
from .run import run_scenario
from .snapshot import Snapshot
from .world import Answer, DemoSettings, Question, Task

__all__ = ["CrashAccount", "account", "run_durable_demo"]

for _payload in (Question, Task, Answer):
    register_payload(_payload, tag=f"terraphim_actors.demo.{_payload.__name__}")

#: The share of the run after which the first child is killed, if it has not answered a task
#: for every other question by then: questions come over the first 70 %, so it is mid-run.
KILL_AT = 0.4
#: Wall-clock seconds a child may take beyond its run's duration (start, replay, shutdown).
SLACK = 30.0

K = TypeVar("K")
V = TypeVar("V")


def records_path(journal: Path) -> Path:
    """Where the application's records live, beside the journal."""
    return journal.with_name(journal.name + ".records")


def open_records(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    for table in ("asked", "planned", "tasks", "answers"):
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {table}"
            " (key TEXT PRIMARY KEY, value TEXT NOT NULL, run INTEGER NOT NULL)"
        )
    return connection


class StoredMap(MutableMapping[K, V]):
    """A dict whose every change is committed to a table of the records file at once (one
    autocommitted statement), so that what the application noted survives a SIGKILL."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        table: str,
        run: int,
        key: Callable[[str], K],
        dump: Callable[[V], Any],
        load: Callable[[Any], V],
    ) -> None:
        self._connection, self._table, self._run, self._dump = connection, table, run, dump
        self._items: dict[K, V] = {
            key(stored): load(json.loads(value))
            for stored, value in connection.execute(f"SELECT key, value FROM {table}")
        }

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __setitem__(self, key: K, value: V) -> None:
        self._connection.execute(
            f"INSERT OR REPLACE INTO {self._table} (key, value, run) VALUES (?, ?, ?)",
            (str(key), json.dumps(self._dump(value)), self._run),
        )
        self._items[key] = value

    def __delitem__(self, key: K) -> None:
        self._connection.execute(f"DELETE FROM {self._table} WHERE key = ?", (str(key),))
        del self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _task_ids(ids: list[str]) -> tuple[str, ...]:
    return tuple(ids)


def _answer(fields: list[Any]) -> Answer:
    task_id, worker, text, sources, attempt = fields
    return Answer(task_id, worker, text, tuple(sources), attempt)


class StoredLedger(Ledger):
    """The application's records kept in the records file, for run ``run`` (1 or 2)."""

    def __init__(self, connection: sqlite3.Connection, run: int) -> None:
        super().__init__()
        self.asked = StoredMap(
            connection, "asked", run, int, attrs.astuple, lambda fields: Question(*fields)
        )
        self.planned = StoredMap(connection, "planned", run, int, list, _task_ids)
        self.tasks = StoredMap(
            connection, "tasks", run, str, attrs.astuple, lambda fields: Task(*fields)
        )
        self.answers = StoredMap(connection, "answers", run, str, attrs.astuple, _answer)


class _Unseen:
    """A display that shows nothing: the child runs without a view, the parent tells."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def show(self, snapshot: Snapshot) -> None:
        pass


# -- the child -----------------------------------------------------------------------------


def child_main(argv: list[str]) -> int:
    """One run of the scenario on the journal and records: ``RUN JOURNAL SEED WORKERS
    CRASH_RATE QUESTIONS DURATION``."""
    run, journal, seed, workers, crash_rate, questions, duration = argv
    settings = DemoSettings(
        duration=float(duration),
        seed=int(seed),
        workers=int(workers),
        crash_rate=float(crash_rate),
        questions=int(questions),
    )
    path = Path(journal)
    connection = open_records(records_path(path))
    ledger = StoredLedger(connection, int(run))
    if path.exists():  # what ended as a dead letter before is settled for this run's account
        for letter in SqliteJournal(path).dead_letters():
            ledger.note_dead_letter(letter)

    async def scenario() -> None:
        await run_scenario(
            settings, _Unseen(settings.duration), journal=SqliteJournal(path), ledger=ledger
        )

    trio.run(scenario)
    connection.close()
    return 0


# -- the parent ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CrashAccount:
    """Every question and task across the crash, from the records and the journal."""

    asked: int
    planned: int
    tasks: int
    answered_before: int
    #: Answers stored by the second run: to tasks it got from the journal, or planned itself.
    answered_after: int
    #: Tasks not done, by the reason of their dead letter in the journal.
    dead: dict[str, list[str]]
    #: Tasks not done whose task or answer is still unsettled in the journal: delivered at
    #: its next open.
    unsettled: list[str]
    #: Questions asked and not planned, still unsettled in the journal.
    unplanned: list[str]
    lost: list[str]
    replayed: dict[str, int]

    @property
    def accounted_for(self) -> bool:
        return not self.lost


def _label(payload: object) -> tuple[str, str] | None:
    """Which question or task a journaled message is about: (kind, id)."""
    if isinstance(payload, Question):
        return "question", f"q{payload.number}"
    if isinstance(payload, Task):
        return "task", payload.id
    if isinstance(payload, Answer):
        return "answer", payload.task_id
    return None


def unsettled_in(journal: Path) -> list[tuple[str, str]]:
    """The questions, tasks and answers unsettled in the journal at ``journal``, read by
    opening it as a system would (and changing nothing)."""
    found: list[tuple[str, str]] = []

    async def read() -> None:
        store = SqliteJournal(journal)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for envelope in store.unsettled():
                label = _label(envelope.payload)
                if label is not None:
                    found.append(label)
            nursery.cancel_scope.cancel()

    trio.run(read)
    return found


def account(journal: Path, replayed: dict[str, int]) -> CrashAccount:
    """The account of both runs, once the second has exited."""
    connection = open_records(records_path(journal))
    try:
        ledger = StoredLedger(connection, 0)
        runs = dict(connection.execute("SELECT key, run FROM answers").fetchall())
    finally:
        connection.close()
    dead_questions: dict[int, str] = {}
    dead_tasks: dict[str, str] = {}
    for letter in SqliteJournal(journal).dead_letters():
        payload = letter.envelope.payload
        if isinstance(payload, Question):
            dead_questions.setdefault(payload.number, letter.reason.value)
        elif isinstance(payload, Task):
            dead_tasks.setdefault(payload.id, letter.reason.value)
        elif isinstance(payload, Answer):
            dead_tasks.setdefault(payload.task_id, letter.reason.value)
    # A question, a task or its answer still in the journal: the work is not lost, only waiting.
    waiting = {identifier for _, identifier in unsettled_in(journal)}
    dead: dict[str, list[str]] = collections.defaultdict(list)
    unsettled: list[str] = []
    lost: list[str] = []
    for task_id in ledger.tasks:
        if task_id in ledger.answers:
            continue
        if task_id in dead_tasks:
            dead[dead_tasks[task_id]].append(task_id)
        elif task_id in waiting:
            unsettled.append(task_id)
        else:
            lost.append(f"task {task_id}")
    unplanned: list[str] = []
    for number in ledger.asked:
        if number in ledger.planned or number in dead_questions:
            continue
        if f"q{number}" in waiting:
            unplanned.append(f"q{number}")
        else:
            lost.append(f"question {number}")
    return CrashAccount(
        asked=len(ledger.asked),
        planned=len(ledger.planned),
        tasks=len(ledger.tasks),
        answered_before=sum(run == 1 for run in runs.values()),
        answered_after=sum(run == 2 for run in runs.values()),
        dead=dict(dead),
        unsettled=unsettled,
        unplanned=unplanned,
        lost=lost,
        replayed=replayed,
    )


class _Child:
    """A run of the scenario in a process of its own."""

    def __init__(self, run: int, journal: Path, settings: DemoSettings, errors: Path) -> None:
        self.errors = errors
        with errors.open("w") as stream:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    __name__,
                    str(run),
                    str(journal),
                    str(settings.seed),
                    str(settings.workers),
                    repr(settings.crash_rate),
                    str(settings.questions),
                    repr(settings.duration),
                ],
                stdout=subprocess.DEVNULL,
                stderr=stream,
            )
        self.started = time.monotonic()

    def failure(self) -> str:
        return self.errors.read_text().strip()[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=SLACK)


def _answers(journal: Path) -> tuple[int, int]:
    """Tasks planned and answered so far, as the records say."""
    path = records_path(journal)
    if not path.exists():
        return 0, 0
    connection = sqlite3.connect(path)
    try:
        tasks = connection.execute("SELECT count(*) FROM tasks").fetchone()[0]
        answers = connection.execute("SELECT count(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # the child has not made its tables yet
        return 0, 0
    finally:
        connection.close()
    return int(tasks), int(answers)


def _start_afresh(journal: Path) -> str | None:
    """Remove the journal and records of an earlier demo at ``journal``; refuse any other
    file there (the reason), so that the demo never deletes what it did not make."""
    records = records_path(journal)
    if journal.exists() and not records.exists():
        return f"{journal} exists and is not a demo's journal (no {records.name} beside it)"
    for path in (journal, records):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return None


def run_durable_demo(settings: DemoSettings, journal: Path, stream: TextIO | None = None) -> int:
    """Run the demo across a crash; returns the exit code (0: every task accounted for, 1: not,
    2: the path cannot be used)."""
    out = sys.stdout if stream is None else stream
    refused = _start_afresh(journal)
    if refused is not None:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    errors = journal.with_name(journal.name + ".stderr")
    print(
        f"terraphim-actors demo on a journal: {journal} (the application's records beside it,"
        f" {records_path(journal).name})",
        file=out,
        flush=True,
    )
    first = _Child(1, journal, settings, errors)
    try:
        deadline = first.started + settings.duration * KILL_AT
        while time.monotonic() < deadline:
            _, answered = _answers(journal)
            if answered >= math.ceil(settings.questions / 2):
                break
            if first.process.poll() is not None:
                print(f"the first run ended by itself:\n{first.failure()}", file=out)
                return 1
            time.sleep(0.01)
    finally:
        first.stop()
    planned, answered = _answers(journal)
    print(
        f"run 1 killed with SIGKILL after {time.monotonic() - first.started:.1f} s:"
        f" {plural(planned, 'task')} planned, {answered} answered",
        file=out,
        flush=True,
    )
    replayed = collections.Counter(kind for kind, _ in unsettled_in(journal))
    print(
        "the journal holds "
        + (", ".join(plural(count, kind) for kind, count in sorted(replayed.items())) or "nothing")
        + " unsettled: run 2 gets them as it spawns its agents",
        file=out,
        flush=True,
    )
    second = _Child(2, journal, settings, errors)
    try:
        code = second.process.wait(timeout=settings.duration + SLACK)
    except subprocess.TimeoutExpired:
        print(f"run 2 did not end within {settings.duration + SLACK:.0f} s", file=out)
        return 1
    finally:
        second.stop()
    if code != 0:
        print(f"run 2 failed (exit code {code}):\n{second.failure()}", file=out)
        return 1
    errors.unlink(missing_ok=True)
    print(
        f"run 2 started on the same journal, exited cleanly after"
        f" {time.monotonic() - second.started:.1f} s",
        file=out,
    )
    found = account(journal, dict(replayed))
    print("\n" + "\n".join(crash_summary(found)), file=out, flush=True)
    return 0 if found.accounted_for else 1


def crash_summary(found: CrashAccount) -> list[str]:
    """The account across the crash, as printed."""
    not_done = sum(map(len, found.dead.values()))
    lines = [
        "Summary across the crash",
        f"  questions     {found.asked} asked, {found.planned} planned"
        + (f", {', '.join(found.unplanned)} unsettled in the journal" if found.unplanned else ""),
        f"  tasks         {found.tasks} planned: {found.answered_before} answered before the"
        f" crash, {found.answered_after} after it, {not_done} dead letters in the journal,"
        f" {len(found.unsettled)} still unsettled in it",
    ]
    lines += [
        f"                {reason}: {', '.join(task_ids)}"
        for reason, task_ids in sorted(found.dead.items())
    ]
    if found.unsettled:
        lines.append(
            f"                unsettled (delivered at the next open): {', '.join(found.unsettled)}"
        )
    lines.append(
        "  replayed      "
        + (
            ", ".join(plural(count, kind) for kind, count in sorted(found.replayed.items()))
            or "nothing"
        )
        + " from the journal after the crash"
    )
    if found.lost:
        lines.append(f"Lost across the crash: {', '.join(found.lost)}.")
    else:
        lines.append(
            f"Every task is accounted for across the crash: {found.answered_before} answered"
            f" before it, {found.answered_after} after it, {not_done} dead letters,"
            f" {len(found.unsettled)} unsettled in the journal; none lost."
        )
    return lines


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
