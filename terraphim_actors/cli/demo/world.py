"""What the demo simulates: its settings, the questions and the tasks planned from them, an
offline model that fails, the search backend's outages, and the failures they raise.

Every random decision is drawn from the run's seed and what is decided (:func:`random_for`), so that
a run can be repeated whatever the scheduling.
"""

from __future__ import annotations

import random

import attrs
import trio

__all__ = [
    "CONTEXT_WINDOW",
    "OVERSIZED_RATE",
    "QUESTIONS",
    "STEPS",
    "Answer",
    "ContextWindowExceeded",
    "DemoSettings",
    "Endpoint",
    "IndexUnavailable",
    "ModelError",
    "Outages",
    "Question",
    "SearchUnavailable",
    "SimulatedModel",
    "Task",
    "random_for",
]


@attrs.frozen(kw_only=True)
class DemoSettings:
    """What a run of the demo does; the command line's options.

    Attributes:
        duration: seconds the run lasts at most; questions arrive during the first 70 % of it,
            and the run ends early once every task is settled.
        seed: seeds every random decision, so that a run can be repeated.
        workers: LLM workers in the pool.
        crash_rate: the chance that one model run returns garbage or hangs (search outages,
            prompts too long for the model and index failures come on top).
        questions: questions the user asks.
        endpoint: a real model for the workers (``--llm-url``); ``None``: the simulated one.
    """

    duration: float = 10.0
    seed: int = 7
    workers: int = 4
    crash_rate: float = 0.15
    questions: int = 16
    endpoint: Endpoint | None = None


@attrs.frozen(kw_only=True)
class Endpoint:
    """An OpenAI-compatible endpoint the workers ask instead of the simulated model."""

    url: str
    model: str
    #: Kept out of the repr, as out of every log and error.
    api_key: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class Question:
    number: int
    text: str


@attrs.frozen
class Task:
    """One step of a question's plan, for one LLM worker."""

    id: str
    question: int
    prompt: str
    needs_search: bool
    prompt_tokens: int


@attrs.frozen
class Answer:
    task_id: str
    worker: str
    text: str
    sources: tuple[str, ...]
    #: Which delivery of the task produced it (0: the first).
    attempt: int


QUESTIONS = (
    "Why do supervision trees keep long-running agents healthy?",
    "How should an agent framework bound its mailboxes?",
    "What does at-least-once delivery cost a multi-agent pipeline?",
    "When does a circuit breaker help an LLM tool call?",
    "How do retries with backoff interact with rate limits?",
    "Which failures should restart an agent, and which should not?",
    "How do Erlang's links and monitors differ?",
    "What makes a message handler idempotent?",
)

STEPS = (
    ("search the literature on", True),
    ("summarise the state of the art of", True),
    ("list the counterarguments to", False),
    ("draft an outline answering", False),
    ("check the facts cited for", True),
    ("write a one-paragraph answer to", False),
)

#: Tokens a simulated model takes in one prompt.
CONTEXT_WINDOW = 128_000
#: The chance that a task's prompt carries a whole report, too long for any model.
OVERSIZED_RATE = 0.04


class ModelError(Exception):
    """The simulated model returned something unusable."""


class ContextWindowExceeded(Exception):
    """The prompt does not fit the model: no retry can help."""


class SearchUnavailable(Exception):
    """The search backend is down."""


class IndexUnavailable(Exception):
    """The aggregator's index rejected an update (after the answer was stored)."""


def random_for(seed: int, *what: object) -> random.Random:
    """A generator for one decision, seeded by the run's seed and what is decided.

    So a task's fate depends on the seed, its id and the attempt, not on which worker takes it
    or on how Trio happened to schedule the tasks.
    """
    return random.Random(":".join(map(str, (seed, *what))))


class SimulatedModel:
    """An offline stand-in for an LLM: a random latency, and now and then an error or a hang
    (a hang is for its caller to cut short)."""

    def __init__(self, seed: int, failure_rate: float) -> None:
        self.seed = seed
        self.failure_rate = failure_rate

    async def complete(self, task: Task, attempt: int) -> str:
        """The model's answer to ``task``.

        Raises:
            ContextWindowExceeded: the prompt is too long, however often it is tried.
            ModelError: the model's output could not be parsed.
        """
        draw = random_for(self.seed, "model", task.id, attempt)
        latency = draw.uniform(0.1, 0.6)
        if task.prompt_tokens > CONTEXT_WINDOW:
            await trio.sleep(0.05)
            raise ContextWindowExceeded(
                f"{task.prompt_tokens:,} prompt tokens exceed the {CONTEXT_WINDOW:,}-token window"
            )
        roll = draw.random()
        if roll < self.failure_rate / 2:
            await trio.sleep(latency / 2)
            raise ModelError("the model returned malformed JSON")
        if roll < self.failure_rate:
            latency = 60.0  # the model hangs
        await trio.sleep(latency)
        return f"{task.prompt} (answered in {latency * 1000:.0f} ms)"


@attrs.frozen
class Outages:
    """When the search backend is down: ``(start, end)`` windows of Trio time."""

    windows: tuple[tuple[float, float], ...]

    @classmethod
    def plan(cls, seed: int, start: float, duration: float) -> Outages:
        """Two bursts, one in each half of the asking window."""
        draw = random_for(seed, "outages")
        windows = []
        for lower, upper in ((0.1, 0.3), (0.4, 0.55)):
            begins = start + duration * draw.uniform(lower, upper)
            windows.append((begins, begins + duration * draw.uniform(0.1, 0.15)))
        return cls(tuple(windows))

    def active(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.windows)
