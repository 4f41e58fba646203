"""The demo: a planner, a simulated model, a note-taker and a flaky calculator tool.

It shows each piece of the core at work: ``call`` with deferred replies and timeouts, ``cast``,
``info`` from timers and monitors, a crash the caller sees as an error, dead letters, and the
statistics at the end. Everything is offline and seeded.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import attrs
import trio

from .. import (
    Agent,
    AgentExited,
    AgentRef,
    AgentStarted,
    Context,
    Down,
    MessageSystem,
    Priority,
    StopReason,
    open_message_system,
)
from ..errors import AgentStopped, CallFailed, CallTimeout

__all__ = ["run_demo"]


@attrs.frozen
class Question:
    text: str
    numbers: tuple[int, int]


@attrs.frozen
class Prompt:
    text: str


@attrs.frozen
class Divide:
    numerator: int
    denominator: int


@attrs.frozen
class Remember:
    note: str


@attrs.frozen
class Recall:
    pass


class Reporter(logging.Handler):
    """Prints what happens, stamped with the demo's elapsed time.

    It is also a logging handler, so that the runtime's crash reports appear in the same
    stream, one line each (the traceback is the agent's own business here).
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.started = trio.current_time()

    def __call__(self, who: str, what: str) -> None:
        print(f"  {trio.current_time() - self.started:6.3f}s  {who:<12} {what}", flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        self("runtime", record.getMessage())


class SimulatedModel(Agent):
    """An offline stand-in for an LLM: answers after a seeded, random latency."""

    def __init__(self, seed: int, report: Reporter) -> None:
        self.random = random.Random(seed)
        self.report = report

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if not isinstance(message, Prompt):
            return await super().handle_call(message, ctx)
        latency = self.random.uniform(0.02, 0.12)
        await trio.sleep(latency)
        return f"an answer to {message.text!r} (thought for {latency * 1000:.0f} ms)"


class Calculator(Agent):
    """A tool agent. It crashes on a division by zero, as real tools do on bad input."""

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if not isinstance(message, Divide):
            return await super().handle_call(message, ctx)
        return message.numerator / message.denominator


class NoteTaker(Agent):
    """Keeps notes sent by cast; answers ``Recall`` calls with all of them."""

    async def on_start(self) -> None:
        self.notes: list[str] = []

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if not isinstance(message, Remember):
            return await super().handle_cast(message, ctx)
        self.notes.append(message.note)

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if not isinstance(message, Recall):
            return await super().handle_call(message, ctx)
        return list(self.notes)


class Planner(Agent):
    """Answers a question by asking the model and the calculator, without blocking its mailbox.

    Each question is deferred: a background task does the slow work and replies later, so the
    planner keeps serving other messages meanwhile.
    """

    def __init__(self, model: AgentRef, calculator: AgentRef, notes: AgentRef, report: Reporter):
        self.model = model
        self.calculator = calculator
        self.notes = notes
        self.report = report

    async def on_start(self) -> None:
        self.answered = 0
        self.asked = 0

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if not isinstance(message, Question):
            return await super().handle_call(message, ctx)
        self.asked += 1
        if self.asked == 1:
            ctx.send_after(_TICK, "tick")
        reply = ctx.defer()
        ctx.start_soon(self._answer, message, reply)
        return None

    async def _answer(self, question: Question, reply: Any) -> None:
        answer = await self.model.call(Prompt(question.text), timeout=1.0)
        numerator, denominator = question.numbers
        try:
            ratio = await self.calculator.call(Divide(numerator, denominator), timeout=1.0)
            detail = f"{numerator}/{denominator} = {ratio:.2f}"
        except CallFailed as failure:
            detail = f"the calculator failed: {failure.__cause__!r}"
        except AgentStopped:
            detail = "the calculator is gone"
        await self.notes.cast(Remember(question.text))
        self.answered += 1
        await reply.reply(f"{answer}; {detail}")

    async def handle_info(self, message: Any, ctx: Context) -> None:
        if message != "tick":
            return await super().handle_info(message, ctx)
        self.report("planner", f"timer: {self.answered} of {self.asked} questions answered")
        if self.answered < self.asked:
            ctx.send_after(_TICK, "tick")


class Observer(Agent):
    """Watches the system: lifecycle notifications and a monitor on the calculator."""

    def __init__(self, report: Reporter) -> None:
        self.report = report

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        if not isinstance(message, AgentRef):
            return await super().handle_call(message, ctx)
        ctx.monitor(message)
        return None

    async def handle_info(self, message: Any, ctx: Context) -> None:
        if isinstance(message, AgentStarted):
            self.report("observer", f"started {message.agent_id!r}")
        elif isinstance(message, AgentExited):
            self.report("observer", f"{message.agent_id!r} exited: {_reason(message.reason)}")
        elif isinstance(message, Down):
            self.report("observer", f"DOWN {message.ref.name}: {_reason(message.reason)}")
        else:
            await super().handle_info(message, ctx)


_TICK = 0.1


def _reason(reason: object) -> str:
    return reason.value if isinstance(reason, StopReason) else f"crashed with {reason!r}"


async def run_demo(seed: int, questions: int) -> int:
    """Run the demo and return the exit code (0 when every question was answered)."""
    print("terraphim-actors demo: a planner, a simulated model, notes and a flaky tool\n")
    report = Reporter()
    runtime_log = logging.getLogger("terraphim_actors")
    runtime_log.addHandler(report)
    runtime_log.propagate = False
    try:
        return await _run(report, seed, questions)
    finally:
        runtime_log.removeHandler(report)
        runtime_log.propagate = True


async def _run(report: Reporter, seed: int, questions: int) -> int:
    async with open_message_system() as system:
        observer = await system.spawn(Observer, report, name="observer")
        system.subscribe(observer)
        model = await system.spawn(SimulatedModel, seed, report, name="model")
        calculator = await system.spawn(Calculator, name="calculator")
        notes = await system.spawn(NoteTaker, name="notes")
        planner = await system.spawn(Planner, model, calculator, notes, report, name="planner")
        await observer.call(calculator)
        answered = await _ask(system, planner, questions, seed, report)
        await _show_edges(system, notes, report)
        recalled = await notes.call(Recall())
        report("main", f"notes hold {len(recalled)} questions")
        _print_statistics(system)
    print("\nAll agents stopped; the system shut down cleanly.")
    return 0 if answered == questions else 1


async def _ask(
    system: MessageSystem, planner: AgentRef, questions: int, seed: int, report: Reporter
) -> int:
    """Ask all the questions at once; one of them makes the calculator crash."""
    rng = random.Random(seed)
    answered = 0

    async def ask(number: int) -> None:
        nonlocal answered
        denominator = 0 if number == 2 else rng.randint(1, 9)
        question = Question(f"question {number}", (rng.randint(10, 99), denominator))
        report("main", f"asks {question.text} ({question.numbers[0]}/{denominator})")
        answer = await planner.call(question, timeout=2.0)
        report("main", f"got {answer}")
        answered += 1

    async with trio.open_nursery() as nursery:
        for number in range(1, questions + 1):
            nursery.start_soon(ask, number)
            await trio.sleep(0.01)
    return answered


async def _show_edges(system: MessageSystem, notes: AgentRef, report: Reporter) -> None:
    """What happens at the edges: a timeout, an unhandled message, a dead agent."""
    model = system.whereis("model")
    assert model is not None
    try:
        await model.call(Prompt("a question with a tight deadline"), timeout=0.001)
    except CallTimeout as timeout:
        report("main", f"CallTimeout as expected: {timeout}")
    await notes.cast("a message NoteTaker does not handle", priority=Priority.HIGH)
    calculator = system.ref("calculator")
    restarts = system.get_stats()[0].agent_restarts
    report("main", f"the calculator crashed; its supervisor restarted it ({restarts} restart)")
    report("main", f"and the same ref still works: 6 / 3 = {await calculator.call(Divide(6, 3))}")
    await system.stop(calculator)


def _print_statistics(system: MessageSystem) -> None:
    stats, mailboxes = system.get_stats()
    print("\nSystem statistics")
    print(f"  agents running     {stats.agents_running}")
    print(f"  agents spawned     {stats.agents_spawned}")
    print(f"  agent crashes      {stats.agent_crashes}")
    print(f"  agent restarts     {stats.agent_restarts}")
    print(f"  messages received  {stats.messages_received}")
    print(f"  messages processed {stats.messages_processed}")
    print(f"  dead letters       {stats.dead_letters}")
    for reason, count in stats.dead_letters_by_reason.items():
        print(f"    {reason.value:<16} {count}")
    delivery = system.delivery.get_stats()
    print(f"\nDelivery ({system.delivery.config.guarantee.value} by default)")
    for field in attrs.fields(type(delivery)):
        print(f"  {field.name.replace('_', ' '):<22} {getattr(delivery, field.name)}")
    for agent_id, state in system.router.stats().circuits.items():
        print(f"  circuit of {agent_id.name or agent_id!r}: {state.value}")
    print("\nMailboxes")
    print(f"  {'agent':<12} {'received':>8} {'processed':>9} {'queued':>6} {'peak':>5}")
    for mailbox in mailboxes:
        name = mailbox.agent_id.name or repr(mailbox.agent_id)
        print(
            f"  {name:<12} {mailbox.messages_received:>8} {mailbox.messages_processed:>9}"
            f" {mailbox.current_queue_size:>6} {mailbox.peak_queue_size:>5}"
        )
    print("\nRecent dead letters")
    for letter in system.dead_letters:
        print(f"  {letter.reason.value:<16} {letter.envelope!r}")
