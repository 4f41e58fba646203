"""How the demo looks as plain text: periodic status blocks while it runs, then the summary.

Plain text is what a log, a pipe or a terminal without ``rich`` gets; ``_live`` draws the same
snapshots with ``rich``. Both read only the scenario's snapshots and report.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

from .. import DeadLetter, DeadLetterReason
from ._words import noun_for, plural
from .demo import Node, Report, Snapshot

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
    parts = [f"{node.state:<10}", f"{node.restarts:>2} {noun_for(node.restarts, 'restart'):<8}"]
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
    system = snapshot.system
    rejected = system.dead_letters_by_reason.get(DeadLetterReason.REJECTED, 0)
    return [
        f"questions  {progress.asked} of {progress.questions} asked, {progress.planned} planned,"
        f" {progress.answered_in_full} answered in full",
        f"tasks      {progress.tasks} planned, {progress.answered} answered,"
        f" {progress.in_flight} in flight, {progress.dead_lettered} not done",
        f"failures   {snapshot.resumed} resumed, {rejected} rejected,"
        f" {plural(system.agent_crashes, 'crash', 'crashes')},"
        f" {plural(system.agent_restarts, 'restart')}",
        f"delivery   {delivery.delivered} delivered, {delivery.retried} retried,"
        f" {delivery.dead_lettered} dead-lettered, {delivery.pending} pending",
        f"search     {search.answered} answered, {search.failed} failed,"
        f" {search.timed_out} timed out, {search.skipped} skipped (circuit open)",
    ]


def budgets(snapshot: Snapshot) -> list[str]:
    """One line per agent or pool with admission budgets: each budget's use, and what waits
    for admission (and, if any, what was refused for its deadline or went to a fallback)."""
    lines = []
    for agent_id, stats in snapshot.system.admission.items():
        used = ", ".join(
            f"{usage.used:,}/{usage.limit:,} {usage.kind}"
            + ("" if usage.per is None else f" per {usage.per:g} s")
            for usage in stats.budgets
        )
        name = agent_id.name or agent_id
        line = f"{name}: {used}; {stats.waiting} waiting, {stats.waited} waited"
        if stats.refused or stats.fallbacks:
            line += f", {stats.refused} refused, {stats.fallbacks} fell back"
        lines.append(line)
    return lines


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
        counters = status(snapshot) + [f"budgets    {line}" for line in budgets(snapshot)]
        lines.append(f"[{snapshot.elapsed:5.1f}s] " + "\n         ".join(counters))
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
    not_done = [outcome for outcome in tasks if outcome.dead_letter is not None]
    on_retry = sum(answer.attempt > 0 for answer in answered)
    without_search = sum(
        outcome.task.needs_search and not outcome.answer.sources
        for outcome in tasks
        if outcome.answer is not None
    )
    questions = report.question_outcomes
    lines = [
        f"Summary after {report.elapsed:.1f} s (seed {settings.seed},"
        f" {plural(settings.workers, 'LLM worker')}, crash rate {settings.crash_rate:g})",
        f"  questions     {len(report.questions)} asked: {len(questions.in_full)} answered in"
        f" full, {_which(questions.in_part, 'in part')},"
        f" {_which(questions.not_at_all, 'not at all')}",
    ]
    for question, letter in report.question_dead_letters:
        lines.append(f"{_INDENT}question {question.number} never planned: {_why(letter)}")
    lines.append(
        f"  tasks         {len(tasks)} planned: {len(answered)} answered ({on_retry} on a retry,"
        f" {without_search} without search results), {len(not_done)} not done"
    )
    by_reason: dict[str, list[str]] = {}
    for outcome in not_done:
        assert outcome.dead_letter is not None
        letter = outcome.dead_letter
        if letter.reason in _TOLD_ONE_BY_ONE:
            lines.append(f"{_INDENT}{outcome.task.id}: {_why(letter)}")
        else:
            by_reason.setdefault(letter.reason.value, []).append(outcome.task.id)
    for reason, task_ids in by_reason.items():
        lines.append(f"{_INDENT}{reason}: {', '.join(task_ids)}")
    resumed = sum(report.resumed.values())
    restarts = _restarts_by_agent(report.final.tree)
    lines += [
        f"  resumed       {_total(resumed, report.resumed)}"
        + (" (no restart spent)" if resumed else ""),
        f"  crashes       {_total(report.system.agent_crashes, report.crashes)}",
        f"  restarts      {_total(report.system.agent_restarts, restarts)}",
        f"  retries       {plural(delivery.retried, 'redelivery', 'redeliveries')};"
        f" {plural(report.duplicates_ignored, 'duplicate answer')} ignored by the aggregator",
        f"  search        {report.search.answered} answered, {report.search.failed} failed,"
        f" {report.search.timed_out} timed out, {report.search.skipped} skipped while its"
        f" circuit was open",
        "  circuits      "
        + (
            ", ".join(
                f"{name} opened {plural(count, 'time')}"
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
    if report.accounted_for:
        lines.append(
            f"Every task is accounted for: {len(answered)} answered, {len(not_done)} not done"
            + (" (each a dead letter with its reason)." if not_done else ".")
        )
    return lines


#: Dead letters whose detail says something about the task: listed one by one, with it.
_TOLD_ONE_BY_ONE = frozenset({DeadLetterReason.REJECTED, DeadLetterReason.RETRIES_EXHAUSTED})


def _which(questions: tuple[int, ...], how: str) -> str:
    """How many questions, how answered, and which: ``2 in part (q3, q16)``."""
    if not questions:
        return f"0 {how}"
    return f"{len(questions)} {how} ({', '.join(f'q{number}' for number in questions)})"


_INDENT = " " * 18


def _why(letter: DeadLetter) -> str:
    reason = letter.reason.value
    return f"{reason} ({letter.detail})" if letter.detail else reason
