"""Pools: several instances of one agent behind one ref, with a balancer choosing among them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from supervisor import Supervisor

from ._balancing import Balancer, LoadBalancing
from ._circuit import CircuitState
from ._ids import AgentId
from ._messages import Envelope, Priority
from ._ref import AgentRef
from .errors import InvalidConfig

if TYPE_CHECKING:
    from ._agent_spec import AgentStarter
    from ._cell import AgentCell
    from ._system import MessageSystem

__all__ = ["Pool", "PoolRef"]


class Pool:
    """The members of a pool (by position, stable across their restarts) and their balancer."""

    def __init__(
        self,
        system: MessageSystem,
        pool_id: AgentId,
        members: list[AgentStarter],
        balancer: Balancer,
        supervisor: Supervisor,
    ) -> None:
        self.system = system
        self.id = pool_id
        self.members = members
        self.balancer = balancer
        #: The supervisor that restarts the members.
        self.supervisor = supervisor

    def retire(self) -> None:
        """The pool will not run again: its members stop for good and its name is freed."""
        for starter in self.members:
            starter.retire()
        self.system.forget_pool(self)

    def member(self, position: int) -> AgentCell | None:
        """The agent at ``position`` if it has not stopped for good."""
        cell = self.members[position].cell
        return None if cell is None or cell.stopped.is_set() else cell

    def choose(self, payload: Any) -> AgentCell | None:
        """The member for a message carrying ``payload``, skipping those whose circuit is open;
        ``None`` when no member can take it."""
        now = self.system.clock.current_time()

        def available(position: int) -> bool:
            cell = self.member(position)
            if cell is None:
                return False
            breaker = cell.breaker
            return breaker is None or breaker.state(now) is not CircuitState.OPEN

        def load(position: int) -> int:
            cell = self.member(position)
            return 0 if cell is None else cell.load

        position = self.balancer.choose(payload, available, load)
        if position is not None:
            return self.member(position)
        # Every running member's circuit is open: name the one that half-opens first, so the
        # sender sees the open circuit (and a retry waits for it) rather than nobody.
        running = [cell for cell in map(self.member, range(len(self.members))) if cell]
        return min(running, key=_reopens_at, default=None)


def _reopens_at(cell: AgentCell) -> float:
    breaker = cell.breaker
    assert breaker is not None  # only members with an open circuit are unavailable
    return breaker.reopens_at


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
        return f"PoolRef({self.id!r}, {len(self._pool.members)} members)"

    @property
    def strategy(self) -> LoadBalancing:
        """How the pool chooses a member."""
        return self._pool.balancer.strategy

    @property
    def members(self) -> list[AgentRef]:
        """Refs to the members that have not stopped for good, in pool order."""
        cells = (self._pool.member(position) for position in range(len(self._pool.members)))
        return [cell.ref for cell in cells if cell is not None]

    @property
    def alive(self) -> bool:
        """False once the pool has stopped."""
        return self.id in self._system.router.pools

    async def broadcast(self, payload: Any, *, priority: Priority = Priority.NORMAL) -> None:
        """Cast ``payload`` to every member (each send as :meth:`AgentRef.cast`)."""
        for member in self.members:
            await member.cast(payload, priority=priority)

    def _route(self, envelope: Envelope | None) -> AgentCell | None:
        self._system.router.routed += 1
        return self._target(envelope)

    def _target(self, envelope: Envelope | None) -> AgentCell | None:
        return self._pool.choose(None if envelope is None else envelope.payload)

    def _agent(self) -> AgentCell:
        raise InvalidConfig(f"{self.id!r} is a pool, not one agent: use its members")
