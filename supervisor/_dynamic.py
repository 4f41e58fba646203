"""Many children from one template: OTP's simple_one_for_one, Elixir's DynamicSupervisor."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Hashable
from typing import Any

import attrs
import trio

from ._bounded_repr import bounded_repr
from ._checks import check_count
from ._errors import InvalidSpec, TooManyChildren
from ._intensity import RestartBackoff
from ._spec import ChildSpec, RestartType
from ._stats import ChildCounts, ChildInfo, SupervisorStats
from ._supervisor import RestartStrategy, Supervisor

__all__ = ["DynamicSupervisor"]


class DynamicSupervisor:
    """Starts children on demand from one template spec, each restarted on its own.

    ``await start_child(*args)`` runs ``template.start(*args)`` as a new child with the
    template's restart type, shutdown, stop hook and health check; its id is
    ``(template.id, n)``. The strategy is one for one; the intensity and backoff are shared
    by all the children, as in OTP. When it stops, its children are asked to stop all at once
    and waited for together, each within the template's shutdown time, as OTP stops
    simple_one_for_one children: a stop takes the slowest child's time, not their sum.

    Args:
        template: the spec every child is made from.
        max_children: at most this many children at once (``None``: no limit).
        max_restarts, max_seconds, backoff, name: as for :class:`Supervisor`.

    Raises:
        InvalidSpec: ``template`` is not a ``ChildSpec`` or an option is out of range.
    """

    def __init__(
        self,
        template: ChildSpec,
        *,
        max_children: int | None = None,
        max_restarts: int = 5,
        max_seconds: float = 60.0,
        backoff: RestartBackoff | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(template, ChildSpec):
            raise InvalidSpec(f"template must be a ChildSpec, got {bounded_repr(template)}")
        if max_children is not None:
            check_count("max_children", max_children, minimum=1)
        self.template = template
        self.max_children = max_children
        self._supervisor = Supervisor(
            strategy=RestartStrategy.ONE_FOR_ONE,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            backoff=backoff,
            forget_ended=True,  # as OTP's simple_one_for_one
            stop_concurrently=True,  # likewise: busy children do not add up at shutdown
            name=name if name is not None else f"dynamic-supervisor@{id(self):x}",
        )
        self._numbers = itertools.count(1)
        #: The children whose start is under way, counted towards ``max_children`` from the
        #: check on: starts that wait together for the supervisor may not all fit.
        self._starting: set[Hashable] = set()

    def __repr__(self) -> str:
        return f"<DynamicSupervisor {self.name} of {bounded_repr(self.template.id)}>"

    @property
    def name(self) -> str:
        """The name logs and errors give it (``dynamic-supervisor@...`` unless one was given)."""
        return self._supervisor.name

    async def start_child(self, *args: Any) -> ChildInfo:
        """Start one more child from the template with ``args``; returns once it has started.

        Raises:
            TooManyChildren: ``max_children`` are already there.
            ChildStartFailed: it raised before it had started.
            SupervisorNotRunning: the supervisor is not running.
        """
        if self.max_children is not None:
            ids = {child.id for child in self._supervisor.which_children()} | self._starting
            if len(ids) >= self.max_children:
                raise TooManyChildren(f"{self.name} already has {len(ids)} children")
        id = (self.template.id, next(self._numbers))
        self._starting.add(id)
        try:
            # Under the template itself, with an id and start of its own: no spec per child.
            return await self._supervisor.start_child(
                self.template, id=id, start=functools.partial(self.template.start, *args)
            )
        finally:
            self._starting.discard(id)

    async def terminate_child(self, id: Hashable) -> None:
        """Stop a child by the template's shutdown spec and forget it.

        Raises:
            ChildNotFound: no child has that id.
            SupervisorNotRunning: the supervisor is not running.
        """
        try:
            await self._supervisor.terminate_child(id)
        finally:
            # Cancelled while it waits, the stop still completes: forgotten then too.
            self._supervisor._forget_for_good(id)

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Supervise until stopped; see :meth:`Supervisor.run`. Starts with no children."""
        await self._supervisor.run(task_status=task_status)

    async def __aenter__(self) -> DynamicSupervisor:
        await self._supervisor.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._supervisor.__aexit__(*exc_info)

    def request_stop(self) -> None:
        """Ask it to stop every child and return from :meth:`run`, without waiting: for code
        that cannot await, such as a parent's stop hook. See :meth:`Supervisor.request_stop`."""
        self._supervisor.request_stop()

    async def stop(self) -> None:
        """Stop every child by the template's shutdown spec, and wait until they have stopped."""
        await self._supervisor.stop()

    def as_child(self, id: Hashable, *, restart: RestartType = RestartType.PERMANENT) -> ChildSpec:
        """A spec that runs this dynamic supervisor under another supervisor."""
        return attrs.evolve(self._supervisor.as_child(id, restart=restart), start=self.run)

    def which_children(self) -> list[ChildInfo]:
        """Every child it has now, in start order, with its id ``(template.id, n)``: how to
        find one to terminate. Children that ended for good are forgotten, as in OTP."""
        return self._supervisor.which_children()

    def count_children(self) -> ChildCounts:
        """OTP's ``count_children``: how many children it knows of and how many run."""
        return self._supervisor.count_children()

    def stats(self) -> SupervisorStats:
        """A frozen snapshot of its counters: children by state, restarts, escalations."""
        return self._supervisor.stats()
