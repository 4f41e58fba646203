"""Properties of every stop path under random cancellation (hypothesis, virtual time).

Each example is a list of commands run in ONE ``trio.run`` on a ``MockClock`` that jumps when
idle (``guarded.run_guarded``, which also fails the test if a hang in shielded code outlasts
its wall-clock limit): spawn an agent, start a subtree of a few agents (one for one, one for
all, rest for one), call one (with a timeout), cast to one, stop one, terminate or restart one
through its supervisor, terminate or restart a whole subtree, let time pass. Agents have slow
or quick ``on_start`` and ``on_stop``; an ``on_stop`` may call the agent created before it,
then stop that agent or spawn a new one. A message makes its handler work for a while, crash,
or first stop, terminate or restart its own agent. Every command is, at random, wrapped in
``trio.move_on_after(d)`` (``d`` may be 0) so that cancellation lands at random points inside
it, and may run in a task of its own so that several are in flight at once. At a drawn step, or
at a drawn virtual time from a task outside, the cancel scope around the whole
``open_message_system`` block is cancelled, as a parent cancels a child in Trio; otherwise the
body ends by itself (sometimes after letting everything settle).

The agents write every step of their code (``on_start``, each handler, ``on_stop``) into a
ledger with a sequence number and the virtual time; each ``await system.stop(ref)`` that
returned is written there too. Checked after the run:

1. leaving the block took no longer, from the outside cancel (or the end of the body), than
   the sum of the shutdown times of the agents alive then (those being spawned included; one
   agent's shutdown time covers its handler in hand and its ``on_stop`` together), and a hang
   fails the test (a ``trio.fail_after`` around the whole run, ``run_guarded`` beyond it);
2. the delivery books balance: ``pending == 0`` and ``sent == acknowledged +
   duplicates_suppressed + failed + dead_lettered``;
3. no agent's code ran after ``await system.stop(ref)`` for it returned;
4. no call returned or raised later than its own deadline (its timeout after it started);
5. every public await raised nothing but a typed error (``MessagingError`` or
   ``SupervisorError``), and leaving the block raised nothing;
6. every instance whose ``on_start`` completed had its ``on_stop`` run exactly once;
7. a shutdown stops the agents that were running quietly at its start as ``stop()`` does:
   newest first in the tree's start order, each asked (``StopReason.SHUTDOWN``, or ``KILLED``
   only when a handler in hand outlasted its shutdown time), and an ``on_stop`` there can
   still call the agents started before it;
8. nothing waits on itself: ``system.stop`` and ``spawn`` from an ``on_stop`` during the
   system's shutdown raise ``SystemClosed`` at once; an agent's ``terminate_child`` of itself
   never returns to it, its ``restart_child`` of itself raises at once;
9. once settled, the system reports alive exactly the agents that run.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from typing import Any, TypeAlias

import attrs
import pytest
import trio
from guarded import run_guarded
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from supervisor import SupervisorError
from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    DeliveryConfig,
    ExitReason,
    MessageSystem,
    MessageSystemConfig,
    RestartStrategy,
    RestartType,
    StopReason,
    Supervisor,
    open_message_system,
)
from terraphim_actors.errors import MessagingError, SystemClosed
from terraphim_actors.testing import InjectedFault

#: The errors a public await may raise on these paths; anything else is a finding.
EXPECTED = (MessagingError, SupervisorError)
#: Float noise allowed when comparing virtual times.
EPSILON = 1e-6
#: Virtual seconds after which the run counts as hung (the clock jumps there when it is).
HANG = 100_000.0
#: Virtual seconds in which every retry, restart and start of an example has run its course.
SETTLE = 100.0

#: The root never gives up (a crash loop would be a bug of its own, found elsewhere).
CONFIG = MessageSystemConfig(
    max_restarts=1_000,
    max_seconds=1.0,
    dead_letter_capacity=100_000,
    delivery=DeliveryConfig(max_retries=2, retry_delay=0.25, jitter=0.0, seed=0),
)

#: The profile's number of examples (tests/conftest.py: default or long).
PROFILE_EXAMPLES = settings().max_examples

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # Each example takes a few milliseconds: ten times the profile finds more in seconds.
    max_examples=PROFILE_EXAMPLES * 10,
)


# -- what an example is made of ----------------------------------------------------------------


@attrs.frozen
class Work:
    """A message: its handler works ``seconds`` (virtual), or crashes at once, or first
    does something to its own agent: ``"stop self"`` (``ctx.stop()``), ``"terminate self"``
    or ``"restart self"`` (its supervisor's ``terminate_child`` / ``restart_child`` of it)."""

    seconds: float = 0.0
    crash: bool = False
    to_self: str | None = None


@attrs.frozen
class AgentPlan:
    """How one agent behaves, and how long it gets to stop."""

    shutdown: float
    start_delay: float = 0.0
    stop_delay: float = 0.0
    #: In ``on_stop``, call the agent created just before it, with this timeout.
    calls_older: float | None = None
    #: In ``on_stop``, then: ``"stop older"`` (``system.stop`` of the agent created just
    #: before it) or ``"spawn"`` (a new agent).
    then: str | None = None
    restart: RestartType = RestartType.PERMANENT


@attrs.frozen
class Spawn:
    plan: AgentPlan


@attrs.frozen
class StartSupervisor:
    strategy: RestartStrategy
    max_restarts: int
    plans: tuple[AgentPlan, ...]


@attrs.frozen
class Call:
    target: int
    work: Work
    timeout: float


@attrs.frozen
class Cast:
    target: int
    work: Work


@attrs.frozen
class Stop:
    target: int


@attrs.frozen
class TerminateChild:
    target: int


@attrs.frozen
class RestartChild:
    target: int


@attrs.frozen
class TerminateSubtree:
    """``root.terminate_child`` of a subtree (``target`` indexes the subtrees)."""

    target: int


@attrs.frozen
class RestartSubtree:
    target: int


@attrs.frozen
class Sleep:
    seconds: float


Command: TypeAlias = (
    Spawn
    | StartSupervisor
    | Call
    | Cast
    | Stop
    | TerminateChild
    | RestartChild
    | TerminateSubtree
    | RestartSubtree
    | Sleep
)


@attrs.frozen
class Step:
    command: Command
    #: ``trio.move_on_after(scope)`` around the command (``None``: no scope).
    scope: float | None = None
    #: Run in a task of its own, the body going on at once.
    background: bool = False


@attrs.frozen
class Scenario:
    steps: tuple[Step, ...]
    #: Cancel the system's scope before this step (``len(steps)``: after the last one).
    cancel_at_step: int | None = None
    #: Cancel the system's scope from a task outside after these virtual seconds.
    cancel_after: float | None = None
    #: Before the body ends (if not cancelled by then), let everything run its course and
    #: check that the system reports alive exactly the agents that run.
    settle: bool = False


# -- strategies -----------------------------------------------------------------------------

targets = st.integers(min_value=0, max_value=7)
works = st.sampled_from(
    (
        Work(),
        Work(),
        Work(0.25),
        Work(1.0),
        Work(5.0),
        Work(1_000.0),
        Work(crash=True),
        Work(to_self="stop self"),
        Work(to_self="terminate self"),
        Work(to_self="restart self"),
    )
)
agent_plans = st.builds(
    AgentPlan,
    shutdown=st.sampled_from((0.5, 1.0, 2.0)),
    start_delay=st.sampled_from((0.0, 0.0, 0.5, 3.0)),
    stop_delay=st.sampled_from((0.0, 0.0, 0.5, 3.0)),
    calls_older=st.sampled_from((None, None, 0.25, 1.0, 10.0)),
    then=st.sampled_from((None, None, None, "stop older", "spawn")),
    restart=st.sampled_from(
        (RestartType.PERMANENT, RestartType.PERMANENT, RestartType.TRANSIENT, RestartType.TEMPORARY)
    ),
)
creations: st.SearchStrategy[Command] = st.one_of(
    st.builds(Spawn, agent_plans),
    st.builds(
        StartSupervisor,
        st.sampled_from(
            (RestartStrategy.ONE_FOR_ONE, RestartStrategy.ONE_FOR_ALL, RestartStrategy.REST_FOR_ONE)
        ),
        st.integers(min_value=0, max_value=2),
        st.lists(agent_plans, min_size=1, max_size=3).map(tuple),
    ),
)
commands: st.SearchStrategy[Command] = st.one_of(
    creations,
    st.builds(Call, targets, works, st.sampled_from((0.1, 0.5, 2.0, 10.0))),
    st.builds(Cast, targets, works),
    st.builds(Cast, targets, st.just(Work(crash=True))),
    st.builds(Call, targets, st.just(Work()), st.just(10.0)),
    st.builds(Stop, targets),
    st.builds(Stop, targets),
    st.builds(TerminateChild, targets),
    st.builds(RestartChild, targets),
    st.builds(TerminateSubtree, targets),
    st.builds(RestartSubtree, targets),
    st.builds(Sleep, st.sampled_from((0.1, 0.5, 2.0))),
)
scopes = st.sampled_from((None, None, None, 0.0, 0.1, 0.5, 1.0, 2.5))
steps = st.builds(Step, commands, scope=scopes, background=st.booleans())
#: The first steps create agents (most often without a scope), so that there is a system
#: to stop.
first_steps = st.builds(
    Step,
    creations,
    scope=st.sampled_from((None, None, None, None, None, 0.0, 0.1, 0.5, 1.0, 2.5)),
    background=st.sampled_from((False, False, False, True)),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    drawn = tuple(
        draw(st.lists(first_steps, min_size=1, max_size=4)) + draw(st.lists(steps, max_size=12))
    )
    settle = draw(st.booleans())
    how = draw(st.sampled_from(("none", "step", "time")))
    if how == "step":
        at_step = draw(st.integers(0, len(drawn)))
        return Scenario(drawn, cancel_at_step=at_step, settle=settle)
    if how == "time":
        after = draw(st.sampled_from((0.0, 0.1, 0.5, 1.0, 2.0, 3.5, 8.0)))
        return Scenario(drawn, cancel_after=after, settle=settle)
    return Scenario(drawn, settle=settle)


# -- the ledger -------------------------------------------------------------------------------


@attrs.frozen
class Mark:
    """One step of an agent's code."""

    seq: int
    at: float
    name: str
    instance: int
    what: str
    reason: ExitReason | None = None


@attrs.define
class CallRecord:
    caller: str
    target: str
    started: float
    timeout: float
    seq: int
    done_at: float | None = None
    outcome: str = "running"


@attrs.define
class Placement:
    """Where an agent is supervised: ``supervisor`` once known, and its child id there."""

    child_id: Any
    supervisor: Supervisor | None = None
    #: The subtree it belongs to, if any.
    subtree: str | None = None


class World:
    """The system under test and everything known of what happened to it."""

    def __init__(self) -> None:
        self.system: MessageSystem | None = None
        self._seq = itertools.count()
        self.marks: list[Mark] = []
        self.calls: list[CallRecord] = []
        self.violations: list[str] = []
        #: What the body did, for the report of a failing example.
        self.trace: list[tuple[int, float, str]] = []
        self.plans: dict[str, AgentPlan] = {}
        #: Agent names in creation order (what a command's target indexes).
        self.names: list[str] = []
        self.refs: dict[str, AgentRef] = {}
        self.placements: dict[str, Placement] = {}
        self.subtrees: dict[str, list[str]] = {}
        self.instances: collections.Counter[str] = collections.Counter()
        #: The sequence number at which ``system.stop`` returned for an agent (first time).
        self.stop_returned: dict[str, int] = {}
        #: Agents whose spawn or ``start_supervisor`` has not returned (or raised) yet.
        self.spawning: set[str] = set()
        #: Agents a stop, terminate or restart is being done to now.
        self.in_flight: collections.Counter[str] = collections.Counter()
        #: Agents taken down by a stop or terminate that returned (and not restarted since).
        self.down_by_command: set[str] = set()
        self.subtree_numbers = itertools.count()
        #: When the shutdown began (outside cancel or end of the body), and what it may take.
        self.shutdown_seq: int | None = None
        self.shutdown_at: float | None = None
        self.budget = 0.0
        self.alive_then: list[str] = []
        self.quiet_then: set[str] = set()
        self.in_flight_then: set[str] = set()
        self.spawning_then: set[str] = set()
        self.crashed_then: set[str] = set()
        #: Agents a stop, terminate or restart began for after the shutdown had begun.
        self.commanded_after_shutdown: set[str] = set()

    def seq(self) -> int:
        return next(self._seq)

    def note(self, text: str) -> None:
        """Write what the body does into the trace printed with a failing example."""
        self.trace.append((self.seq(), trio.current_time(), text))

    def mark(self, name: str, instance: int, what: str, reason: ExitReason | None = None) -> None:
        self.marks.append(Mark(self.seq(), trio.current_time(), name, instance, what, reason))

    def new_name(self, plan: AgentPlan) -> tuple[str, str | None]:
        older = self.names[-1] if self.names else None
        name = f"a{len(self.names)}"
        self.names.append(name)
        self.plans[name] = plan
        self.spawning.add(name)
        return name, older

    def target(self, index: int) -> str | None:
        return self.names[index % len(self.names)] if self.names else None

    def ref(self, name: str) -> AgentRef | None:
        assert self.system is not None
        return self.refs.get(name) or self.system.whereis(name)

    # -- the moment the shutdown begins -------------------------------------------------

    def begin_shutdown(self) -> None:
        """Note when the system began to shut down, and what was alive then (first time)."""
        if self.shutdown_at is not None:
            return
        self.shutdown_seq = self.seq()
        self.shutdown_at = trio.current_time()
        if self.system is None:
            return
        for name in self.spawning:
            if self.system.whereis(name) is None:
                # Its spawn may have launched it (its task not run yet): it counts as alive.
                self.alive_then.append(name)
                self.budget += self.plans[name].shutdown
        for cell in self.system.live_cells():
            alive = cell.id.name
            if alive is None or alive not in self.plans:
                self.violations.append(f"an agent nobody spawned is alive: {cell!r}")
                continue
            self.alive_then.append(alive)
            self.budget += self.plans[alive].shutdown
        self.in_flight_then = {name for name, count in self.in_flight.items() if count}
        self.spawning_then = set(self.spawning)
        for name in self.names:
            state = self.state_of(name)
            if state == "crashed":
                self.crashed_then.add(name)
            if name in self.spawning_then:
                continue  # its start may still be cut short
            if state in ("running", "handling"):
                self.quiet_then.add(name)

    def state_of(self, name: str) -> str:
        """What an agent's latest instance is doing, by its marks."""
        latest = self.instances[name]
        state = "none"
        for mark in self.marks:
            if mark.name != name or mark.instance != latest:
                continue
            if mark.what == "on_start":
                state = "starting"
            elif mark.what == "started" or mark.what == "handled":
                state = "running"
            elif mark.what == "handle":
                state = "handling"
            elif mark.what == "stop self":
                state = "stopping"  # by itself, once its handler returns
            elif mark.what == "on_stop" and isinstance(mark.reason, BaseException):
                state = "crashed"  # its supervisor may be restarting it, or giving up
            elif mark.what == "on_stop" and mark.reason is not None:
                state = "stopped"
        return state

    # -- what the body and the agents do ------------------------------------------------

    async def spawn_agent(self, plan: AgentPlan, created: list[str]) -> None:
        system = self.system
        assert system is not None
        name, older = self.new_name(plan)
        created.append(name)
        try:
            self.placements[name] = Placement(None, system.root)
            ref = await system.spawn(
                Probe,
                self,
                name,
                plan,
                older,
                name=name,
                shutdown=plan.shutdown,
                restart=plan.restart,
            )
            self.refs[name] = ref
            self.placements[name].child_id = ref.id
        finally:
            self.spawning.discard(name)

    def note_command(self, name: str) -> None:
        """A stop, terminate or restart of ``name`` begins."""
        self.in_flight[name] += 1
        if self.shutdown_seq is not None:
            self.commanded_after_shutdown.add(name)

    async def stop_agent(self, name: str) -> None:
        system = self.system
        assert system is not None
        ref = self.ref(name)
        if ref is None:
            return
        self.note_command(name)
        try:
            await system.stop(ref)
            self.stop_returned.setdefault(name, self.seq())
            self.down_by_command.add(name)
        finally:
            self.in_flight[name] -= 1

    # -- calls --------------------------------------------------------------------------

    async def timed_call(
        self, caller: str, target: str, ref: AgentRef, work: Work, timeout: float
    ) -> None:
        record = CallRecord(caller, target, trio.current_time(), timeout, self.seq())
        self.calls.append(record)
        try:
            record.outcome = repr(await ref.call(work, timeout=timeout))
        except BaseException as error:
            record.outcome = type(error).__name__
            raise
        finally:
            record.done_at = trio.current_time()


class Probe(Agent):
    """An agent that writes every step of its code into the world's ledger."""

    def __init__(self, world: World, name: str, plan: AgentPlan, older: str | None) -> None:
        self.world = world
        self.name = name
        self.plan = plan
        self.older = older
        world.instances[name] += 1
        self.instance = world.instances[name]

    def mark(self, what: str, reason: ExitReason | None = None) -> None:
        self.world.mark(self.name, self.instance, what, reason)

    async def on_start(self) -> None:
        self.mark("on_start")
        if self.plan.start_delay:
            await trio.sleep(self.plan.start_delay)
            self.mark("on_start")
        self.mark("started")

    async def handle_call(self, message: Work, ctx: Context) -> str:
        await self.work(message, ctx)
        return "done"

    async def handle_cast(self, message: Work, ctx: Context) -> None:
        await self.work(message, ctx)

    async def work(self, work: Work, ctx: Context) -> None:
        self.mark("handle")
        if work.crash:
            raise InjectedFault(f"{self.name} crashes on purpose")
        if work.to_self == "stop self":
            self.mark("stop self")
            ctx.stop()
        elif work.to_self is not None:
            await self.to_self(work.to_self)
        if work.seconds:
            await trio.sleep(work.seconds)
        self.mark("handled")

    async def to_self(self, what: str) -> None:
        """Terminate or restart itself through its supervisor: terminated, it is cancelled on
        the way (the call does not return to it, as in OTP), or told why not (the supervisor
        is stopping) once its supervisor's lock is free; a restart of itself is refused with a
        typed error, at once."""
        world = self.world
        placement = world.placements[self.name]
        if placement.supervisor is None or placement.child_id is None:
            return
        began = trio.current_time()
        try:
            if what == "terminate self":
                self.mark("stop self")
                await placement.supervisor.terminate_child(placement.child_id)
                world.violations.append(f"{self.name}'s terminate_child of itself returned to it")
            else:
                await placement.supervisor.restart_child(placement.child_id)
                world.violations.append(f"{self.name}'s restart_child of itself returned")
        except EXPECTED as error:
            world.note(f"{self.name}'s {what}: {error!r}")
            if what == "restart self" and trio.current_time() != began:
                world.violations.append(f"{self.name}'s {what} took time to fail: {error!r}")

    async def on_stop(self, reason: ExitReason) -> None:
        self.mark("on_stop", reason)
        if self.plan.stop_delay:
            await trio.sleep(self.plan.stop_delay)
            self.mark("on_stop")
        world = self.world
        system = world.system
        assert system is not None
        older = None if self.older is None else system.whereis(self.older)
        if self.plan.calls_older is not None and older is not None:
            assert self.older is not None
            try:
                await world.timed_call(self.name, self.older, older, Work(), self.plan.calls_older)
            except EXPECTED:
                pass
            except Exception as error:
                world.violations.append(f"{self.name}'s call in on_stop raised {error!r}")
            self.mark("on_stop")
        if (self.plan.then == "stop older" and older is not None) or self.plan.then == "spawn":
            await self.then(system)
            self.mark("on_stop")
        self.mark("stopped")

    async def then(self, system: MessageSystem) -> None:
        """Stop the older agent, or spawn one; during the system's shutdown either must
        raise ``SystemClosed`` at once (nothing waits on the shutdown it is part of)."""
        world = self.world
        closing, began = system.closing, trio.current_time()
        #: Stopping an agent that has stopped already returns at once, shutdown or not.
        gone = self.plan.then == "stop older" and system.whereis(self.older or "") is None
        outcome: BaseException | None = None
        try:
            if self.plan.then == "spawn":
                await world.spawn_agent(AgentPlan(shutdown=0.5), created=[])
            else:
                assert self.older is not None
                await world.stop_agent(self.older)
        except EXPECTED as error:
            outcome = error
        except Exception as error:
            world.violations.append(f"{self.name}'s {self.plan.then} in on_stop raised {error!r}")
        world.note(f"{self.name}'s {self.plan.then} in on_stop: {outcome!r}")
        answered = isinstance(outcome, SystemClosed) or (gone and outcome is None)
        if closing and not (answered and trio.current_time() == began):
            world.violations.append(
                f"{self.name}'s {self.plan.then} in on_stop during the system's shutdown"
                f" did not raise SystemClosed at once: {outcome!r} after"
                f" {trio.current_time() - began} s"
            )


# -- the driver -----------------------------------------------------------------------------


async def perform(world: World, command: Command) -> None:
    created: list[str] = []
    try:
        await perform_in(world, command, created)
    finally:
        world.spawning.difference_update(created)


async def perform_in(world: World, command: Command, created: list[str]) -> None:
    """Do ``command``; the agents it creates go into ``created`` as they are named."""
    system = world.system
    assert system is not None
    if isinstance(command, Spawn):
        await world.spawn_agent(command.plan, created)
    elif isinstance(command, StartSupervisor):
        subtree_name = f"sub{next(world.subtree_numbers)}"
        specs = []
        members = world.subtrees[subtree_name] = []
        placements = []
        for plan in command.plans:
            name, older = world.new_name(plan)
            created.append(name)
            members.append(name)
            spec = system.agent_spec(
                Probe,
                world,
                name,
                plan,
                older,
                name=name,
                shutdown=plan.shutdown,
                restart=plan.restart,
            )
            specs.append(spec)
            placement = Placement(spec.id, None, subtree_name)
            world.placements[name] = placement
            placements.append(placement)
        subtree = await system.start_supervisor(
            specs,
            strategy=command.strategy,
            max_restarts=command.max_restarts,
            max_seconds=1.0,
            name=subtree_name,
        )
        for placement in placements:
            placement.supervisor = subtree
    elif isinstance(command, Sleep):
        await trio.sleep(command.seconds)
    elif isinstance(command, TerminateSubtree | RestartSubtree):
        if not world.subtrees:
            return
        subtree_id = list(world.subtrees)[command.target % len(world.subtrees)]
        members = world.subtrees[subtree_id]
        for name in members:
            world.note_command(name)
        try:
            if isinstance(command, TerminateSubtree):
                await system.root.terminate_child(subtree_id)
                world.down_by_command.update(members)
            else:
                await system.root.restart_child(subtree_id)
                world.down_by_command.difference_update(members)
        finally:
            for name in members:
                world.in_flight[name] -= 1
    else:
        target = world.target(command.target)
        if target is None:
            return
        name = target
        if isinstance(command, Stop):
            await world.stop_agent(name)
        elif isinstance(command, Call | Cast):
            ref = world.ref(name)
            if ref is None:
                return
            if isinstance(command, Call):
                await world.timed_call("body", name, ref, command.work, command.timeout)
            else:
                await ref.cast(command.work)
        else:
            placement = world.placements[name]
            if placement.supervisor is None or placement.child_id is None:
                return
            world.note_command(name)
            try:
                if isinstance(command, TerminateChild):
                    await placement.supervisor.terminate_child(placement.child_id)
                    world.down_by_command.add(name)
                else:
                    await placement.supervisor.restart_child(placement.child_id)
                    world.down_by_command.discard(name)
            finally:
                world.in_flight[name] -= 1


async def guarded(world: World, index: int, step: Step) -> None:
    """Run one step; a typed error is an answer, anything else a finding."""
    world.note(f"step {index} begins: {step}")
    try:
        if step.scope is None:
            await perform(world, step.command)
        else:
            with trio.move_on_after(step.scope):
                await perform(world, step.command)
    except EXPECTED as error:
        world.note(f"step {index} raised {error!r}")
    except BaseException as error:
        world.note(f"step {index} raised {error!r}")
        finding(world, f"step {index} ({step})", error)
    else:
        world.note(f"step {index} ended")


def finding(world: World, where: str, error: BaseException) -> None:
    """Record what ``where`` raised unless it is a cancellation, which goes on its way."""
    if isinstance(error, trio.Cancelled):
        raise error
    if isinstance(error, BaseExceptionGroup):
        cancelled, rest = error.split(trio.Cancelled)
        if rest is not None:
            world.violations.append(f"{where} raised {rest!r}")
        if cancelled is not None:
            raise cancelled from None
        return
    if not isinstance(error, Exception):
        raise error  # KeyboardInterrupt and the like
    world.violations.append(f"{where} raised {error!r}")


async def run_scenario(world: World, scenario: Scenario) -> tuple[float, Any]:
    """Run the scenario; returns when the block was left, and the final delivery stats."""
    system: MessageSystem | None = None
    with trio.fail_after(HANG):
        async with trio.open_nursery() as outside:
            with trio.CancelScope() as system_scope:

                def cancel_system() -> None:
                    world.begin_shutdown()
                    system_scope.cancel()

                if scenario.cancel_after is not None:

                    async def canceller(delay: float) -> None:
                        await trio.sleep(delay)
                        cancel_system()

                    outside.start_soon(canceller, scenario.cancel_after)
                try:
                    async with open_message_system(CONFIG) as system:
                        world.system = system
                        async with trio.open_nursery() as tasks:
                            for index, step in enumerate(scenario.steps):
                                if scenario.cancel_at_step == index:
                                    cancel_system()
                                    await trio.lowlevel.checkpoint()
                                if step.background:
                                    tasks.start_soon(guarded, world, index, step)
                                else:
                                    await guarded(world, index, step)
                        if scenario.settle:
                            await trio.sleep(SETTLE)
                            check_reported_alive_is_running(world)
                        if scenario.cancel_at_step == len(scenario.steps):
                            cancel_system()
                            await trio.lowlevel.checkpoint()
                        world.begin_shutdown()
                except BaseException as error:
                    finding(world, "leaving the system", error)
            left_at = trio.current_time()
            outside.cancel_scope.cancel()
    stats = None if system is None else system.delivery.get_stats()
    return left_at, stats


# -- the checks -------------------------------------------------------------------------------


def check_reported_alive_is_running(world: World) -> None:
    """Once everything has settled, the system reports alive (``whereis``) exactly the agents
    whose latest instance runs: none left reported alive with nothing running it (as after a
    cancelled ``terminate_child``), none running that it reports stopped."""
    system = world.system
    assert system is not None
    for name in world.names:
        state = world.state_of(name)
        reported = system.whereis(name) is not None
        if reported != (state in ("running", "handling")):
            world.violations.append(
                f"once settled, {name} is reported {'alive' if reported else 'stopped'}"
                f" while its latest instance is {state}"
            )


def check_shutdown_time(world: World, left_at: float) -> None:
    assert world.shutdown_at is not None, "the shutdown never began"
    took = left_at - world.shutdown_at
    assert took <= world.budget + EPSILON, (
        f"leaving the system took {took} s from t={world.shutdown_at}, more than the"
        f" {world.budget} s of shutdown time of the agents alive then {world.alive_then}"
    )


def check_books(stats: Any) -> None:
    if stats is None:
        return
    settled = stats.acknowledged + stats.duplicates_suppressed + stats.failed + stats.dead_lettered
    assert stats.pending == 0, f"messages pending after the system left: {stats}"
    assert stats.sent == settled, f"the books do not balance: {stats}"


def check_nothing_runs_after_its_stop(world: World) -> None:
    late = [
        mark
        for mark in world.marks
        if mark.name in world.stop_returned and mark.seq > world.stop_returned[mark.name]
    ]
    assert not late, f"agents ran after their stop returned: {late}"


def check_calls(world: World) -> None:
    for record in world.calls:
        assert record.done_at is not None, f"a call never ended: {record}"
        deadline = record.started + record.timeout
        assert record.done_at <= deadline + EPSILON, f"a call outlived its deadline: {record}"


def check_each_instance_stopped_once(world: World) -> None:
    started: set[tuple[str, int]] = set()
    stops: collections.Counter[tuple[str, int]] = collections.Counter()
    for mark in world.marks:
        if mark.what == "started":
            started.add((mark.name, mark.instance))
        elif mark.what == "on_stop" and mark.reason is not None:
            stops[mark.name, mark.instance] += 1
    never = sorted(instance for instance in started if stops[instance] == 0)
    assert not never, f"instances whose on_stop never ran: {never}"
    twice = sorted(instance for instance, count in stops.items() if count > 1)
    assert not twice, f"instances whose on_stop ran more than once: {twice}"


def check_shutdown_order(world: World) -> None:
    """Agents running quietly at the start of the shutdown stop newest first, each asked."""
    assert world.shutdown_seq is not None
    first_stop: dict[str, Mark] = {}
    crashed_subtrees: set[str] = set()
    for mark in world.marks:
        if mark.seq < world.shutdown_seq or mark.what != "on_stop" or mark.reason is None:
            continue
        first_stop.setdefault(mark.name, mark)
        if isinstance(mark.reason, BaseException):
            subtree = world.placements[mark.name].subtree
            if subtree is not None:
                crashed_subtrees.add(subtree)
    stopped_itself = {
        (mark.name, mark.instance) for mark in world.marks if mark.what == "stop self"
    }
    # A member that stopped itself counts as a restart of it, which may exceed its subtree's
    # intensity as the shutdown starts: that supervisor then stops the rest itself.
    restarted_itself = {name for name, _ in stopped_itself}
    unsettled_subtrees = {
        subtree
        for subtree, members in world.subtrees.items()
        if subtree in crashed_subtrees
        or any(name in world.crashed_then or name in restarted_itself for name in members)
        or any(
            (name not in world.quiet_then and name not in world.down_by_command)
            or name in world.in_flight_then
            for name in members
        )
    }
    checked = [
        name
        for name in world.quiet_then
        if name not in world.in_flight_then
        and name not in world.commanded_after_shutdown
        and world.placements[name].subtree not in unsettled_subtrees
        and name in first_stop
        and not isinstance(first_stop[name].reason, BaseException)
        and (name, first_stop[name].instance) not in stopped_itself
    ]
    for name in checked:
        mark = first_stop[name]
        # Killed only out of a handler that outlasted its shutdown time.
        in_hand = handling_at(world, name, mark)
        allowed = {StopReason.SHUTDOWN, StopReason.KILLED} if in_hand else {StopReason.SHUTDOWN}
        assert mark.reason in allowed, (
            f"{name} was not asked to stop at shutdown: on_stop({mark.reason!r}) at t={mark.at}"
        )
    for record in world.calls:
        caller, callee = record.caller, record.target
        if caller in checked and callee in checked and record.seq > first_stop[caller].seq:
            # The older agent stops after the caller: it is there to answer (or time out, or
            # be refused by its circuit breaker, as at any time).
            assert record.outcome not in ("AgentStopped", "SystemClosed"), (
                f"{caller}'s on_stop at shutdown could not call {callee}, started before it"
                f" and stopped after it: {record}"
            )
    in_order = sorted(checked, key=lambda name: first_stop[name].seq)
    keys = [tree_position(world, name) for name in in_order]
    assert keys == sorted(keys, reverse=True), (
        f"the shutdown did not stop newest first: {in_order} (tree positions {keys})"
    )


def tree_position(world: World, name: str) -> tuple[int, ...]:
    """Where an agent is in the tree's start order: (its place among the root's children,)
    or (its subtree's place there, its place in the subtree).

    The root adds a child when its start begins (under the root's lock, in the order the
    starts get it), which is when the agent's first ``on_start`` (or its subtree's first
    one) begins; a restart keeps the place.
    """
    first_start: dict[str, int] = {}
    for mark in world.marks:
        if mark.what == "on_start":
            first_start.setdefault(mark.name, mark.seq)
    subtree = world.placements[name].subtree
    if subtree is None:
        return (first_start[name],)
    members = world.subtrees[subtree]
    return (min(first_start[m] for m in members if m in first_start), members.index(name))


def handling_at(world: World, name: str, at: Mark) -> bool:
    """Whether the instance of ``at`` was in a handler when ``at`` happened."""
    handling = False
    for mark in world.marks:
        if mark.seq >= at.seq:
            break
        if mark.name == name and mark.instance == at.instance:
            if mark.what == "handle":
                handling = True
            elif mark.what == "handled":
                handling = False
    return handling


def report(world: World, left_at: float | None) -> str:
    lines = [
        f"shutdown from t={world.shutdown_at} (seq {world.shutdown_seq}), left at t={left_at},"
        f" budget {world.budget} for {world.alive_then}",
        f"stops returned at seq: {world.stop_returned}",
        f"calls: {world.calls}",
    ]
    entries = [
        (
            mark.seq,
            f"  {mark.seq:4} t={mark.at:9.3f} {mark.name}#{mark.instance} {mark.what}"
            + ("" if mark.reason is None else f" {mark.reason!r}"),
        )
        for mark in world.marks
    ]
    entries += [(seq, f"  {seq:4} t={at:9.3f} -- {text}") for seq, at, text in world.trace]
    lines += [text for _, text in sorted(entries)]
    return "\n".join(lines)


CHECKS: tuple[Callable[[World], None], ...] = (
    check_nothing_runs_after_its_stop,
    check_calls,
    check_each_instance_stopped_once,
    check_shutdown_order,
)


@pytest.mark.usefixtures("quiet_crash_logs")
@SETTINGS
@given(scenario=scenarios())
def test_every_stop_path_ends_in_time_and_leaves_nothing_behind(scenario: Scenario) -> None:
    """Cancelled anywhere, inside any public await or around the whole system, the system
    leaves within its agents' shutdown times, with the books balanced, no agent running
    after its stop, no call past its deadline, and only typed errors raised."""
    world = World()

    async def body() -> tuple[float, Any]:
        return await run_scenario(world, scenario)

    try:
        left_at, stats = run_guarded(body)
    except trio.TooSlowError:
        note(report(world, None))
        raise AssertionError(f"the run hung: not over after {HANG} virtual seconds") from None
    except BaseException:  # a hang in shielded code (run_guarded fails the test), or a bug
        note(report(world, None))
        raise
    note(report(world, left_at))
    assert not world.violations, world.violations
    check_shutdown_time(world, left_at)
    check_books(stats)
    for check in CHECKS:
        check(world)
