"""Across SIGKILL, a journaled message whose ``await ref.cast`` returned is never lost.

``crash_producer.py`` runs in a process of its own on one journal file: it spawns three named
agents (``alo``: at least once; ``eo``: exactly once; ``batch``: at least once, sent with
``cast_nowait`` and made durable by ``system.flush()``), waits for the journal's replay to be
over, then casts numbered messages to each and logs each number once its cast (or the flush
after it) has returned. The test kills it with SIGKILL at seeded random points (while the
journal replays, just after, or after a random count of casts), starts it again on the same
file, and so on; a last run only replays and exits cleanly. Each handler run is recorded by
the handler itself in a SQLite file of its own, so "handled" is what happened, not what the
framework believes.

Then, for every number whose cast or flush had returned: it was handled or is a journaled dead
letter (``SqliteJournal.dead_letters()``). No message ran more often than ``max_retries + 1``.
Under exactly once a handler runs again only in the window the README states: after a kill
that came between the end of its run and the commit of its settlement, which holds every
message that ended after the last commit before the kill, so the messages run again are the
last runs of the killed process (a suffix of its runs), never two runs in one process. How
often that happened is printed and kept in the assertion messages.

Each run of the producer is a process forked from a zygote (``crash_zygote.py``) that has
imported it once, so that the test does not pay Python's start and imports 51 times; each is
still a process of its own on the journal file, killed with SIGKILL when the test says so.

``TERRAPHIM_CRASH_KILLS`` (default 50) sets the number of kills, ``TERRAPHIM_CRASH_SEED``
the seed of the kill points. Every wait for a child process or the zygote is bounded by a
timeout; each child is killed in a ``finally``, and so is the zygote's process group, which
holds the zygote and every child it forked.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from terraphim_actors.journal import SqliteJournal

ZYGOTE = Path(__file__).with_name("crash_zygote.py")
KILLS = int(os.environ.get("TERRAPHIM_CRASH_KILLS", "50"))
SEED = int(os.environ.get("TERRAPHIM_CRASH_SEED", "16"))
#: Wall-clock seconds a child may take to reach the point where it is killed, or to finish.
CHILD_SECONDS = 30.0
#: Handler runs a message may have in all: the default ``max_retries`` (3) plus the first.
MAX_RUNS = 4
#: The most exactly-once casts a producer makes before it is killed (the other senders go at
#: their own pace meanwhile).
MOST_CASTS = 40


@attrs.frozen
class KillPoint:
    """Where a producer is killed: at a line of its log, ``spawned`` or ``replayed``, or once
    ``casts`` of its exactly-once casts had returned."""

    marker: str | None = None
    casts: int = 0

    def reached(self, lines: Sequence[str]) -> bool:
        if self.marker is not None:
            return self.marker in lines
        return sum(line.startswith("eo ") for line in lines) >= self.casts


def kill_points(rng: random.Random, count: int) -> Iterator[KillPoint]:
    """Mostly mid-production, sometimes during or just after the replay of the last kill."""
    for _ in range(count):
        draw = rng.random()
        if draw < 0.15:
            yield KillPoint(marker="spawned")
        elif draw < 0.25:
            yield KillPoint(marker="replayed")
        else:
            yield KillPoint(casts=rng.randint(1, MOST_CASTS))


def complete_lines(path: Path) -> list[str]:
    """The lines of ``path`` written in full (a kill may cut the last one short)."""
    if not path.exists():
        return []
    text = path.read_text()
    return text.split("\n")[:-1]


class Zygote:
    """The zygote process, ``crash_zygote.py``, and the requests the test makes of it."""

    def __init__(self, directory: Path) -> None:
        self.errors = directory / "stderr-zygote.txt"
        with self.errors.open("w") as errors:
            self.process = subprocess.Popen(
                [sys.executable, str(ZYGOTE)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                bufsize=0,
                start_new_session=True,
            )
        self.unread = b""

    def ask(self, request: dict[str, Any]) -> Any:
        """Send ``request``, return the answer; fail if none comes within
        :data:`CHILD_SECONDS` (the zygote answers at once unless it is stuck)."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
        except BrokenPipeError:
            pytest.fail("the zygote has ended:\n" + self.errors.read_text())
        deadline = time.monotonic() + CHILD_SECONDS
        while b"\n" not in self.unread:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
                pytest.fail(
                    f"the zygote did not answer {request} within {CHILD_SECONDS} s:\n"
                    + self.errors.read_text()
                )
            data = os.read(self.process.stdout.fileno(), 4096)
            if not data:
                pytest.fail("the zygote has ended:\n" + self.errors.read_text())
            self.unread += data
        line, _, self.unread = self.unread.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        """End the zygote and every child it forked, whatever state they are in.

        At the end of its input the zygote kills and reaps the children it has not reaped,
        then exits, which closes its output: nothing else holds that pipe (a child puts
        ``/dev/null`` in its place). Then, in case the zygote was stuck or had died and left
        children behind, its whole process group is sent SIGKILL: the zygote leads a session
        of its own, so the group holds it and all its children, and its id, the zygote's pid,
        stays ours until the wait at the end reaps the zygote."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        try:
            self.process.stdin.close()
            deadline = time.monotonic() + CHILD_SECONDS
            while (left := deadline - time.monotonic()) > 0 and select.select(
                [self.process.stdout], [], [], left
            )[0]:
                if not os.read(self.process.stdout.fileno(), 4096):
                    break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=CHILD_SECONDS)
        finally:
            self.process.stdout.close()


@contextlib.contextmanager
def running_zygote(directory: Path) -> Iterator[Zygote]:
    zygote = Zygote(directory)
    try:
        yield zygote
    finally:
        zygote.close()


class Child:
    """One run of the producer, forked by the zygote, its output in files beside the
    journal."""

    def __init__(self, zygote: Zygote, directory: Path, mode: str, incarnation: int) -> None:
        self.zygote = zygote
        self.log = directory / f"log-{incarnation}.txt"
        self.errors = directory / f"stderr-{incarnation}.txt"
        arguments = [
            mode,
            str(directory / "journal.db"),
            str(directory / "results.db"),
            str(self.log),
            str(incarnation),
        ]
        self.pid: int = zygote.ask({"start": arguments, "stderr": str(self.errors)})["pid"]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status once the child has ended (the zygote reaps it then), else None."""
        if self.returncode is None:
            self.returncode = self.zygote.ask({"poll": self.pid})["code"]
        return self.returncode

    def wait(self) -> int | None:
        """The exit status, once the child has ended within :data:`CHILD_SECONDS`, else
        None."""
        deadline = time.monotonic() + CHILD_SECONDS
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.returncode

    def wait_until(self, reached: Callable[[Sequence[str]], bool]) -> None:
        """Poll the log until ``reached`` is true of it; fail if the child ends or takes
        longer than :data:`CHILD_SECONDS`."""
        deadline = time.monotonic() + CHILD_SECONDS
        while not reached(complete_lines(self.log)):
            if self.poll() is not None:
                pytest.fail(
                    f"the producer ended (exit code {self.returncode}) early:\n"
                    + self.errors.read_text()
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the producer did not get there within {CHILD_SECONDS} s:\n"
                    + self.errors.read_text()
                )
            time.sleep(0.001)

    def kill(self) -> None:
        """SIGKILL, sent by the zygote: it alone knows whether the pid is still the child's
        (it is until the zygote reaps the child)."""
        if self.returncode is None:
            self.zygote.ask({"kill": self.pid})
        if self.wait() is None:
            pytest.fail(f"the producer did not end within {CHILD_SECONDS} s of SIGKILL")

    def finish(self) -> None:
        """Wait for a recovery to exit by itself, cleanly."""
        code = self.wait()
        if code is None:
            pytest.fail(f"the recovery did not exit within {CHILD_SECONDS} s")
        assert code == 0, self.errors.read_text()
        assert complete_lines(self.log)[-1] == "recovered"


@attrs.frozen
class Run:
    """One handler run, as the handler recorded it."""

    seq: int
    agent: str
    number: int
    incarnation: int


@attrs.frozen
class Outcome:
    """What the test saw: the numbers whose casts returned, the runs, the dead letters."""

    sent: dict[int, str]
    runs: list[Run]
    dead: dict[int, str]
    kills: int

    def runs_of(self, agent: str) -> dict[int, list[Run]]:
        by_number: dict[int, list[Run]] = collections.defaultdict(list)
        for run in self.runs:
            if run.agent == agent:
                by_number[run.number].append(run)
        return by_number

    def lost(self) -> set[int]:
        handled = {run.number for run in self.runs}
        return {number for number in self.sent if number not in handled | set(self.dead)}

    def report(self) -> str:
        eo = self.runs_of("eo")
        again = sum(len(runs) - 1 for runs in eo.values())
        per_kill = collections.Counter(run.incarnation for runs in eo.values() for run in runs[:-1])
        alo_again = sum(len(runs) - 1 for runs in self.runs_of("alo").values())
        reasons = collections.Counter(self.dead.values())
        return (
            f"{self.kills} kills; {len(self.sent)} casts returned"
            f" ({sum(agent == 'eo' for agent in self.sent.values())} exactly once);"
            f" {len(self.runs)} handler runs; exactly once: {again} handler runs again"
            f" ({len(per_kill)} kills of {self.kills} left any, at most"
            f" {max(per_kill.values(), default=0)} after one kill); at least once:"
            f" {alo_again} runs again; journaled dead letters: {dict(reasons) or 'none'}"
        )


def crash_and_restart(directory: Path, kills: int, seed: int) -> Outcome:
    """Kill the producer ``kills`` times at seeded points, then recover; return what
    happened."""
    rng = random.Random(seed)
    with running_zygote(directory) as zygote:
        for incarnation, point in enumerate(kill_points(rng, kills), start=1):
            child = Child(zygote, directory, "produce", incarnation)
            try:
                child.wait_until(point.reached)
            finally:
                child.kill()
        child = Child(zygote, directory, "recover", kills + 1)
        try:
            child.finish()
        finally:
            child.kill()
    return Outcome(
        sent=sent_numbers(directory, kills),
        runs=recorded_runs(directory / "results.db"),
        dead=journaled_dead_letters(directory / "journal.db"),
        kills=kills,
    )


def sent_numbers(directory: Path, kills: int) -> dict[int, str]:
    sent = {}
    for incarnation in range(1, kills + 1):
        for line in complete_lines(directory / f"log-{incarnation}.txt"):
            agent, _, number = line.partition(" ")
            if number:
                sent[int(number)] = agent
    return sent


def recorded_runs(path: Path) -> list[Run]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(
            "SELECT seq, agent, number, incarnation FROM runs ORDER BY seq"
        ).fetchall()
    finally:
        connection.close()
    return [Run(*row) for row in rows]


def journaled_dead_letters(path: Path) -> dict[int, str]:
    return {
        letter.envelope.payload: letter.reason.value
        for letter in SqliteJournal(str(path)).dead_letters()
    }


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """One run of :data:`KILLS` kills, shared by the tests below."""
    found = crash_and_restart(tmp_path_factory.mktemp("crash"), KILLS, SEED)
    print(f"\ncrash test (seed {SEED}): {found.report()}")
    return found


def test_every_message_whose_cast_or_flush_returned_is_handled_or_a_dead_letter(
    outcome: Outcome,
) -> None:
    """None of the messages whose ``await ref.cast``, or the ``await system.flush()`` after
    their ``cast_nowait``, returned is lost across the kills."""
    assert outcome.kills >= 1
    assert set(outcome.sent.values()) == {"alo", "eo", "batch"}, outcome.report()
    assert outcome.lost() == set(), outcome.report()


def test_no_message_runs_more_often_than_its_retries_allow(outcome: Outcome) -> None:
    """Across every kill, a message's handler runs at most ``max_retries + 1`` times."""
    runs = collections.Counter(run.number for run in outcome.runs)
    over = {number: count for number, count in runs.items() if count > MAX_RUNS}
    assert over == {}, outcome.report()


def test_exactly_once_runs_again_only_after_a_kill_at_the_end_of_the_killed_run(
    outcome: Outcome,
) -> None:
    """An exactly-once message runs again only in a later process than its earlier run, and
    only when that run was among the last of the killed process: every exactly-once run that
    ended after it in that process runs again too (or became a dead letter), as their
    settlements were all after the last commit."""
    eo = outcome.runs_of("eo")
    for number, runs in eo.items():
        incarnations = [run.incarnation for run in runs]
        assert incarnations == sorted(set(incarnations)), (number, runs, outcome.report())
    again = {(run.number, run.incarnation) for runs in eo.values() for run in runs[:-1]}
    by_incarnation: dict[int, list[Run]] = collections.defaultdict(list)
    for run in outcome.runs:
        if run.agent == "eo":
            by_incarnation[run.incarnation].append(run)
    for incarnation, runs in by_incarnation.items():
        flags = [(run.number, incarnation) in again for run in runs]
        if True not in flags:
            continue
        first = flags.index(True)
        tail = runs[first:]
        outside = [
            run.number
            for run in tail
            if (run.number, incarnation) not in again and run.number not in outcome.dead
        ]
        assert outside == [], (incarnation, outside, outcome.report())
