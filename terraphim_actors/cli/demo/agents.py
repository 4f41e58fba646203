"""The demo's agents: a planner, LLM workers, a search tool, an aggregator and an observer.

Models return garbage, hang, and choke on prompts too long for them: those are expected, so a
worker resumes after them (no restart spent) and a hang is cut short by its handler time limit;
a prompt too long is rejected at once, since no retry can help. The search tool reports its
outages to the caller, and so to its circuit breaker, without crashing. The aggregator's index
failures are left to crash it, as any error an agent does not declare: its supervisor restarts
it, the delivery layer retries what was not handled. The observer turns the system's
notifications into events.
"""

from __future__ import annotations

import collections
from typing import Any

import trio

from terraphim_actors import (
    Agent,
    AgentExited,
    AgentId,
    AgentRef,
    AgentStarted,
    Context,
    DeadLetter,
    DeliveryGuarantee,
    Directive,
    MessageOptions,
    SystemShutdown,
)
from terraphim_actors.errors import (
    AgentStopped,
    CallFailed,
    CallTimeout,
    CircuitOpen,
    DeliveryFailed,
    HandlerTimeout,
)

from .._words import plural
from .ledger import EventLog, Ledger, agent_name
from .world import (
    OVERSIZED_RATE,
    STEPS,
    Answer,
    ContextWindowExceeded,
    IndexUnavailable,
    ModelError,
    Outages,
    Question,
    SearchUnavailable,
    SimulatedModel,
    Task,
    random_for,
)

__all__ = [
    "HANDLER_TIMEOUT",
    "SEARCH_TIMEOUT",
    "Aggregator",
    "LlmWorker",
    "Observer",
    "Planner",
    "SearchTool",
    "search_sources",
    "told",
]

#: Seconds a worker's handler (the search, then the model) may run before it is cancelled with
#: ``HandlerTimeout``: a healthy run takes at most 1.1 s, a hung model would take a minute.
HANDLER_TIMEOUT = 1.5
#: Seconds a worker waits for the search tool.
SEARCH_TIMEOUT = 0.5


class Planner(Agent):
    """Splits each question into two to four tasks and hands them to the worker pool.

    The pool starts after the planner (it uses the aggregator, the planner's sibling), so the
    planner finds it by name when it needs it. A question may arrive twice (at least once): a
    question planned already is not planned again, but a repeat delivery of it hands out again
    the tasks of its plan not answered yet, since the run before may have ended (a crash of the
    process) between noting the plan and handing it out. A task handed out twice is answered
    twice at most, and the aggregator ignores the second answer.
    """

    def __init__(self, ledger: Ledger, workers: str, seed: int) -> None:
        self.ledger = ledger
        self.workers = workers
        self.seed = seed

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if not isinstance(message, Question):
            return await super().handle_cast(message, ctx)
        planned = self.ledger.planned.get(message.number)
        if planned is not None:
            if ctx.envelope.attempt > 0:
                await self._hand_out(
                    [self.ledger.tasks[task_id] for task_id in planned], ctx, unanswered=True
                )
            return
        draw = random_for(self.seed, "plan", message.number)
        steps = draw.sample(STEPS, draw.randint(2, 4))
        tasks = []
        for position, (step, needs_search) in enumerate(steps, start=1):
            oversized = draw.random() < OVERSIZED_RATE
            tokens = draw.randint(200_000, 400_000) if oversized else draw.randint(500, 8_000)
            prompt = f"{step} {message.text!r}"
            task_id = f"q{message.number}.{position}"
            tasks.append(Task(task_id, message.number, prompt, needs_search, tokens))
        self.ledger.planned[message.number] = tuple(task.id for task in tasks)
        for task in tasks:
            self.ledger.tasks[task.id] = task
        await self._hand_out(tasks, ctx, unanswered=False)

    async def _hand_out(self, tasks: list[Task], ctx: Context, *, unanswered: bool) -> None:
        workers = ctx.system.ref(self.workers)
        for task in tasks:
            if not unanswered or task.id not in self.ledger.answers:
                await workers.cast(task)


class LlmWorker(Agent):
    """Answers a task with its model, after a search when the task needs one.

    The model's failures are expected, so they do not crash the worker: it resumes, keeping its
    instance and spending no restart, and the delivery layer hands the task out again. A model
    that hangs is cut short by the handler time limit, and the worker resumes after that too.
    A prompt too long for the model would fail the same way on every try: it is rejected at
    once, a dead letter naming why. The search tool is optional: a failed search, or one
    refused by its open circuit, gives an answer without sources instead of a wait.
    """

    resume_on = (ModelError, HandlerTimeout, ContextWindowExceeded)
    no_retry_on = (ContextWindowExceeded,)
    handler_timeout = HANDLER_TIMEOUT

    def __init__(
        self,
        model: SimulatedModel,
        search: AgentRef,
        aggregator: AgentRef,
        ledger: Ledger,
        events: EventLog,
    ) -> None:
        self.model = model
        self.search = search
        self.aggregator = aggregator
        self.ledger = ledger
        self.events = events

    def on_error(self, error: Exception, payload: Any, ctx: Context) -> Directive:
        """The default decision (``resume_on``), told as an event and counted for the summary."""
        directive = super().on_error(error, payload, ctx)
        return told(directive, error, payload, ctx, self.ledger, self.events)

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if not isinstance(message, Task):
            return await super().handle_cast(message, ctx)
        sources = await self._search(message) if message.needs_search else ()
        attempt = ctx.envelope.attempt
        text = await self.model.complete(message, attempt)
        # What the model's use cost, to the pool's token budget: the prompt and the answer.
        ctx.charge(tokens=message.prompt_tokens + len(text))
        answer = Answer(message.id, ctx.self.name or "?", text, sources, attempt)
        await self.aggregator.cast(answer)

    async def _search(self, task: Task) -> tuple[str, ...]:
        return await search_sources(self.search, self.ledger, task)


async def search_sources(search: AgentRef, ledger: Ledger, task: Task) -> tuple[str, ...]:
    """The sources the search tool finds for ``task``, or none if it failed or is skipped
    (its circuit open), counted in ``ledger``."""
    counts = ledger.search
    try:
        sources: tuple[str, ...] = await search.call(
            task.prompt, timeout=SEARCH_TIMEOUT, options=_FAIL_FAST
        )
    except CircuitOpen:
        counts.skipped += 1
    except CallTimeout:
        counts.timed_out += 1
    except (CallFailed, AgentStopped, DeliveryFailed):
        counts.failed += 1
    else:
        counts.answered += 1
        return sources
    return ()


#: A search is worth one try: a worker would rather answer without sources than wait.
_FAIL_FAST = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)


class SearchTool(Agent):
    """A search backend that goes down in bursts.

    An outage is no fault of the tool's: it answers each query with the failure
    (``ctx.caller.fail``), which its caller gets as ``CallFailed`` and its circuit breaker
    counts, without a crash.
    """

    def __init__(self, outages: Outages, seed: int) -> None:
        self.outages = outages
        self.seed = seed

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if not isinstance(message, str):
            return await super().handle_call(message, ctx)
        draw = random_for(self.seed, "search", message)
        await trio.sleep(draw.uniform(0.05, 0.15))
        if self.outages.active(trio.current_time()):
            assert ctx.caller is not None  # a call always has its caller
            ctx.caller.fail(SearchUnavailable("the search backend answered 503"))
            return None
        return tuple(f"source {draw.randint(100, 999)}" for _ in range(draw.randint(1, 3)))


class Aggregator(Agent):
    """Stores each answer once; answers arrive at least once, so a repeat is ignored.

    After storing, it updates an index that now and then fails: the answer is then delivered
    again, and the second delivery is the duplicate that idempotence absorbs.
    """

    def __init__(self, ledger: Ledger, events: EventLog, seed: int, failure_rate: float) -> None:
        self.ledger = ledger
        self.events = events
        self.seed = seed
        self.failure_rate = failure_rate

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if not isinstance(message, Answer):
            return await super().handle_cast(message, ctx)
        ledger = self.ledger
        if message.task_id in ledger.answers:
            ledger.duplicate_answers += 1
            return
        await trio.sleep(0.01)  # the write to the store
        ledger.answers[message.task_id] = message
        question = ledger.tasks[message.task_id].question
        plan = ledger.planned[question]
        if all(task_id in ledger.answers for task_id in plan):
            self.events.add(f"question {question} answered in full ({plural(len(plan), 'task')})")
        draw = random_for(self.seed, "index", message.task_id, ctx.envelope.attempt)
        if draw.random() < self.failure_rate / 2:
            raise IndexUnavailable("the index rejected the update")


class Observer(Agent):
    """Watches the system as a subscriber: crashes, restarts and dead letters become events."""

    def __init__(self, events: EventLog, ledger: Ledger, crashes: collections.Counter[str]):
        self.events = events
        self.ledger = ledger
        self.crashes = crashes

    async def on_start(self) -> None:
        self.down: set[AgentId] = set()

    async def handle_info(self, message: Any, ctx: Context) -> None:
        if isinstance(message, AgentExited):
            if isinstance(message.reason, Exception):
                self.crashes[type(message.reason).__name__] += 1
                self.down.add(message.agent_id)
                self.events.add(f"{agent_name(message.agent_id)} crashed: {message.reason!r}")
        elif isinstance(message, AgentStarted):
            if message.agent_id in self.down:
                self.down.discard(message.agent_id)
                self.events.add(f"{agent_name(message.agent_id)} restarted by its supervisor")
        elif isinstance(message, DeadLetter):
            self.ledger.note_dead_letter(message)
            what = _label(message.envelope.payload)
            if what is not None:
                self.events.add(f"dead letter ({message.reason.value}): {what}")
        elif not isinstance(message, SystemShutdown):
            await super().handle_info(message, ctx)


def told(
    directive: Directive,
    error: Exception,
    payload: Any,
    ctx: Context,
    ledger: Ledger,
    events: EventLog,
) -> Directive:
    """``directive``, a worker's decision on ``error``: a resume is counted for the summary and
    told as an event."""
    if directive is Directive.RESUME:
        ledger.resumed[type(error).__name__] += 1
        what = _label(payload) or "a message"
        events.add(f"{ctx.self.name} resumed after {type(error).__name__} on {what}")
    return directive


def _label(payload: object) -> str | None:
    """What a dead letter was about, if it was one of the scenario's messages."""
    if isinstance(payload, Question):
        return f"question {payload.number}"
    if isinstance(payload, Task):
        return f"task {payload.id}"
    if isinstance(payload, Answer):
        return f"the answer to task {payload.task_id}"
    return None
