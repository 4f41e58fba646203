"""The ``terraphim-actors`` command, and the demo's scenario behind it."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from terraphim_actors import DeadLetterReason
from terraphim_actors.cli import _demo, main
from terraphim_actors.cli._words import plural
from terraphim_actors.cli.demo import DemoSettings, Report, Snapshot, TaskOutcome, run_scenario
from terraphim_actors.cli.demo import run as _scenario
from terraphim_actors.cli.demo.world import CONTEXT_WINDOW, Task

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Recording:
    """A display that keeps what it is shown."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.snapshots: list[Snapshot] = []

    def show(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)


class Terminal(io.StringIO):
    """Standard output as a terminal would be: ``isatty`` is true."""

    def isatty(self) -> bool:
        return True


def summary_of(out: str) -> str:
    return out[out.index("Summary after") :]


@pytest.mark.usefixtures("virtual_time")
class TestDemoCommand:
    def test_default_run_exits_zero_and_accounts_for_every_task(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`terraphim-actors demo` with its defaults accounts for every task and exits 0; its
        last line counts the tasks answered and those not done, as the tasks line does."""
        assert main(["demo"]) == 0
        summary = summary_of(capsys.readouterr().out)
        assert "(seed 7, 4 LLM workers, crash rate 0.15)" in summary
        tasks = re.search(
            r"^  tasks +(\d+) planned: (\d+) answered .*, (\d+) not done$", summary, re.M
        )
        assert tasks is not None
        planned, answered, not_done = map(int, tasks.groups())
        assert planned == answered + not_done
        assert not_done > 0  # the default run has prompts too long for the model
        assert summary.rstrip().endswith(
            f"Every task is accounted for: {answered} answered, {not_done} not done"
            " (each a dead letter with its reason)."
        )
        assert "Nothing was lost" not in summary

    def test_summary_accounts_for_questions_in_full_in_part_and_not_at_all(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every question asked is counted once: answered in full, in part, or not at all,
        the last two naming which; a question with a task not done is not "in full"."""
        main(["demo"])
        summary = summary_of(capsys.readouterr().out)
        questions = re.search(
            r"^  questions +(\d+) asked: (\d+) answered in full, (\d+) in part(?: \((.*?)\))?,"
            r" (\d+) not at all",
            summary,
            re.M,
        )
        assert questions is not None
        asked, in_full, in_part, which, not_at_all = questions.groups()
        assert int(asked) == int(in_full) + int(in_part) + int(not_at_all) == 16
        assert int(in_part) > 0
        rejected = re.findall(r"^ +q(\d+)\.\d+: rejected \(", summary, re.M)
        assert rejected
        assert {f"q{number}" for number in rejected} <= set(which.split(", "))

    def test_a_run_with_no_task_answered_says_so_and_never_that_nothing_was_lost(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With every model run failing, the summary says no question was answered and every
        task is not done; the run still accounts for all of them and exits 0."""
        assert main(["demo", "--crash-rate", "1", "--questions", "3"]) == 0
        summary = summary_of(capsys.readouterr().out)
        assert re.search(
            r"3 asked: 0 answered in full, 0 in part, 3 not at all \(q1, q2, q3\)", summary
        )
        assert re.search(r"Every task is accounted for: 0 answered, \d+ not done", summary)
        assert "Nothing was lost" not in summary

    def test_counts_are_written_with_the_right_plural(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One of anything is singular, in the status blocks and the summary alike."""
        main(["demo", "--workers", "1", "--questions", "3", "--seed", "1"])
        out = capsys.readouterr().out
        assert "(seed 1, 1 LLM worker, crash rate 0.15)" in out
        one_of_many = re.compile(
            r"(?<![\d.])1 (tasks|workers|restarts|crashes|redeliveries|answers|times|letters)\b"
        )
        assert one_of_many.search(out) is None, one_of_many.search(out)
        singular = re.findall(r"(?<![\d.])1 (restart|crash|time|duplicate answer)\b", out)
        assert set(singular) == {"restart", "crash", "time", "duplicate answer"}

    def test_summary_accounts_for_restarts_retries_and_throughput(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The summary counts crashes, restarts, retries, the delivery balance, throughput."""
        main(["demo"])
        summary = summary_of(capsys.readouterr().out)
        for heading in ("crashes", "restarts", "retries", "search", "circuits", "throughput"):
            assert re.search(rf"^  {heading} +\S", summary, re.MULTILINE), heading
        balance = re.search(
            r"(\d+) sent = (\d+) acknowledged \+ (\d+) duplicates suppressed \+ (\d+) failed"
            r" \+ (\d+) dead-lettered \+ 0 pending",
            summary,
        )
        assert balance is not None
        sent, *settled = map(int, balance.groups())
        assert sent == sum(settled)

    def test_options_change_the_run(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``--seed``, ``--workers``, ``--crash-rate``, ``--questions`` reach the scenario."""
        argv = ["demo", "--seed", "3", "--workers", "2", "--crash-rate", "0.5"]
        assert main([*argv, "--questions", "4"]) == 0
        out = capsys.readouterr().out
        assert "(seed 3, 2 LLM workers, crash rate 0.5)" in out
        assert "  questions     4 asked" in out
        assert "llm-1" in out
        assert "llm-2" not in out

    def test_short_duration_ends_on_time_with_the_rest_dead_lettered(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--duration 1`` stops the run after a second (and its shutdown); the tasks still
        under way are dead letters ("system stopped"), so the run still exits 0."""
        assert main(["demo", "--duration", "1"]) == 0
        summary = summary_of(capsys.readouterr().out)
        elapsed = re.match(r"Summary after ([\d.]+) s", summary)
        assert elapsed is not None
        assert 1.0 <= float(elapsed.group(1)) < 2.0
        assert re.search(r"^ +system stopped: q\d+\.\d", summary, re.MULTILINE)
        assert "Every task is accounted for" in summary

    def test_output_is_plain_text_when_not_a_terminal(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Piped output gets no escape codes: status blocks with the tree, then the summary."""
        main(["demo", "--duration", "5"])
        out = capsys.readouterr().out
        assert ANSI_ESCAPE.search(out) is None
        assert out.startswith("terraphim-actors demo: a research assistant (plain view")
        assert re.search(r"^\[  1\.0s\] questions ", out, re.MULTILINE)
        failures = r"^ +failures +\d+ resumed, \d+ rejected, \d+ crash(es)?, \d+ restarts?$"
        assert re.search(failures, out, re.MULTILINE)
        for agent in ("observer", "search", "aggregator", "planner", "llm-0", "llm-3"):
            assert re.search(rf"^ +[|` ]+-- {agent} +running ", out, re.MULTILINE), agent

    def test_output_is_a_live_view_on_a_terminal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a terminal with rich installed, a live view redraws in place, then the summary."""
        terminal = Terminal()
        monkeypatch.setattr(sys, "stdout", terminal)
        assert main(["demo", "--duration", "2"]) == 0
        out = terminal.getvalue()
        assert ANSI_ESCAPE.search(out) is not None
        assert "plain view" not in out
        assert "recent events" in out
        assert "Every task is accounted for" in ANSI_ESCAPE.sub("", out)

    def test_output_is_plain_text_on_a_terminal_without_rich(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the ``cli`` extra, a terminal gets the plain view."""
        terminal = Terminal()
        monkeypatch.setattr(sys, "stdout", terminal)
        real_find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *args: None if name == "rich" else real_find_spec(name, *args),
        )
        assert main(["demo", "--duration", "2"]) == 0
        out = terminal.getvalue()
        assert ANSI_ESCAPE.search(out) is None
        assert out.startswith("terraphim-actors demo: a research assistant (plain view")

    def test_failures_are_printed_as_they_happen(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A worker resuming, a prompt rejected, a crash and its restart, and a circuit
        opening appear as timed events."""
        main(["demo"])
        out = capsys.readouterr().out
        assert re.search(r"^ +\d+\.\d\ds  llm-\d resumed after ModelError on task q", out, re.M)
        assert re.search(r"^ +\d+\.\d\ds  llm-\d resumed after HandlerTimeout on task q", out, re.M)
        assert re.search(r"^ +\d+\.\d\ds  dead letter \(rejected\): task q\d+\.\d$", out, re.M)
        assert re.search(r"^ +\d+\.\d\ds  aggregator crashed: IndexUnavailable\(", out, re.M)
        assert re.search(r"^ +\d+\.\d\ds  aggregator restarted by its supervisor$", out, re.M)
        assert re.search(r"^ +\d+\.\d\ds  circuit of search: closed -> open$", out, re.M)

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("--duration", "0"),
            ("--duration", "nan"),
            ("--seed", "-1"),
            ("--workers", "0"),
            ("--crash-rate", "1.5"),
            ("--crash-rate", "-0.1"),
            ("--questions", "0"),
        ],
    )
    def test_out_of_range_option_is_a_usage_error(
        self, option: str, value: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A value out of range exits with argparse's usage error, naming the option."""
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", option, value])
        assert exit_info.value.code == 2
        assert option in capsys.readouterr().err

    def test_unknown_command_is_an_error(self) -> None:
        """An unknown command exits with argparse's usage error."""
        with pytest.raises(SystemExit) as exit_info:
            main(["dance"])
        assert exit_info.value.code == 2


def losing(change: Any) -> Any:
    """``run_scenario`` as it is, with its report changed by ``change``."""

    async def run(settings: DemoSettings, display: Any) -> Report:
        return change(await run_scenario(settings, display))

    return run


@pytest.mark.usefixtures("virtual_time")
class TestExitCode:
    def test_a_task_neither_answered_nor_dead_lettered_fails_the_run(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A task with no answer and no dead letter is named as lost, and the exit code is 1."""
        lost = TaskOutcome(Task("q99.1", 99, "a prompt", False, 100), None, None)
        monkeypatch.setattr(
            _demo, "run_scenario", losing(lambda r: attrs.evolve(r, tasks=(*r.tasks, lost)))
        )
        assert main(["demo", "--duration", "1"]) == 1
        out = capsys.readouterr().out
        assert "LOST: task q99.1" in out
        assert "accounted for" not in out

    def test_unbalanced_delivery_statistics_fail_the_run(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A message still pending at the end means the account does not close: exit code 1."""

        def pending(report: Report) -> Report:
            delivery = attrs.evolve(report.delivery, sent=report.delivery.sent + 1, pending=1)
            return attrs.evolve(report, delivery=delivery)

        monkeypatch.setattr(_demo, "run_scenario", losing(pending))
        assert main(["demo", "--duration", "1"]) == 1
        assert "do not balance" in capsys.readouterr().out


class TestScenario:
    async def test_every_task_is_answered_or_a_dead_letter_with_a_reason(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Each task ends in exactly one way: an answer, or a dead letter that says why."""
        report = await run_scenario(DemoSettings(seed=11), Recording())
        assert report.tasks
        for outcome in report.tasks:
            assert (outcome.answer is None) != (outcome.dead_letter is None)
        assert report.lost == []
        assert report.accounted_for

    async def test_delivery_statistics_balance_with_nothing_pending(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After the shutdown every message the delivery layer took has settled."""
        delivery = (await run_scenario(DemoSettings(), Recording())).delivery
        assert delivery.pending == 0
        assert delivery.sent == (
            delivery.acknowledged
            + delivery.duplicates_suppressed
            + delivery.failed
            + delivery.dead_lettered
        )

    async def test_prompts_too_long_for_the_model_are_rejected_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """No retry helps an oversized prompt: one run, then a ``REJECTED`` dead letter naming
        why, and the worker goes on."""
        report = await run_scenario(DemoSettings(), Recording())
        oversized = [o for o in report.tasks if o.task.prompt_tokens > CONTEXT_WINDOW]
        assert oversized
        for outcome in oversized:
            assert outcome.dead_letter is not None
            assert outcome.dead_letter.reason is DeadLetterReason.REJECTED
            assert "ContextWindowExceeded" in outcome.dead_letter.detail
        assert report.resumed["ContextWindowExceeded"] == len(oversized)  # never run twice
        assert "ContextWindowExceeded" not in report.crashes

    async def test_workers_resume_after_model_errors_and_hangs_without_a_restart(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Malformed output and hangs cut short by the handler time limit are expected: the
        workers resume (no crash, no restart) and the retried tasks are answered."""
        report = await run_scenario(DemoSettings(crash_rate=0.4), Recording())
        assert report.resumed["ModelError"] > 0
        assert report.resumed["HandlerTimeout"] > 0
        assert not {"ModelError", "HandlerTimeout"} & set(report.crashes)
        llm = report.final.tree.children[3]
        assert [member.restarts for member in llm.children] == [0, 0, 0, 0]
        assert any(o.answer is not None and o.answer.attempt > 0 for o in report.tasks)
        assert report.accounted_for

    async def test_search_outage_opens_its_circuit_and_workers_answer_without_it(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """While the search tool is down its circuit opens; workers skip it and still answer."""
        report = await run_scenario(DemoSettings(), Recording())
        assert report.circuit_openings.get("search", 0) >= 1
        assert report.search.failed > 0
        assert report.search.skipped > 0
        assert any(
            o.task.needs_search and o.answer is not None and not o.answer.sources
            for o in report.tasks
        )

    async def test_search_tool_reports_its_outages_without_crashing(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The search tool answers a query during an outage with the failure: its caller and
        its breaker hear of it, and the tool neither crashes nor restarts."""
        report = await run_scenario(DemoSettings(), Recording())
        assert report.search.failed > 0
        assert report.circuit_openings.get("search", 0) >= 1
        assert "SearchUnavailable" not in report.crashes
        [tools] = [node for node in report.final.tree.children if node.name == "tools"]
        assert [(search.name, search.restarts) for search in tools.children] == [("search", 0)]

    async def test_aggregator_ignores_answers_delivered_twice(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """At least once means a repeat after the aggregator crashed; it is stored once."""
        report = await run_scenario(DemoSettings(crash_rate=0.4), Recording())
        assert report.crashes.get("IndexUnavailable", 0) > 0
        assert report.duplicates_ignored > 0

    async def test_when_every_model_run_fails_every_task_is_a_dead_letter(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With a crash rate of 1 nothing is answered, and nothing is lost either."""
        report = await run_scenario(DemoSettings(crash_rate=1.0), Recording())
        assert all(outcome.answer is None for outcome in report.tasks)
        outcomes = report.question_outcomes
        assert (outcomes.in_full, outcomes.in_part) == ((), ())
        assert len(outcomes.not_at_all) == len(report.questions)
        assert report.accounted_for

    async def test_display_sees_the_supervision_tree_at_each_interval(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The display gets a snapshot every interval, and a last one at the end."""
        display = Recording(interval=2.0)
        report = await run_scenario(DemoSettings(workers=2), display)
        times = [snapshot.elapsed for snapshot in display.snapshots]
        assert times[:3] == pytest.approx([2.0, 4.0, 6.0])
        assert display.snapshots[-1] == report.final
        tree = report.final.tree
        assert [child.name for child in tree.children] == ["observer", "tools", "research", "llm"]
        llm = tree.children[3]
        assert (llm.kind, [member.name for member in llm.children]) == ("pool", ["llm-0", "llm-1"])

    async def test_run_ends_once_everything_has_settled(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With time to spare, the run ends when the last task settles, not at its duration."""
        report = await run_scenario(DemoSettings(duration=60.0, questions=4), Recording())
        assert report.elapsed < 45.0
        assert report.accounted_for

    async def test_a_supervisor_that_gives_up_ends_the_run_with_everything_accounted_for(
        self, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A research supervisor that allows no restart gives up at the aggregator's first
        index failure; the root restarts it until it gives up in turn, and the run ends early,
        losing nothing."""
        monkeypatch.setitem(_scenario.RESTART_BUDGETS, "research", (0, 10.0))
        report = await run_scenario(DemoSettings(crash_rate=0.4), Recording())
        assert report.escalation is not None
        assert report.escalation.startswith("root: more than 3 restarts")
        assert "research: more than 0 restarts" in report.escalation
        assert report.elapsed < 10.0
        assert report.accounted_for


class TestPlural:
    @pytest.mark.parametrize(
        ("count", "words"), [(0, "0 tasks"), (1, "1 task"), (2, "2 tasks"), (12, "12 tasks")]
    )
    def test_one_is_singular_and_every_other_count_plural(self, count: int, words: str) -> None:
        """1 task, but 0 tasks and 2 tasks."""
        assert plural(count, "task") == words

    def test_an_irregular_plural_is_given(self) -> None:
        """A plural that is not the noun and an "s" is given, not guessed."""
        assert plural(1, "redelivery", "redeliveries") == "1 redelivery"
        assert plural(3, "redelivery", "redeliveries") == "3 redeliveries"

    @given(count=st.integers(min_value=0, max_value=10**6))
    def test_the_count_comes_first_and_the_noun_is_singular_only_for_one(self, count: int) -> None:
        """Whatever the count, the words are the count, a space, and the right noun."""
        assert plural(count, "crash", "crashes") == (
            f"{count} crash" if count == 1 else f"{count} crashes"
        )
