"""How the demo looks as plain text: periodic status blocks while it runs, then the summary.

Plain text is what a log, a pipe or a terminal without ``rich`` gets; ``_live`` draws the same
snapshots with ``rich``. Both read only the scenario's snapshots and report.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

from .. import DeadLetter, DeadLetterReason
from ._scenario import Node, Report, Snapshot

__all__ = ["PlainDisplay", "summary", "tree_rows"]


#: How a tree is drawn: a branch, the last branch, a line down, and no line.
_ASCII_BRANCHES = ("|-- ", "`-- ", "|   ", "    ")
_BOX_BRANCHES = ("├── ", "└── ", "│   ", "    ")


def tree_rows(root: Node, *, ascii_only: bool = True) -> Iterator[tuple[str, Node]]:
    """Each node of the tree with its label drawn as a tree: ``(label, node)``, depth first."""
    branch, last, line, blank = _ASCII_BRANCHES if ascii_only else _BOX_BRANCHES
    yield root.name, root

    def walk(node: Node, indent: str) -> Iterator[tuple[str, Node]]:
        for position, child in enumerate(node.children):
            final = position == len(node.children) - 1
            yield indent + (last if final else branch) + child.name, child
            yield from walk(child, indent + (blank if final else line))

    yield from walk(root, "")


def describe(node: Node) -> str:
    """A node's state, restarts, queue and circuit, in words."""
    parts = [f"{node.state:<10}", f"{node.restarts:>2} restarts"]
    if node.queued is not None:
        parts.append(f"queue {node.queued:>2}")
    if node.circuit is not None:
        parts.append(f"circuit {node.circuit.value}")
    if node.detail:
        parts.append(node.detail)
    return "  ".join(parts)


def status(snapshot: Snapshot) -> list[str]:
    """The counters of a snapshot, one short line each."""
    progress, delivery, search = snapshot.progress, snapshot.delivery, snapshot.search
    return [
        f"questions  {progress.asked} of {progress.questions} asked, {progress.planned} planned;"
        f" {snapshot.system.agent_restarts} restarts",
        f"tasks      {progress.tasks} planned, {progress.answered} answered,"
        f" {progress.in_flight} in flight, {progress.dead_lettered} dead letters",
        f"delivery   {delivery.delivered} delivered, {delivery.retried} retried,"
        f" {delivery.dead_lettered} dead-lettered, {delivery.pending} pending",
        f"search     {search.answered} answered, {search.failed} failed,"
        f" {search.timed_out} timed out, {search.skipped} skipped (circuit open)",
    ]


class PlainDisplay:
    """Prints the events as they come and a status block every ``interval`` seconds."""

    def __init__(self, stream: TextIO, interval: float) -> None:
        self.stream = stream
        self.interval = interval
        self._events_shown = 0

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def show(self, snapshot: Snapshot) -> None:
        lines = [
            f"  {event.at:6.2f}s  {event.text}" for event in snapshot.events[self._events_shown :]
        ]
        self._events_shown = len(snapshot.events)
        lines.append(f"[{snapshot.elapsed:5.1f}s] " + "\n         ".join(status(snapshot)))
        width = max(len(label) for label, _ in tree_rows(snapshot.tree)) + 2
        lines += [
            f"    {label:<{width}}{describe(node)}" for label, node in tree_rows(snapshot.tree)
        ]
        print("\n".join(lines), file=self.stream, flush=True)


def _restarts_by_agent(root: Node) -> dict[str, int]:
    return {
        node.name: node.restarts
        for _, node in tree_rows(root)
        if node.kind == "agent" and node.restarts
    }


def _counted(counts: dict[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} {what}" for what, count in ordered)


def _total(total: int, counts: dict[str, int]) -> str:
    """A total, then what it is made of when that is known."""
    return f"{total}: {_counted(counts)}" if counts else str(total)


def summary(report: Report) -> list[str]:
    """The account of a run: every question and task, and what it took."""
    settings, delivery = report.settings, report.delivery
    tasks = report.tasks
    answered = [outcome.answer for outcome in tasks if outcome.answer is not None]
    dead = [outcome for outcome in tasks if outcome.dead_letter is not None]
    on_retry = sum(answer.attempt > 0 for answer in answered)
    without_search = sum(
        outcome.task.needs_search and not outcome.answer.sources
        for outcome in tasks
        if outcome.answer is not None
    )
    lines = [
        f"Summary after {report.elapsed:.1f} s (seed {settings.seed},"
        f" {settings.workers} LLM workers, crash rate {settings.crash_rate:g})",
        f"  questions     {len(report.questions)} asked, {len(report.planned)} planned into"
        f" {len(tasks)} tasks, {len(report.question_dead_letters)} dead letters",
    ]
    for question, letter in report.question_dead_letters:
        lines.append(f"{_INDENT}question {question.number}: {_why(letter)}")
    lines.append(
        f"  tasks         {len(answered)} answered ({on_retry} on a retry,"
        f" {without_search} without search results), {len(dead)} dead letters"
    )
    by_reason: dict[str, list[str]] = {}
    for outcome in dead:
        assert outcome.dead_letter is not None
        letter = outcome.dead_letter
        if letter.reason is DeadLetterReason.RETRIES_EXHAUSTED:
            lines.append(f"{_INDENT}{outcome.task.id}: {_why(letter)}")
        else:
            by_reason.setdefault(letter.reason.value, []).append(outcome.task.id)
    for reason, task_ids in by_reason.items():
        lines.append(f"{_INDENT}{reason}: {', '.join(task_ids)}")
    restarts = _restarts_by_agent(report.final.tree)
    lines += [
        f"  crashes       {_total(report.system.agent_crashes, report.crashes)}",
        f"  restarts      {_total(report.system.agent_restarts, restarts)}",
        f"  retries       {delivery.retried} redeliveries; {report.duplicates_ignored} duplicate"
        f" answers ignored by the aggregator",
        f"  search        {report.search.answered} answered, {report.search.failed} failed,"
        f" {report.search.timed_out} timed out, {report.search.skipped} skipped while its"
        f" circuit was open",
        "  circuits      "
        + (
            ", ".join(
                f"{name} opened {count} time{'s' if count > 1 else ''}"
                for name, count in sorted(report.circuit_openings.items())
            )
            or "none opened"
        ),
        f"  delivery      {delivery.sent} sent = {delivery.acknowledged} acknowledged"
        f" + {delivery.duplicates_suppressed} duplicates suppressed + {delivery.failed} failed"
        f" + {delivery.dead_lettered} dead-lettered + {delivery.pending} pending",
        f"  dead letters  {report.system.dead_letters}: "
        + (
            _counted(
                {
                    reason.value: count
                    for reason, count in report.system.dead_letters_by_reason.items()
                }
            )
            or "none"
        ),
        f"  throughput    {len(answered) / report.elapsed:.1f} tasks answered per second,"
        f" {delivery.delivered / report.elapsed:.0f} messages delivered per second",
    ]
    if report.escalation is not None:
        lines.append(f"The system gave up before its time: {report.escalation}")
    lost = report.lost
    if lost:
        lines.append(f"LOST: {', '.join(lost)}")
    if not report.balanced:
        lines.append("The delivery statistics do not balance: messages are unaccounted for.")
    if report.nothing_lost:
        lines.append(
            "Nothing was lost: every task was answered or is a dead letter with its reason."
        )
    return lines


_INDENT = " " * 18


def _why(letter: DeadLetter) -> str:
    reason = letter.reason.value
    return f"{reason} ({letter.detail})" if letter.detail else reason
