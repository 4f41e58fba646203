"""The local directory: which agents, endpoints and mailboxes answer to which ids and names."""

from __future__ import annotations

import collections
from typing import Generic, Protocol, TypeVar

from .._core.bounded_repr import bounded_repr
from .._core.ids import AgentId
from .._primitives.mailbox import Mailbox
from ..errors import DuplicateAgent, InvalidConfig
from .endpoint import Endpoint

__all__ = ["LocalDirectory"]

#: How many ids of agents that stopped for good a directory remembers, so that a message for
#: one (a retry, a send through an old ref or to a stopped pool) is refused, not retried.
_STOPPED_KEPT = 10_000


class Resident(Protocol):
    """What the directory keeps by id: something with an id and the endpoint that reaches it
    (today an ``AgentCell``, which the layers above keep here and read back whole)."""

    @property
    def id(self) -> AgentId: ...

    @property
    def endpoint(self) -> Endpoint: ...


_Resident = TypeVar("_Resident", bound=Resident)


class Beyond(Protocol):
    """Names and endpoints beyond this process: the cluster's, as a local directory consults
    them for what it does not hold."""

    def resolve(self, name: str) -> AgentId | None:
        """The id of the agent named ``name`` elsewhere, if any."""
        ...

    def endpoint(self, agent_id: AgentId) -> Endpoint | None:
        """The endpoint that reaches ``agent_id`` elsewhere, if it runs there."""
        ...


class LocalDirectory(Generic[_Resident]):
    """Names, the agents that have not stopped for good, hand-driven mailboxes, and the ids
    that stopped lately, in this process: the :class:`~terraphim_actors._core.protocols.Directory`
    of one node. A name belongs to one id (an agent's, a pool's or a mailbox's)."""

    def __init__(self) -> None:
        self.cells: dict[AgentId, _Resident] = {}
        self.mailboxes: dict[AgentId, Mailbox] = {}
        self._names: dict[str, AgentId] = {}
        self._stopped: collections.OrderedDict[AgentId, None] = collections.OrderedDict()
        #: Where names and ids not found here are looked for: the cluster's directory, when
        #: this process is a node of one.
        self.beyond: Beyond | None = None

    def __len__(self) -> int:
        return len(self.cells)

    def resolve(self, address: AgentId | str | None) -> AgentId | None:
        """The id that ``address`` (a name or an id) stands for, if anything answers to it:
        a name is looked up here first, then in the cluster."""
        if isinstance(address, str):
            agent_id = self._names.get(address)
            if agent_id is None and self.beyond is not None:
                return self.beyond.resolve(address)
            return agent_id
        if address is None or isinstance(address, AgentId):
            return address
        raise InvalidConfig(
            f"an address is an AgentId or a registered name, got {bounded_repr(address)}"
        )

    def endpoint(self, agent_id: AgentId) -> Endpoint | None:
        """The endpoint of the agent under ``agent_id``, if it has not stopped for good: here,
        or on another node of the cluster this one belongs to."""
        cell = self.cells.get(agent_id)
        if cell is not None:
            return cell.endpoint
        return None if self.beyond is None else self.beyond.endpoint(agent_id)

    def local_endpoint(self, agent_id: AgentId) -> Endpoint | None:
        """The endpoint of this process's agent under ``agent_id``, if it has not stopped."""
        cell = self.cells.get(agent_id)
        return None if cell is None else cell.endpoint

    def local_id(self, name: str) -> AgentId | None:
        """The id that ``name`` stands for in this process, if any."""
        return self._names.get(name)

    def endpoints(self) -> list[Endpoint]:
        """The endpoints of every agent that has not stopped for good."""
        return [cell.endpoint for cell in list(self.cells.values())]

    def taken(self, name: str | None) -> bool:
        """Whether ``name`` belongs to something already."""
        return name is not None and name in self._names

    def claim(self, name: str | None, agent_id: AgentId | None = None) -> AgentId:
        """Give ``name`` to ``agent_id`` (a fresh id if none) and return the id.

        Raises:
            DuplicateAgent: the name is taken.
            InvalidConfig: the name is not a str.
        """
        if name is not None and not isinstance(name, str):
            raise InvalidConfig(f"name must be a str or None, got {bounded_repr(name)}")
        if self.taken(name):
            raise DuplicateAgent(f"an agent named {bounded_repr(name)} is already registered")
        agent_id = AgentId(name=name) if agent_id is None else agent_id
        if name is not None:
            self._names[name] = agent_id
        return agent_id

    def release(self, agent_id: AgentId) -> None:
        """Free the name of ``agent_id`` (if it still has it), and remember that it stopped."""
        name = agent_id.name
        if name is not None and self._names.get(name) == agent_id:
            del self._names[name]
        self._stopped[agent_id] = None
        if len(self._stopped) > _STOPPED_KEPT:
            self._stopped.popitem(last=False)

    def add(self, cell: _Resident) -> None:
        """Register a new agent under its id (its name claimed already)."""
        self.cells[cell.id] = cell
        self._stopped.pop(cell.id, None)

    def remove(self, cell: _Resident) -> None:
        """Unregister an agent that has stopped for good."""
        if self.cells.get(cell.id) is cell:
            del self.cells[cell.id]
            self.release(cell.id)

    def has_stopped(self, address: AgentId | str | None) -> bool:
        """Whether the agent (or pool) by that id stopped for good lately, with nothing
        running under its id since."""
        return isinstance(address, AgentId) and address in self._stopped
