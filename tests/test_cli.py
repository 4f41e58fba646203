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

from terraphim_actors import DeadLetterReason
from terraphim_actors.cli import _demo, _scenario, main
from terraphim_actors.cli._scenario import (
    CONTEXT_WINDOW,
    DemoSettings,
    Report,
    Snapshot,
    Task,
    TaskOutcome,
    run_scenario,
)

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
    def test_default_run_exits_zero_and_says_nothing_was_lost(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`terraphim-actors demo` with its defaults accounts for every task and exits 0."""
        assert main(["demo"]) == 0
        summary = summary_of(capsys.readouterr().out)
        assert "(seed 7, 4 LLM workers, crash rate 0.15)" in summary
        assert summary.rstrip().endswith(
            "Nothing was lost: every task was answered or is a dead letter with its reason."
        )

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
        assert "Nothing was lost" in summary

    def test_output_is_plain_text_when_not_a_terminal(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Piped output gets no escape codes: status blocks with the tree, then the summary."""
        main(["demo", "--duration", "5"])
        out = capsys.readouterr().out
        assert ANSI_ESCAPE.search(out) is None
        assert out.startswith("terraphim-actors demo: a research assistant (plain view")
        assert re.search(r"^\[  1\.0s\] questions ", out, re.MULTILINE)
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
        assert "Nothing was lost" in ANSI_ESCAPE.sub("", out)

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

    def test_crash_events_are_printed_as_they_happen(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A crash and the restart that follows appear as timed events."""
        main(["demo"])
        out = capsys.readouterr().out
        assert re.search(r"^ +\d+\.\d\ds  llm-\d crashed: ContextWindowExceeded\(", out, re.M)
        assert re.search(r"^ +\d+\.\d\ds  llm-\d restarted by its supervisor$", out, re.M)
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
        assert "Nothing was lost" not in out

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
        assert report.nothing_lost

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

    async def test_prompts_too_long_for_the_model_end_as_retries_exhausted(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """No retry helps an oversized prompt: four runs, then a dead letter naming why."""
        report = await run_scenario(DemoSettings(), Recording())
        oversized = [o for o in report.tasks if o.task.prompt_tokens > CONTEXT_WINDOW]
        assert oversized
        for outcome in oversized:
            assert outcome.dead_letter is not None
            assert outcome.dead_letter.reason is DeadLetterReason.RETRIES_EXHAUSTED
            assert "ContextWindowExceeded" in outcome.dead_letter.detail

    async def test_crashed_workers_restart_and_their_tasks_are_answered_on_a_retry(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Model errors and timeouts crash workers; the retried tasks are answered."""
        report = await run_scenario(DemoSettings(crash_rate=0.4), Recording())
        assert report.crashes.get("ModelError", 0) + report.crashes.get("ModelTimeout", 0) > 0
        llm = report.final.tree.children[3]
        assert sum(member.restarts for member in llm.children) > 0
        assert any(o.answer is not None and o.answer.attempt > 0 for o in report.tasks)

    async def test_search_outage_opens_its_circuit_and_workers_answer_without_it(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """While the search tool is down its circuit opens; workers skip it and still answer."""
        report = await run_scenario(DemoSettings(), Recording())
        assert report.circuit_openings.get("search", 0) >= 1
        assert report.search.skipped > 0
        assert any(
            o.task.needs_search and o.answer is not None and not o.answer.sources
            for o in report.tasks
        )

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
        assert report.nothing_lost

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
        assert report.nothing_lost

    async def test_a_supervisor_that_gives_up_ends_the_run_with_everything_accounted_for(
        self, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A tools supervisor that allows no restart gives up at the search outage; the root
        restarts it until it gives up in turn, and the run ends early, losing nothing."""
        monkeypatch.setitem(_scenario.RESTART_BUDGETS, "tools", (0, 10.0))
        report = await run_scenario(DemoSettings(), Recording())
        assert report.escalation is not None
        assert report.escalation.startswith("root: more than 3 restarts")
        assert "tools: more than 0 restarts" in report.escalation
        assert report.elapsed < 10.0
        assert report.nothing_lost
