"""A supervisor's record of one child, and of each run of it."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING

import trio

from ._bounded_repr import bounded_repr
from ._errors import HealthCheckFailed
from ._spec import ChildSpec, takes_task_status
from ._stats import ChildInfo, ChildState

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = ["Child", "ChildHistory", "ChildRun"]


class ChildRun:
    """One run of a child, from its start to its exit; also the ``task_status`` the child
    reports its start through.

    Its two moments (started, done) are flags with an event made only for a task that waits
    for one not yet reached: most runs are waited for once (their start) and then idle, and an
    event kept per run is a tenth of an idle child's memory.
    """

    __slots__ = (
        "_done_event",
        "_started_event",
        "child",
        "done",
        "health_failure",
        "health_scope",
        "outcome",
        "reported",
        "scope",
        "start_error",
        "task",
        "terminating",
        "value",
    )

    def __init__(self, child: Child) -> None:
        self.child = child
        #: Encloses the child's code: cancelling it kills the child. Shielded, so that a
        #: cancellation from outside the supervisor reaches the supervisor, which then stops
        #: its children in order, and not every child at once.
        self.scope = trio.CancelScope(shield=True)
        #: True once the child's code has returned or raised.
        self.done = False
        self._done_event: trio.Event | None = None
        #: What the child reported through ``task_status.started``.
        self.value: object = None
        self.reported = False
        self._started_event: trio.Event | None = None
        #: What it raised before it reported ``started``, if it did.
        self.start_error: Exception | None = None
        #: How the run ended: the exception, or ``None`` for a normal return.
        self.outcome: BaseException | None = None
        #: The supervisor is stopping this run, so its exit is not news to act on.
        self.terminating = False
        self.health_scope: trio.CancelScope | None = None
        #: The task that runs the child's code, once it runs.
        self.task: trio.lowlevel.Task | None = None
        self.health_failure: HealthCheckFailed | None = None

    @classmethod
    def failed_start(cls, child: Child, error: BaseException) -> ChildRun:
        """A run that raised before it had started, reported as the child's crash."""
        run = cls(child)
        run.outcome = error
        run.reported = True
        run.done = True
        return run

    def started(self, value: object = None) -> None:
        """``task_status.started``: record the value and wake the launcher."""
        if self.reported:
            raise RuntimeError("task_status.started() called twice")  # as Trio's own does
        self.value = value
        self.reported = True
        self._wake_starter()

    @property
    def start_over(self) -> bool:
        """Whether the child has reported ``started``, or ended without having done so."""
        return self.reported or self.done

    async def wait_started(self) -> None:
        """Wait until :attr:`start_over` (a checkpoint if it is already)."""
        if self.start_over:
            await trio.lowlevel.checkpoint()
            return
        if self._started_event is None:
            self._started_event = trio.Event()
        await self._started_event.wait()

    def _wake_starter(self) -> None:
        event, self._started_event = self._started_event, None
        if event is not None:
            event.set()

    def finish(self) -> None:
        """The child's code has returned or raised: wake whoever waits for its end or start."""
        self.done = True
        event, self._done_event = self._done_event, None
        if event is not None:
            event.set()
        self._wake_starter()

    async def wait_done(self) -> None:
        """Wait until the child's code has ended (a checkpoint if it has)."""
        if self.done:
            await trio.lowlevel.checkpoint()
            return
        if self._done_event is None:
            self._done_event = trio.Event()
        await self._done_event.wait()


class ChildHistory:
    """What a child's exits and restarts leave behind: kept apart from :class:`Child` and made
    at the first of them, as most children never exit before their supervisor stops them
    (every agent is a child, asleep or awake: three slots fewer each)."""

    __slots__ = ("consecutive_restarts", "generation", "last_exit", "restarted_at", "restarts")

    def __init__(self) -> None:
        self.restarts = 0
        #: Restarts in a row without a quiet period, for the backoff.
        self.consecutive_restarts = 0
        #: When its last restart started it: its quiet period counts from there, across the
        #: runs of a child that hibernates and wakes (``-inf`` until it restarts).
        self.restarted_at = -math.inf
        #: Bumped at each planned restart, so that a delayed restart that was overtaken is
        #: recognised and dropped.
        self.generation = 0
        self.last_exit: BaseException | None = None


class Child:
    """What the supervisor knows of one child across its runs.

    It is also what ``current_child()`` returns in the child's tasks and what the retire hook
    receives (a ``CurrentChild``: its :attr:`supervisor`, :attr:`id` and :attr:`start`), rather
    than a new object per run that the child keeps. Its id and start are its spec's, or its own
    when a spec serves several children (``start_child(spec, id=..., start=...)``).
    Its restarts, last exit and backoff counts read as attributes, kept in a
    :class:`ChildHistory` made when the first of them is set.
    """

    __slots__ = (
        "history",
        "id",
        "kept_value",
        "run",
        "spec",
        "start",
        "state",
        "supervisor",
        "takes_task_status",
        "wakes_to_stop",
    )

    def __init__(
        self,
        spec: ChildSpec,
        supervisor: Supervisor,
        id: Hashable,
        start: Callable[..., Awaitable[object]],
    ) -> None:
        self.spec = spec
        self.supervisor = supervisor
        self.id = id
        self.start = start
        self.takes_task_status = takes_task_status(start)
        self.state = ChildState.STARTING
        #: The current run; ``None`` while the child is not running.
        self.run: ChildRun | None = None
        self.history: ChildHistory | None = None
        #: While it hibernates: what its last run reported ``started`` with (its next run's
        #: value), and whether stopping it starts that run (``Hibernate.wake_to_stop``).
        self.kept_value: object = None
        self.wakes_to_stop = False

    def _history(self) -> ChildHistory:
        history = self.history
        if history is None:
            history = self.history = ChildHistory()
        return history

    @property
    def restarts(self) -> int:
        return 0 if self.history is None else self.history.restarts

    @restarts.setter
    def restarts(self, count: int) -> None:
        self._history().restarts = count

    @property
    def consecutive_restarts(self) -> int:
        return 0 if self.history is None else self.history.consecutive_restarts

    @consecutive_restarts.setter
    def consecutive_restarts(self, count: int) -> None:
        self._history().consecutive_restarts = count

    @property
    def generation(self) -> int:
        return 0 if self.history is None else self.history.generation

    @generation.setter
    def generation(self, generation: int) -> None:
        self._history().generation = generation

    @property
    def restarted_at(self) -> float:
        return -math.inf if self.history is None else self.history.restarted_at

    @restarted_at.setter
    def restarted_at(self, when: float) -> None:
        self._history().restarted_at = when

    @property
    def last_exit(self) -> BaseException | None:
        return None if self.history is None else self.history.last_exit

    @last_exit.setter
    def last_exit(self, outcome: BaseException | None) -> None:
        if outcome is not None or self.history is not None:  # a clean stop needs no record
            self._history().last_exit = outcome

    def __repr__(self) -> str:
        return f"<Child {bounded_repr(self.id)} of {self.supervisor.name}>"

    def info(self) -> ChildInfo:
        return ChildInfo(
            id=self.id,
            state=self.state,
            restarts=self.restarts,
            value=self.kept_value if self.run is None else self.run.value,
            kind=self.spec.kind,
            restart=self.spec.restart,
            last_exit=self.last_exit,
        )
