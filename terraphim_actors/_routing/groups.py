"""Pools: several instances of one agent behind one ref, with a balancer choosing among them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from supervisor import Supervisor

from .._behaviour.refs import AgentRef
from .._core.ids import AgentId
from .._core.messages import DeliveryGuarantee, Envelope, MessageKind, Priority
from .._primitives.balancing import Balancer, LoadBalancing
from .._primitives.dedup import HandledMessages
from .._process.cell import CellState
from .._process.context_vars import current_cell
from ..errors import CallToSelf, InvalidConfig

if TYPE_CHECKING:
    from .._behaviour.spec import AgentStarter
    from .._process.cell import AgentCell
    from .._system.system import MessageSystem

__all__ = ["Pool", "PoolRef"]

RUNNING = CellState.RUNNING
STOPPED = CellState.STOPPED


class Pool:
    """The members of a pool (by position, stable across their restarts) and their balancer."""

    def __init__(
        self,
        system: MessageSystem,
        pool_id: AgentId,
        starters: list[AgentStarter],
        balancer: Balancer,
        supervisor: Supervisor,
    ) -> None:
        self.system = system
        self.id = pool_id
        #: What starts each member, by position.
        self.starters = starters
        self.balancer = balancer
        #: The supervisor that restarts the members.
        self.supervisor = supervisor
        #: The exactly-once window of messages sent through the pool, shared by the members.
        self.handled = HandledMessages(system.delivery.config.dedup_window)

    def retire(self) -> None:
        """The pool will not run again: its members stop for good and its name is freed."""
        for starter in self.starters:
            starter.retire()
        self.system.forget_pool(self)

    def member(self, position: int) -> AgentCell | None:
        """The agent at ``position`` if it has not stopped for good."""
        cell = self.starters[position].cell
        return None if cell is None or cell.state is STOPPED else cell

    def members(self) -> list[AgentCell]:
        """The members that have not stopped for good, in pool order."""
        return [cell for cell in map(self.member, range(len(self.starters))) if cell is not None]

    def choose(self, envelope: Envelope | None) -> AgentCell | None:
        """The member for ``envelope``; ``None`` when no member can take it.

        A member is skipped while its circuit refuses, while it waits to restart (if another
        member runs), and for a call from a member's own task, when it is the caller (it would
        call itself). An exactly-once message goes to the member its id picks, whatever the
        strategy, so that a resend of it queues behind the first and is recognised as a
        duplicate.

        Raises:
            CallToSelf: a member called the pool from its own task, and every other member has
                stopped for good: only the caller could answer, and it would wait for itself.
        """
        now = self.system.clock.current_time()
        caller = None
        if envelope is not None and envelope.kind is MessageKind.CALL:
            caller = current_cell.get()
            if caller is not None and not caller.in_own_task:
                caller = None  # a background task: its agent's handler is free to answer
        cells = [self.member(position) for position in range(len(self.starters))]
        # The caller does not count as running: a restarting member answers it once back.
        running_only = any(
            cell is not None and cell is not caller and cell.state is RUNNING for cell in cells
        )

        def available(position: int) -> bool:
            cell = cells[position]
            if cell is None or cell is caller:
                return False
            if running_only and cell.state is not RUNNING:
                return False
            breaker = cell.breaker
            return breaker is None or breaker.would_admit(now)

        def load(position: int) -> int:
            cell = cells[position]
            return 0 if cell is None else cell.load

        if envelope is not None and envelope.options.guarantee is DeliveryGuarantee.EXACTLY_ONCE:
            size = len(self.starters)
            by_id = (int(envelope.id) + step for step in range(size))
            position = next((p % size for p in by_id if available(p % size)), None)
        else:
            payload = None if envelope is None else envelope.payload
            position = self.balancer.choose(payload, available, load)
        if position is not None:
            return cells[position]
        # Every other member's circuit refuses: name the one that lets a trial through first,
        # so the sender sees the open circuit (and a retry waits for it) rather than nobody.
        refusing = [
            cell
            for cell in self.members()
            if cell is not caller and cell.breaker is not None and not cell.breaker.would_admit(now)
        ]
        if not refusing and caller is not None and caller in cells:
            raise CallToSelf(
                f"{caller.id!r} called its own pool {self.id!r}, whose only member left is"
                " itself: it would wait forever"
            )
        return min(refusing, key=_reopens_at, default=None)


def _reopens_at(cell: AgentCell) -> float:
    assert cell.breaker is not None
    return cell.breaker.reopens_at


class PoolRef(AgentRef):
    """The one ref of a pool: each ``call``, ``cast`` and ``info`` goes to the member its
    balancer chooses (see :class:`LoadBalancing`); :meth:`broadcast` goes to all of them.

    A message that fails is retried through the pool, so it may reach another member.
    """

    __slots__ = ("_pool",)

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._system = pool.system
        self.id = pool.id

    def __repr__(self) -> str:
        return f"PoolRef({self.id!r}, {len(self._pool.starters)} members)"

    @property
    def strategy(self) -> LoadBalancing:
        """How the pool chooses a member."""
        return self._pool.balancer.strategy

    @property
    def members(self) -> list[AgentRef]:
        """Refs to the members that have not stopped for good, in pool order."""
        return [cell.ref for cell in self._pool.members()]

    @property
    def alive(self) -> bool:
        """False once the pool has stopped."""
        return self.id in self._pool.system.router.pools

    async def broadcast(self, payload: Any, *, priority: Priority = Priority.NORMAL) -> None:
        """Cast ``payload`` to every member (each send as :meth:`AgentRef.cast`)."""
        for member in self.members:
            await member.cast(payload, priority=priority)

    def _route(self, envelope: Envelope | None) -> AgentCell | None:
        self._pool.system.router.routed += 1
        return self._target(envelope)

    def _target(self, envelope: Envelope | None) -> AgentCell | None:
        return self._pool.choose(envelope)

    def _agent(self) -> AgentCell:
        raise InvalidConfig(f"{self.id!r} is a pool, not one agent: use its members")
