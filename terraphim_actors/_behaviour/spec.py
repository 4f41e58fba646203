"""How an agent becomes a supervisor's child: a ``ChildSpec`` whose task runs its instances."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import trio

from supervisor import ChildSpec, CurrentChild, RestartType, Supervisor, current_child

from .._core.ids import AgentId
from .._core.notifications import StopReason
from .._primitives.mailbox import MailboxConfig
from .._process.cell import AgentCell, CellState
from .._process.host import AgentHost
from ..errors import DuplicateAgent
from .agent import Agent
from .gen_server import GenServerBehaviour
from .refs import AgentRef
from .system_api import SystemApi

if TYPE_CHECKING:
    from .._core.instruments import Instruments
    from .._routing.endpoint import Endpoint

__all__ = ["AgentStarter", "StarterHost", "agent_child_spec", "start_agent", "start_agent_now"]


class StarterHost(AgentHost, SystemApi, Protocol):
    """What a starter asks of the system it starts agents in: the host of their cells, the API
    their contexts offer (``ctx.system``), and the registry that learns of each new cell.

    Today's implementation: ``_system.system.MessageSystem``.
    """

    def register(self, cell: AgentCell) -> None:
        """Make a new agent reachable by its id and name."""
        ...

    @property
    def headers_from(self) -> Instruments | None:
        """The instruments that add headers to each send, if any (what a ref asks)."""
        ...


class AgentStarter(GenServerBehaviour):
    """The ``start`` of an agent's child spec: each call runs one instance of the agent.

    The first call creates the agent, claiming its name; each restart runs the same cell, so
    its name, ref and mailbox survive. Once the agent has stopped for good, a new call (its
    subtree was restarted) creates it afresh.

    It is also the cell's behaviour (what builds each instance): one object per agent rather
    than two, as every agent, hibernated ones included, keeps its starter.
    """

    __slots__ = ("agent_id", "cell", "mailbox", "restart", "setup_endpoint", "shutdown")

    system: StarterHost

    def __init__(
        self,
        system: StarterHost,
        agent_class: type[Agent],
        args: tuple[Any, ...],
        agent_id: AgentId,
        mailbox: MailboxConfig,
        shutdown: float,
        restart: RestartType,
        handler_timeout: float | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(agent_class, args, handler_timeout, system, kwargs)
        self.agent_id = agent_id
        self.mailbox = mailbox
        self.shutdown = shutdown
        self.restart = restart
        self.cell: AgentCell | None = None
        #: What the agent's endpoint is set up with once its first cell has made it (its
        #: admission budgets, or its place in a pool), if anything; let go of then.
        self.setup_endpoint: Callable[[Endpoint], object] | None = None

    def __repr__(self) -> str:
        return f"<AgentStarter {self.agent_class.__name__} {self.agent_id!r}>"

    def __call__(
        self, *, task_status: trio.TaskStatus[AgentRef] = trio.TASK_STATUS_IGNORED
    ) -> Coroutine[Any, Any, None]:
        """The run of one instance: the cell's own coroutine, returned rather than awaited
        here, so that an idle agent's task holds one frame fewer."""
        cell = self.cell
        if cell is not None and cell.state is not CellState.STOPPED:
            self._check_placement(cell)
        if cell is None or cell.state is CellState.STOPPED:
            cell = self.new_cell()
        return cell.run(task_status=task_status)

    def new_cell(self) -> AgentCell:
        """Make the agent's cell, reachable by its id and name from now: the first, or a new
        one once the last has stopped for good (its subtree restarted), which serves the same
        endpoint, so that its circuit, dedup window and group are the same agent's to its
        senders."""
        endpoint = None if self.cell is None else self.cell.endpoint
        cell = self.cell = AgentCell(self.system, self, self.agent_id, self.mailbox, endpoint)
        setup, self.setup_endpoint = self.setup_endpoint, None
        if setup is not None:
            setup(cell.endpoint)
        cell.ref = AgentRef(cell.endpoint, self.system)
        self.system.register(cell)
        return cell

    def _check_placement(self, cell: AgentCell) -> None:
        """Refuse to run a second instance beside the first: one spec placed in two
        supervisors would otherwise run two instances on one mailbox and name."""
        owner, starter = cell.placement, current_child()
        if owner is not None and starter is not None and owner.supervisor is not starter.supervisor:
            raise DuplicateAgent(
                f"{self.agent_id!r} already runs under {owner.supervisor.name}: a spec starts one "
                "agent, in one supervisor"
            )

    def retire(self) -> None:
        """Its supervisor will not start it again: the agent stops for good."""
        if self.cell is not None:
            self.cell.retire()


def agent_child_spec(starter: AgentStarter, *, significant: bool = False) -> ChildSpec:
    """The child spec that runs ``starter``'s agent under a supervisor."""
    return ChildSpec(
        starter.agent_id,
        starter,
        restart=starter.restart,
        shutdown=starter.shutdown,
        stop=_stop_agent,
        retire=_retire_agent,
        quiet=_stops_unseen,
        significant=significant,
    )


async def start_agent(supervisor: Supervisor, starter: AgentStarter) -> None:
    """Start ``starter``'s agent as a child of ``supervisor``, under a spec shared by the
    agents with its restart type and shutdown time: a spec of its own would be 112 bytes more
    of every agent, asleep or awake, and one more object for the cyclic GC to walk.

    Raises what ``Supervisor.start_child`` raises."""
    spec = _shared_spec(starter.restart, starter.shutdown)
    await supervisor.start_child(spec, id=starter.agent_id, start=starter)


def start_agent_now(supervisor: Supervisor, starter: AgentStarter) -> bool:
    """Start ``starter``'s new agent as :func:`start_agent` does, without waiting for its task,
    when nothing stands in the way (``Supervisor.can_start_nowait``) and its first instance has
    nothing to wait for (no ``on_start``): the instance is built now, in the caller's task, and
    counts as started at once. Returns False when the start must wait: having built nothing
    if the supervisor is busy, or an instance whose constructor set an ``on_start`` of its own,
    which :func:`start_agent` then runs (abandon it, ``AgentCell.abandon``, if that start fails
    before it runs).

    Raises:
        AgentStartFailed: building the instance raised.
    """
    if not supervisor.can_start_nowait():
        return False
    cell = starter.new_cell()
    if cell.prepare().begin is not None:
        return False
    spec = _shared_spec(starter.restart, starter.shutdown)
    child = supervisor.start_child_nowait(spec, id=starter.agent_id, start=starter, value=cell.ref)
    cell.started_without_wait(child)
    return True


@functools.lru_cache(maxsize=64)
def _shared_spec(restart: RestartType, shutdown: float) -> ChildSpec:
    # Its id and start are placeholders: each agent comes with its own id and starter.
    return ChildSpec(
        "agent",
        AgentStarter.__call__,
        restart=restart,
        shutdown=shutdown,
        stop=_stop_agent,
        retire=_retire_agent,
        quiet=_stops_unseen,
    )


def _stop_agent(ref: AgentRef) -> None:
    """The ``stop`` of an agent's child spec: ask the running instance to stop, for good when
    the system shuts down or the agent is being stopped by ``system.stop``. At shutdown a
    subscriber first handles what it was sent, so that it sees the other agents go.

    A function of the ref rather than a method of the starter: a bound method is 64 bytes more
    of each agent, asleep or awake."""
    cell = ref._agent()
    if cell.retiring:
        cell.request_stop(StopReason.NORMAL, final=True)
        return
    closing = cell.system.closing
    cell.request_stop(
        StopReason.SHUTDOWN, final=closing, drain=closing and cell.system.is_subscriber(cell)
    )


def _retire_agent(child: CurrentChild) -> None:
    """The ``retire`` of an agent's child spec: its supervisor will not start it again, so it
    stops for good. A function of the child, whose ``start`` is the agent's starter, for the
    reason ``_stop_agent`` is one."""
    starter: AgentStarter = child.start  # type: ignore[assignment]
    starter.retire()


def _stops_unseen(ref: AgentRef) -> bool:
    """The ``quiet`` of an agent's child spec: its stop would show nothing but its end."""
    return ref._agent().stops_unseen()
