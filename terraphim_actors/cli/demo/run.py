"""Running the scenario: the supervision tree built, the user asking, the circuits sampled, the
displays shown snapshots, and the report made once the system has shut down.

There is no printing here: the run hands :class:`Snapshot` s to a :class:`Display` and returns
the report, so that the presentation (``_view``, ``_live``) can change without touching it.
Every wait is a Trio sleep or timeout, so a test can run a whole scenario on a ``MockClock``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator

import attrs
import trio

from terraphim_actors import (
    Agent,
    AgentId,
    AgentRef,
    CircuitBreakerConfig,
    CircuitState,
    DeliveryConfig,
    LoadBalancing,
    MessageSystem,
    MessageSystemConfig,
    RestartBackoff,
    RestartIntensityExceeded,
    RouterConfig,
    open_message_system,
)
from terraphim_actors.journal import SqliteJournal

from .agents import Aggregator, LlmWorker, Observer, Planner, SearchTool
from .budgets import model_budgets
from .ledger import EventLog, Ledger, agent_name
from .report import Report, TaskOutcome
from .snapshot import Display, Progress, Snapshot, supervisor_node
from .world import QUESTIONS, DemoSettings, Outages, Question, SimulatedModel, random_for

__all__ = ["RESTART_BUDGETS", "SAMPLE", "run_scenario"]

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


class _Run:
    """One run: the system, the application's records, and what the displays are shown."""

    def __init__(
        self,
        settings: DemoSettings,
        system: MessageSystem,
        started: float,
        ledger: Ledger | None = None,
    ) -> None:
        self.settings = settings
        self.system = system
        self.started = started
        self.ledger = Ledger() if ledger is None else ledger
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
        uses = (system.ref("search"), system.ref("aggregator"), ledger, self.events)
        worker: type[Agent] = LlmWorker
        arguments: tuple[object, ...] = (SimulatedModel(seed, settings.crash_rate), *uses)
        if settings.endpoint is not None:
            from .endpoint import EndpointWorker

            worker = EndpointWorker
            arguments = (*uses, settings.endpoint, settings.duration)
        await system.spawn_pool(
            worker,
            *arguments,
            size=settings.workers,
            name="llm",
            strategy=LoadBalancing.LEAST_LOADED,
            admission=model_budgets(settings.duration),
            max_restarts=RESTART_BUDGETS["llm"][0],
            max_seconds=RESTART_BUDGETS["llm"][1],
        )
        return system.ref("planner")

    async def ask(self, planner: AgentRef) -> None:
        """The user: questions at an even pace over the first 70 % of the run, but for those
        asked already (by a run before a crash, on the same records). A question is noted as
        asked once its cast has returned: with a journal, once it is committed."""
        settings = self.settings
        gap = settings.duration * 0.7 / settings.questions
        for number in range(1, settings.questions + 1):
            if number in self.ledger.asked:
                continue
            question = Question(number, QUESTIONS[(settings.seed + number) % len(QUESTIONS)])
            await planner.cast(question)
            self.ledger.asked[number] = question
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
                        self.circuit_openings[agent_name(agent_id)] += 1
                    self.events.add(
                        f"circuit of {agent_name(agent_id)}: {before.value} -> {state.value}"
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
            tree=supervisor_node("root", system.root, "running", 0, system, queues, circuits),
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
        initial=0.05, maximum=0.5, reset_after=1.0, rng=random_for(seed, "backoff", what)
    )


def _config(settings: DemoSettings, journal: SqliteJournal | None) -> MessageSystemConfig:
    config = MessageSystemConfig(
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
    return config if journal is None else attrs.evolve(config, journal=journal)


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


async def run_scenario(
    settings: DemoSettings,
    display: Display,
    *,
    journal: SqliteJournal | None = None,
    ledger: Ledger | None = None,
) -> Report:
    """Run the research assistant for at most ``settings.duration`` seconds and account for
    every question and task it was given.

    With a ``journal`` (``--journal``, see ``durable``) its messages outlive the process, and
    ``ledger`` is the application's records kept beside it, so that a run started again after
    a crash goes on where the last one stopped."""
    if settings.endpoint is not None:
        # Only a run on a real model needs the llm extra; imported before the run's clock
        # starts, as the SDK takes a second to import.
        from . import endpoint  # noqa: F401
    started = trio.current_time()
    run: _Run | None = None
    final: Snapshot | None = None
    escalation = None
    with _runtime_logs_kept_quiet():
        try:
            async with open_message_system(_config(settings, journal)) as system:
                run = _Run(settings, system, started, ledger)
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
