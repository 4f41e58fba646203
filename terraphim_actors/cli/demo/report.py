"""The account of a run, once the system has shut down: how each question and task ended, and
whether the books balance."""

from __future__ import annotations

import collections

import attrs

from terraphim_actors import DeadLetter, DeliveryStats, SystemStats

from .ledger import SearchCounts
from .snapshot import Snapshot
from .world import Answer, DemoSettings, Question, Task

__all__ = ["QuestionOutcomes", "Report", "TaskOutcome"]


@attrs.frozen
class TaskOutcome:
    """A task and how it ended: answered, or a dead letter (or neither, if it was lost)."""

    task: Task
    answer: Answer | None
    dead_letter: DeadLetter | None


@attrs.frozen(kw_only=True)
class Report:
    """The account of a run, once the system has shut down."""

    settings: DemoSettings
    elapsed: float
    #: The last snapshot before the shutdown (the tree, with its restart counts).
    final: Snapshot
    delivery: DeliveryStats
    system: SystemStats
    questions: tuple[Question, ...]
    planned: frozenset[int]
    question_dead_letters: tuple[tuple[Question, DeadLetter], ...]
    tasks: tuple[TaskOutcome, ...]
    duplicates_ignored: int
    search: SearchCounts
    circuit_openings: dict[str, int]
    crashes: dict[str, int]
    #: The errors after which an LLM worker resumed instead of crashing, by class name.
    resumed: dict[str, int]
    #: Why the system ended before its time, if its root supervisor gave up.
    escalation: str | None = None

    @property
    def question_outcomes(self) -> QuestionOutcomes:
        """How far each question was answered, from its tasks' outcomes."""
        answered: collections.Counter[int] = collections.Counter()
        planned: collections.Counter[int] = collections.Counter()
        for outcome in self.tasks:
            planned[outcome.task.question] += 1
            answered[outcome.task.question] += outcome.answer is not None
        in_full, in_part, not_at_all = [], [], []
        for question in self.questions:
            number = question.number
            if not answered[number]:
                not_at_all.append(number)
            elif answered[number] == planned[number]:
                in_full.append(number)
            else:
                in_part.append(number)
        return QuestionOutcomes(tuple(in_full), tuple(in_part), tuple(not_at_all))

    @property
    def lost(self) -> list[str]:
        """Questions and tasks neither done nor dead-lettered: what the system lost."""
        dead = {question.number for question, _ in self.question_dead_letters}
        missing = [
            f"question {question.number}"
            for question in self.questions
            if question.number not in self.planned and question.number not in dead
        ]
        missing += [
            f"task {outcome.task.id}"
            for outcome in self.tasks
            if outcome.answer is None and outcome.dead_letter is None
        ]
        return missing

    @property
    def balanced(self) -> bool:
        """Every message the delivery layer accepted has settled, in exactly one way."""
        d = self.delivery
        settled = d.acknowledged + d.duplicates_suppressed + d.failed + d.dead_lettered
        return d.sent == settled + d.pending and d.pending == 0

    @property
    def accounted_for(self) -> bool:
        """Every question and task is done or a dead letter, and the books balance."""
        return self.balanced and not self.lost


@attrs.frozen
class QuestionOutcomes:
    """The questions' numbers by how far they were answered."""

    #: Every task of the question's plan was answered.
    in_full: tuple[int, ...]
    #: Some of its tasks were answered, not all.
    in_part: tuple[int, ...]
    #: None of its tasks was answered, or it was never planned.
    not_at_all: tuple[int, ...]
