"""``terraphim-actors demo --journal PATH``: the research assistant runs in a child process on a
journal, is killed with SIGKILL mid-run, runs again on the same journal, and the summary
accounts for every task across the crash. Real processes and real time (a few seconds): each
child is bounded by a timeout and killed if the demo leaves early."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from terraphim_actors.cli import main
from terraphim_actors.cli.demo.durable import (
    StoredLedger,
    account,
    crash_summary,
    open_records,
    records_path,
    unsettled_in,
)
from terraphim_actors.cli.demo.world import Answer, Question, Task


def test_a_run_killed_mid_way_and_started_again_accounts_for_every_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every task planned is answered before the crash, after it, a dead letter in the
    journal, or unsettled in it; none is lost, and the demo exits 0."""
    journal = tmp_path / "demo.db"
    code = main(
        ["demo", "--journal", str(journal), "--questions", "4", "--duration", "3", "--seed", "3"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^run 1 killed with SIGKILL after [\d.]+ s", out, re.M), out
    assert "run 2 started on the same journal, exited cleanly" in out
    tasks = re.search(
        r"^  tasks +(\d+) planned: (\d+) answered before the crash, (\d+) after it,"
        r" (\d+) dead letters in the journal, (\d+) still unsettled in it$",
        out,
        re.M,
    )
    assert tasks is not None, out
    planned, before, after, dead, unsettled = map(int, tasks.groups())
    assert planned == before + after + dead + unsettled > 0
    assert re.search(r"^  questions +4 asked", out, re.M), out
    assert out.rstrip().endswith("none lost."), out


def test_a_file_that_is_not_a_demos_journal_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path holding some other file is refused (exit 2), and the file is unchanged."""
    other = tmp_path / "precious.db"
    other.write_bytes(b"not the demo's")
    assert main(["demo", "--journal", str(other)]) == 2
    assert "is not a demo's journal" in capsys.readouterr().err
    assert other.read_bytes() == b"not the demo's"


def test_a_task_neither_answered_nor_a_dead_letter_nor_in_the_journal_is_lost(
    tmp_path: Path,
) -> None:
    """The account across the crash names what is nowhere: a task planned in the records with
    no answer, no dead letter and nothing unsettled in the journal."""
    journal = tmp_path / "demo.db"
    assert unsettled_in(journal) == []  # an empty journal, made by opening it
    connection = open_records(records_path(journal))
    try:
        ledger = StoredLedger(connection, 1)
        ledger.asked[1] = Question(1, "why?")
        ledger.planned[1] = ("q1.1", "q1.2")
        ledger.tasks["q1.1"] = Task("q1.1", 1, "answer why", False, 100)
        ledger.tasks["q1.2"] = Task("q1.2", 1, "outline why", False, 100)
        ledger.answers["q1.2"] = Answer("q1.2", "llm-0", "because", (), 0)
    finally:
        connection.close()
    found = account(journal, {})
    assert (found.tasks, found.answered_before, found.lost) == (2, 1, ["task q1.1"])
    assert not found.accounted_for
    assert crash_summary(found)[-1] == "Lost across the crash: task q1.1."
