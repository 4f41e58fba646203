"""What an agent's ``ctx.system`` offers: the ``SystemApi`` protocol, and ``SystemStats``, the
snapshot its ``get_stats`` returns.

An agent's context sits below the system in the layers (the system builds the contexts), so it
names the system by this protocol rather than importing ``MessageSystem``. The protocol is the
system's whole public API with the same signatures, so that a handler's ``ctx.system.spawn(...)``
is checked as a call on the system itself. The type checker holds ``MessageSystem`` to it where
the system hands itself to each agent's starter (as a ``StarterHost``, which extends it), and a
test keeps the two the same set of members with the same signatures. It lives here, not in
``_core``, because that API returns refs and takes agent classes.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from supervisor import ChildSpec, RestartBackoff, RestartStrategy, RestartType, Supervisor

from .._core.ids import AgentId
from .._core.messages import Envelope
from .._core.protocols import ClusterMembership
from .._delivery.dead_letters import DeadLetter, DeadLetterReason
from .._delivery.pipeline import DeliveryManager
from .._primitives.admission import AdmissionStats, Budget
from .._primitives.balancing import LoadBalancing
from .._primitives.mailbox import Mailbox, MailboxConfig, MailboxStats
from .._routing.router import Router
from .refs import AgentRef, PoolRef
from .thread_portal import ThreadPortal

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["SystemApi", "SystemStats"]


@attrs.frozen(kw_only=True)
class SystemStats:
    """A snapshot of a message system's counters."""

    #: Agents running now (with a task: not those hibernated).
    agents_running: int
    #: Agents hibernated now: kept, with their state, without a task until a message comes.
    agents_hibernated: int
    #: Agents ever spawned.
    agents_spawned: int
    #: Agent instances that crashed (a handler, background task or ``on_start`` raised).
    agent_crashes: int
    #: Agent instances started again by their supervisor.
    agent_restarts: int
    #: Messages accepted into any mailbox, including those of agents that have stopped.
    messages_received: int
    #: Messages taken out of any mailbox.
    messages_processed: int
    #: Dead letters ever recorded.
    dead_letters: int
    #: Dead letters ever recorded, per reason.
    dead_letters_by_reason: Mapping[DeadLetterReason, int]
    #: Seconds since the system opened.
    uptime: float
    #: The admission budgets of each agent or pool that has some, by its id: each budget's
    #: use, what waits for admission, what was refused or sent to a fallback.
    admission: Mapping[AgentId, AdmissionStats] = attrs.field(factory=dict)


class SystemApi(Protocol):
    """The message system as its users call it (``ctx.system``); see ``MessageSystem`` for
    what each member does.

    Today's implementation: ``_system.system.MessageSystem``.
    """

    @property
    def root(self) -> Supervisor:
        """The root supervisor, whose children ``spawn`` starts."""
        ...

    @property
    def delivery(self) -> DeliveryManager:
        """The delivery layer: guarantees, retries and their statistics."""
        ...

    @property
    def router(self) -> Router:
        """The router: custom routing, circuits, pools."""
        ...

    @property
    def from_thread(self) -> ThreadPortal:
        """Blocking ``call`` and ``cast`` from threads other than the system's."""
        ...

    @property
    def shutdown_signal(self) -> signal.Signals | None:
        """The signal that started the shutdown, if one did."""
        ...

    @property
    def cluster(self) -> ClusterMembership | None:
        """This system's node in its cluster (``cluster.ClusterNode``), if it joined one."""
        ...

    async def spawn(
        self,
        agent_class: type[Agent],
        *args: Any,
        name: str | None = None,
        mailbox: MailboxConfig | None = None,
        shutdown: float | None = None,
        restart: RestartType = RestartType.PERMANENT,
        handler_timeout: float | None = None,
        hibernate_after: float | None = None,
        admission: Sequence[Budget] = (),
        **kwargs: Any,
    ) -> AgentRef:
        """Start an agent under the root supervisor; returns its ref."""
        ...

    def agent_spec(
        self,
        agent_class: type[Agent],
        *args: Any,
        name: str | None = None,
        mailbox: MailboxConfig | None = None,
        shutdown: float | None = None,
        restart: RestartType = RestartType.PERMANENT,
        significant: bool = False,
        handler_timeout: float | None = None,
        hibernate_after: float | None = None,
        **kwargs: Any,
    ) -> ChildSpec:
        """A child spec that runs an agent."""
        ...

    async def start_supervisor(
        self,
        children: list[ChildSpec],
        *,
        strategy: RestartStrategy = RestartStrategy.ONE_FOR_ONE,
        max_restarts: int = 5,
        max_seconds: float = 60.0,
        backoff: RestartBackoff | None = None,
        name: str | None = None,
        restart: RestartType = RestartType.PERMANENT,
    ) -> Supervisor:
        """Start a subtree under the root."""
        ...

    async def spawn_pool(
        self,
        agent_class: type[Agent],
        *args: Any,
        size: int,
        name: str | None = None,
        strategy: LoadBalancing = LoadBalancing.ROUND_ROBIN,
        key: Callable[[Any], Hashable] | None = None,
        seed: int | None = None,
        mailbox: MailboxConfig | None = None,
        shutdown: float | None = None,
        max_restarts: int | None = None,
        max_seconds: float | None = None,
        handler_timeout: float | None = None,
        admission: Sequence[Budget] = (),
        fallback: AgentRef | None = None,
        hibernate_after: float | None = None,
        **kwargs: Any,
    ) -> PoolRef:
        """Start a pool of agents behind one ref."""
        ...

    def whereis(self, name: str | AgentId) -> AgentRef | None:
        """The ref of the running agent (or pool) with that name or id, or ``None``."""
        ...

    def ref(self, name: str | AgentId) -> AgentRef:
        """The ref of the running agent with that name or id."""
        ...

    @property
    def agents(self) -> list[AgentRef]:
        """Refs of every agent that has not stopped for good."""
        ...

    async def stop(self, ref: AgentRef) -> None:
        """Stop an agent (or a whole pool) for good."""
        ...

    def subscribe(self, ref: AgentRef) -> None:
        """Send ``ref`` an info for every agent start and exit, and the shutdown."""
        ...

    def subscribe_dead_letters(self, ref: AgentRef) -> None:
        """Send ``ref`` an info carrying each dead letter from now on."""
        ...

    def register_agent(self, agent_id: AgentId, config: MailboxConfig | None = None) -> Mailbox:
        """Register a mailbox driven by hand, and return it."""
        ...

    async def send_message(self, envelope: Envelope) -> None:
        """Deliver ``envelope`` to its recipient, by its guarantee."""
        ...

    async def flush(self) -> None:
        """Return once every message accepted and settlement made so far is committed to the
        journal (at once without one)."""
        ...

    @property
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The most recent dead letters, oldest first."""
        ...

    def get_stats(self) -> tuple[SystemStats, list[MailboxStats]]:
        """The system's counters, and those of every live mailbox."""
        ...
