"""A stateful property test of the whole system: random traffic, crashes, restarts, full
mailboxes, open circuits and the passing of time, with the contract checked after every step.

Hypothesis drives a synchronous ``RuleBasedStateMachine``; the system runs in ONE ``trio.run``
in a helper thread for the whole example, on a ``MockClock`` that never moves by itself. Each
rule calls into that run (``trio.from_thread.run``) and returns once every task is blocked
(``wait_all_tasks_blocked``), so the machine always inspects a quiet system; virtual time moves
only in the ``advance`` rule, which stops at every pending call deadline and retry on the way,
as an autojumping clock would.

The system under test::

    root (one for one, no escalation)
     ├── w0, w1        workers, unbounded mailboxes
     ├── reject        worker, 2 slots, REJECT when full
     ├── block         worker, 2 slots, BLOCK when full (casts only: a full one holds its sender)
     ├── tree          supervisor (one for one, 2 restarts in 5 s, temporary)
     │    └── t0, t1   workers; too many crashes and the tree gives up for good
     └── pool          two workers behind one ref, round robin

Two sender tasks send casts and infos one at a time, in order, under each guarantee and
priority, by ref or by ``send_message``; calls run in tasks of their own. Every payload is a
``Msg`` with a number unique in the example, so the ledger (``World``) knows of each message
how often its handler started and completed, and ``system.dead_letters`` tells the rest.
Faults: a handler crash on the next run of an agent (``crash``; twice in a row, ``trip``, opens
its circuit), a handler held until released (``hold``, ``fill``), an agent terminated and
restarted by its supervisor, an exactly-once envelope sent again, a tree that escalates. And
the errors an agent says what to do about (``fault``): one in ``resume_on`` (RESUME), one in
``stop_on`` (STOP: a root worker stops for good, and ``respawn`` starts a new one under its
name), ``errors.NonRetryable`` (RESTART, never redelivered), one in both ``no_retry_on`` and
``resume_on``, and a handler that hangs until its ``handler_timeout`` (1.5 s, on ``w1``, ``t1``
and the pool) cuts it: the pool's ``on_error`` resumes on ``HandlerTimeout``, the others restart.

Invariants (after every step unless said otherwise):

* delivery accounting: ``sent == acknowledged + duplicates_suppressed + failed +
  dead_lettered + pending``, and ``pending`` is exactly what waits somewhere: in a mailbox, in a
  handler, in the retry schedule, or in a sender blocked on a full mailbox; every message sent
  and not yet settled is among them (never lost), and once everything has settled (teardown)
  each one was handled or dead-lettered with a reason (or, a call, answered or failed);
* exactly once: no handler starts again once one completed (within the dedup window);
  at most once: a handler runs at most once, on the first attempt;
* a message of a retrying guarantee never ends as a dead letter for a reason that is retried
  (that would be a retry skipped), and ``RETRIES_EXHAUSTED`` only after ``max_retries``;
* FIFO per (sender, recipient) within a priority: messages whose handler first ran on their
  first try (no fault hit them on the way) ran in the order they were sent (not through the
  pool, whose members run side by side);
* every call returns or raises (a typed error) by its deadline, never later, never a hang;
  a call's handler runs at most once;
* a bounded mailbox never holds more than its capacity; no attempt exceeds ``max_retries``;
* the tree restarts at most 2 children in any 5 s window; after it escalates, none of its
  children runs again;
* directives: after RESUME the next message is handled by the same instance with its state
  (nothing it had counted is lost) and the agent is not restarted for it; after STOP the agent
  is not alive and never starts again under that name until respawned; a cast or info that
  failed with a non-retryable error is a ``REJECTED`` dead letter at once and never runs again;
  an at-most-once one that was resumed is a ``HANDLER_CRASHED`` dead letter; a faulted call
  fails with ``CallFailed`` caused by the very error (a hung one: ``HandlerTimeout``, or
  ``CallTimeout`` if its caller gave up first);
* no handler of an agent with a ``handler_timeout`` is still running past it;
* admission: the pool shares a rate limit (3 a second) and one place in its handlers; what they
  refuse waits in delivery (pending, as ``admission_waiting``), and a ``retry_after`` fault
  (the pool's handler asks for the message again 1 s later, as a 429 does) is no run and no
  failure: the message runs again later, or is refused for its deadline;
* hibernation (``w0`` sleeps after 3 s idle; ``hibernate`` lets that pass, ``wake`` calls it):
  asleep only when nothing waits for it and no handler runs, never awake and idle past its
  ``hibernate_after``, and woken by a message with the same instance (no new start).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import math
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from supervisor import RestartType, Supervisor
from terraphim_actors import (
    Agent,
    AgentId,
    AgentRef,
    CircuitBreakerConfig,
    ConcurrencyLimit,
    Context,
    DeadLetter,
    DeadLetterReason,
    DedupWindow,
    DeliveryConfig,
    DeliveryGuarantee,
    Directive,
    Envelope,
    MailboxConfig,
    MessageKind,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    OverflowPolicy,
    Priority,
    RateLimit,
    RouterConfig,
    cast,
    info,
    open_message_system,
)
from terraphim_actors._process.lifecycle import CellState
from terraphim_actors.errors import (
    AgentStopped,
    CallFailed,
    CallTimeout,
    HandlerTimeout,
    MessagingError,
    NonRetryable,
)
from terraphim_actors.testing import InjectedFault

AT_MOST_ONCE = DeliveryGuarantee.AT_MOST_ONCE
AT_LEAST_ONCE = DeliveryGuarantee.AT_LEAST_ONCE
EXACTLY_ONCE = DeliveryGuarantee.EXACTLY_ONCE

MAX_RETRIES = 2
CAPACITY = 2
TREE_RESTARTS = 2
TREE_SECONDS = 5.0
DEDUP = DedupWindow()
#: Dead-letter reasons a retrying guarantee retries: never a final reason while the system runs.
RETRIED = frozenset(
    {
        DeadLetterReason.NOT_FOUND,
        DeadLetterReason.MAILBOX_FULL,
        DeadLetterReason.CIRCUIT_OPEN,
        DeadLetterReason.HANDLER_CRASHED,
    }
)
#: Virtual seconds the teardown lets pass so that every retry, timeout and circuit is done.
SETTLE = 400.0
#: Real seconds the system may take to start in its thread before the example fails.
STARTUP_TIMEOUT = 60.0
#: Real seconds one step may take before it counts as a hang (a step takes milliseconds: time
#: stands still within it, so a step that waits for time to pass would never end).
STEP_TIMEOUT = 10.0
#: Real seconds the system may take to shut down at the end of an example.
SHUTDOWN_TIMEOUT = 30.0
#: Float noise allowed when comparing a completion time with a deadline.
EPSILON = 1e-9

#: The root never gives up on a crash or two per step, but a crash loop (a bug) escalates and
#: fails the example instead of spinning at one instant of virtual time.
CONFIG = MessageSystemConfig(
    max_restarts=1_000,
    max_seconds=1.0,
    dead_letter_capacity=1_000_000,
    delivery=DeliveryConfig(max_retries=MAX_RETRIES, retry_delay=0.5, jitter=0.0, seed=0),
    router=RouterConfig(
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, reset_timeout=3.0)
    ),
)

ROOT_WORKERS = ("w0", "w1", "reject", "block")
TREE_WORKERS = ("t0", "t1")
#: A round-robin pool of two workers, both reporting as "pool"; FIFO is not promised through
#: it (its members run side by side), so the order check leaves it out.
POOL = "pool"
WORKERS = (*ROOT_WORKERS, *TREE_WORKERS, POOL)
#: Who takes calls: not ``block``, whose full mailbox would hold a caller inside ``send``.
CALLABLE = ("w0", "w1", "reject", "t0", "t1", POOL)
BOUNDED = ("reject", "block")
MAILBOXES = {
    "reject": MailboxConfig(capacity=CAPACITY, overflow=OverflowPolicy.REJECT),
    "block": MailboxConfig(capacity=CAPACITY, overflow=OverflowPolicy.BLOCK),
}
SENDERS = 2

#: Seconds a handler of ``w1``, ``t1`` or a pool member may run (a hold there is cut too).
HANDLER_TIMEOUT = 1.5
TIMED = ("w1", "t1", POOL)
#: The worker that hibernates once idle this long (``hibernate``, ``wake``).
SLEEPER = "w0"
HIBERNATE_AFTER = 3.0
#: The faults a handler can be given (``fault``), and which agents each applies to: only
#: root workers stop for good (``respawn`` brings them back), only timed agents hang.
FAULT_TARGETS = {
    "resume": WORKERS,
    "stop": ROOT_WORKERS,
    "reject": WORKERS,
    "reject_resume": WORKERS,
    "hang": TIMED,
    "retry_after": (POOL,),
}
#: Seconds a ``retry_after`` fault asks to wait; the pool's admission budgets.
RETRY_AFTER = 1.0
POOL_RATE = 3

guarantees = st.sampled_from([AT_MOST_ONCE, AT_LEAST_ONCE, EXACTLY_ONCE])
priorities = st.sampled_from(list(Priority))


# -- the ledger -------------------------------------------------------------------------------


@attrs.frozen
class Msg:
    """A payload: its number (unique in the example), and its sender and place in that
    sender's sequence (``None`` for calls)."""

    number: int
    sender: int | None = None
    seq: int = 0


@attrs.define
class Sent:
    """What the ledger knows of one message it sent."""

    number: int
    target: str
    agent_id: AgentId
    kind: str
    guarantee: DeliveryGuarantee
    priority: Priority
    sender: int | None
    seq: int
    #: The sender has begun sending it (it is in the system from then on).
    accepted: bool = False
    #: Sent again (exactly once, same envelope): excluded from order and run counts.
    resent: bool = False
    #: What the send raised (at most once only).
    error: BaseException | None = None


@attrs.frozen
class Run:
    """One start of a handler on a message."""

    agent: str
    attempt: int
    at: float
    #: A run of this message had completed before this one started.
    after_completion_at: float | None


@attrs.define
class CallRecord:
    started: float
    deadline: float
    done_at: float | None = None
    outcome: Any = None


@attrs.frozen
class Command:
    """What a sender task does next: send ``envelope`` (by ``send_message``) or ``payload``
    (through ``ref``)."""

    number: int
    ref: AgentRef
    payload: Msg
    kind: str
    options: MessageOptions
    envelope: Envelope | None


class Expected(Exception):
    """An error the workers resume on (a model's malformed answer, say)."""


class Fatal(Exception):
    """An error the workers stop for good on."""


class Malformed(Exception):
    """An error that will fail the same way again, after which the worker is fine."""


class Worker(Agent):
    """Reports each start and each handler run to the world; a call replies its number.

    Its state is a serial number per instance and the count of messages it completed: what a
    RESUME must keep and a restart starts afresh.
    """

    resume_on = (Expected, Malformed)
    stop_on = (Fatal,)
    no_retry_on = (Malformed,)

    def __init__(self, world: World, name: str, generation: int) -> None:
        self.world = world
        self.name = name
        self.generation = generation
        self.serial = 0
        self.completed = 0

    async def on_start(self, ctx: Context) -> None:
        self.serial = self.world.instance_started(self, ctx.self.name)

    def on_error(self, error: Exception, payload: Any, ctx: Context) -> Directive:
        """The pool's members wait out a hung model call; the others restart after one."""
        if isinstance(error, HandlerTimeout) and self.name == POOL:
            return Directive.RESUME
        return super().on_error(error, payload, ctx)

    async def handle_cast(self, message: Msg, ctx: Context) -> None:
        await self.world.handle(self, ctx)

    async def handle_info(self, message: Msg, ctx: Context) -> None:
        await self.world.handle(self, ctx)

    async def handle_call(self, message: Msg, ctx: Context) -> Any:
        await self.world.handle(self, ctx)
        return ("ok", message.number)


class World:
    """The system under test and everything known about what was done to it.

    Lives in the Trio thread; the machine reads it only while that thread is idle.
    """

    def __init__(
        self, system: MessageSystem, nursery: trio.Nursery, clock: trio.testing.MockClock
    ) -> None:
        self.system = system
        self.nursery = nursery
        self.clock = clock
        self.sent: dict[int, Sent] = {}
        self.runs: dict[int, list[Run]] = collections.defaultdict(list)
        self.completions: dict[int, list[float]] = collections.defaultdict(list)
        #: Each message's first run, in the order they happened: ``(number, attempt)``.
        self.first_runs: list[tuple[int, int]] = []
        self.calls: dict[int, CallRecord] = {}
        self.crash_next: collections.Counter[str] = collections.Counter()
        self.gates: dict[str, trio.Event] = {}
        self.in_handler: collections.Counter[str] = collections.Counter()
        self.starts: list[tuple[str, int, float]] = []
        self.refs: dict[str, AgentRef] = {}
        self.terminated: set[str] = set()
        self.tree: Supervisor | None = None
        self.generation = 0
        #: Generations of the tree that escalated, with how many starts they had by then.
        self.escalated: dict[int, int] = {}
        self.senders: list[trio.MemorySendChannel[Command]] = []
        self.busy = [False] * SENDERS
        self.seqs = [0] * SENDERS
        #: Exactly-once envelopes sent by ``send_message``, which can be sent again.
        self.resendable: list[int] = []
        self.envelopes: dict[int, Envelope] = {}
        self.next_number = 0
        self.violations: list[str] = []
        self.finished = trio.Event()
        #: Faults waiting for an agent's next handler runs (``fault``), in order.
        self.faults: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        #: The faults each message met, with the number of its run that met it (from 1).
        self.faulted: dict[int, list[tuple[str, int]]] = collections.defaultdict(list)
        #: Calls given a fault: when their faulted run started its handler.
        self.faulted_calls: dict[int, tuple[str, float]] = {}
        self.serials = 0
        #: Members expected to go on with the same instance: its serial and completed count.
        self.resumed: dict[str, tuple[int, int]] = {}
        #: Root workers stopped for good (by a ``stop`` fault) and not respawned since.
        self.stopped: set[str] = set()
        #: Members whose handler hangs (``hang``) until its time limit.
        self.hanging: set[str] = set()
        #: Handlers running on agents with a time limit: (member, number) -> their deadline.
        self.limits: dict[tuple[str, int], float] = {}

    # -- set-up ---------------------------------------------------------------------------

    async def start(self) -> None:
        for name in ROOT_WORKERS:
            await self.spawn(name)
        await self.start_tree()
        self.refs[POOL] = await self.system.spawn_pool(
            Worker,
            self,
            POOL,
            0,
            size=2,
            name=POOL,
            max_restarts=1_000,
            max_seconds=1.0,
            handler_timeout=HANDLER_TIMEOUT,
            admission=[RateLimit(requests=POOL_RATE, per=1.0), ConcurrencyLimit(1)],
        )
        for index in range(SENDERS):
            send_channel, receive_channel = trio.open_memory_channel[Command](math.inf)
            self.senders.append(send_channel)
            self.nursery.start_soon(self.sender, index, receive_channel)

    async def spawn(self, name: str) -> None:
        """Start root worker ``name`` (again, after it stopped for good)."""
        self.stopped.discard(name)
        self.refs[name] = await self.system.spawn(
            Worker,
            self,
            name,
            0,
            name=name,
            mailbox=MAILBOXES.get(name),
            handler_timeout=HANDLER_TIMEOUT if name in TIMED else None,
            hibernate_after=HIBERNATE_AFTER if name == SLEEPER else None,
        )

    async def start_tree(self) -> None:
        self.generation += 1
        for name in TREE_WORKERS:
            self.resumed.pop(name, None)  # the old tree's instances are gone with it
        specs = [
            self.system.agent_spec(
                Worker,
                self,
                name,
                self.generation,
                name=name,
                handler_timeout=HANDLER_TIMEOUT if name in TIMED else None,
            )
            for name in TREE_WORKERS
        ]
        self.tree = await self.system.start_supervisor(
            specs,
            max_restarts=TREE_RESTARTS,
            max_seconds=TREE_SECONDS,
            restart=RestartType.TEMPORARY,
            name=f"tree-{self.generation}",
        )
        for name in TREE_WORKERS:
            self.refs[name] = self.system.ref(name)

    # -- the agents' side -----------------------------------------------------------------

    def instance_started(self, worker: Worker, member: str) -> int:
        """Record a start of ``member`` (a pool's member, or the agent's name); its serial."""
        self.starts.append((worker.name, worker.generation, trio.current_time()))
        if member in self.resumed:
            self.violations.append(f"{member} restarted after an error it resumes on")
        if member in self.stopped:
            self.violations.append(f"{member} started again after it stopped for good")
        self.serials += 1
        return self.serials

    async def handle(self, worker: Worker, ctx: Context) -> None:
        envelope = ctx.envelope
        name = worker.name
        member = ctx.self.name
        assert member is not None
        number = envelope.payload.number
        runs = self.runs[number]
        completed = self.completions.get(number)
        now = trio.current_time()
        runs.append(Run(name, envelope.attempt, now, completed[0] if completed else None))
        if len(runs) == 1:
            self.first_runs.append((number, envelope.attempt))
        expected = self.resumed.pop(member, None)
        if expected is not None and expected != (worker.serial, worker.completed):
            self.violations.append(
                f"{member} resumed as (serial, completed) {expected} but runs"
                f" {number} as {(worker.serial, worker.completed)}"
            )
        if name in TIMED:
            self.limits[member, number] = now + HANDLER_TIMEOUT
        self.in_handler[name] += 1
        try:
            if self.faults[name] and self.faults[name][0] == "retry_after":
                # Not a run: the provider said "later"; the message comes back as it was.
                self.faults[name].popleft()
                runs.pop()
                if not runs:
                    self.first_runs.pop()
                    del self.runs[number]
                ctx.retry_after(RETRY_AFTER)
                return
            if self.faults[name]:
                fault = self.faults[name].popleft()
                self.faulted[number].append((fault, len(runs)))
                if envelope.kind is MessageKind.CALL:
                    self.faulted_calls[number] = (fault, now)
                await self.inject(fault, worker, member, number)
            if self.crash_next[name] > 0:
                self.crash_next[name] -= 1
                raise InjectedFault(f"{name} crashes on message {number}")
            gate = self.gates.get(name)
            if gate is not None:
                await gate.wait()
        finally:
            self.in_handler[name] -= 1
            self.limits.pop((member, number), None)
        worker.completed += 1
        self.completions[number].append(trio.current_time())

    async def inject(self, fault: str, worker: Worker, member: str, number: int) -> None:
        """Fail the handler run of ``number`` on ``member`` as ``fault`` says."""
        if fault in ("resume", "reject_resume") or (fault == "hang" and worker.name == POOL):
            self.resumed[member] = (worker.serial, worker.completed)
        if fault == "resume":
            raise Expected(f"{member} resumes after message {number}")
        if fault == "reject_resume":
            raise Malformed(f"{member} cannot parse message {number}")
        if fault == "reject":
            raise NonRetryable(f"{member} rejects message {number}")
        if fault == "stop":
            self.stopped.add(member)
            raise Fatal(f"{member} stops for good on message {number}")
        assert fault == "hang"
        self.hanging.add(member)
        try:
            await trio.sleep_forever()  # until the handler_timeout cuts it
        finally:
            self.hanging.discard(member)

    # -- the senders' side ----------------------------------------------------------------

    def new_number(self) -> int:
        self.next_number += 1
        return self.next_number

    def options(self, guarantee: DeliveryGuarantee, priority: Priority) -> MessageOptions:
        return MessageOptions(guarantee=guarantee, priority=priority)

    async def send(
        self,
        sender: int,
        target: str,
        kind: str,
        guarantee: DeliveryGuarantee,
        priority: Priority,
        by_envelope: bool,
    ) -> None:
        ref = self.refs[target]
        number = self.new_number()
        self.seqs[sender] += 1
        payload = Msg(number, sender, self.seqs[sender])
        options = self.options(guarantee, priority)
        envelope = None
        if by_envelope:
            if kind == "cast":
                envelope = cast(None, payload, options, recipient=ref.id)
            else:
                envelope = info(payload, recipient=ref.id, options=options)
            if guarantee is EXACTLY_ONCE:
                self.resendable.append(number)
                self.envelopes[number] = envelope
        self.sent[number] = Sent(
            number, target, ref.id, kind, guarantee, priority, sender, payload.seq
        )
        command = Command(number, ref, payload, kind, options, envelope)
        self.senders[sender].send_nowait(command)
        await trio.lowlevel.checkpoint()

    async def resend(self, choice: int) -> None:
        number = self.resendable[choice % len(self.resendable)]
        record = self.sent[number]
        record.resent = True
        envelope = self.envelopes[number]
        assert record.sender is not None
        ref = self.refs[record.target]
        command = Command(number, ref, envelope.payload, record.kind, envelope.options, envelope)
        self.senders[record.sender].send_nowait(command)
        await trio.lowlevel.checkpoint()

    async def sender(self, index: int, commands: trio.MemoryReceiveChannel[Command]) -> None:
        async for command in commands:
            self.sent[command.number].accepted = True
            self.busy[index] = True
            try:
                if command.envelope is not None:
                    await self.system.send_message(command.envelope)
                elif command.kind == "cast":
                    await command.ref.cast(command.payload, options=command.options)
                else:
                    await command.ref.info(command.payload, options=command.options)
            except MessagingError as error:
                self.sent[command.number].error = error
            except Exception as error:
                self.violations.append(f"a send of {command.number} raised {error!r}")
            finally:
                self.busy[index] = False

    async def call(
        self, target: str, guarantee: DeliveryGuarantee, priority: Priority, timeout: float
    ) -> None:
        ref = self.refs[target]
        number = self.new_number()
        self.sent[number] = Sent(
            number, target, ref.id, "call", guarantee, priority, None, 0, accepted=True
        )
        now = trio.current_time()
        record = self.calls[number] = CallRecord(started=now, deadline=now + timeout)
        options = self.options(guarantee, priority)

        async def make_call() -> None:
            try:
                record.outcome = await ref.call(Msg(number), timeout=timeout, options=options)
            except MessagingError as error:
                record.outcome = error
            except Exception as error:
                record.outcome = error
                self.violations.append(f"call {number} raised an untyped {error!r}")
            record.done_at = trio.current_time()

        self.nursery.start_soon(make_call)
        await trio.lowlevel.checkpoint()

    # -- faults and time ------------------------------------------------------------------

    async def hold(self, name: str) -> None:
        self.gates.setdefault(name, trio.Event())
        await trio.lowlevel.checkpoint()

    async def release(self, name: str) -> None:
        gate = self.gates.pop(name, None)
        if gate is not None:
            gate.set()
        await trio.lowlevel.checkpoint()

    async def terminate(self, name: str) -> None:
        await self.release(name)  # its stop would otherwise wait out its shutdown time
        await self.system.root.terminate_child(self.refs[name].id)
        self.terminated.add(name)
        self.resumed.pop(name, None)  # its restart is the rule's doing
        # A STOP it met while being terminated (its handler, released, took the next message)
        # leaves it to the supervisor's explicit restart_child, as any terminated child.
        self.stopped.discard(name)

    async def restart(self, name: str) -> None:
        await self.system.root.restart_child(self.refs[name].id)
        self.terminated.discard(name)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, stopping at each call deadline and retry due on the way."""
        target = trio.current_time() + seconds
        while True:
            now = trio.current_time()
            due = [
                record.deadline
                for record in self.calls.values()
                if record.done_at is None and record.deadline > now
            ]
            due += [c.due for c in self.system.delivery.get_retry_candidates() if c.due > now]
            due += [deadline for deadline in self.limits.values() if deadline > now]
            step_to = min([target, *due])
            self.clock.jump(step_to - now)
            await trio.testing.wait_all_tasks_blocked()
            if step_to >= target:
                return

    async def settle(self) -> None:
        """Release every handler, stop crashing, and let everything run its course."""
        self.crash_next.clear()
        self.faults.clear()
        for name in list(self.gates):
            await self.release(name)
        await trio.testing.wait_all_tasks_blocked()
        await self.advance(SETTLE)

    # -- checks ---------------------------------------------------------------------------

    def dead_letters(self) -> dict[int, list[DeadLetter]]:
        letters: dict[int, list[DeadLetter]] = collections.defaultdict(list)
        for letter in self.system.dead_letters:
            payload = letter.envelope.payload
            if isinstance(payload, Msg):
                letters[payload.number].append(letter)
        return letters

    def check(self) -> None:
        """Every invariant of the module docstring that holds at any quiet moment."""
        assert not self.violations, self.violations
        self.check_accounting()
        self.check_guarantees()
        self.check_order()
        self.check_calls()
        self.check_mailboxes()
        self.check_tree()
        self.check_directives()
        self.check_sleeper()

    def check_sleeper(self) -> None:
        """The sleeper is asleep only when idle, and asleep once idle past its time."""
        if SLEEPER in self.stopped | self.terminated:
            return
        cell = self.refs[SLEEPER]._agent()
        mailbox = cell.mailbox.stats()
        busy = self.in_handler[SLEEPER] > 0 or mailbox.current_queue_size > 0
        if cell.state is CellState.HIBERNATED:
            assert not busy, f"{SLEEPER} hibernated with work to do"
        elif cell.state is CellState.RUNNING and not busy:
            started = max((at for name, _, at in self.starts if name == SLEEPER), default=0.0)
            idle_since = max(mailbox.last_activity or 0.0, started)
            idle_for = trio.current_time() - idle_since
            assert idle_for <= HIBERNATE_AFTER + EPSILON, f"{SLEEPER} idle {idle_for} s, awake"

    def check_accounting(self) -> None:
        delivery = self.system.delivery
        stats = delivery.get_stats()
        settled = (
            stats.acknowledged + stats.duplicates_suppressed + stats.failed + stats.dead_lettered
        )
        assert stats.sent == settled + stats.pending
        queued = sum(mailbox.current_queue_size for mailbox in self.system.get_stats()[1])
        in_handlers = sum(self.in_handler.values())
        retries = delivery.get_retry_candidates()
        blocked = sum(self.busy)
        admitting = stats.admission_waiting
        assert stats.pending == queued + in_handlers + len(retries) + blocked + admitting, (
            f"pending {stats.pending} != queued {queued} + in handlers {in_handlers}"
            f" + retries {len(retries)} + blocked senders {blocked}"
            f" + waiting for admission {admitting}: {stats}"
        )
        assert all(candidate.attempt <= MAX_RETRIES for candidate in retries)
        letters = self.dead_letters()
        unsettled = [
            number
            for number, record in self.sent.items()
            if record.accepted
            and not self.completions.get(number)
            and number not in letters
            and not (number in self.calls and self.calls[number].done_at is not None)
        ]
        assert len(unsettled) <= stats.pending, (
            f"messages neither handled, dead-lettered nor pending: {unsettled}, {stats}"
        )

    def check_guarantees(self) -> None:
        letters = self.dead_letters()
        for number, runs in self.runs.items():
            record = self.sent[number]
            assert all(run.attempt <= MAX_RETRIES for run in runs), (number, runs)
            if record.kind == "call":
                assert len(runs) == 1, f"call {number} handled {len(runs)} times: {runs}"
            if record.guarantee is AT_MOST_ONCE:
                assert [run.attempt for run in runs] == [0], f"{number} redelivered: {runs}"
            elif not record.resent:
                assert len(runs) <= MAX_RETRIES + 1, (number, runs)
            if record.guarantee is EXACTLY_ONCE:
                again = [
                    run
                    for run in runs
                    if run.after_completion_at is not None
                    and run.at - run.after_completion_at < DEDUP.max_age
                ]
                assert not again, f"exactly-once {number} handled again: {runs}"
        if self.system.closing:
            return
        for number, found in letters.items():
            record = self.sent[number]
            for letter in found:
                if record.kind == "call" and letter.reason is DeadLetterReason.HANDLER_CRASHED:
                    # Its handler (an exactly-once call runs on after its caller gave up) failed
                    # with nobody waiting: a call's handler never runs again, no retry skipped.
                    assert isinstance(self.calls[number].outcome, CallTimeout), letter
                    continue
                if record.guarantee is not AT_MOST_ONCE:
                    assert letter.reason not in RETRIED, (
                        f"{number} ({record.guarantee.value}) dead-lettered for"
                        f" {letter.reason.value}, which is retried: {letter}"
                    )
                if letter.reason is DeadLetterReason.RETRIES_EXHAUSTED:
                    assert letter.envelope.attempt == MAX_RETRIES or record.resent, letter

    def check_order(self) -> None:
        lanes: dict[tuple[int, AgentId, Priority], list[int]] = collections.defaultdict(list)
        for number, attempt in self.first_runs:
            record = self.sent[number]
            if record.sender is None or record.resent or attempt != 0 or record.target == POOL:
                continue
            lanes[record.sender, record.agent_id, record.priority].append(record.seq)
        for lane, seqs in lanes.items():
            assert seqs == sorted(seqs), f"out of order from sender {lane[0]}: {seqs} ({lane})"

    def check_calls(self) -> None:
        now = trio.current_time()
        for number, record in self.calls.items():
            if record.done_at is None:
                assert now < record.deadline, f"call {number} still waits past its deadline"
                continue
            assert record.done_at <= record.deadline + EPSILON, (number, record)
            outcome = record.outcome
            assert outcome == ("ok", number) or isinstance(outcome, MessagingError), record
            if number in self.faulted_calls:
                self.check_faulted_call(number, record)

    def check_faulted_call(self, number: int, record: CallRecord) -> None:
        """A call whose handler failed was told why: ``CallFailed`` caused by that error."""
        fault, started = self.faulted_calls[number]
        outcome = record.outcome
        if fault == "hang" and isinstance(outcome, AgentStopped):
            return  # stopped (terminated, or its tree gave up) while it hung
        if fault == "hang":
            cut_at = started + HANDLER_TIMEOUT
            if abs(record.deadline - cut_at) < EPSILON and isinstance(outcome, CallTimeout):
                return  # its caller gave up at the very moment the limit cut the handler
            if record.deadline < cut_at - EPSILON:
                assert isinstance(outcome, CallTimeout), (number, outcome)
                return
        assert isinstance(outcome, CallFailed), (number, fault, outcome)
        causes = {
            "resume": Expected,
            "stop": Fatal,
            "reject": NonRetryable,
            "reject_resume": Malformed,
            "hang": HandlerTimeout,
        }
        assert isinstance(outcome.__cause__, causes[fault]), (number, fault, outcome)

    def check_mailboxes(self) -> None:
        for mailbox in self.system.get_stats()[1]:
            name = mailbox.agent_id.name
            if name in BOUNDED:
                assert mailbox.current_queue_size <= CAPACITY, mailbox
                assert mailbox.peak_queue_size <= CAPACITY, mailbox

    def check_tree(self) -> None:
        assert self.tree is not None
        restarts_by_generation: dict[int, list[float]] = collections.defaultdict(list)
        seen: set[tuple[str, int]] = set()
        for name, generation, at in self.starts:
            if name in TREE_WORKERS:
                if (name, generation) in seen:
                    restarts_by_generation[generation].append(at)
                seen.add((name, generation))
        for times in restarts_by_generation.values():
            for at in times:
                window = [other for other in times if at - TREE_SECONDS < other <= at]
                assert len(window) <= TREE_RESTARTS, f"restarts {times} exceed the intensity"
        if self.tree.stats().escalations and self.generation not in self.escalated:
            self.escalated[self.generation] = self.tree_starts(self.generation)
        for generation, starts in self.escalated.items():
            assert self.tree_starts(generation) == starts, f"tree {generation} started again"
            if generation == self.generation:
                assert not any(self.refs[name].alive for name in TREE_WORKERS)

    def check_directives(self) -> None:
        """What each fault's directive promises a user, as far as a quiet moment shows it."""
        letters = self.dead_letters()
        for number, faults in self.faulted.items():
            record = self.sent[number]
            if record.kind == "call":
                continue
            reasons = {letter.reason for letter in letters.get(number, ())}
            for fault, run in faults:
                if fault in ("reject", "reject_resume"):
                    assert DeadLetterReason.REJECTED in reasons, (number, fault, reasons)
                    assert record.resent or len(self.runs[number]) == run, (
                        f"{number} ran again after {fault}: {self.runs[number]}"
                    )
                if fault == "resume" and record.guarantee is AT_MOST_ONCE:
                    assert DeadLetterReason.HANDLER_CRASHED in reasons, (number, reasons)
        for name in self.stopped:
            assert not self.refs[name].alive, f"{name} is alive after it stopped for good"
        now = trio.current_time()
        for (member, number), deadline in self.limits.items():
            assert now < deadline, f"{member} still handles {number} past its handler_timeout"

    def tree_starts(self, generation: int) -> int:
        return sum(1 for name, gen, _ in self.starts if name in TREE_WORKERS and gen == generation)

    def check_settled(self) -> None:
        """Once everything has run its course: nothing pending, each message accounted for."""
        stats = self.system.delivery.get_stats()
        assert stats.pending == 0, stats
        letters = self.dead_letters()
        for number, record in self.sent.items():
            if not record.accepted:
                continue
            completed = bool(self.completions.get(number))
            if record.kind == "call":
                call_record = self.calls[number]
                assert call_record.done_at is not None, f"call {number} never ended"
                if call_record.outcome == ("ok", number):
                    assert completed
                continue
            assert completed or number in letters, f"message {number} lost: {record}"
            if record.guarantee is AT_MOST_ONCE:
                assert completed + len(letters.get(number, ())) == 1, (number, letters)


# -- the Trio thread --------------------------------------------------------------------------


class TrioThread:
    """One ``trio.run`` in a helper thread for a whole example, driven from the test thread."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock()
        self.world: World | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        #: Drives each step from a thread of its own, so that the test thread can give up on
        #: one that hangs.
        self._driver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="step")
        self._thread = threading.Thread(target=self._main, name="trio-machine", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=STARTUP_TIMEOUT):
            raise TimeoutError(f"the system did not start within {STARTUP_TIMEOUT} s")
        self._raise_if_failed()

    def _main(self) -> None:
        try:
            trio.run(self._run, clock=self.clock)
        except BaseException as error:
            self.error = error
        finally:
            self._ready.set()

    async def _run(self) -> None:
        async with open_message_system(CONFIG) as system, trio.open_nursery() as nursery:
            world = World(system, nursery, self.clock)
            await world.start()
            await trio.testing.wait_all_tasks_blocked()
            self.world = world
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await world.finished.wait()
            nursery.cancel_scope.cancel()
        stats = system.delivery.get_stats()
        assert stats.pending == 0, f"after shutdown: {stats}"

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def run(self, step: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``step`` in the Trio thread, then let every task run until all are blocked."""

        async def then_settle() -> None:
            await step(*args)
            await trio.testing.wait_all_tasks_blocked()

        step_over = self._driver.submit(trio.from_thread.run, then_settle, trio_token=self.token)
        try:
            step_over.result(timeout=STEP_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise AssertionError(
                f"{step.__name__}{args} has not ended after {STEP_TIMEOUT} s: it hangs, with "
                f"these tasks waiting:\n{self._waiting_tasks()}"
            ) from None
        except trio.RunFinishedError:
            self._thread.join()
            self._raise_if_failed()
            raise

    def _waiting_tasks(self) -> str:
        """Where each task of the run waits (its innermost frames), as far as the run answers
        within a few seconds."""
        described: list[str] = []
        asking = threading.Thread(
            target=lambda: described.append(
                trio.from_thread.run_sync(_describe_tasks, trio_token=self.token)
            ),
            daemon=True,
        )
        asking.start()
        asking.join(timeout=5.0)
        return described[0] if described else "(the run did not answer)"

    def check(self, check: Callable[[], None]) -> None:
        """Run ``check`` in the Trio thread (which is idle: nothing changes under it)."""
        trio.from_thread.run_sync(check, trio_token=self.token)

    def close(self, *, report: bool = True) -> None:
        """End the run (the system shuts down) and, if ``report``, raise what went wrong in
        it, if anything."""
        world = self.world
        if world is not None and self._thread.is_alive():

            def finish() -> None:
                # After a failed step agents may still be held: let the clock jump through
                # their shutdown time rather than wait on it for ever.
                self.clock.autojump_threshold = 0
                for gate in world.gates.values():
                    gate.set()
                world.finished.set()

            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(finish, trio_token=self.token)
        self._thread.join(timeout=SHUTDOWN_TIMEOUT)
        self._driver.shutdown(wait=False)
        if self._thread.is_alive():
            raise AssertionError(f"the system has not shut down after {SHUTDOWN_TIMEOUT} s")
        if report:
            self._raise_if_failed()


TRIO_SOURCE = os.path.dirname(trio.__file__)


def _describe_tasks() -> str:
    """Every task of the current run, indented under its parent, with its innermost frames
    outside Trio."""
    lines: list[str] = []

    def describe(task: trio.lowlevel.Task, depth: int) -> None:
        frames = [
            f"{frame.f_code.co_name}:{line}"
            for frame, line in task.iter_await_frames()
            if not frame.f_code.co_filename.startswith(TRIO_SOURCE)
        ]
        lines.append(f"{'  ' * depth}{task.name}: {' > '.join(frames[-4:])}")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                describe(child, depth + 1)

    describe(trio.lowlevel.current_root_task(), 0)
    return "\n".join(lines)


# -- the machine ------------------------------------------------------------------------------


class SystemMachine(RuleBasedStateMachine):
    """Rules act on the system through the Trio thread; invariants check the world."""

    def __init__(self) -> None:
        super().__init__()
        self.trio = TrioThread()
        assert self.trio.world is not None
        self.world = self.trio.world

    @rule(
        sender=st.integers(0, SENDERS - 1),
        agent=st.sampled_from(WORKERS),
        kind=st.sampled_from(["cast", "info"]),
        guarantee=guarantees,
        priority=priorities,
        by_envelope=st.booleans(),
    )
    def send(
        self,
        sender: int,
        agent: str,
        kind: str,
        guarantee: DeliveryGuarantee,
        priority: Priority,
        by_envelope: bool,
    ) -> None:
        self.trio.run(self.world.send, sender, agent, kind, guarantee, priority, by_envelope)

    @rule(
        agent=st.sampled_from(CALLABLE),
        guarantee=guarantees,
        priority=priorities,
        timeout=st.sampled_from([0.5, 2.0, 5.0]),
    )
    def call(
        self, agent: str, guarantee: DeliveryGuarantee, priority: Priority, timeout: float
    ) -> None:
        self.trio.run(self.world.call, agent, guarantee, priority, timeout)

    @precondition(lambda self: self.world.resendable)
    @rule(choice=st.integers(min_value=0))
    def resend(self, choice: int) -> None:
        self.trio.run(self.world.resend, choice)

    @rule(
        agent=st.sampled_from(WORKERS),
        times=st.sampled_from([1, 2, 3]),
        sender=st.integers(0, SENDERS - 1),
        now=st.booleans(),
    )
    def crash(self, agent: str, times: int, sender: int, now: bool) -> None:
        """Crash the next ``times`` runs of ``agent`` (twice in a row trips its circuit), at
        once with as many at-most-once casts, or on whatever reaches it next."""
        self.world.crash_next[agent] += times  # safe: the Trio thread is idle between steps
        for _ in range(times if now else 0):
            self.trio.run(
                self.world.send, sender, agent, "cast", AT_MOST_ONCE, Priority.HIGH, False
            )

    @rule(agent=st.sampled_from(WORKERS))
    def hold(self, agent: str) -> None:
        self.trio.run(self.world.hold, agent)

    @rule(agent=st.sampled_from(WORKERS))
    def release(self, agent: str) -> None:
        self.trio.run(self.world.release, agent)

    @rule(
        agent=st.sampled_from(BOUNDED),
        sender=st.integers(0, SENDERS - 1),
        guarantee=guarantees,
        count=st.integers(CAPACITY + 1, CAPACITY + 3),
    )
    def fill(self, agent: str, sender: int, guarantee: DeliveryGuarantee, count: int) -> None:
        """Hold a bounded agent and send it more than it can hold."""
        self.trio.run(self.world.hold, agent)
        for _ in range(count):
            self.trio.run(self.world.send, sender, agent, "cast", guarantee, Priority.NORMAL, False)

    @rule(
        data=st.data(),
        fault=st.sampled_from(sorted(FAULT_TARGETS)),
        times=st.sampled_from([1, 2]),
        sender=st.integers(0, SENDERS - 1),
        now=st.booleans(),
    )
    def fault(self, data: st.DataObject, fault: str, times: int, sender: int, now: bool) -> None:
        """Fail the next ``times`` runs of an agent with ``fault``, at once with as many
        at-most-once casts, or on whatever reaches it next."""
        agent = data.draw(st.sampled_from(FAULT_TARGETS[fault]), label="agent")
        self.world.faults[agent].extend([fault] * times)  # the Trio thread is idle
        for _ in range(times if now else 0):
            self.trio.run(
                self.world.send, sender, agent, "cast", AT_MOST_ONCE, Priority.HIGH, False
            )

    @precondition(lambda self: self.world.stopped)
    @rule(agent=st.sampled_from(ROOT_WORKERS))
    def respawn(self, agent: str) -> None:
        """Start a new agent under the name of one that stopped for good."""
        if agent in self.world.stopped:
            self.trio.run(self.world.spawn, agent)

    @precondition(lambda self: len(self.world.terminated) < len(ROOT_WORKERS))
    @rule(agent=st.sampled_from(ROOT_WORKERS))
    def terminate(self, agent: str) -> None:
        # Not one that hangs: its stop would wait out its shutdown time, which never passes.
        world = self.world
        if agent not in world.terminated | world.stopped | world.hanging:
            self.trio.run(self.world.terminate, agent)

    @precondition(lambda self: self.world.terminated)
    @rule(agent=st.sampled_from(ROOT_WORKERS))
    def restart(self, agent: str) -> None:
        if agent in self.world.terminated:
            self.trio.run(self.world.restart, agent)

    @precondition(lambda self: self.world.generation in self.world.escalated)
    @rule()
    def restart_tree(self) -> None:
        self.trio.run(self.world.start_tree)

    @rule()
    def hibernate(self) -> None:
        """Let the sleeper's ``hibernate_after`` pass (it sleeps, unless busy)."""
        self.trio.run(self.world.advance, HIBERNATE_AFTER + 0.5)

    @rule(guarantee=guarantees)
    def wake(self, guarantee: DeliveryGuarantee) -> None:
        """Call the sleeper: the same instance answers (no start), unless a crash or fault
        was waiting for it."""
        world = self.world
        starts = len(world.starts)
        quiet = not world.crash_next[SLEEPER] and not world.faults[SLEEPER]
        self.trio.run(world.call, SLEEPER, guarantee, Priority.NORMAL, 5.0)
        if quiet:
            assert SLEEPER not in [name for name, _, _ in world.starts[starts:]]

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.5, 6.0, 40.0]))
    def advance(self, seconds: float) -> None:
        self.trio.run(self.world.advance, seconds)

    @invariant()
    def contract_holds(self) -> None:
        self.trio.check(self.world.check)

    def teardown(self) -> None:
        """Settle and check everything, unless a step failed already (hypothesis calls this
        while that failure propagates: it must stay the one reported); then end the run."""
        try:
            failing = sys.exc_info()[1] is not None
            if not failing and self.trio.error is None:
                self.trio.run(self.world.settle)
                self.trio.check(self.world.check)
                self.trio.check(self.world.check_settled)
        finally:
            self.trio.close(report=not failing)


pytestmark = pytest.mark.usefixtures("quiet_crash_logs")  # crashes are injected on purpose

SystemMachine.TestCase.settings = settings(
    deadline=None,
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSystemMachine = SystemMachine.TestCase
