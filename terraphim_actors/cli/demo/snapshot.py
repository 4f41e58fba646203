"""What a display sees: the system at one moment (the supervision tree with each agent's queue
and circuit, the counts, the events so far), and where such snapshots go.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs

from supervisor import ChildInfo, ChildKind, Supervisor
from terraphim_actors import (
    AgentId,
    CircuitState,
    DeliveryStats,
    MessageSystem,
    PoolRef,
    SystemStats,
)

from .ledger import Event, SearchCounts, agent_name

__all__ = ["Display", "Node", "Progress", "Snapshot", "supervisor_node"]


@attrs.frozen(kw_only=True)
class Node:
    """A supervisor, pool or agent in the supervision tree, as it stands."""

    name: str
    #: ``"supervisor"``, ``"pool"`` or ``"agent"``.
    kind: str
    #: The supervisor's view of it: running, restarting, ...
    state: str
    restarts: int
    #: Messages waiting in an agent's mailbox.
    queued: int | None = None
    #: An agent's circuit, once it has failed at least once.
    circuit: CircuitState | None = None
    #: A supervisor's strategy and the restarts it made of those it allows in its window (a
    #: pool's balancing in place of the strategy).
    detail: str = ""
    children: tuple[Node, ...] = ()


@attrs.frozen(kw_only=True)
class Progress:
    questions: int
    asked: int
    planned: int
    #: Questions whose every task has its answer stored.
    answered_in_full: int
    tasks: int
    answered: int
    dead_lettered: int

    @property
    def in_flight(self) -> int:
        return self.tasks - self.answered - self.dead_lettered


@attrs.frozen(kw_only=True)
class Snapshot:
    """The system at one moment, for a display."""

    elapsed: float
    tree: Node
    delivery: DeliveryStats
    system: SystemStats
    progress: Progress
    #: Times an LLM worker resumed after an error instead of crashing.
    resumed: int
    search: SearchCounts
    #: Every event so far, oldest first.
    events: tuple[Event, ...]


class Display(Protocol):
    """Where snapshots go while the scenario runs."""

    #: Seconds of Trio time between two snapshots.
    interval: float

    def show(self, snapshot: Snapshot) -> None: ...


def supervisor_node(
    name: str,
    supervisor: Supervisor,
    state: str,
    restarts: int,
    system: MessageSystem,
    queues: dict[AgentId, int],
    circuits: Mapping[AgentId, CircuitState],
) -> Node:
    """``supervisor`` and the tree under it as it stands, each agent with its queue (from
    ``queues``) and its circuit (from ``circuits``); a pool is shown as one."""
    children = tuple(
        _child_node(child, system, queues, circuits) for child in supervisor.which_children()
    )
    stats = supervisor.stats()
    return Node(
        name=name,
        kind="supervisor",
        state=state,
        restarts=restarts,
        detail=(
            f"{supervisor.strategy.value.replace('_', ' ')},"
            f" {stats.restarts_in_window}/{supervisor.max_restarts} in {supervisor.max_seconds:g} s"
        ),
        children=children,
    )


def _child_node(
    child: ChildInfo,
    system: MessageSystem,
    queues: dict[AgentId, int],
    circuits: Mapping[AgentId, CircuitState],
) -> Node:
    agent_id = child.id if isinstance(child.id, AgentId) else None
    name = str(child.id) if agent_id is None else agent_name(agent_id)
    if child.kind is ChildKind.SUPERVISOR:
        if not isinstance(child.value, Supervisor):  # between runs: no children to show
            return Node(
                name=name, kind="supervisor", state=child.state.value, restarts=child.restarts
            )
        node = supervisor_node(
            name, child.value, child.state.value, child.restarts, system, queues, circuits
        )
        pool = None if agent_id is None else system.whereis(agent_id)
        if isinstance(pool, PoolRef):
            budget = node.detail.split(", ", 1)[1]  # a pool's members restart one for one
            node = attrs.evolve(node, kind="pool", detail=f"{pool.strategy.value}, {budget}")
        return node
    return Node(
        name=name,
        kind="agent",
        state=child.state.value,
        restarts=child.restarts,
        queued=None if agent_id is None else queues.get(agent_id),
        circuit=None if agent_id is None else circuits.get(agent_id),
    )
