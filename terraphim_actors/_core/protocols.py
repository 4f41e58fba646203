"""The seams between the layers, as ``typing.Protocol``\\ s.

A lower layer that must name something a higher layer provides names one of these instead of
importing it, so that every import runs downward. Each protocol has today's implementation
behind it, named in its docstring.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import trio

from supervisor import RestartType

from ..errors import AgentStopped
from .ids import AgentId, MessageId
from .messages import Envelope, MessageOptions, Priority
from .notifications import ExitReason
from .settlement import Settlement

__all__ = [
    "RUN_AGAIN",
    "AdmissionPolicy",
    "Behaviour",
    "CallServer",
    "ClusterMembership",
    "ClusterSpec",
    "Commit",
    "Directory",
    "Inbox",
    "Instance",
    "Journal",
    "Occupant",
    "Ref",
    "RunAgain",
]

_Cell_contra = TypeVar("_Cell_contra", contravariant=True)
_Endpoint_co = TypeVar("_Endpoint_co", covariant=True)


class CallServer(Protocol):
    """The handler serving a call, as the call's reply slot knows it: told when the caller
    gives up, so that it can cut short work nobody waits for.

    Today's implementation: ``_behaviour.gen_server.GenServer``.
    """

    def call_abandoned(self, handle: Any) -> None: ...


class RunAgain(enum.Enum):
    """What an instance's :meth:`Instance.run` returns to be run again at once.

    It serves on in a different way (a gen_server takes its first call, whose handler must
    run under a cancel scope): returning, rather than awaiting the new way from the old,
    keeps one frame fewer alive in each idle agent.
    """

    RUN_AGAIN = "run again"


RUN_AGAIN = RunAgain.RUN_AGAIN


class Instance(Protocol):
    """One running instance of a behaviour, as the cell that runs it sees it: the cell knows
    when it runs and how it ends, never what it does with a message.

    Today's implementation: ``_behaviour.gen_server.GenServer`` (an ``Agent`` instance served
    as OTP's gen_server serves its callback module).
    """

    @property
    def begin(self) -> Callable[[], Awaitable[None]] | None:
        """The instance's own start (``on_start``), run in the agent's task before the
        instance counts as started; None if it has none, and then its start need not wait
        for that task.

        What it returns raises ``AgentStartFailed`` for what the start raises.
        """
        ...

    async def run(self) -> ExitReason | RunAgain | None:
        """Serve until asked to stop (returns why) or crashed (returns the error); or, for
        an instance that may hibernate, until it has been idle long enough (returns None: the
        cell may let it sleep, and runs it again when woken); or until it serves on in a
        different way (returns ``RUN_AGAIN``: the cell calls ``run`` again at once)."""
        ...

    async def hibernate(self) -> None:
        """The instance is about to sleep: let it prepare (its ``on_hibernate``)."""
        ...

    async def wake(self) -> None:
        """The instance serves again after :meth:`hibernate` (its ``on_wake``)."""
        ...

    def settle(self, reason: ExitReason) -> None:
        """The instance has ended with ``reason``: settle what it left its peers (replies it
        promised), before its cleanup runs."""
        ...

    def owes_replies(self) -> bool:
        """Whether it holds calls it deferred and has not answered (its end fails them)."""
        ...

    @property
    def cleanup(self) -> Callable[[ExitReason], Awaitable[None]] | None:
        """The instance's own cleanup (``on_stop``), which the cell runs within the agent's
        shutdown time; None if it has none (the cell then spends no cancel scope on it)."""
        ...

    def format_message(self, payload: Any) -> str:
        """``payload`` as the instance wants it logged and quoted."""
        ...


class Behaviour(Protocol[_Cell_contra]):
    """What a cell runs, once per instance: OTP's behaviour module to the cell's proc_lib. It
    outlives the cell's instances, so the cell reads the agent's spec from it.

    Today's implementation: ``_behaviour.spec.AgentStarter`` (a
    ``_behaviour.gen_server.GenServerBehaviour`` with its agent's spec).
    """

    #: Seconds a stopping instance gets to finish its handler and its cleanup.
    shutdown: float
    #: Whether the agent's supervisor starts it again after an exit (a normal stop of a
    #: permanent agent is not for good).
    restart: RestartType

    def build(self, cell: _Cell_contra) -> Instance:
        """A fresh instance, its own start (:attr:`Instance.begin`) not run yet; built in the
        caller's task.

        Raises:
            AgentStartFailed: building it raised.
        """
        ...


class Inbox(Protocol):
    """Where delivery puts a message for one destination: the transport seam. Delivery sees
    only this, so that a hibernated agent's inbox (which wakes it) or a remote one (which
    publishes) can stand where a mailbox stands.

    Today's implementation: ``_primitives.mailbox.Mailbox``.
    """

    def put_nowait(self, envelope: Envelope) -> None:
        """Take ``envelope`` now.

        Raises:
            MailboxFull: there is no room.
            MailboxClosed: the destination takes nothing any more.
        """
        ...

    async def put(self, envelope: Envelope) -> None:
        """Take ``envelope``, waiting for room if the inbox blocks when full; raises as
        :meth:`put_nowait` (``MailboxFull`` at once if it rejects instead)."""
        ...

    def has_room(self) -> bool:
        """Whether :meth:`put_nowait` would take a message now (closed: it raises instead)."""
        ...

    def __len__(self) -> int:
        """Messages waiting in it for their handler (0 for an inbox that keeps none, as a
        remote agent's does). Balancing reads the occupant's ``load`` instead."""
        ...


class Occupant(Protocol):
    """The process behind an endpoint, as routing and delivery ask after it: whether it takes
    messages, how loaded it is, and (off the hot path) how to refuse or describe a message.

    Today's implementation: ``_process.cell.AgentCell``.
    """

    @property
    def in_own_task(self) -> bool:
        """Whether the caller is the occupant's own task (which must not wait on itself)."""
        ...

    @property
    def serving(self) -> bool:
        """Whether an instance runs and takes messages (not starting, stopping or between
        instances)."""
        ...

    @property
    def gone(self) -> bool:
        """Whether it has stopped for good."""
        ...

    @property
    def leaving(self) -> bool:
        """Whether it takes no more messages, for good: it has stopped for good, or is
        stopping for good with its mailbox closed (a group no longer chooses it)."""
        ...

    @property
    def load(self) -> int:
        """Messages waiting, plus one while a handler runs."""
        ...

    def refusal(self) -> AgentStopped:
        """The error a call to it gets once it has stopped for good."""
        ...

    def describe(self, envelope: Envelope) -> str:
        """``envelope`` for a log or an error message, as the occupant formats payloads."""
        ...

    def format_message(self, payload: Any) -> str:
        """``payload`` as the occupant formats it for logs and errors."""
        ...


class AdmissionPolicy(Protocol):
    """Whether a destination takes a message now, and when it may again: the policy an
    endpoint holds as its ``admission`` (its circuit breaker, or, once it has admission
    budgets, a gate of its breaker and the budgets). Times are Trio times passed in by the
    caller, so that a policy is a plain object, unit-tested without Trio.

    The decision is by time alone, as the breaker's is: a token budget is charged after the
    handler (``ctx.charge``), not from an estimate at ``admit``.

    Retries and groups consult an endpoint's admission only through these four methods; the
    delivery steps that make a breaker (on the endpoint's first failure) or a gate (budgets at
    spawn, a ``ctx.retry_after``), the admission desk that makes messages wait for budgets,
    and the router's stats (circuit states) know what it is.

    Today's implementations: ``_primitives.circuit.CircuitBreaker``,
    ``_primitives.admission.AdmissionGate`` (a breaker and ``Budgets`` of ``RateLimit``,
    ``TokenBudget`` and ``ConcurrencyLimit``).
    """

    def admit(self, now: float) -> bool:
        """May a message go through at ``now``? Counts it (a trial, a token) if so."""
        ...

    def would_admit(self, now: float) -> bool:
        """Whether :meth:`admit` would let a message through at ``now``, counting nothing (a
        balancer asks it of every member)."""
        ...

    def retry_at(self, now: float) -> float | None:
        """The earliest time a message refused at ``now`` may be let through (``now`` itself
        when that hangs on outcomes under way); ``None`` if one would be now. A retry is not
        scheduled before it, and a group names the member whose time comes first."""
        ...

    def record(self, succeeded: bool | None, now: float) -> None:
        """How a message it let through ended: handled (True), failed (False), or ``None``
        when the end says nothing of the recipient's health (it refused the message as bad,
        or handles no such message), which still ends a half-open circuit's trial."""
        ...


class Directory(Protocol[_Endpoint_co]):
    """Names and endpoints: which id an address stands for, and where that id is reached.
    Routing and delivery look destinations up only through this, so that a directory shared
    by several nodes can replace the local one.

    Today's implementation: ``_routing.directory.LocalDirectory`` (of ``Endpoint``\\ s).
    """

    def resolve(self, address: AgentId | str | None) -> AgentId | None:
        """The id that ``address`` (a name or an id) stands for, if anything answers to it."""
        ...

    def endpoint(self, agent_id: AgentId) -> _Endpoint_co | None:
        """The endpoint of the agent under ``agent_id`` that has not stopped for good."""
        ...

    def claim(self, name: str | None, agent_id: AgentId | None = None) -> AgentId:
        """Give ``name`` to ``agent_id`` (a fresh id if none) and return the id.

        Raises:
            DuplicateAgent: the name is taken.
        """
        ...

    def release(self, agent_id: AgentId) -> None:
        """Free the name of ``agent_id`` and remember that it stopped for good."""
        ...

    def has_stopped(self, address: AgentId | str | None) -> bool:
        """Whether the id stopped for good lately, with nothing running under it since."""
        ...


class Commit(Protocol):
    """One group commit of a journal, as a sender waits on it: an awaited send of a journaled
    message returns only once its row is on disk.

    Today's implementation: ``journal._commit.Commit`` (of ``SqliteJournal``).
    """

    async def wait(self) -> None:
        """Return once the commit is done.

        Raises:
            JournalError: the commit failed (a full disk, an unwritable or locked file):
                nothing it held is durable.
        """
        ...


class Journal(Protocol):
    """A record of every message delivery accepts and of how each was settled, told once at
    the one accept point and once at the one settle point, so that a durable journal can replay
    what a crash left unsettled. A durable journal keeps only the messages worth replaying
    (casts and infos addressed by name, at least once or exactly once) and ignores the rest
    cheaply: its ``accepted`` and ``started`` return ``None`` for them.

    Today's implementations: ``_delivery.journal.NoJournal`` (keeps nothing, and delivery skips
    its calls altogether) and ``journal.SqliteJournal`` (a SQLite file).
    """

    def accepted(self, envelope: Envelope) -> Commit | None:
        """Delivery accepted ``envelope``: it will be settled exactly once. A journal that keeps
        it encodes it now and returns the commit that will hold it; ``None`` if not kept.

        Raises:
            InvalidMessage: the envelope cannot be encoded.
            UnencodablePayload: its payload cannot be encoded.
        """
        ...

    def started(self, envelope: Envelope) -> Commit | None:
        """A handler run of ``envelope`` begins: the commit that counts the run, or ``None``
        if the message is not kept."""
        ...

    def settled(self, message_id: MessageId, outcome: Settlement) -> None:
        """The message ``message_id`` (accepted earlier) ended as ``outcome``; batched into the
        next commit, never awaited (an unknown id is ignored)."""
        ...

    def filed(self, envelope: Envelope, reason: str, detail: str) -> None:
        """A kept message became a dead letter (``reason`` a ``DeadLetterReason`` value);
        batched into the next commit."""
        ...

    async def flush(self) -> None:
        """Return once everything told so far is committed (at once if nothing is pending).

        Raises:
            JournalError: a commit failed.
        """
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the journal, report started, then write its commits until cancelled.

        Raises:
            JournalError: the journal cannot be opened (before it reports started).
        """
        ...

    def unsettled(self) -> list[Envelope]:
        """The kept messages accepted and not settled when the journal was opened, in commit
        order: what a reopened journal replays."""
        ...

    def completed(self) -> list[tuple[str, MessageId, float]]:
        """The exactly-once completions still inside the dedup window when the journal was
        opened: (recipient name, message id, age in seconds)."""
        ...


@runtime_checkable
class ClusterMembership(Protocol):
    """A system's place in a cluster of nodes, as the system drives it (run beside its agents,
    asked to claim and free names cluster-wide, consulted for the names and endpoints this
    process does not hold, and told of each settlement, to acknowledge what arrived from the
    cluster) and as its users see it (``system.cluster``: the node, the live nodes, a wait for
    a name, the cluster's books).

    Today's implementation: ``cluster.ClusterNode``.
    """

    def settled(self, message_id: MessageId, outcome: Settlement) -> None:
        """A message was settled here."""
        ...

    async def run(
        self, system: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Join the cluster for ``system``, report started, serve until cancelled, leave."""
        ...

    async def claim(self, name: str, agent_id: AgentId) -> None:
        """Give ``name`` to this node's ``agent_id`` cluster-wide; ``DuplicateAgent`` if an
        agent on a live node has it."""
        ...

    def release(self, agent_id: AgentId, reason: ExitReason) -> None:
        """``agent_id`` stopped for good, for ``reason``: free its name cluster-wide and tell
        the monitors on other nodes."""
        ...

    def resolve(self, name: str) -> AgentId | None:
        """The id of the agent named ``name`` on another node, if any."""
        ...

    def endpoint(self, agent_id: AgentId) -> Any:
        """The endpoint reaching ``agent_id`` on another node, if it runs there."""
        ...

    @property
    def node(self) -> str:
        """This node's name in the cluster."""
        ...

    @property
    def nodes(self) -> frozenset[str]:
        """The nodes alive now, this one among them."""
        ...

    async def wait_for(self, name: str) -> Ref:
        """The ref of the agent named ``name``, once this node knows of it."""
        ...

    async def delivery_stats(self) -> Any:
        """Every live node's ``DeliveryStats``, summed."""
        ...


class ClusterSpec(Protocol):
    """What ``MessageSystemConfig(cluster=...)`` takes: a description of a cluster that makes
    each system that joins it its own membership. Today's implementation:
    ``cluster.ClusterConfig``."""

    def join(self) -> ClusterMembership:
        """A fresh membership for one system (nothing connects until the system runs it)."""
        ...


class Ref(Protocol):
    """A handle to one agent (or a pool), as the plain data that carries one names it: a
    ``Down`` holds the ref of the agent that stopped. Its members are ``AgentRef``'s public ones,
    with the same signatures, so that a monitor's ``down.ref.call(...)`` is checked as a call
    through the ref itself.

    Today's implementations: ``_behaviour.refs.AgentRef`` and ``PoolRef``.
    """

    @property
    def id(self) -> AgentId:
        """The agent's identity."""
        ...

    @property
    def name(self) -> str | None:
        """The name the agent was spawned with, if any."""
        ...

    @property
    def alive(self) -> bool:
        """False once the agent has stopped for good."""
        ...

    async def cast(
        self,
        payload: Any,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> None:
        """Send a fire-and-forget message."""
        ...

    def cast_nowait(
        self,
        payload: Any,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> None:
        """``cast`` without waiting or checkpointing."""
        ...

    async def info(
        self,
        payload: Any,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> None:
        """Send an info message (handled by ``handle_info``)."""
        ...

    def info_nowait(
        self,
        payload: Any,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> None:
        """``info`` without waiting or checkpointing."""
        ...

    async def call(
        self,
        payload: Any,
        timeout: float = 5.0,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> Any:
        """Send a request and wait for the reply."""
        ...
