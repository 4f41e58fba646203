"""A research pipeline meets the failures an AI application meets every minute, for 30 virtual
minutes, under the default restart limits.

A planner sends a research task every few seconds to a pool of 4 LLM workers (least loaded
first); each worker asks its model (15 % of calls fail with a malformed answer, 5 % hang until
the worker's ``handler_timeout`` cuts them, every 50th prompt is too long for the model) and then
a search tool, whose API is down from minute 10 to minute 15. The workers list the errors they
expect in ``resume_on`` and the one that will fail again in ``no_retry_on``; the search tool
reports its outage with ``ctx.caller.fail``, so that its circuit breaker (the system's default)
counts it without a crash. Nothing is tuned but the jitter's seed (for a run that repeats).

The run happens once per module, in a Trio run of its own on a clock that jumps when idle (in a
thread with a wall-clock bound, so a hang fails instead of hanging the suite); each test checks
one thing a user of the pipeline would look at.
"""

from __future__ import annotations

import collections
import functools
import logging
import random
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from guarded import run_in_own_thread

from terraphim_actors import (
    Agent,
    AgentRef,
    CircuitState,
    Context,
    DeadLetter,
    DeadLetterReason,
    DeliveryConfig,
    DeliveryStats,
    LoadBalancing,
    MessageSystem,
    MessageSystemConfig,
    RestartIntensityExceeded,
    open_message_system,
)
from terraphim_actors.errors import HandlerTimeout, MessagingError

MINUTE = 60.0
#: How long the planner sends work, and when the search API is down.
RUN_FOR = 30 * MINUTE
OUTAGE = (10 * MINUTE, 15 * MINUTE)
#: Time after the last task for the last answers and retries to come in.
SETTLE = 2 * MINUTE
TASK_EVERY = 3.0
WORKERS = 4
MODEL_SECONDS = 4.0
SEARCH_SECONDS = 0.5
SEARCH_TIMEOUT = 5.0
#: A hung model call is cut after this long (the whole handler, model and search together).
HANDLER_TIMEOUT = 20.0
MODEL_FAILS = 0.15
MODEL_HANGS = 0.05
#: Every this many tasks, the prompt is longer than the model takes.
TOO_LONG_EVERY = 50
CONTEXT_WINDOW = 1_000
SEED = 14
#: Dead-letter reasons a task may end with, and why: a prompt too long for the model; a model
#: that failed on every try; a task that waited past its timeout behind a hung worker.
KNOWN_REASONS = frozenset(
    {
        DeadLetterReason.REJECTED,
        DeadLetterReason.RETRIES_EXHAUSTED,
        DeadLetterReason.EXPIRED,
    }
)


class ModelError(Exception):
    """The model answered with malformed JSON: the next try will probably do better."""


class PromptTooLong(Exception):
    """The prompt does not fit the model's context window: it will fail the same way again."""


class SearchUnavailable(ConnectionError):
    """The search API is down."""


@attrs.frozen
class Task:
    number: int
    prompt: str


@attrs.frozen
class Answer:
    number: int
    #: False when the search tool failed and the answer comes from the model alone.
    with_sources: bool


def model_fate(number: int, attempt: int) -> float:
    """What the model does on this try of this task, the same whatever order Trio runs the
    workers in: below ``MODEL_HANGS`` it hangs, below that plus ``MODEL_FAILS`` it fails."""
    return random.Random(f"{SEED}/{number}/{attempt}").random()


class SearchTool(Agent):
    """A search API behind an agent, down during ``OUTAGE``: it says so to the caller, which the
    circuit breaker counts, instead of crashing (which would spend a restart)."""

    async def handle_call(self, query: str, ctx: Context) -> Any:
        await trio.sleep(SEARCH_SECONDS)
        now = trio.current_time()
        if OUTAGE[0] <= now < OUTAGE[1]:
            assert ctx.caller is not None
            ctx.caller.fail(SearchUnavailable(f"search API down at {now:.0f} s"))
            return None
        return [f"source for {query}"]


class LlmWorker(Agent):
    """Asks the model, then the search tool; answers the planner in full, or in part when the
    search tool cannot help."""

    resume_on = (ModelError, HandlerTimeout, PromptTooLong)
    no_retry_on = (PromptTooLong,)

    def __init__(self, search: AgentRef) -> None:
        self.search = search

    async def handle_cast(self, task: Task, ctx: Context) -> None:
        if len(task.prompt) > CONTEXT_WINDOW:
            raise PromptTooLong(f"{len(task.prompt)} characters")
        fate = model_fate(task.number, ctx.envelope.attempt)
        if fate < MODEL_HANGS:
            await trio.sleep_forever()  # the model never answers: handler_timeout cuts it
        await trio.sleep(MODEL_SECONDS)
        if fate < MODEL_HANGS + MODEL_FAILS:
            raise ModelError(f"malformed JSON for task {task.number}")
        try:
            await self.search.call(task.prompt, timeout=SEARCH_TIMEOUT)
            with_sources = True
        except MessagingError:  # CallFailed, or refused by the open circuit: answer in part
            with_sources = False
        await ctx.system.ref("planner").cast(Answer(task.number, with_sources))


@attrs.define
class Ledger:
    """What the planner knows of its tasks."""

    sent: dict[int, float] = attrs.Factory(dict)
    answers: dict[int, list[tuple[float, Answer]]] = attrs.Factory(
        lambda: collections.defaultdict(list)
    )
    dead: dict[int, list[DeadLetterReason]] = attrs.Factory(lambda: collections.defaultdict(list))


class Planner(Agent):
    """Sends a task every ``TASK_EVERY`` seconds for ``RUN_FOR``; takes the answers, and the
    dead letters of its tasks (it subscribes to them)."""

    def __init__(self, workers: AgentRef, ledger: Ledger) -> None:
        self.workers = workers
        self.ledger = ledger

    async def on_start(self, ctx: Context) -> None:
        ctx.start_soon(self.plan)

    async def plan(self) -> None:
        number = 0
        while trio.current_time() < RUN_FOR:
            length = 5 * CONTEXT_WINDOW if number % TOO_LONG_EVERY == TOO_LONG_EVERY - 1 else 200
            self.ledger.sent[number] = trio.current_time()
            await self.workers.cast(Task(number, "q" * length))
            number += 1
            await trio.sleep(TASK_EVERY)

    async def handle_cast(self, answer: Answer, ctx: Context) -> None:
        self.ledger.answers[answer.number].append((trio.current_time(), answer))

    async def handle_info(self, letter: DeadLetter, ctx: Context) -> None:
        if isinstance(letter, DeadLetter) and isinstance(letter.envelope.payload, Task):
            self.ledger.dead[letter.envelope.payload.number].append(letter.reason)


@attrs.define
class Outcome:
    """What the run left for the tests to look at."""

    ledger: Ledger = attrs.Factory(Ledger)
    #: The search tool's circuit each time it changed: (virtual time, state).
    circuit: list[tuple[float, CircuitState]] = attrs.Factory(list)
    gave_up: BaseException | None = None
    ended_at: float = 0.0
    alive: dict[str, bool] = attrs.Factory(dict)
    restarts: int = -1
    books: DeliveryStats | None = None
    books_after_shutdown: DeliveryStats | None = None


async def run_pipeline(outcome: Outcome) -> None:
    config = MessageSystemConfig(delivery=DeliveryConfig(seed=SEED))  # else all defaults
    try:
        async with open_message_system(config) as system:
            await drive(system, outcome)
    except* RestartIntensityExceeded as group:
        outcome.gave_up = group
    outcome.ended_at = trio.current_time()
    outcome.books_after_shutdown = system.delivery.get_stats()


async def drive(system: MessageSystem, outcome: Outcome) -> None:
    search = await system.spawn(SearchTool, name="search")
    workers = await system.spawn_pool(
        LlmWorker,
        search,
        size=WORKERS,
        name="llm",
        strategy=LoadBalancing.LEAST_LOADED,
        handler_timeout=HANDLER_TIMEOUT,
    )
    planner = await system.spawn(Planner, workers, outcome.ledger, name="planner")
    system.subscribe_dead_letters(planner)
    state = CircuitState.CLOSED
    while trio.current_time() < RUN_FOR + SETTLE:
        await trio.sleep(1.0)
        now_state = system.router.stats().circuits.get(search.id, CircuitState.CLOSED)
        if now_state is not state:
            state = now_state
            outcome.circuit.append((trio.current_time(), state))
    outcome.alive = {ref.name or "?": ref.alive for ref in [search, planner, *workers.members]}
    outcome.restarts = system.get_stats()[0].agent_restarts
    outcome.books = system.delivery.get_stats()


@pytest.fixture(scope="module")
def outcome() -> Outcome:
    """The run, once for the module; its hundreds of expected errors are not logged."""
    result = Outcome()
    clock = trio.testing.MockClock(autojump_threshold=0)
    logger = logging.getLogger("terraphim_actors")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        run_in_own_thread(functools.partial(trio.run, run_pipeline, result, clock=clock))
    finally:
        logger.setLevel(level)
    return result


def test_the_pipeline_runs_thirty_minutes_without_giving_up(outcome: Outcome) -> None:
    assert outcome.gave_up is None
    assert outcome.ended_at >= RUN_FOR + SETTLE
    assert outcome.alive == {
        "search": True,
        "planner": True,
        **{f"llm-{i}": True for i in range(WORKERS)},
    }
    assert outcome.restarts == 0  # the expected errors resumed the workers


def test_every_task_is_answered_once_or_dead_lettered_for_a_known_reason(
    outcome: Outcome,
) -> None:
    ledger = outcome.ledger
    assert len(ledger.sent) == RUN_FOR // TASK_EVERY
    answered = {number for number, answers in ledger.answers.items() if answers}
    dead = set(ledger.dead)
    assert answered.isdisjoint(dead)
    assert answered | dead == set(ledger.sent)
    assert all(len(answers) == 1 for answers in ledger.answers.values())
    assert all(len(reasons) == 1 for reasons in ledger.dead.values())
    reasons = collections.Counter(reasons[0] for reasons in ledger.dead.values())
    assert set(reasons) <= KNOWN_REASONS, reasons
    assert len(answered) + sum(reasons.values()) == len(ledger.sent)


def test_a_prompt_too_long_is_rejected_at_once_and_nothing_else_is(outcome: Outcome) -> None:
    ledger = outcome.ledger
    too_long = {number for number in ledger.sent if number % TOO_LONG_EVERY == TOO_LONG_EVERY - 1}
    rejected = {
        number for number, reasons in ledger.dead.items() if reasons == [DeadLetterReason.REJECTED]
    }
    assert rejected == too_long


def test_a_task_whose_model_call_hung_or_failed_is_tried_again_and_answered(
    outcome: Outcome,
) -> None:
    ledger = outcome.ledger
    unlucky = [
        number
        for number in ledger.sent
        if model_fate(number, 0) < MODEL_HANGS + MODEL_FAILS
        and number % TOO_LONG_EVERY != TOO_LONG_EVERY - 1
    ]
    hung = [number for number in unlucky if model_fate(number, 0) < MODEL_HANGS]
    assert len(hung) >= 10  # the 5 % of hanging calls are there
    answered = [number for number in unlucky if ledger.answers.get(number)]
    assert len(answered) >= 0.9 * len(unlucky), (len(answered), len(unlucky))


def test_the_books_balance_while_running_and_after_shutdown(outcome: Outcome) -> None:
    for books in (outcome.books, outcome.books_after_shutdown):
        assert books is not None
        settled = (
            books.acknowledged + books.duplicates_suppressed + books.failed + books.dead_lettered
        )
        assert books.sent == settled + books.pending, books
    assert outcome.books_after_shutdown is not None
    assert outcome.books_after_shutdown.pending == 0


def test_the_search_breaker_opens_in_the_outage_and_closes_after_it(outcome: Outcome) -> None:
    opened = [at for at, state in outcome.circuit if state is CircuitState.OPEN]
    closed = [at for at, state in outcome.circuit if state is CircuitState.CLOSED]
    assert opened, outcome.circuit
    assert OUTAGE[0] <= opened[0] < OUTAGE[0] + MINUTE, outcome.circuit
    assert all(at <= OUTAGE[1] + MINUTE for at in opened), outcome.circuit
    assert closed, outcome.circuit
    assert closed[-1] > OUTAGE[1], outcome.circuit
    assert outcome.circuit[-1][1] is CircuitState.CLOSED


def test_answers_lack_sources_only_around_the_outage(outcome: Outcome) -> None:
    partial = [
        at
        for answers in outcome.ledger.answers.values()
        for at, answer in answers
        if not answer.with_sources
    ]
    assert partial, "the outage was not felt"
    assert all(OUTAGE[0] <= at <= OUTAGE[1] + MINUTE for at in partial), sorted(partial)


def test_work_is_answered_in_full_after_the_outage(outcome: Outcome) -> None:
    ledger = outcome.ledger
    after = [number for number, sent in ledger.sent.items() if sent > OUTAGE[1] + MINUTE]
    full = [
        number
        for number in after
        if any(answer.with_sources for _, answer in ledger.answers.get(number, ()))
    ]
    assert len(full) >= 0.9 * len(after), (len(full), len(after))
