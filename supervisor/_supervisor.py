"""The supervisor: OTP's restart strategies over the tasks of one Trio nursery.

A supervisor is a task that owns a nursery with one task per child. Each child's task reports
how it exited; the supervisor's loop takes those reports one at a time and decides, by the
child's restart type and the supervisor's strategy, what to restart. Every change to the set of
children (a restart, ``start_child``, ``terminate_child``, the final shutdown) holds one lock, so
that they never interleave; a child that the lock's holder is waiting for (to stop it) may act
under that hold, since the holder cannot move until it is done.

Stopping is a normal path: asked to stop, giving up, or cancelled from outside, a supervisor stops
its children the same way, newest first, each by its shutdown spec, in a shielded cleanup bounded
by those specs (or all at once, for a supervisor whose children are alike and independent, such
as a dynamic supervisor's). Children's tasks are shielded from cancellation from outside for that
reason: only their supervisor cancels them.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
import math
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Hashable, Iterable
from typing import Any, NamedTuple, Protocol

import trio

from ._bounded_repr import BoundedRepr, bounded_repr
from ._checks import check_callable
from ._child import Child, ChildRun
from ._errors import (
    ChildIsCaller,
    ChildNotFound,
    ChildRunning,
    ChildStartFailed,
    DuplicateChild,
    FinalExit,
    HealthCheckFailed,
    Hibernate,
    InvalidSpec,
    RestartIntensityExceeded,
    SupervisorError,
    SupervisorNotRunning,
)
from ._intensity import RestartBackoff
from ._restarts import LIVE, ExitAction, RestartPolicy, RestartStrategy
from ._spec import ChildKind, ChildSpec, RestartType, Shutdown, check_id
from ._stats import ChildCounts, ChildInfo, ChildState, SupervisorStats

__all__ = ["AutoShutdown", "CurrentChild", "RestartStrategy", "Supervisor", "current_child"]

logger = logging.getLogger("supervisor")


class AutoShutdown(enum.Enum):
    """Whether the exit of significant children ends the supervisor (OTP 24)."""

    #: Never: significant children are not allowed.
    NEVER = "never"
    #: When any significant child exits by itself and is not restarted.
    ANY_SIGNIFICANT = "any_significant"
    #: When every significant child has exited by itself and none is left running.
    ALL_SIGNIFICANT = "all_significant"


class CurrentChild(Protocol):
    """The supervisor running the current task, the id it knows the task by, and the ``start``
    it runs it with.

    What ``current_child()`` returns, and what a spec's ``retire`` hook receives, is the
    supervisor's own record of the child: the same object in each of its runs, made once per
    child rather than once per run.
    """

    @property
    def supervisor(self) -> Supervisor: ...

    @property
    def id(self) -> Hashable: ...

    @property
    def start(self) -> Callable[..., Awaitable[object]]: ...


_current_child: contextvars.ContextVar[CurrentChild | None] = contextvars.ContextVar(
    "supervisor_current_child", default=None
)


def current_child() -> CurrentChild | None:
    """Which supervisor runs the calling task, and as which child (``None`` if none does).

    Visible in the child's own task and in tasks it starts.
    """
    return _current_child.get()


class _ShieldedStart:
    """The ``task_status`` of a task shielded from its starter's cancellation, which
    ``nursery.start`` cannot start: cancelled meanwhile, it leaves such a task where it waits
    for it. The starter waits for :attr:`event` instead, and stops the task if cancelled."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def started(self, value: object = None) -> None:
        self.event.set()


class Supervisor:
    """Runs child tasks and restarts them as OTP's supervisor does.

    Run it as a task (``await nursery.start(sup.run)``) or as a block (``async with sup:``).
    Children start in list order, each once the previous one reported ``started``; they are
    stopped in the reverse order. Above ``max_restarts`` restarts within ``max_seconds``
    the supervisor stops every child and raises :class:`RestartIntensityExceeded`, which a
    parent supervisor handles as the crash of that child.

    Args:
        children: the children started with the supervisor, in start order.
        strategy: which children restart when one exits (``RestartStrategy``).
        max_restarts: restarts allowed within ``max_seconds`` (0: give up at the first exit
            that calls for a restart).
        max_seconds: the length of the sliding window restarts are counted in.
        auto_shutdown: whether significant children's exits end the supervisor.
        backoff: wait before restarting a child that keeps exiting (OTP restarts at once).
        forget_ended: forget a child that ended for good (a transient child's normal return)
            instead of keeping it as terminated, as a dynamic supervisor does; for supervisors
            that start many short-lived children.
        stop_concurrently: when it stops all its children (its own stop, giving up, a failed
            start), ask them all to stop at once and wait for them together, each within its
            own shutdown time, as OTP stops simple_one_for_one children: for children that are
            alike and do not call one another (a pool's workers), so that busy ones do not add
            up. By default they stop newest first, one after another, so that a child stopping
            can still use those started before it.
        name: used in logs and errors.

    Raises:
        InvalidSpec: an option is out of range or a child spec is not a ``ChildSpec``.
        DuplicateChild: two children share an id.
    """

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: RestartStrategy = RestartStrategy.ONE_FOR_ONE,
        max_restarts: int = 5,
        max_seconds: float = 60.0,
        auto_shutdown: AutoShutdown = AutoShutdown.NEVER,
        backoff: RestartBackoff | None = None,
        forget_ended: bool = False,
        stop_concurrently: bool = False,
        name: str | None = None,
    ) -> None:
        if not isinstance(strategy, RestartStrategy):
            raise InvalidSpec(f"strategy must be a RestartStrategy, got {bounded_repr(strategy)}")
        if not isinstance(auto_shutdown, AutoShutdown):
            raise InvalidSpec(
                f"auto_shutdown must be an AutoShutdown, got {bounded_repr(auto_shutdown)}"
            )
        if backoff is not None and not isinstance(backoff, RestartBackoff):
            raise InvalidSpec(
                f"backoff must be a RestartBackoff or None, got {bounded_repr(backoff)}"
            )
        if not isinstance(forget_ended, bool):
            raise InvalidSpec(f"forget_ended must be a bool, got {bounded_repr(forget_ended)}")
        if name is not None and not isinstance(name, str):
            raise InvalidSpec(f"name must be a str or None, got {bounded_repr(name)}")
        if not isinstance(stop_concurrently, bool):
            raise InvalidSpec(
                f"stop_concurrently must be a bool, got {bounded_repr(stop_concurrently)}"
            )
        self.auto_shutdown = auto_shutdown
        self.name = name if name is not None else f"supervisor@{id(self):x}"
        #: What to restart, when, and when to give up: decided there, done here.
        self._restarts = RestartPolicy(strategy, max_restarts, max_seconds, backoff)
        self._specs: list[ChildSpec] = []
        taken: set[Hashable] = set()
        try:
            specs = iter(children)
        except TypeError:
            raise InvalidSpec(
                f"children must be an iterable of ChildSpec, got {bounded_repr(children)}"
            ) from None
        for spec in specs:
            self._check_new(spec, taken)
            taken.add(spec.id)
            self._specs.append(spec)
        #: The children by id, in start order.
        self._children: dict[Hashable, Child] = {}
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._events: trio.MemorySendChannel[ChildRun | None] | None = None
        self._stopping = False
        self._stopped = trio.Event()
        self._escalation: RestartIntensityExceeded | None = None
        #: The run being started now, under the lock: a stop request may have to cut it short.
        self._launching: ChildRun | None = None
        #: The runs being stopped now, under the lock: their own calls to us act under that
        #: hold (one at a time, or all of them when children stop concurrently).
        self._awaiting: set[ChildRun] = set()
        #: The context children start in: the supervisor's own, not that of whoever called
        #: ``start_child`` (a handler's deadline or sender must not follow a child for ever).
        self._context = contextvars.copy_context()
        #: Its own parent supervisor and id there, when it runs as a child of one.
        self._placement: CurrentChild | None = None
        self._block: contextlib.AbstractAsyncContextManager[Supervisor] | None = None
        self._total_restarts = 0
        self._escalations = 0
        self._stop_errors = 0
        self.forget_ended = forget_ended
        self.stop_concurrently = stop_concurrently

    @classmethod
    def lenient(cls, children: Iterable[ChildSpec] = (), **options: Any) -> Supervisor:
        """A supervisor that allows 10 restarts in 120 s."""
        return cls(children, max_restarts=10, max_seconds=120.0, **options)

    @classmethod
    def strict(cls, children: Iterable[ChildSpec] = (), **options: Any) -> Supervisor:
        """A supervisor that allows 3 restarts in 30 s."""
        return cls(children, max_restarts=3, max_seconds=30.0, **options)

    def __repr__(self) -> str:
        return f"<Supervisor {self.name} {self.strategy.value}, {len(self._children)} children>"

    @property
    def strategy(self) -> RestartStrategy:
        """Which children restart when one exits."""
        return self._restarts.strategy

    @strategy.setter
    def strategy(self, strategy: RestartStrategy) -> None:
        self._restarts.strategy = strategy

    @property
    def backoff(self) -> RestartBackoff | None:
        """The wait before restarting a child that keeps exiting (``None``: at once)."""
        return self._restarts.backoff

    @backoff.setter
    def backoff(self, backoff: RestartBackoff | None) -> None:
        self._restarts.backoff = backoff

    @property
    def max_restarts(self) -> int:
        """Restarts allowed within :attr:`max_seconds` before the supervisor gives up."""
        return self._restarts.window.max_restarts

    @property
    def max_seconds(self) -> float:
        """The length, in seconds, of the sliding window that restarts are counted in."""
        return self._restarts.window.max_seconds

    def as_child(
        self,
        id: Hashable,
        *,
        restart: RestartType = RestartType.PERMANENT,
        significant: bool = False,
    ) -> ChildSpec:
        """A spec that runs this supervisor as a child of another: a subtree.

        It is stopped by asking it to stop its own children, for as long as that takes.
        """
        return ChildSpec(
            id,
            self.run,
            restart=restart,
            shutdown=Shutdown.INFINITY,
            stop=_ask_supervisor_to_stop,
            retire=self._retire_children,
            significant=significant,
            kind=ChildKind.SUPERVISOR,
        )

    # -- running -------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the children in order, report ``started``, then supervise until stopped.

        Returns once :meth:`request_stop` (or an auto shutdown) has stopped every child.
        Each run starts afresh from the children given to the constructor: children added with
        :meth:`start_child` do not survive a restart of the supervisor, as in OTP.

        Raises:
            ChildStartFailed: a child failed to start; those started before it are stopped.
            RestartIntensityExceeded: too many restarts; every child has been stopped.
            SupervisorError: the supervisor is already running.
        """
        if self._nursery is not None:
            raise SupervisorError(f"{self.name} is already running")
        self._placement = current_child()
        self._context = contextvars.copy_context()
        self._children = {spec.id: Child(spec, self, spec.id, spec.start) for spec in self._specs}
        self._restarts.window.clear()
        self._stopping = False
        self._stopped = trio.Event()
        self._escalation = None
        start_failure: ChildStartFailed | None = None
        events, reports = trio.open_memory_channel[ChildRun | None](math.inf)
        self._events = events
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    async with self._lock:
                        start_failure = await self._start_initial_children()
                    if start_failure is None:
                        task_status.started(self)
                        await self._supervise(reports)
                finally:
                    # Asked to stop, given up, or cancelled from outside: the same orderly stop.
                    with trio.CancelScope(shield=True):
                        await self._stop_all()
                nursery.cancel_scope.cancel()
        finally:
            self._stopping = True
            self._nursery = None
            for child in self._children.values():
                child.run = None
                child.state = ChildState.TERMINATED
            self._stopped.set()
        if start_failure is not None:
            raise start_failure
        if self._escalation is not None:
            self._escalations += 1
            raise self._escalation

    def request_stop(self) -> None:
        """Ask the supervisor to stop its children (newest first) and return from ``run``.

        A child still starting gets its shutdown time to finish starting, then is cancelled.
        Cancelling the scope around ``run`` (or around an ``async with`` block) stops the
        children the same way.
        """
        if self._events is not None and not self._stopping:
            self._stopping = True
            self._events.send_nowait(None)
            self._cut_launch_short()

    def _cut_launch_short(self) -> None:
        if self._launching is not None and self._nursery is not None:
            self._nursery.start_soon(self._cut_short, self._launching)

    async def _stop_all(self) -> None:
        """The final stop: every child, newest first (or all at once), by its shutdown spec."""
        if not self._stopping:  # cancelled from outside rather than asked
            self._stopping = True
            self._cut_launch_short()
        async with self._lock:
            await self._stop_children(reversed(self._children.values()))

    async def stop(self) -> None:
        """Stop the supervisor and wait until every child has stopped."""
        self.request_stop()
        if self._nursery is not None:
            await self._stopped.wait()

    async def __aenter__(self) -> Supervisor:
        self._block = self._open()
        return await self._block.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        block, self._block = self._block, None
        assert block is not None, "__aexit__ without __aenter__"
        return await block.__aexit__(*exc_info)

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[Supervisor]:
        """Run the supervisor for the length of a block; its failure ends the block.

        The supervisor's task is shielded: a cancellation of the block reaches the body, whose
        exit stops the children in order; an error the body raised meanwhile still propagates.
        """
        if self._nursery is not None:
            raise SupervisorError(f"{self.name} is already running")
        failure: SupervisorError | None = None
        body_error: BaseException | None = None
        begun, started = trio.Event(), _ShieldedStart()
        async with trio.open_nursery() as nursery:

            async def supervise() -> None:
                nonlocal failure
                with trio.CancelScope(shield=True):
                    begun.set()
                    try:
                        await self.run(task_status=started)
                    except (ChildStartFailed, RestartIntensityExceeded) as error:
                        failure = error
                        if started.event.is_set():
                            nursery.cancel_scope.cancel()  # ends the body
                    finally:
                        started.event.set()

            nursery.start_soon(supervise)
            try:
                await started.event.wait()
                if failure is None:
                    yield self
            except BaseException as error:
                body_error = error
            finally:
                with trio.CancelScope(shield=True):
                    await begun.wait()
                    await self.stop()
        if failure is not None:
            raise failure
        if body_error is not None:
            raise body_error

    async def _start_initial_children(self) -> ChildStartFailed | None:
        for child in list(self._children.values()):
            if self._stopping:
                break
            error = await self._launch(child)
            if error is not None and not self._stopping:  # cut short by a stop: no failure
                self._forget(child)
                await self._stop_children(reversed(self._children.values()))
                return ChildStartFailed(child.id, error)
        return None

    async def _cut_short(self, run: ChildRun) -> None:
        """Cancel a start that has not finished within the child's shutdown time.

        Shielded: it may be started by a supervisor that is itself being cancelled."""
        shutdown = run.child.spec.shutdown
        if shutdown is Shutdown.INFINITY:
            return
        with trio.CancelScope(shield=True):
            if shutdown is not Shutdown.BRUTAL_KILL:
                with trio.move_on_after(shutdown):
                    await run.wait_started()
            if not run.reported:
                run.scope.cancel()

    async def _supervise(self, reports: trio.MemoryReceiveChannel[ChildRun | None]) -> None:
        """Handle child exits one at a time until asked to stop, or until giving up."""
        async for run in reports:
            if run is None:
                return
            async with self._lock:
                if self._stopping or not await self._handle_exit(run):
                    # Decided while holding the lock, so that a delayed restart waiting for it
                    # sees the supervisor stopping and starts nothing.
                    self._stopping = True
                    return

    # -- one child's task ----------------------------------------------------------------

    async def _launch(self, child: Child) -> Exception | None:
        """Start one run of ``child`` and wait until it has reported ``started``.

        Returns what it raised before it had started, if it did.
        """
        assert self._nursery is not None
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller starts nothing more
        run = ChildRun(child)
        child.run = run
        child.state = ChildState.STARTING
        self._launching = run
        # What ``nursery.start`` does, without the nursery it opens for each start: that
        # scope and its reparenting cost more than the rest of starting a small child.
        try:
            self._context.run(self._nursery.start_soon, self._run_child, run, False)
            try:
                await run.wait_started()
            except trio.Cancelled:
                if not run.reported:
                    await self._cancel_start(run)
                    raise
                # It had started when the cancel came: the start is complete, and the caller,
                # still cancelled, sees Cancelled at its next checkpoint.
            except BaseException:
                await self._cancel_start(run)
                raise
        finally:
            self._launching = None
        if not run.reported:
            error = run.start_error or RuntimeError("the child ended before it reported started")
            child.run = None
            child.last_exit = error
            return error
        if child.run is run:  # not hibernated already
            child.state = ChildState.RUNNING
        if child.spec.health_check is not None and not run.done:
            self._context.run(self._nursery.start_soon, self._watch_health, run)
        return None

    async def _cancel_start(self, run: ChildRun) -> None:
        """The start's caller was cancelled: so is the child; the caller cleans up."""
        run.scope.cancel()
        with trio.CancelScope(shield=True):
            await run.wait_done()
        run.child.run = None

    async def _run_child(self, run: ChildRun, started_already: bool) -> None:
        """The task of one run: the child's own code, and the report of how it ended.

        A run that counts as ``started_already`` (a hibernated child's, or one started without
        waiting) runs its code even if it was cancelled before it began, so that the child,
        which has state to settle, settles it as it ends."""
        child = run.child
        _current_child.set(child)
        run.task = trio.lowlevel.current_task()
        hibernate: Hibernate | None = None
        scope = run.scope
        try:
            # ``with scope:`` spelled out: a with statement keeps the scope's bound ``__exit__``
            # on the frame while the child runs, 64 bytes and one more object for the cyclic GC
            # in every running child.
            scope.__enter__()
            try:
                try:
                    # Cancelled before it ran (its start was), it runs none of its code.
                    if not started_already:
                        await trio.lowlevel.checkpoint_if_cancelled()
                    # A run that counts as started already has nothing left to report.
                    if child.takes_task_status:
                        await child.start(
                            task_status=trio.TASK_STATUS_IGNORED if started_already else run
                        )
                    else:
                        if not started_already:
                            run.started()
                        await child.start()
                except Hibernate as request:
                    hibernate = request
                except Exception as error:
                    if not run.reported:
                        run.start_error = error  # for the launcher, as a failed start
                    else:
                        run.outcome = error
            except BaseException as escaped:
                if not scope.__exit__(type(escaped), escaped, escaped.__traceback__):
                    raise
            else:
                scope.__exit__(None, None, None)
            if scope.cancelled_caught and run.health_failure is not None:
                run.outcome = run.health_failure
            # Not once its stop has begun: then the run just ends (the stop asked it not to).
            if hibernate is not None and run.reported and not run.terminating:
                self._hibernated(run, hibernate)
        finally:
            run.finish()  # the launcher waits for this too, whether it started or not
            if run.health_scope is not None:
                run.health_scope.cancel()
            if (
                run.reported
                and not run.terminating
                and child.run is run  # a hibernated child's run is no exit to report
                and self._events is not None
            ):
                self._events.send_nowait(run)

    def _hibernated(self, run: ChildRun, request: Hibernate) -> None:
        """The child ended ``run`` to hibernate: keep it, with no run, until woken."""
        child = run.child
        if child.run is not run:
            return
        child.run = None
        child.state = ChildState.HIBERNATED
        child.kept_value = run.value
        child.wakes_to_stop = request.wake_to_stop

    def wake_child(self, id: Hashable) -> bool:
        """Start the next run of a hibernated child now, without waiting for it (it is no
        restart: it counts toward no intensity); a sync call, for code that cannot await.

        Returns False, starting nothing, when child ``id`` does not hibernate or the supervisor
        is stopping (which stops the child, starting that run only to let it clean up).
        """
        child = self._children.get(id)
        if (
            child is None
            or child.state is not ChildState.HIBERNATED
            or self._nursery is None
            or self._stopping
        ):
            return False
        self._wake(child)
        return True

    def run_scope(self, id: Hashable) -> trio.CancelScope | None:
        """The cancel scope around child ``id``'s current run (None if it has none): the one
        the supervisor cancels to kill it. A child may keep it to kill its own run without a
        scope of its own; it then handles that ``Cancelled`` as it sees fit."""
        child = self._children.get(id)
        if child is None or child.run is None:
            return None
        return child.run.scope

    def _wake(self, child: Child) -> ChildRun:
        """Start a hibernated child's next run, reported started already (with its last
        run's value): its supervisor does not wait for it."""
        value, child.kept_value = child.kept_value, None
        return self._run_started(child, value)

    def _run_started(self, child: Child, value: object) -> ChildRun:
        """Start a run of ``child`` that counts as started already, reporting ``value``: its
        code runs from the next schedule point, even if the run is cancelled before then
        (a child that counts as started is given the chance to settle as it ends)."""
        assert self._nursery is not None
        run = ChildRun(child)
        run.value = value
        run.reported = True
        child.run = run
        child.state = ChildState.RUNNING
        self._context.run(self._nursery.start_soon, self._run_child, run, True)
        if child.spec.health_check is not None:
            self._context.run(self._nursery.start_soon, self._watch_health, run)
        return run

    async def _watch_health(self, run: ChildRun) -> None:
        check = run.child.spec.health_check
        assert check is not None
        with trio.CancelScope() as scope:
            run.health_scope = scope
            while not run.done and not run.terminating:
                await trio.sleep(check.interval)
                failure: HealthCheckFailed | None = None
                with trio.move_on_after(check.deadline) as probe:
                    try:
                        answer = await check.check(run.value)
                    except Exception as error:
                        failure = HealthCheckFailed(
                            f"the health check raised {bounded_repr(error)}"
                        )
                        failure.__cause__ = error
                    else:
                        if answer is False:
                            failure = HealthCheckFailed("the health check answered False")
                if probe.cancelled_caught:
                    failure = HealthCheckFailed(f"no answer within {check.deadline} s")
                if failure is not None:
                    logger.warning(
                        "%s: %s is unhealthy: %s",
                        self.name,
                        BoundedRepr(run.child.id),
                        failure,
                    )
                    run.health_failure = failure
                    run.scope.cancel()
                    return

    # -- deciding what to restart --------------------------------------------------------

    async def _handle_exit(self, run: ChildRun) -> bool:
        """Restart what the exit calls for; False when the supervisor must stop."""
        child = run.child
        if child.run is not run:
            return True  # stopped or restarted since it reported
        child.run = None
        child.last_exit = run.outcome
        action = self._restarts.on_exit(child.spec.restart, run.outcome)
        if action is ExitAction.ESCALATE:
            self._escalation = RestartIntensityExceeded(
                self.name, self.max_restarts, self.max_seconds, run.outcome
            )
            logger.error("%s", self._escalation)
            return False
        if action is ExitAction.STOP_FOR_GOOD:
            logger.info("%s: %s stopped for good", self.name, BoundedRepr(child.id))
            child.state = ChildState.TERMINATED
            self._forget(child)
            return not (child.spec.significant and self._auto_shutdown_due())
        if action is ExitAction.RESTART:
            return await self._restart_after(child, run)
        logger.info(
            "%s: %s exited (%s), not restarted",
            self.name,
            BoundedRepr(child.id),
            BoundedRepr(run.outcome),
        )
        child.state = ChildState.TERMINATED
        if child.spec.restart is RestartType.TEMPORARY or self.forget_ended:
            self._forget(child)
        else:
            _retire(child)
        return not (child.spec.significant and self._auto_shutdown_due())

    async def _restart_after(self, failed: Child, run: ChildRun) -> bool:
        if not self._restarts.admit(trio.current_time()):
            self._escalation = RestartIntensityExceeded(
                self.name, self.max_restarts, self.max_seconds, run.outcome
            )
            logger.error("%s", self._escalation)
            return False
        self._total_restarts += 1
        logger.info(
            "%s: child %s exited (%s), restarting",
            self.name,
            BoundedRepr(failed.id),
            BoundedRepr(run.outcome),
        )
        group = self._restarts.group(list(self._children.values()), failed)
        for child in group:
            child.generation += 1  # overtakes any delayed restart planned for them
        failed.state = ChildState.RESTARTING
        siblings = [child for child in group if child is not failed]
        for sibling in reversed(siblings):
            await self._stop_child(sibling, then=ChildState.RESTARTING)
            if sibling.spec.restart is RestartType.TEMPORARY:
                self._forget(sibling)  # never restarted, even by a sibling's exit
        group = [child for child in group if self._knows(child)]
        delay = self._restarts.delay(failed, trio.current_time())
        if delay > 0:
            assert self._nursery is not None
            due = [(child, child.generation) for child in group]
            self._nursery.start_soon(self._start_later, due, delay)
        else:
            await self._start_in_order(group)
        return True

    async def _start_later(self, due: list[tuple[Child, int]], delay: float) -> None:
        await trio.sleep(delay)
        async with self._lock:
            if not self._stopping:
                await self._start_in_order(
                    [child for child, generation in due if child.generation == generation]
                )

    async def _start_in_order(self, group: list[Child]) -> None:
        """Start ``group`` in order; a child that fails to start counts as its crash."""
        for child in group:
            if self._stopping:
                return
            if not self._knows(child) or child.state is not ChildState.RESTARTING:
                continue  # deleted or terminated by hand meanwhile
            child.restarts += 1
            child.restarted_at = trio.current_time()
            error = await self._launch(child)
            if error is not None and not self._stopping:
                assert self._events is not None
                child.state = ChildState.RESTARTING
                child.run = ChildRun.failed_start(child, error)
                self._events.send_nowait(child.run)
                action = self._restarts.on_exit(child.spec.restart, error)
                if action is ExitAction.RESTART or action is ExitAction.ESCALATE:
                    return  # the rest of the group waits for that exit's restart
                # It ended for good (a ``FinalExit``): no restart comes, the rest start now.

    def _auto_shutdown_due(self) -> bool:
        if self.auto_shutdown is AutoShutdown.ANY_SIGNIFICANT:
            return True
        if self.auto_shutdown is AutoShutdown.ALL_SIGNIFICANT:
            return not any(
                child.spec.significant and child.state in LIVE for child in self._children.values()
            )
        return False

    # -- stopping --------------------------------------------------------------------------

    async def _stop_children(self, children: Iterable[Child]) -> None:
        """Stop ``children`` in the order given, or all at once with ``stop_concurrently``:
        then the slowest child's shutdown time bounds the whole stop, not their sum.

        In order, the children that are quiet now (see ``ChildSpec.quiet``) are asked to stop
        as they come, and waited for together before the next child that is not quiet is
        stopped (closing mailboxes rather than cancelling tasks one by one, as NOTES.md
        measured): no order anyone can see changes."""
        if self.stop_concurrently:
            async with trio.open_nursery() as nursery:
                for child in list(children):
                    nursery.start_soon(self._stop_child, child)
            return
        asked: list[_QuietStop] = []
        try:
            for child in list(children):
                quiet = self._ask_quiet(child)
                if quiet is not None:
                    asked.append(quiet)
                    continue
                if asked:
                    batch, asked = asked, []
                    await self._end_quiet(batch)
                await self._stop_child(child)
        finally:
            if asked:
                await self._end_quiet(asked)

    def _ask_quiet(self, child: Child) -> _QuietStop | None:
        """Ask ``child`` to stop if it runs, started, and is quiet (its stop hook says so
        without raising); None, asking nothing, otherwise."""
        run, spec = child.run, child.spec
        if (
            run is None
            or spec.quiet is None
            or spec.stop is None
            or spec.shutdown is Shutdown.BRUTAL_KILL
            or not run.reported
            or run.done
        ):
            return None
        try:
            if not spec.quiet(run.value):
                return None
        except Exception:  # no answer is no promise: it is stopped the usual way
            return None
        child.run = None
        child.state = ChildState.STOPPING
        run.terminating = True
        if run.health_scope is not None:
            run.health_scope.cancel()
        stop_error: Exception | None = None
        try:
            spec.stop(run.value)
        except Exception as error:  # it was not asked, so it is cancelled at once
            stop_error = error
            self._report_stop_error(child, error)
            run.scope.cancel()
        shutdown = spec.shutdown
        deadline = math.inf if shutdown is Shutdown.INFINITY else trio.current_time() + shutdown
        return _QuietStop(run, deadline, stop_error)

    async def _end_quiet(self, asked: list[_QuietStop]) -> None:
        """Wait for quiet children asked to stop, each within its shutdown time from its ask
        (then cancelled), and settle each as :meth:`_stop_child` does; cancelled meanwhile,
        the rest are cancelled and still accounted for."""
        try:
            for quiet in asked:
                if not quiet.run.done:
                    with trio.CancelScope(deadline=quiet.deadline):
                        await quiet.run.wait_done()
        finally:
            for quiet in asked:
                if not quiet.run.done:
                    quiet.run.scope.cancel()
            with trio.CancelScope(shield=True):
                for quiet in asked:
                    run = quiet.run
                    if not run.done:
                        await run.wait_done()
                    if run.outcome is not None:
                        self._report_stop_error(run.child, run.outcome)
                    run.child.last_exit = run.outcome if run.outcome is not None else quiet.error
                    run.child.state = ChildState.TERMINATED

    async def _stop_child(
        self, child: Child, *, then: ChildState = ChildState.TERMINATED, kill: bool = False
    ) -> None:
        """Stop one child by its shutdown spec (at once with ``kill``), leaving it in state
        ``then``.

        What it raises while stopping, or what its stop hook raises, is reported. If the caller
        is cancelled meanwhile, the child is cancelled too and still accounted for.
        """
        if child.run is None and child.state is ChildState.HIBERNATED:
            if child.wakes_to_stop or kill or child.spec.stop is None:
                self._wake(child)  # its run, to let it clean up as it is stopped
            else:
                self._stop_asleep(child, then)
                return
        run, child.run = child.run, None
        if run is None:
            # A sibling being stopped at the same time may ask for this one: it waits for it.
            stopping = next((other for other in self._awaiting if other.child is child), None)
            if stopping is not None:
                await stopping.wait_done()
            child.state = then
            return
        if run.done:  # it ended by itself already: nothing to ask or wait for
            run.terminating = True
            if run.outcome is not None and not isinstance(run.outcome, FinalExit):
                # An exit the supervisor had not handled yet, not an error of the stop.
                logger.info(
                    "%s: %s exited (%s) before it was stopped",
                    self.name,
                    BoundedRepr(child.id),
                    BoundedRepr(run.outcome),
                )
            child.last_exit = run.outcome
            child.state = then
            return
        child.state = ChildState.STOPPING
        run.terminating = True
        if run.health_scope is not None:
            run.health_scope.cancel()  # a child on its way out is not probed any more
        spec = child.spec
        stop_error: Exception | None = None
        self._awaiting.add(run)
        try:
            if (
                not kill
                and spec.shutdown is not Shutdown.BRUTAL_KILL
                and spec.stop is not None
                and run.reported
                and not run.done
            ):
                try:
                    spec.stop(run.value)
                except Exception as error:  # it was not asked, so it is cancelled at once
                    stop_error = error
                    self._report_stop_error(child, error)
                else:
                    if spec.shutdown is Shutdown.INFINITY:
                        await run.wait_done()
                    else:  # move_on_after, without the generator around its scope
                        with trio.CancelScope(deadline=trio.current_time() + spec.shutdown):
                            await run.wait_done()
        finally:
            if not run.done:  # not asked, or not done in its shutdown time: cancel it
                run.scope.cancel()
                with trio.CancelScope(shield=True):
                    await run.wait_done()
            self._awaiting.discard(run)
            if run.outcome is not None:
                self._report_stop_error(child, run.outcome)
            child.last_exit = run.outcome if run.outcome is not None else stop_error
            child.state = then

    def _stop_asleep(self, child: Child, then: ChildState) -> None:
        """Stop a hibernated child with nothing to clean up: its stop hook, given its kept
        value, stops it at once, and no run is started for it."""
        assert child.spec.stop is not None
        value, child.kept_value = child.kept_value, None
        try:
            child.spec.stop(value)
        except Exception as error:
            self._report_stop_error(child, error)
        child.last_exit = None
        child.state = then

    def _report_stop_error(self, child: Child, error: BaseException) -> None:
        if isinstance(error, FinalExit):
            return  # it ended for good as it was stopped: what a stop asks, not an error
        self._stop_errors += 1
        logger.error(
            "%s: child %s raised while stopping",
            self.name,
            BoundedRepr(child.id),
            exc_info=error,
        )

    # -- children by hand ----------------------------------------------------------------

    async def start_child(
        self,
        spec: ChildSpec,
        *,
        id: Hashable | None = None,
        start: Callable[..., Awaitable[object]] | None = None,
    ) -> ChildInfo:
        """Add a child and start it; returns once it has reported ``started``.

        Given ``id`` and ``start``, the child runs ``start`` under ``id`` and takes the rest
        from ``spec``: one spec can then serve many children, each with no spec of its own.

        Raises:
            DuplicateChild: a child with that id exists.
            ChildStartFailed: it raised before it had started (it is not added).
            SupervisorNotRunning: the supervisor is not running.
            InvalidSpec: ``spec`` is not a ``ChildSpec``, is significant under ``NEVER``, or
                ``id`` is not hashable or ``start`` not callable.
        """
        self._check_not_starting_caller()
        self._check_running()
        lock = self._lock
        if self._lent_to_caller() or lock.locked():
            async with self._changing():
                return await self._add(spec, id, start)
        # The lock is free: taken without the scheduler round that ``acquire`` spends, as the
        # launch parks until the child reports anyway (a schedule point every time).
        await trio.lowlevel.checkpoint_if_cancelled()
        lock.acquire_nowait()
        try:
            return await self._add(spec, id, start)
        finally:
            lock.release()

    def start_child_nowait(
        self,
        spec: ChildSpec,
        *,
        id: Hashable | None = None,
        start: Callable[..., Awaitable[object]] | None = None,
        value: object = None,
    ) -> CurrentChild:
        """:meth:`start_child` without waiting, for a child whose start has nothing left to
        do that could wait or fail (its caller did that part): it counts as started at once,
        having reported ``value``, and its code runs from the caller's next schedule point,
        called with a ``task_status`` that ignores a report. Cancelled before then, it still
        runs, to settle as it ends. ``id`` and ``start`` are as in :meth:`start_child`.

        Returns the child's record, which ``current_child()`` gives in its tasks.

        Raises:
            trio.WouldBlock: a change to the children is under way (``start_child`` waits
                for it); nothing is started.
            DuplicateChild, SupervisorNotRunning, InvalidSpec: as :meth:`start_child`.
        """
        self._check_running()
        if not self.can_start_nowait():
            raise trio.WouldBlock
        self._check_new(spec, self._children, id, start)
        if id is None:
            id = spec.id
        child = self._children[id] = Child(spec, self, id, spec.start if start is None else start)
        self._run_started(child, value)
        return child

    def can_start_nowait(self) -> bool:
        """Whether :meth:`start_child_nowait` would start a child now: the supervisor runs and
        no change to its children is under way. Only a schedule point can change that, so a
        caller can ask before it prepares the child's start."""
        return self._nursery is not None and not self._stopping and not self._lock.locked()

    async def _add(
        self,
        spec: ChildSpec,
        id: Hashable | None,
        start: Callable[..., Awaitable[object]] | None,
    ) -> ChildInfo:
        """``start_child`` under the lock."""
        self._check_running()
        self._check_new(spec, self._children, id, start)
        if id is None:
            id = spec.id
        child = self._children[id] = Child(spec, self, id, spec.start if start is None else start)
        try:
            error = await self._launch(child)
        except BaseException:
            self._forget(child)
            raise
        if error is not None:
            self._forget(child)
            raise ChildStartFailed(id, error)
        return child.info()

    async def terminate_child(self, id: Hashable) -> None:
        """Stop a child by its shutdown spec; it stays known (and restartable) unless temporary.

        A child that terminates itself is cancelled at once, as OTP kills it: the call does not
        return to it; a task deeper in a subtree that terminates the subtree gets the call back
        at once and is stopped with it. Cancelled while it waits, the stop still completes.

        Raises:
            ChildNotFound: no child has that id.
            SupervisorNotRunning: the supervisor is not running.
        """
        self._check_not_starting_caller()
        self._check_may_terminate()
        if self._caller_within(id):
            await self._terminate_caller(id)
            return
        async with self._changing():
            self._check_may_terminate()
            await self._terminate(self._find(id))

    async def _terminate(self, child: Child, *, kill: bool = False) -> None:
        try:
            await self._stop_child(child, kill=kill)
        finally:
            if child.spec.restart is RestartType.TEMPORARY:
                self._forget(child)
            else:
                _retire(child)

    async def _terminate_caller(self, id: Hashable) -> None:
        """Terminate the child the caller runs in: the caller cannot wait for its own end.

        A child's own task is cancelled at once, as OTP kills it, and the bookkeeping waits for
        the lock in a task of our own; a stop of it already under way just ends sooner. A task
        deeper in a subtree that terminates the subtree gets the call back at once, then is
        stopped with the subtree. (A task of the child's outside its scope sees this return.)
        """
        assert self._nursery is not None
        awaiting = next((run for run in self._awaiting if run.child.id == id), None)
        if awaiting is not None:
            awaiting.scope.cancel()  # being stopped already: that stop does the bookkeeping
            await trio.lowlevel.checkpoint()
            return
        caller_run = self._find(id).run
        caller = current_child()
        direct = caller is not None and caller.supervisor is self and caller.id == id
        if caller_run is not None and direct:
            caller_run.terminating = True  # its end is no exit to act on
            caller_run.scope.cancel()
        finished = trio.Event()
        failure: list[SupervisorError] = []

        async def terminate() -> None:
            try:
                if caller_run is not None and direct:
                    # Killed already; its cleanup may still call us, so not under the lock.
                    await caller_run.wait_done()
                async with self._lock:
                    if self._nursery is None:
                        raise SupervisorNotRunning(f"{self.name} is not running")
                    child = self._find(id)
                    await self._terminate(child, kill=child.run is caller_run)
            except SupervisorError as error:
                failure.append(error)
            finally:
                finished.set()

        self._context.run(self._nursery.start_soon, terminate)
        if not direct:
            await trio.lowlevel.checkpoint()
            return
        await finished.wait()
        if failure:
            raise failure[0]

    async def restart_child(self, id: Hashable) -> ChildInfo:
        """Start a terminated child again (this does not count towards the intensity).

        Cancelled while the child starts, it did not happen: the child is cancelled and stays
        terminated.

        Raises:
            ChildNotFound: no child has that id.
            ChildRunning: the child is not terminated.
            ChildIsCaller: the child (or a task of its subtree) asked to restart itself.
            ChildStartFailed: it raised before it had started.
            SupervisorNotRunning: the supervisor is not running.
        """
        self._check_not_starting_caller()
        self._refuse_caller(id, "restart")
        self._check_running()
        async with self._changing():
            self._check_running()
            child = self._find(id)
            if child.state is not ChildState.TERMINATED:
                raise ChildRunning(
                    f"child {bounded_repr(id)} is {child.state.value}, not terminated"
                )
            try:
                error = await self._launch(child)
            finally:
                if child.run is None:  # it failed to start, or this call was cancelled
                    child.state = ChildState.TERMINATED
                    _retire(child)
            if error is not None:
                raise ChildStartFailed(id, error)
            child.restarts += 1
            return child.info()

    def delete_child(self, id: Hashable) -> None:
        """Forget a terminated child.

        A deleted child is not started by later runs of this supervisor either (unlike OTP,
        whose supervisor gets its children anew from ``init`` when restarted): once an agent
        is stopped for good, a restart of its subtree does not bring it back.

        Raises:
            ChildNotFound: no child has that id.
            ChildRunning: the child is not terminated.
            ChildIsCaller: the child (or a task of its subtree) asked to delete itself.
        """
        self._refuse_caller(id, "delete")
        child = self._find(id)
        if child.state is not ChildState.TERMINATED:
            raise ChildRunning(
                f"child {bounded_repr(id)} is {child.state.value}: terminate it first"
            )
        self._forget_for_good(id)

    async def remove_child(self, id: Hashable) -> None:
        """Stop a child for good: ``terminate_child`` then ``delete_child``, in any state of
        the supervisor. While it stops, or between two of its runs, the child is forgotten at
        once (the stop under way stops it). Either way later runs do not start it again.

        Cancelled before the child was terminated, it changes nothing.

        Raises:
            ChildIsCaller: the child (or a task of its subtree) asked to remove itself.
        """
        self._refuse_caller(id, "remove")
        try:
            with contextlib.suppress(ChildNotFound, SupervisorNotRunning):
                await self.terminate_child(id)
        except BaseException:
            child = self._children.get(id)
            if child is not None and child.state is ChildState.TERMINATED:
                self._forget_for_good(id)  # the terminate completed all the same
            raise
        self._forget_for_good(id)

    def _forget_for_good(self, id: Hashable) -> None:
        self._specs = [spec for spec in self._specs if spec.id != id]
        child = self._children.get(id)
        if child is not None and child.state is ChildState.TERMINATED:
            self._forget(child)

    def which_children(self) -> list[ChildInfo]:
        """Every child, in start order."""
        return [child.info() for child in self._children.values()]

    def count_children(self) -> ChildCounts:
        """OTP's ``count_children``: how many children there are, of each kind, running."""
        children = self._children.values()
        supervisors = sum(child.spec.kind is ChildKind.SUPERVISOR for child in children)
        return ChildCounts(
            specs=len(children),
            active=sum(child.state in _ACTIVE for child in children),
            supervisors=supervisors,
            workers=len(children) - supervisors,
        )

    def stats(self) -> SupervisorStats:
        """A snapshot of the children by state and the restarts, escalations and stop errors
        so far, for dashboards and tests."""
        by_state = dict.fromkeys(ChildState, 0)
        for child in self._children.values():
            by_state[child.state] += 1
        return SupervisorStats(
            children=types.MappingProxyType(by_state),
            restarts_in_window=self._restarts.window.count(trio.current_time()),
            total_restarts=self._total_restarts,
            escalations=self._escalations,
            stop_errors=self._stop_errors,
        )

    def _find(self, id: Hashable) -> Child:
        try:
            return self._children[id]
        except (KeyError, TypeError):
            raise ChildNotFound(f"{self.name} has no child {bounded_repr(id)}") from None

    def _knows(self, child: Child) -> bool:
        """Whether ``child`` is still one of ours (not deleted, nor replaced under its id)."""
        return self._children.get(child.id) is child

    def _forget(self, child: Child) -> None:
        if self._knows(child):
            del self._children[child.id]
        _retire(child)

    def _caller_within(self, id: Hashable) -> bool:
        """Whether the calling task runs in child ``id``, or anywhere in its subtree."""
        caller = current_child()
        while caller is not None:
            if caller.supervisor is self:
                return caller.id == id
            caller = caller.supervisor._placement
        return False

    def _refuse_caller(self, id: Hashable, what: str) -> None:
        if self._caller_within(id):
            raise ChildIsCaller(
                f"child {bounded_repr(id)} asked {self.name} to {what} it while it runs: it would"
                " wait for itself (a child can terminate itself, or ask another task to do this)"
            )

    @contextlib.asynccontextmanager
    async def _changing(self) -> AsyncIterator[None]:
        """Hold the lock for a change to the children; or, for a caller in the child being
        stopped under the lock now (its stop hook or its cleanup calling us), go ahead under
        that hold: the holder waits for that child, so waiting for the holder would deadlock."""
        if self._lent_to_caller():
            yield
            return
        async with self._lock:
            # Handed the lock after its caller was cancelled, it starts nothing.
            await trio.lowlevel.checkpoint_if_cancelled()
            yield

    def _lent_to_caller(self) -> bool:
        """Whether the caller runs in a child that the lock's holder waits for: in its task,
        or in a task started under it (not in a task it started elsewhere, which may outlive
        it and so the holder's wait)."""
        if not self._awaiting:
            return False
        awaited = {run.task for run in self._awaiting if run.task is not None}
        task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
        while task is not None:
            if task in awaited:
                return True
            nursery = task.parent_nursery
            task = None if nursery is None else nursery.parent_task
        return False

    def _check_may_terminate(self) -> None:
        """Refuse a stop once the supervisor stops for good, except to a child it is stopping
        now: its cleanup may still stop an older sibling, which would be stopped next anyway."""
        if self._nursery is None or (self._stopping and not self._lent_to_caller()):
            raise SupervisorNotRunning(f"{self.name} is not running")

    def _check_not_starting_caller(self) -> None:
        """Refuse a call that would wait for the lock held while the caller itself starts: the
        caller is the child being started, or runs somewhere in the subtree being started."""
        if self._launching is None:
            return
        caller = current_child()
        while caller is not None:
            starting = caller.supervisor._launching
            if starting is None or starting.reported or starting.child.id != caller.id:
                return  # the caller's branch has started: no start under way waits for it
            if caller.supervisor is self:
                raise SupervisorError(
                    f"child {bounded_repr(caller.id)} called its supervisor {self.name} while"
                    " starting, which would wait for itself: do it once started (e.g. in a task it"
                    " starts)"
                )
            caller = caller.supervisor._placement

    def _retire_children(self, _child: CurrentChild) -> None:
        """The ``retire`` of :meth:`as_child`'s spec: this supervisor will not run again, so
        its children will not start again either."""
        for child in self._children.values():
            _retire(child)

    def _check_running(self) -> None:
        if self._nursery is None or self._stopping:
            raise SupervisorNotRunning(f"{self.name} is not running")

    def _check_new(
        self,
        spec: object,
        taken: Container[Hashable],
        id: Hashable | None = None,
        start: object = None,
    ) -> None:
        if not isinstance(spec, ChildSpec):
            raise InvalidSpec(f"a child must be a ChildSpec, got {bounded_repr(spec)}")
        if id is None:
            id = spec.id
        else:
            check_id(id)
        if start is not None:
            check_callable("start", start)
        if id in taken:
            raise DuplicateChild(f"{self.name} already has a child {bounded_repr(id)}")
        if spec.significant and self.auto_shutdown is AutoShutdown.NEVER:
            raise InvalidSpec(
                f"child {bounded_repr(id)} is significant, which needs auto_shutdown other than"
                " NEVER"
            )


class _QuietStop(NamedTuple):
    """A quiet child asked to stop: its run, when its shutdown time is up, what its stop
    hook raised."""

    run: ChildRun
    deadline: float
    error: Exception | None


#: The states ``count_children`` counts as active: running, with a task or hibernated.
_ACTIVE = frozenset({ChildState.RUNNING, ChildState.HIBERNATED})


def _ask_supervisor_to_stop(supervisor: Supervisor) -> None:
    supervisor.request_stop()


def _retire(child: Child) -> None:
    """Tell a child's owner it will not be started again, so it can release what outlives
    its runs; a hook that raises is logged, never allowed to break the supervisor."""
    if child.spec.retire is None:
        return
    try:
        child.spec.retire(child)
    except Exception as error:
        logger.error("the retire hook of %s raised", BoundedRepr(child.id), exc_info=error)
