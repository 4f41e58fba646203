"""The demo's scenario: a research assistant built from agents that fail, all offline and seeded.

A user asks questions; a planner splits each into tasks; a pool of simulated LLM workers
answers the tasks, asking a search tool that fails in bursts behind its circuit breaker; an
aggregator stores the answers, which reach it at least once. Models return garbage, hang, and
choke on prompts too long for them: those are expected, so a worker resumes after them (no
restart spent) and a hang is cut short by its handler time limit; a prompt too long is rejected
at once, since no retry can help. The search tool reports its outages to the caller, and so to
its circuit breaker, without crashing. The aggregator's index failures are left to crash it,
as any error an agent does not declare: its supervisor restarts it, the delivery layer retries
what was not handled, and what cannot be done ends as a dead letter with its reason. The run
returns a :class:`Report` that accounts for every question and task.

There is no printing here: the scenario hands :class:`Snapshot` s to a :class:`Display` and
returns the report, so that the presentation (``_view``) can change without touching it. Every
wait is a Trio sleep or timeout, so a test can run a whole scenario on a ``MockClock``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import attrs
import trio

from supervisor import ChildInfo, ChildKind, Supervisor

from .. import (
    Agent,
    AgentExited,
    AgentId,
    AgentRef,
    AgentStarted,
    CircuitBreakerConfig,
    CircuitState,
    Context,
    DeadLetter,
    DeliveryConfig,
    DeliveryGuarantee,
    DeliveryStats,
    Directive,
    LoadBalancing,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    PoolRef,
    RestartBackoff,
    RestartIntensityExceeded,
    RouterConfig,
    SystemShutdown,
    SystemStats,
    open_message_system,
)
from ..errors import (
    AgentStopped,
    CallFailed,
    CallTimeout,
    CircuitOpen,
    DeliveryFailed,
    HandlerTimeout,
)
from ._words import plural

__all__ = [
    "DemoSettings",
    "Display",
    "Event",
    "Node",
    "Progress",
    "QuestionOutcomes",
    "Report",
    "SearchCounts",
    "Snapshot",
    "TaskOutcome",
    "run_scenario",
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
    """

    duration: float = 10.0
    seed: int = 7
    workers: int = 4
    crash_rate: float = 0.15
    questions: int = 16


# -- the work -----------------------------------------------------------------------------


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


_QUESTIONS = (
    "Why do supervision trees keep long-running agents healthy?",
    "How should an agent framework bound its mailboxes?",
    "What does at-least-once delivery cost a multi-agent pipeline?",
    "When does a circuit breaker help an LLM tool call?",
    "How do retries with backoff interact with rate limits?",
    "Which failures should restart an agent, and which should not?",
    "How do Erlang's links and monitors differ?",
    "What makes a message handler idempotent?",
)

_STEPS = (
    ("search the literature on", True),
    ("summarise the state of the art of", True),
    ("list the counterarguments to", False),
    ("draft an outline answering", False),
    ("check the facts cited for", True),
    ("write a one-paragraph answer to", False),
)

#: Tokens a simulated model takes in one prompt.
CONTEXT_WINDOW = 128_000
#: Seconds a worker's handler (the search, then the model) may run before it is cancelled with
#: ``HandlerTimeout``: a healthy run takes at most 1.1 s, a hung model would take a minute.
HANDLER_TIMEOUT = 1.5
#: Seconds a worker waits for the search tool.
SEARCH_TIMEOUT = 0.5
#: Restarts each supervisor allows within a window of seconds before it gives up. The LLM
#: workers resume after the model's expected errors, which spend no restart, so their pool
#: needs no more than the root; the aggregator crashes at each index failure, so its subtree
#: allows more.
RESTART_BUDGETS = {
    "root": (3, 10.0),
    "tools": (3, 10.0),
    "research": (20, 10.0),
    "llm": (3, 10.0),
}
#: Seconds between two looks at the circuits and at what is left to settle.
SAMPLE = 0.05
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


def _draw(seed: int, *what: object) -> random.Random:
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
        draw = _draw(self.seed, "model", task.id, attempt)
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
        draw = _draw(seed, "outages")
        windows = []
        for lower, upper in ((0.1, 0.3), (0.4, 0.55)):
            begins = start + duration * draw.uniform(lower, upper)
            windows.append((begins, begins + duration * draw.uniform(0.1, 0.15)))
        return cls(tuple(windows))

    def active(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.windows)


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
        self.asked: dict[int, Question] = {}
        self.planned: dict[int, tuple[str, ...]] = {}
        self.tasks: dict[str, Task] = {}
        self.answers: dict[str, Answer] = {}
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


# -- the agents ---------------------------------------------------------------------------


class Planner(Agent):
    """Splits each question into two to four tasks and hands them to the worker pool.

    The pool starts after the planner (it uses the aggregator, the planner's sibling), so the
    planner finds it by name when it needs it. A question may arrive twice (at least once): a
    question planned already is not planned again.
    """

    def __init__(self, ledger: Ledger, workers: str, seed: int) -> None:
        self.ledger = ledger
        self.workers = workers
        self.seed = seed

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if not isinstance(message, Question):
            return await super().handle_cast(message, ctx)
        if message.number in self.ledger.planned:
            return
        draw = _draw(self.seed, "plan", message.number)
        steps = draw.sample(_STEPS, draw.randint(2, 4))
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
        workers = ctx.system.ref(self.workers)
        for task in tasks:
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
        if directive is Directive.RESUME:
            self.ledger.resumed[type(error).__name__] += 1
            what = _label(payload) or "a message"
            self.events.add(f"{ctx.self.name} resumed after {type(error).__name__} on {what}")
        return directive

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if not isinstance(message, Task):
            return await super().handle_cast(message, ctx)
        sources = await self._search(message) if message.needs_search else ()
        attempt = ctx.envelope.attempt
        text = await self.model.complete(message, attempt)
        answer = Answer(message.id, ctx.self.name or "?", text, sources, attempt)
        await self.aggregator.cast(answer)

    async def _search(self, task: Task) -> tuple[str, ...]:
        counts = self.ledger.search
        try:
            sources: tuple[str, ...] = await self.search.call(
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
        draw = _draw(self.seed, "search", message)
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
        draw = _draw(self.seed, "index", message.task_id, ctx.envelope.attempt)
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
                self.events.add(f"{_name(message.agent_id)} crashed: {message.reason!r}")
        elif isinstance(message, AgentStarted):
            if message.agent_id in self.down:
                self.down.discard(message.agent_id)
                self.events.add(f"{_name(message.agent_id)} restarted by its supervisor")
        elif isinstance(message, DeadLetter):
            self.ledger.note_dead_letter(message)
            what = _label(message.envelope.payload)
            if what is not None:
                self.events.add(f"dead letter ({message.reason.value}): {what}")
        elif not isinstance(message, SystemShutdown):
            await super().handle_info(message, ctx)


def _name(agent_id: AgentId) -> str:
    return agent_id.name or repr(agent_id)


def _label(payload: object) -> str | None:
    """What a dead letter was about, if it was one of the scenario's messages."""
    if isinstance(payload, Question):
        return f"question {payload.number}"
    if isinstance(payload, Task):
        return f"task {payload.id}"
    if isinstance(payload, Answer):
        return f"the answer to task {payload.task_id}"
    return None


# -- what a display sees ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Node:
    """A supervisor, pool or agent in the supervision tree, as it stands."""

    name: str
    #: ``"supervisor"``, ``"pool"`` or ``"agent"``.
    kind: str
    #: The supervisor's view of it: running, restarting, ...
    state: str
    restarts: int
    #: Messages waiting in an agent's mailbox.
    queued: int | None = None
    #: An agent's circuit, once it has failed at least once.
    circuit: CircuitState | None = None
    #: A supervisor's strategy and the restarts it made of those it allows in its window (a
    #: pool's balancing in place of the strategy).
    detail: str = ""
    children: tuple[Node, ...] = ()


@attrs.frozen(kw_only=True)
class Progress:
    questions: int
    asked: int
    planned: int
    #: Questions whose every task has its answer stored.
    answered_in_full: int
    tasks: int
    answered: int
    dead_lettered: int

    @property
    def in_flight(self) -> int:
        return self.tasks - self.answered - self.dead_lettered


@attrs.frozen(kw_only=True)
class Snapshot:
    """The system at one moment, for a display."""

    elapsed: float
    tree: Node
    delivery: DeliveryStats
    system: SystemStats
    progress: Progress
    #: Times an LLM worker resumed after an error instead of crashing.
    resumed: int
    search: SearchCounts
    #: Every event so far, oldest first.
    events: tuple[Event, ...]


class Display(Protocol):
    """Where snapshots go while the scenario runs."""

    #: Seconds of Trio time between two snapshots.
    interval: float

    def show(self, snapshot: Snapshot) -> None: ...


# -- the outcome --------------------------------------------------------------------------


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


# -- the run ------------------------------------------------------------------------------


class _Run:
    """One run: the system, the application's records, and what the displays are shown."""

    def __init__(self, settings: DemoSettings, system: MessageSystem, started: float) -> None:
        self.settings = settings
        self.system = system
        self.started = started
        self.ledger = Ledger()
        self.events = EventLog(started)
        self.crashes: collections.Counter[str] = collections.Counter()
        self.circuits: dict[AgentId, CircuitState] = {}
        self.circuit_openings: collections.Counter[str] = collections.Counter()
        self.settled = trio.Event()

    async def build(self) -> AgentRef:
        """Start the supervision tree; returns the planner, where questions go.

        Each part starts after the parts it uses, so that the root, stopping its children
        newest first, stops a user of a service before the service.
        """
        settings, system, ledger = self.settings, self.system, self.ledger
        seed = settings.seed
        observer = await system.spawn(Observer, self.events, ledger, self.crashes, name="observer")
        system.subscribe(observer)
        system.subscribe_dead_letters(observer)
        outages = Outages.plan(seed, self.started, settings.duration)
        await system.start_supervisor(
            [system.agent_spec(SearchTool, outages, seed, name="search")],
            max_restarts=RESTART_BUDGETS["tools"][0],
            max_seconds=RESTART_BUDGETS["tools"][1],
            backoff=_backoff(seed, "tools"),
            name="tools",
        )
        await system.start_supervisor(
            [
                system.agent_spec(
                    Aggregator, ledger, self.events, seed, settings.crash_rate, name="aggregator"
                ),
                system.agent_spec(Planner, ledger, "llm", seed, name="planner"),
            ],
            max_restarts=RESTART_BUDGETS["research"][0],
            max_seconds=RESTART_BUDGETS["research"][1],
            name="research",
        )
        await system.spawn_pool(
            LlmWorker,
            SimulatedModel(seed, settings.crash_rate),
            system.ref("search"),
            system.ref("aggregator"),
            ledger,
            self.events,
            size=settings.workers,
            name="llm",
            strategy=LoadBalancing.LEAST_LOADED,
            max_restarts=RESTART_BUDGETS["llm"][0],
            max_seconds=RESTART_BUDGETS["llm"][1],
        )
        return system.ref("planner")

    async def ask(self, planner: AgentRef) -> None:
        """The user: questions at an even pace over the first 70 % of the run."""
        settings = self.settings
        gap = settings.duration * 0.7 / settings.questions
        for number in range(1, settings.questions + 1):
            question = Question(number, _QUESTIONS[(settings.seed + number) % len(_QUESTIONS)])
            self.ledger.asked[number] = question
            await planner.cast(question)
            await trio.sleep(gap)

    def _settled(self) -> bool:
        """Every question planned or dead, every task answered or dead, nothing in transit."""
        ledger = self.ledger
        return (
            len(ledger.asked) == self.settings.questions
            and all(map(ledger.question_settled, ledger.asked))
            and all(map(ledger.task_settled, ledger.tasks))
            and self.system.delivery.get_stats().pending == 0
        )

    async def sample(self) -> None:
        """Every :data:`SAMPLE` seconds: turn circuit changes into events, and set
        ``self.settled`` once everything is settled.

        Circuits have no notifications, so they are sampled: a change and its reverse within
        one sample go unseen.
        """
        while True:
            for agent_id, state in self.system.router.stats().circuits.items():
                before = self.circuits.get(agent_id, CircuitState.CLOSED)
                if state is not before:
                    if state is CircuitState.OPEN:
                        self.circuit_openings[_name(agent_id)] += 1
                    self.events.add(
                        f"circuit of {_name(agent_id)}: {before.value} -> {state.value}"
                    )
                self.circuits[agent_id] = state
            if self._settled():
                self.settled.set()
            await trio.sleep(SAMPLE)

    async def keep_showing(self, display: Display) -> None:
        while True:
            await trio.sleep(display.interval)
            display.show(self.snapshot())

    def snapshot(self) -> Snapshot:
        system, ledger = self.system, self.ledger
        stats, mailboxes = system.get_stats()
        queues = {mailbox.agent_id: mailbox.current_queue_size for mailbox in mailboxes}
        circuits = system.router.stats().circuits
        return Snapshot(
            elapsed=trio.current_time() - self.started,
            tree=_supervisor_node("root", system.root, "running", 0, system, queues, circuits),
            delivery=system.delivery.get_stats(),
            system=stats,
            progress=self._progress(),
            resumed=sum(ledger.resumed.values()),
            search=attrs.evolve(ledger.search),
            events=tuple(self.events.events),
        )

    def _progress(self) -> Progress:
        ledger = self.ledger
        return Progress(
            questions=self.settings.questions,
            asked=len(ledger.asked),
            planned=len(ledger.planned),
            answered_in_full=sum(
                all(task_id in ledger.answers for task_id in plan)
                for plan in ledger.planned.values()
            ),
            tasks=len(ledger.tasks),
            answered=len(ledger.answers),
            dead_lettered=sum(task_id not in ledger.answers for task_id in ledger.dead_tasks),
        )

    def report(self, final: Snapshot, escalation: str | None) -> Report:
        """The account, from the system's dead letters once it has shut down."""
        system, ledger = self.system, self.ledger
        for letter in system.dead_letters:  # those filed during the shutdown too
            ledger.note_dead_letter(letter)
        questions = tuple(ledger.asked.values())
        return Report(
            settings=self.settings,
            elapsed=trio.current_time() - self.started,
            final=final,
            delivery=system.delivery.get_stats(),
            system=system.get_stats()[0],
            questions=questions,
            planned=frozenset(ledger.planned),
            question_dead_letters=tuple(
                (question, ledger.dead_questions[question.number])
                for question in questions
                if question.number in ledger.dead_questions
                and question.number not in ledger.planned
            ),
            tasks=tuple(
                TaskOutcome(
                    task,
                    ledger.answers.get(task.id),
                    None if task.id in ledger.answers else ledger.dead_tasks.get(task.id),
                )
                for task in ledger.tasks.values()
            ),
            duplicates_ignored=ledger.duplicate_answers,
            search=attrs.evolve(ledger.search),
            circuit_openings=dict(self.circuit_openings),
            crashes=dict(self.crashes),
            resumed=dict(ledger.resumed),
            escalation=escalation,
        )


def _backoff(seed: int, what: str) -> RestartBackoff:
    """Wait 0.05 s before restarting a crashed agent, twice as long after each crash in a row
    (at most 0.5 s), so that a worker failing on every task does not spin."""
    return RestartBackoff(
        initial=0.05, maximum=0.5, reset_after=1.0, rng=_draw(seed, "backoff", what)
    )


def _config(settings: DemoSettings) -> MessageSystemConfig:
    return MessageSystemConfig(
        shutdown_timeout=0.2,  # at the end, a worker waiting on its model is not waited for
        dead_letter_capacity=100_000,  # the report looks up every dead letter
        max_restarts=RESTART_BUDGETS["root"][0],
        max_seconds=RESTART_BUDGETS["root"][1],
        restart_backoff=_backoff(settings.seed, "root"),
        delivery=DeliveryConfig(max_retries=3, retry_delay=0.1, seed=settings.seed),
        router=RouterConfig(
            circuit_breaker=CircuitBreakerConfig(failure_threshold=3, reset_timeout=1.0)
        ),
    )


def _supervisor_node(
    name: str,
    supervisor: Supervisor,
    state: str,
    restarts: int,
    system: MessageSystem,
    queues: dict[AgentId, int],
    circuits: Mapping[AgentId, CircuitState],
) -> Node:
    children = tuple(
        _child_node(child, system, queues, circuits) for child in supervisor.which_children()
    )
    stats = supervisor.stats()
    return Node(
        name=name,
        kind="supervisor",
        state=state,
        restarts=restarts,
        detail=(
            f"{supervisor.strategy.value.replace('_', ' ')},"
            f" {stats.restarts_in_window}/{supervisor.max_restarts} in {supervisor.max_seconds:g} s"
        ),
        children=children,
    )


def _child_node(
    child: ChildInfo,
    system: MessageSystem,
    queues: dict[AgentId, int],
    circuits: Mapping[AgentId, CircuitState],
) -> Node:
    agent_id = child.id if isinstance(child.id, AgentId) else None
    name = str(child.id) if agent_id is None else _name(agent_id)
    if child.kind is ChildKind.SUPERVISOR:
        if not isinstance(child.value, Supervisor):  # between runs: no children to show
            return Node(
                name=name, kind="supervisor", state=child.state.value, restarts=child.restarts
            )
        node = _supervisor_node(
            name, child.value, child.state.value, child.restarts, system, queues, circuits
        )
        pool = None if agent_id is None else system.whereis(agent_id)
        if isinstance(pool, PoolRef):
            budget = node.detail.split(", ", 1)[1]  # a pool's members restart one for one
            node = attrs.evolve(node, kind="pool", detail=f"{pool.strategy.value}, {budget}")
        return node
    return Node(
        name=name,
        kind="agent",
        state=child.state.value,
        restarts=child.restarts,
        queued=None if agent_id is None else queues.get(agent_id),
        circuit=None if agent_id is None else circuits.get(agent_id),
    )


@contextlib.contextmanager
def _runtime_logs_kept_quiet() -> Iterator[None]:
    """The runtime logs each crash with its traceback; the scenario reports crashes as
    events instead, so for the length of the run those records go nowhere."""
    loggers = [logging.getLogger(name) for name in ("terraphim_actors", "supervisor")]
    sink = logging.NullHandler()
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(sink)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate in zip(loggers, saved, strict=True):
            logger.removeHandler(sink)
            logger.propagate = propagate


async def run_scenario(settings: DemoSettings, display: Display) -> Report:
    """Run the research assistant for at most ``settings.duration`` seconds and account for
    every question and task it was given."""
    started = trio.current_time()
    run: _Run | None = None
    final: Snapshot | None = None
    escalation = None
    with _runtime_logs_kept_quiet():
        try:
            async with open_message_system(_config(settings)) as system:
                run = _Run(settings, system, started)
                try:
                    planner = await run.build()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(run.sample)
                        nursery.start_soon(run.keep_showing, display)
                        with trio.move_on_at(started + settings.duration):
                            await run.ask(planner)
                            await run.settled.wait()
                        nursery.cancel_scope.cancel()
                finally:
                    final = run.snapshot()
        except RestartIntensityExceeded as error:
            escalation = str(error)
    assert run is not None
    assert final is not None
    display.show(final)
    return run.report(final, escalation)
