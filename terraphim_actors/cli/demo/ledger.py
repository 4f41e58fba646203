"""The application's own records as a run goes: the questions, their plans, the answers
stored, the dead letters seen, the search tool's counts, and the events worth telling.

They live outside the agents (as a database would), so they survive the agents' restarts; the
report at the end is drawn from them.
"""

from __future__ import annotations

import collections
from collections.abc import MutableMapping

import attrs
import trio

from terraphim_actors import AgentId, DeadLetter

from .world import Answer, Question, Task

__all__ = ["Event", "EventLog", "Ledger", "SearchCounts", "agent_name"]


@attrs.define
class SearchCounts:
    """What the workers' calls to the search tool came to."""

    answered: int = 0
    #: The tool reported an outage (the worker got ``CallFailed``), or stopped first.
    failed: int = 0
    timed_out: int = 0
    #: Refused at once because the tool's circuit was open: nobody waited.
    skipped: int = 0


class Ledger:
    """The application's own record: questions, plans, stored answers, dead letters seen.

    It lives outside the agents (as a database would), so it survives their restarts.
    """

    def __init__(self) -> None:
        # Mappings, not dicts: ``durable`` keeps these four in a file, written through.
        self.asked: MutableMapping[int, Question] = {}
        self.planned: MutableMapping[int, tuple[str, ...]] = {}
        self.tasks: MutableMapping[str, Task] = {}
        self.answers: MutableMapping[str, Answer] = {}
        self.dead_questions: dict[int, DeadLetter] = {}
        self.dead_tasks: dict[str, DeadLetter] = {}
        self.duplicate_answers = 0
        self.search = SearchCounts()
        #: Errors after which an LLM worker resumed, by the error's class name.
        self.resumed: collections.Counter[str] = collections.Counter()

    def note_dead_letter(self, letter: DeadLetter) -> None:
        """Remember which question or task a dead letter was about (the first one wins)."""
        payload = letter.envelope.payload
        if isinstance(payload, Question):
            self.dead_questions.setdefault(payload.number, letter)
        elif isinstance(payload, Task):
            self.dead_tasks.setdefault(payload.id, letter)
        elif isinstance(payload, Answer):
            self.dead_tasks.setdefault(payload.task_id, letter)

    def question_settled(self, number: int) -> bool:
        return number in self.planned or number in self.dead_questions

    def task_settled(self, task_id: str) -> bool:
        return task_id in self.answers or task_id in self.dead_tasks


@attrs.frozen
class Event:
    """Something worth telling, at ``at`` seconds into the run."""

    at: float
    text: str


class EventLog:
    """Events in the order they happened, stamped with the time since the run began."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.events: list[Event] = []

    def add(self, text: str) -> None:
        self.events.append(Event(trio.current_time() - self.started, text))


def agent_name(agent_id: AgentId) -> str:
    """How events and views name an agent: its name, or its id when it has none."""
    return agent_id.name or repr(agent_id)
