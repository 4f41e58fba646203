"""Properties of supervision trees under random crash sequences (hypothesis, virtual time).

Each example builds a small tree: a root supervisor with a few workers and one nested
supervisor (``sub``) with workers of its own; strategies, restart types, intensities and the
way each worker is stopped are drawn at random. A list of commands (crash a worker, make it
return, let time pass) then runs in ONE ``trio.run`` on a ``MockClock``; after each command the
tree settles (``wait_all_tasks_blocked``) before the next one. When the root escalates, the
driver starts it again, as its own parent would, and goes on; at the end it stops the tree.
Every worker writes its life into a shared log with the virtual time, and each property is
checked from that log and from what the supervisors report of themselves (``stats``,
``which_children``).

The log has one event per change: ``start``; ``stop`` (ended because its supervisor stopped
it); ``crash``, ``return`` (ended by itself); ``escalate`` (a supervisor raised
``RestartIntensityExceeded``). Root workers are named ``a b c``, the nested supervisor's
``x y z``. "Start order" below is the order of the children in the spec, which is the order
of every start of a group; a supervisor stops its children newest first in that order.

In this library (unlike OTP, which restarts every non-temporary child) a group restart takes
only the children still running: a transient child that returned stays down. The tests follow it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TypeAlias

import attrs
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from supervisor import (
    ChildInfo,
    ChildSpec,
    ChildState,
    RestartIntensityExceeded,
    RestartStrategy,
    RestartType,
    Shutdown,
    Supervisor,
    SupervisorStats,
)

ROOT = "root"
SUB = "sub"
SUPERVISORS = (ROOT, SUB)
#: Events of a child that ended by itself: what a supervisor reacts to.
EXITS = frozenset({"crash", "return", "escalate"})
#: How long a ``Wait`` command lets pass, and how long an intensity window is: halves and whole
#: seconds, so that restarts fall exactly on window edges too.
WAITS = (0.5, 1.0, 1.0, 2.0)
WINDOWS = (1.0, 2.0, 3.0)


class Crash(Exception):
    """What a worker raises when it is told to crash."""


# -- what a tree looks like, and the commands run against it -----------------------------


@attrs.frozen
class WorkerPlan:
    """One worker: its name, restart type, and how its supervisor stops it."""

    name: str
    restart: RestartType
    #: "cancel": no stop hook; "ask": a stop hook it obeys; "brutal": a hook, but BRUTAL_KILL.
    stopping: str


@attrs.frozen
class SupervisorPlan:
    """One supervisor's options and workers, in start order."""

    strategy: RestartStrategy
    max_restarts: int
    max_seconds: float
    workers: tuple[WorkerPlan, ...]


@attrs.frozen
class TreePlan:
    """A root supervisor whose children are its workers and the nested supervisor ``sub``."""

    root: SupervisorPlan
    sub: SupervisorPlan
    #: Where ``sub`` sits among the root's children.
    sub_position: int
    sub_restart: RestartType

    def plan(self, supervisor: str) -> SupervisorPlan:
        return self.root if supervisor == ROOT else self.sub

    def children(self, supervisor: str) -> list[str]:
        """The ids of a supervisor's children in start order."""
        names = [worker.name for worker in self.plan(supervisor).workers]
        if supervisor == ROOT:
            names.insert(self.sub_position, SUB)
        return names

    def owner(self, name: str) -> str:
        return ROOT if name in self.children(ROOT) else SUB

    def lineage(self, supervisor: str) -> tuple[str, ...]:
        """The supervisor and those above it."""
        return (SUB, ROOT) if supervisor == SUB else (ROOT,)

    def descendants(self, supervisor: str) -> set[str]:
        if supervisor == SUB:
            return set(self.children(SUB))
        return set(self.children(ROOT)) | set(self.children(SUB))

    def restart(self, name: str) -> RestartType:
        if name == SUB:
            return self.sub_restart
        for worker in self.root.workers + self.sub.workers:
            if worker.name == name:
                return worker.restart
        raise KeyError(name)

    def workers(self) -> list[str]:
        return [worker.name for worker in self.root.workers + self.sub.workers]


@attrs.frozen
class StartTree:
    """Start the root supervisor: first, and again each time it escalated (as a parent would)."""


@attrs.frozen
class CrashWorker:
    """Tell ``worker`` to raise, if it is running; ``times`` in a row, settling each time."""

    worker: str
    times: int = 1


@attrs.frozen
class ReturnFrom:
    """Tell ``worker`` to return normally, if it is running."""

    worker: str


@attrs.frozen
class Wait:
    """Let ``seconds`` of virtual time pass."""

    seconds: float


@attrs.frozen
class StopTree:
    """Stop the root supervisor (the final shutdown, after the drawn commands)."""


Command: TypeAlias = StartTree | CrashWorker | ReturnFrom | Wait | StopTree


@attrs.frozen
class Scenario:
    tree: TreePlan
    commands: tuple[CrashWorker | ReturnFrom | Wait, ...]


#: Permanent children most often: the others end for good and leave less to crash.
restart_types = st.sampled_from(
    (
        RestartType.PERMANENT,
        RestartType.PERMANENT,
        RestartType.TRANSIENT,
        RestartType.TRANSIENT,
        RestartType.TEMPORARY,
    )
)


def worker_plans(name: str) -> st.SearchStrategy[WorkerPlan]:
    return st.builds(
        WorkerPlan,
        name=st.just(name),
        restart=restart_types,
        stopping=st.sampled_from(("cancel", "ask", "brutal")),
    )


def supervisor_plans(names: str) -> st.SearchStrategy[SupervisorPlan]:
    return st.builds(
        SupervisorPlan,
        strategy=st.sampled_from(RestartStrategy),
        max_restarts=st.integers(min_value=0, max_value=3),
        max_seconds=st.sampled_from(WINDOWS),
        workers=st.integers(min_value=1, max_value=len(names)).flatmap(
            lambda count: st.tuples(*(worker_plans(name) for name in names[:count]))
        ),
    )


@st.composite
def scenarios(draw: st.DrawFn, *, needs: RestartStrategy | None = None) -> Scenario:
    """A random tree and commands; with ``needs``, at least one supervisor uses that strategy."""
    root = draw(supervisor_plans("abc"))
    sub = draw(supervisor_plans("xyz"))
    if needs is not None and needs not in (root.strategy, sub.strategy):
        if draw(st.sampled_from(SUPERVISORS)) == ROOT:
            root = attrs.evolve(root, strategy=needs)
        else:
            sub = attrs.evolve(sub, strategy=needs)
    tree = TreePlan(
        root=root,
        sub=sub,
        sub_position=draw(st.integers(min_value=0, max_value=len(root.workers))),
        sub_restart=draw(restart_types),
    )
    names = st.sampled_from(tree.workers())
    crashes = st.builds(CrashWorker, names, st.integers(min_value=1, max_value=3))
    waits = st.builds(Wait, st.sampled_from(WAITS))
    returns = st.builds(ReturnFrom, names)
    command = st.one_of(crashes, crashes, crashes, returns, returns, waits, waits)
    return Scenario(tree, tuple(draw(st.lists(command, max_size=30))))


# -- running a scenario -----------------------------------------------------------------


@attrs.frozen
class Event:
    kind: str
    who: str
    time: float


@attrs.frozen
class Snapshot:
    """The tree once it settled after one command."""

    command: Command
    #: The log events the command caused are ``log[first:end]``.
    first: int
    end: int
    time: float
    stats: dict[str, SupervisorStats]
    children: dict[str, list[ChildInfo]]


class Control:
    """What a worker reports as started: the way to tell that run what to do next."""

    def __init__(self) -> None:
        self.order: str | None = None
        self.told = trio.Event()

    def tell(self, order: str) -> None:
        self.order = order
        self.told.set()


def ask_to_stop(control: Control) -> None:
    """The stop hook of the workers that have one."""
    control.tell("stop")


class Tree:
    """The running tree: two supervisors, their workers, and the shared log."""

    def __init__(self, plan: TreePlan) -> None:
        self.plan = plan
        self.log: list[Event] = []
        self.snapshots: list[Snapshot] = []
        #: The control of each worker's current run, while it runs.
        self.controls: dict[str, Control] = {}
        self.root_ended = True
        self.nested = Supervisor(
            [self._spec(worker) for worker in plan.sub.workers],
            strategy=plan.sub.strategy,
            max_restarts=plan.sub.max_restarts,
            max_seconds=plan.sub.max_seconds,
            name=SUB,
        )
        nested = attrs.evolve(
            self.nested.as_child(SUB, restart=plan.sub_restart), start=self._run_nested
        )
        children = [self._spec(worker) for worker in plan.root.workers]
        children.insert(plan.sub_position, nested)
        self.root = Supervisor(
            children,
            strategy=plan.root.strategy,
            max_restarts=plan.root.max_restarts,
            max_seconds=plan.root.max_seconds,
            name=ROOT,
        )

    def _spec(self, worker: WorkerPlan) -> ChildSpec:
        start = functools.partial(self._worker, worker.name)
        if worker.stopping == "cancel":
            return ChildSpec(worker.name, start, restart=worker.restart)
        shutdown = 5.0 if worker.stopping == "ask" else Shutdown.BRUTAL_KILL
        return ChildSpec(
            worker.name, start, restart=worker.restart, stop=ask_to_stop, shutdown=shutdown
        )

    def record(self, kind: str, who: str) -> None:
        self.log.append(Event(kind, who, trio.current_time()))

    async def _worker(
        self, name: str, *, task_status: trio.TaskStatus[Control] = trio.TASK_STATUS_IGNORED
    ) -> None:
        control = Control()
        self.controls[name] = control
        self.record("start", name)
        try:
            task_status.started(control)
            await control.told.wait()
        except trio.Cancelled:
            self.record("stop", name)
            raise
        finally:
            if self.controls.get(name) is control:
                del self.controls[name]
        if control.order == "crash":
            self.record("crash", name)
            raise Crash(name)
        self.record("return" if control.order == "return" else "stop", name)

    async def _run_nested(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.record("start", SUB)
        ended = "stop"
        try:
            await self.nested.run(task_status=task_status)
        except RestartIntensityExceeded:
            ended = "escalate"
            raise
        finally:
            self.record(ended, SUB)

    async def _run_root(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.record("start", ROOT)
        try:
            await self.root.run(task_status=task_status)
        except RestartIntensityExceeded:
            self.record("escalate", ROOT)
        else:
            self.record("stop", ROOT)
        self.root_ended = True

    async def _execute(self, command: Command, nursery: trio.Nursery) -> None:
        if isinstance(command, Wait):
            await trio.sleep(command.seconds)
        elif isinstance(command, StartTree):
            self.root_ended = False
            await nursery.start(self._run_root)
        elif isinstance(command, StopTree):
            await self.root.stop()
        elif isinstance(command, CrashWorker | ReturnFrom):
            control = self.controls.get(command.worker)
            if control is not None:
                control.tell("crash" if isinstance(command, CrashWorker) else "return")

    async def _step(self, command: Command, nursery: trio.Nursery) -> None:
        first = len(self.log)
        await self._execute(command, nursery)
        await trio.testing.wait_all_tasks_blocked()
        self.snapshots.append(
            Snapshot(
                command=command,
                first=first,
                end=len(self.log),
                time=trio.current_time(),
                stats={ROOT: self.root.stats(), SUB: self.nested.stats()},
                children={ROOT: self.root.which_children(), SUB: self.nested.which_children()},
            )
        )

    async def drive(self, commands: tuple[Command, ...]) -> None:
        async with trio.open_nursery() as nursery:
            await self._step(StartTree(), nursery)
            for command in commands:
                # Each crash is a step of its own, so that every step has one cause.
                repeat = command.times if isinstance(command, CrashWorker) else 1
                for _ in range(repeat):
                    await self._step(command, nursery)
                    if self.root_ended:
                        await self._step(StartTree(), nursery)
            await self._step(StopTree(), nursery)


class Trace:
    """What happened in one scenario, with the questions the properties ask of it."""

    def __init__(self, tree: Tree) -> None:
        self.plan = tree.plan
        self.log = tree.log
        self.snapshots = tree.snapshots
        #: ``running[n]``: who runs after the first ``n`` events (the last event was a start).
        self.running: list[frozenset[str]] = [frozenset()]
        for event in self.log:
            now = set(self.running[-1])
            if event.kind == "start":
                now.add(event.who)
            else:
                now.discard(event.who)
            self.running.append(frozenset(now))

    def text(self) -> str:
        return " | ".join(f"{e.time:g} {e.kind} {e.who}" for e in self.log)

    def segments(self, supervisor: str) -> list[range]:
        """The log spans of each run of the supervisor, from its start to its end."""
        spans = []
        for begin, event in enumerate(self.log):
            if event.who == supervisor and event.kind == "start":
                end = next(
                    (
                        index + 1
                        for index in range(begin + 1, len(self.log))
                        if self.log[index].who == supervisor and self.log[index].kind != "start"
                    ),
                    len(self.log),
                )
                spans.append(range(begin, end))
        return spans

    def segment_of(self, supervisor: str, index: int) -> range | None:
        """The run of the supervisor that contains (or last began before) ``index``."""
        found = None
        for segment in self.segments(supervisor):
            if segment.start <= index:
                found = segment
        return found

    def snapshot_of(self, index: int) -> Snapshot:
        """The command step that caused the event at ``index``."""
        return next(snap for snap in self.snapshots if snap.first <= index < snap.end)

    def direct(self, supervisor: str, span: range) -> list[int]:
        """Indices of the events of the supervisor's own children within ``span``."""
        children = set(self.plan.children(supervisor))
        return [index for index in span if self.log[index].who in children]

    def restart_episodes(self, supervisor: str, segment: range) -> list[list[int]]:
        """The restarts of one run: each is a block of starts of its children after the
        initial ones, split by the exits and stops between them."""
        direct = self.direct(supervisor, segment)[len(self.plan.children(supervisor)) :]
        episodes: list[list[int]] = []
        previous = None
        for index in direct:
            if self.log[index].kind == "start":
                if previous != "start":
                    episodes.append([])
                episodes[-1].append(index)
            previous = self.log[index].kind
        return episodes

    def restart_times(self, supervisor: str, segment: range) -> list[float]:
        return [self.log[episode[0]].time for episode in self.restart_episodes(supervisor, segment)]

    def escalations(self, supervisor: str) -> list[int]:
        return [
            index
            for index, event in enumerate(self.log)
            if event.kind == "escalate" and event.who == supervisor
        ]

    def escalated_between(self, supervisor: str, begin: int, end: int) -> bool:
        """Whether the supervisor or one above it gave up within ``log[begin:end]``."""
        lineage = self.plan.lineage(supervisor)
        return any(
            event.kind == "escalate" and event.who in lineage for event in self.log[begin:end]
        )

    def restart_triggers(self, supervisor: str) -> Iterator[int]:
        """Exits of the supervisor's children that call for a restart."""
        children = set(self.plan.children(supervisor))
        for index, event in enumerate(self.log):
            if event.who not in children or event.kind not in EXITS:
                continue
            restart = self.plan.restart(event.who)
            if restart is RestartType.PERMANENT or (
                restart is RestartType.TRANSIENT and event.kind != "return"
            ):
                yield index

    def reaction(self, supervisor: str, trigger: int) -> tuple[list[tuple[str, str]], bool]:
        """What the supervisor's children did after the exit at ``trigger``, in the same step
        and the same run of the supervisor, and whether the supervisor then gave up."""
        snap = self.snapshot_of(trigger)
        segment = self.segment_of(supervisor, trigger)
        assert segment is not None
        end = min(snap.end, segment.stop)
        done = [
            (self.log[i].kind, self.log[i].who)
            for i in self.direct(supervisor, range(trigger + 1, end))
        ]
        return done, self.escalated_between(supervisor, trigger, snap.end)

    def expected_restart(self, supervisor: str, trigger: int) -> list[tuple[str, str]]:
        """What the strategy says happens after the exit at ``trigger`` when it is admitted."""
        failed = self.log[trigger].who
        running = self.running[trigger + 1]
        children = self.plan.children(supervisor)
        strategy = self.plan.plan(supervisor).strategy
        if strategy is RestartStrategy.ONE_FOR_ONE:
            siblings = []
        elif strategy is RestartStrategy.ONE_FOR_ALL:
            siblings = [child for child in children if child in running]
        else:
            after = children[children.index(failed) + 1 :]
            siblings = [child for child in after if child in running]
        stops = [("stop", child) for child in reversed(siblings)]
        starts = [
            ("start", child)
            for child in children
            if child == failed
            or (child in siblings and self.plan.restart(child) is not RestartType.TEMPORARY)
        ]
        return stops + starts

    def live(self, supervisor: str, index: int) -> bool:
        """Whether the supervisor runs after the first ``index`` events."""
        return supervisor in self.running[index]


def run_scenario(scenario: Scenario) -> Trace:
    """Run the commands against a fresh tree in one ``trio.run`` on virtual time."""
    tree = Tree(scenario.tree)
    trio.run(tree.drive, scenario.commands, clock=trio.testing.MockClock(autojump_threshold=0))
    return Trace(tree)


def fail(trace: Trace, message: str) -> str:
    return f"{message}\nlog: {trace.text()}"


# -- the properties ---------------------------------------------------------------------

SETTINGS = settings(deadline=None)


def worker(name: str, restart: RestartType = RestartType.PERMANENT) -> WorkerPlan:
    return WorkerPlan(name, restart, "cancel")


#: Rare paths that random generation reaches only now and then, always tried first.
#: A restart exactly one window after the previous one is allowed; the next one is not.
WINDOW_EDGE = Scenario(
    TreePlan(
        root=SupervisorPlan(RestartStrategy.ONE_FOR_ONE, 3, 5.0, (worker("a"),)),
        sub=SupervisorPlan(RestartStrategy.ONE_FOR_ONE, 1, 1.0, (worker("x"),)),
        sub_position=1,
        sub_restart=RestartType.PERMANENT,
    ),
    (CrashWorker("x"), Wait(1.0), CrashWorker("x", times=2)),
)
#: A transient child that returned stays down when a rest_for_one restart passes over it.
RETURNED_TRANSIENT_AFTER_THE_CRASH = Scenario(
    TreePlan(
        root=SupervisorPlan(
            RestartStrategy.REST_FOR_ONE, 3, 1.0, (worker("a"), worker("b", RestartType.TRANSIENT))
        ),
        sub=SupervisorPlan(RestartStrategy.ONE_FOR_ONE, 1, 1.0, (worker("x"),)),
        sub_position=2,
        sub_restart=RestartType.PERMANENT,
    ),
    (ReturnFrom("b"), CrashWorker("a")),
)


@SETTINGS
@given(scenario=scenarios())
@example(scenario=WINDOW_EDGE)
def test_restarts_within_any_window_never_exceed_max_restarts(scenario: Scenario) -> None:
    """No supervisor restarts more than max_restarts times within any max_seconds window."""
    trace = run_scenario(scenario)
    for supervisor in SUPERVISORS:
        plan = trace.plan.plan(supervisor)
        total = 0
        for segment in trace.segments(supervisor):
            times = trace.restart_times(supervisor, segment)
            total += len(times)
            for time in times:
                within = [other for other in times if time - plan.max_seconds < other <= time]
                assert len(within) <= plan.max_restarts, fail(
                    trace, f"{supervisor}: {len(within)} restarts in the window ending at {time}"
                )
        for snap in trace.snapshots:
            stats = snap.stats[supervisor]
            assert stats.restarts_in_window <= plan.max_restarts
            current = trace.segment_of(supervisor, snap.end - 1)
            assert current is not None
            horizon = snap.time - plan.max_seconds
            so_far = range(current.start, min(current.stop, snap.end))
            recent = [t for t in trace.restart_times(supervisor, so_far) if horizon < t]
            assert stats.restarts_in_window == len(recent), fail(
                trace, f"{supervisor} after {snap.command}: {stats} but restarts at {recent}"
            )
        assert trace.snapshots[-1].stats[supervisor].total_restarts == total, fail(
            trace, f"{supervisor}: the log shows {total} restarts"
        )


@SETTINGS
@given(scenario=scenarios())
@example(scenario=WINDOW_EDGE)
def test_a_supervisor_escalates_only_once_its_window_is_full(scenario: Scenario) -> None:
    """A supervisor gives up only when max_restarts restarts already fill its window."""
    trace = run_scenario(scenario)
    for supervisor in SUPERVISORS:
        plan = trace.plan.plan(supervisor)
        for index in trace.escalations(supervisor):
            segment = trace.segment_of(supervisor, index)
            assert segment is not None
            now = trace.log[index].time
            times = trace.restart_times(supervisor, segment)
            within = [time for time in times if now - plan.max_seconds < time <= now]
            assert len(within) == plan.max_restarts, fail(
                trace, f"{supervisor} escalated at {now} with restarts at {within}"
            )


@SETTINGS
@given(scenario=scenarios())
def test_an_escalated_supervisor_stops_every_child_and_starts_none_again(
    scenario: Scenario,
) -> None:
    """After an escalation nothing under a supervisor runs until its parent restarts it afresh."""
    trace = run_scenario(scenario)
    log = trace.log
    for supervisor in SUPERVISORS:
        children = trace.plan.children(supervisor)
        below = trace.plan.descendants(supervisor)
        escalations = trace.escalations(supervisor)
        assert trace.snapshots[-1].stats[supervisor].escalations == len(escalations)
        for index in escalations:
            still = trace.running[index] & below
            assert not still, fail(trace, f"{supervisor} escalated while {still} ran")
            later = [
                i
                for i in range(index + 1, len(log))
                if log[i].who == supervisor and log[i].kind == "start"
            ]
            restarted_at = later[0] if later else len(log)
            woke = [log[i] for i in range(index + 1, restarted_at) if log[i].who in below]
            assert not woke, fail(trace, f"{woke} after {supervisor} escalated")
            snap = trace.snapshot_of(index)
            if supervisor == SUB:
                # The root restarts the subtree in the same step (its own run), unless the
                # subtree is temporary or the root gives up itself.
                parent = trace.segment_of(ROOT, index)
                assert parent is not None
                by_parent = restarted_at < parent.stop
                root_gave_up = trace.escalated_between(ROOT, index, snap.end)
                if trace.plan.sub_restart is RestartType.TEMPORARY:
                    assert not by_parent, fail(trace, f"the temporary {SUB} was started again")
                else:
                    assert by_parent != root_gave_up, fail(
                        trace, f"{SUB} escalated: root gave up {root_gave_up}, restarted {later}"
                    )
                    assert not by_parent or restarted_at < snap.end
            if not later:
                continue
            fresh = trace.direct(supervisor, range(restarted_at, len(log)))[: len(children)]
            assert [(log[i].kind, log[i].who) for i in fresh] == [
                ("start", child) for child in children
            ], fail(trace, f"{supervisor} did not start afresh")
            restart = trace.snapshot_of(restarted_at)
            infos = restart.children[supervisor]
            assert [(info.id, info.state, info.restarts) for info in infos] == [
                (child, ChildState.RUNNING, 0) for child in children
            ], fail(trace, f"{supervisor} restarted with {infos}")
        for index in escalations:
            snap = trace.snapshot_of(index)
            if not trace.live(supervisor, snap.end):
                infos = snap.children[supervisor]
                assert all(info.state is ChildState.TERMINATED for info in infos), fail(
                    trace, f"{supervisor} gave up, yet: {infos}"
                )


@SETTINGS
@given(scenario=scenarios())
def test_a_crashed_permanent_child_runs_again_unless_its_supervisor_escalated(
    scenario: Scenario,
) -> None:
    """A permanent child that exited runs again once settled, unless an escalation stopped it."""
    trace = run_scenario(scenario)
    for snap in trace.snapshots:
        for index in range(snap.first, snap.end):
            event = trace.log[index]
            if event.kind not in EXITS or event.who == ROOT:
                continue
            if trace.plan.restart(event.who) is not RestartType.PERMANENT:
                continue
            supervisor = trace.plan.owner(event.who)
            if trace.escalated_between(supervisor, index, snap.end):
                continue
            assert event.who in trace.running[snap.end], fail(
                trace, f"{event.who} is not running after {snap.command}"
            )
            states = {info.id: info.state for info in snap.children[supervisor]}
            assert states.get(event.who) is ChildState.RUNNING, fail(
                trace, f"{supervisor} reports {states} after {snap.command}"
            )


def check_restart_groups(trace: Trace, strategies: set[RestartStrategy]) -> None:
    """Each restart of a supervisor with one of ``strategies`` stopped and started exactly
    the group its strategy names, unless the supervisor gave up instead."""
    for supervisor in SUPERVISORS:
        if trace.plan.plan(supervisor).strategy not in strategies:
            continue
        for trigger in trace.restart_triggers(supervisor):
            done, gave_up = trace.reaction(supervisor, trigger)
            if gave_up:
                continue
            expected = trace.expected_restart(supervisor, trigger)
            assert done == expected, fail(
                trace, f"{supervisor} after {trace.log[trigger]}: {done}, expected {expected}"
            )


@SETTINGS
@given(scenario=scenarios(needs=RestartStrategy.REST_FOR_ONE))
@example(scenario=RETURNED_TRANSIENT_AFTER_THE_CRASH)
def test_rest_for_one_restarts_the_crashed_child_and_those_after_it(scenario: Scenario) -> None:
    """rest_for_one stops the children after the crashed one newest first, then restarts them."""
    check_restart_groups(run_scenario(scenario), {RestartStrategy.REST_FOR_ONE})


@SETTINGS
@given(scenario=scenarios())
def test_one_for_one_and_one_for_all_restart_exactly_their_group(scenario: Scenario) -> None:
    """one_for_one restarts only the crashed child; one_for_all restarts every running child."""
    check_restart_groups(
        run_scenario(scenario), {RestartStrategy.ONE_FOR_ONE, RestartStrategy.ONE_FOR_ALL}
    )


@SETTINGS
@given(scenario=scenarios())
def test_children_stop_in_reverse_start_order(scenario: Scenario) -> None:
    """Every group of stops (group restart, escalation, shutdown) goes newest first, none missed."""
    trace = run_scenario(scenario)
    log = trace.log
    for supervisor in SUPERVISORS:
        children = trace.plan.children(supervisor)
        for segment in trace.segments(supervisor):
            direct = trace.direct(supervisor, segment)
            initial = [(log[i].kind, log[i].who) for i in direct[: len(children)]]
            assert initial == [("start", child) for child in children], fail(
                trace, f"{supervisor} started with {initial}"
            )
            block: list[int] = []
            for i in [*direct, None]:
                if i is not None and log[i].kind == "stop":
                    block.append(i)
                    continue
                order = [children.index(log[j].who) for j in block]
                assert order == sorted(order, reverse=True), fail(
                    trace, f"{supervisor} stopped {[log[j].who for j in block]}"
                )
                block = []
        # Stopping for good (an escalation, the shutdown) takes every child that was running.
        for index in trace.escalations(supervisor):
            stops = []
            before = index - 1
            while before >= 0 and (log[before].kind == "stop" or log[before].who not in children):
                if log[before].who in children:
                    stops.append(log[before].who)
                before -= 1
            stops.reverse()
            running = trace.running[before + 1]
            expected = [child for child in reversed(children) if child in running]
            assert stops == expected, fail(
                trace, f"{supervisor} escalated after stopping {stops}, expected {expected}"
            )
    final = trace.snapshots[-1]
    if isinstance(final.command, StopTree):
        for supervisor in SUPERVISORS:
            if supervisor not in trace.running[final.first]:
                continue
            children = trace.plan.children(supervisor)
            shutdown = [
                (log[i].kind, log[i].who)
                for i in trace.direct(supervisor, range(final.first, final.end))
            ]
            running = trace.running[final.first]
            newest_first = [("stop", child) for child in reversed(children) if child in running]
            assert shutdown == newest_first, fail(trace, f"{supervisor} shut down with {shutdown}")
        assert not trace.running[final.end], fail(trace, "still running after the shutdown")


@SETTINGS
@given(scenario=scenarios())
@example(scenario=RETURNED_TRANSIENT_AFTER_THE_CRASH)
def test_temporary_children_never_restart_and_transient_ones_only_after_a_crash(
    scenario: Scenario,
) -> None:
    """Temporary children never restart; transient ones restart after a crash, never a return."""
    trace = run_scenario(scenario)
    log = trace.log
    for supervisor in SUPERVISORS:
        for segment in trace.segments(supervisor):
            for child in trace.plan.children(supervisor):
                restart = trace.plan.restart(child)
                events = [log[i] for i in segment if log[i].who == child]
                if restart is RestartType.TEMPORARY:
                    starts = [e for e in events if e.kind == "start"]
                    assert len(starts) <= 1, fail(trace, f"temporary {child} restarted")
                if restart is RestartType.TRANSIENT:
                    kinds = [e.kind for e in events]
                    if "return" in kinds:
                        after = kinds[kinds.index("return") :]
                        assert "start" not in after, fail(trace, f"{child} restarted after return")
    for snap in trace.snapshots:
        for supervisor in SUPERVISORS:
            if not trace.live(supervisor, snap.end):
                continue
            current = trace.segment_of(supervisor, snap.end - 1)
            assert current is not None
            listed = {info.id for info in snap.children[supervisor]}
            for child in trace.plan.children(supervisor):
                if trace.plan.restart(child) is not RestartType.TEMPORARY:
                    continue
                ended = any(
                    log[i].who == child and log[i].kind != "start"
                    for i in range(current.start, snap.end)
                )
                assert not (ended and child in listed), fail(
                    trace, f"{supervisor} still lists the ended temporary {child}"
                )
        for index in range(snap.first, snap.end):
            event = log[index]
            if event.who == ROOT or event.kind not in ("crash", "escalate"):
                continue
            if trace.plan.restart(event.who) is not RestartType.TRANSIENT:
                continue
            if trace.escalated_between(trace.plan.owner(event.who), index, snap.end):
                continue
            assert event.who in trace.running[snap.end], fail(
                trace, f"transient {event.who} not restarted after its crash"
            )


@SETTINGS
@given(scenario=scenarios())
def test_which_children_agrees_with_what_runs(scenario: Scenario) -> None:
    """Once settled, which_children reports RUNNING exactly the children that run, in order."""
    trace = run_scenario(scenario)
    for snap in trace.snapshots:
        for supervisor in SUPERVISORS:
            if not trace.live(supervisor, snap.end):
                continue
            infos = snap.children[supervisor]
            children = trace.plan.children(supervisor)
            ids = [info.id for info in infos]
            assert ids == [child for child in children if child in ids]
            running = [info.id for info in infos if info.state is ChildState.RUNNING]
            expected = [child for child in children if child in trace.running[snap.end]]
            assert running == expected, fail(trace, f"{supervisor} after {snap.command}: {infos}")
            assert {info.state for info in infos} <= {ChildState.RUNNING, ChildState.TERMINATED}
