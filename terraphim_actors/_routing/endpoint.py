"""The endpoint: everything that belongs to one destination rather than to one run of it.

An agent's circuit, its exactly-once window and the group it belongs to describe the address
its senders use, not the instance that happens to serve it: they must outlive a crash, and a
restart of the agent's subtree that builds a new cell under the same id. Routing owns them
here; the cell only attaches itself (its inbox and itself as the occupant) to the endpoint its
starter keeps, so that nothing is copied from one cell to the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.ids import AgentId, MessageId
from .._core.messages import Envelope
from .._core.protocols import AdmissionPolicy, Inbox, Occupant
from .._primitives.admission import AdmissionGate, Budgets
from .._primitives.circuit import CircuitBreaker
from .._primitives.dedup import HandledMessages

if TYPE_CHECKING:
    from .groups import Group

__all__ = ["Endpoint"]


class Endpoint:
    """One destination: its address, its inbox, its admission (an ``AdmissionPolicy``: the
    circuit breaker delivery makes on its first failure), its exactly-once window (made on the
    first such message), and the group it is a member of.

    Delivery reads ``admission`` and ``inbox`` on every send: they are plain slots, so a send
    costs the same attribute loads as when they lived on the cell.
    """

    __slots__ = ("admission", "group", "id", "inbox", "occupant", "runs_counted", "window")

    def __init__(self, agent_id: AgentId, inbox: Inbox, occupant: Occupant) -> None:
        #: The address: the agent's id (its name, if any, is ``id.name``).
        self.id = agent_id
        #: Where delivery puts its messages (the current cell's mailbox).
        self.inbox = inbox
        #: The process behind it now (the current cell).
        self.occupant = occupant
        #: What decides whether it takes a message now: its circuit breaker, made on its first
        #: failure. ``None``: nothing to consult, which a send checks first.
        self.admission: AdmissionPolicy | None = None
        #: What it handled lately under exactly-once, made on the first such message.
        self.window: HandledMessages | None = None
        #: The group it is a member of, whose window dedups what comes through the group.
        self.group: Group | None = None
        #: The ids of messages waiting in its inbox whose next handler run a journal has
        #: counted already (``_delivery.runs``); ``None`` until one has.
        self.runs_counted: set[MessageId] | None = None

    def __repr__(self) -> str:
        return f"<Endpoint {self.id!r}>"

    @property
    def name(self) -> str | None:
        """The name the destination answers to, if any."""
        return self.id.name

    def attach(self, inbox: Inbox, occupant: Occupant) -> None:
        """A new process serves this destination (its subtree was restarted): messages go to
        its inbox from now on; the circuit, the window and the group stay as they are (the
        runs counted ahead were for messages in the old inbox)."""
        self.inbox = inbox
        self.occupant = occupant
        self.runs_counted = None

    def install_budgets(self, budgets: Budgets) -> AdmissionGate:
        """Admit messages by ``budgets`` (an agent's, or its pool's, shared) from now on,
        behind the circuit breaker it has, if any."""
        breaker = self.admission
        assert breaker is None or isinstance(breaker, CircuitBreaker)
        gate = AdmissionGate(budgets, breaker)
        self.admission = gate
        return gate

    # -- as an address: what a ref resolves its destination through -------------------------

    def route(self, envelope: Envelope | None) -> Endpoint:
        """Where a message sent through a ref to this address goes: here."""
        return self

    #: Where the router sends a message for this address (no group to count it through).
    choose = route

    def only(self) -> Endpoint:
        """The one destination behind this address: this one."""
        return self
