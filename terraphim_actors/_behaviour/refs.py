"""``AgentRef``: the handle other code holds to talk to an agent; ``PoolRef``: the same
handle to a group of them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol, cast

import trio

from .._core.bounded_repr import bounded_repr
from .._core.checks import check_instance, check_seconds
from .._core.ids import AgentId, new_message_id
from .._core.instruments import Instruments
from .._core.messages import (
    NO_HEADERS,
    Envelope,
    MessageKind,
    MessageOptions,
    Priority,
    UnsealedEnvelope,
)
from .._core.reply import ReplyHandle
from .._core.threads import current_thread_id, wrong_thread
from .._primitives.balancing import LoadBalancing
from .._primitives.mailbox import send_budget_spent
from .._process.context_vars import current_cell, inherited_deadline
from .._routing.endpoint import Endpoint
from .._routing.groups import Group
from ..errors import CallTimeout, CallToSelf, InvalidConfig, MessagingError, WrongThread

if TYPE_CHECKING:
    from .._delivery.pipeline import DeliveryManager
    from .._primitives.timers import TimerService
    from .._process.cell import AgentCell

__all__ = ["AgentRef", "PoolRef"]

#: Looked up once, for the hot path's envelope.
_new_object = object.__new__
_NO_DEADLINE = math.inf
# Read once: on Python 3.11 an enum member read from its class goes through the enum's
# metaclass, several times dearer than a global, and every send reads one.
_CAST = MessageKind.CAST
_INFO = MessageKind.INFO
_CALL = MessageKind.CALL
_NORMAL = Priority.NORMAL


class _Sender(Protocol):
    """What a ref sends through: the system's delivery, clock, timers and thread."""

    @property
    def delivery(self) -> DeliveryManager: ...

    @property
    def clock(self) -> trio.abc.Clock: ...

    @property
    def timers(self) -> TimerService: ...

    @property
    def thread_id(self) -> int: ...

    @property
    def instruments(self) -> Instruments: ...

    @property
    def headers_from(self) -> Instruments | None: ...


class AgentRef:
    """A stable, hashable handle to one agent, valid across its restarts.

    Messages sent through one ref from one sender arrive in order within a priority while
    nothing fails. The blocking sends (``call``, ``cast``, ``info``) are cancellation points
    and wait for room in a bounded mailbox that blocks; ``cast`` and ``info`` are schedule
    points when they wait and otherwise once every ``SEND_BUDGET`` (64) sends, the cooperative
    budget; ``cast_nowait`` and ``info_nowait`` never wait.
    Each send takes the system's delivery guarantee, or the one in ``options``.

    Send from the thread the system runs in: from another thread, go through
    ``system.from_thread.cast(ref, payload)`` (or ``.call``); a send made from any other
    thread raises ``WrongThread`` having sent nothing. Reading ``alive`` is safe from any
    thread.
    """

    __slots__ = ("_delivery", "_endpoint", "_system", "id")

    def __init__(self, address: Endpoint | Group, system: _Sender) -> None:
        #: The endpoint when the address is one (``None`` for a pool's): a send takes it
        #: without asking the address to route, a call that costs a cast a twentieth.
        self._endpoint = address if isinstance(address, Endpoint) else None
        self._system = system
        self._delivery = system.delivery
        #: The agent's identity.
        self.id: AgentId = address.id

    def __repr__(self) -> str:
        return f"AgentRef({self.id!r})"

    @property
    def _address(self) -> Endpoint | Group:
        """Where its messages go: the agent's endpoint (which follows the agent across its
        restarts); a pool's ref keeps its group in a slot of this name instead."""
        return cast("Endpoint", self._endpoint)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def name(self) -> str | None:
        """The name the agent was spawned with, if any."""
        return self.id.name

    @property
    def alive(self) -> bool:
        """False once the agent has stopped for good (and nothing runs under its id); for an
        agent on another node, while no live node holds its name."""
        return not self._address.only().occupant.gone

    async def cast(
        self,
        payload: Any,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> None:
        """Send a fire-and-forget message; returns once the delivery layer accepted it, and,
        when the system's journal keeps it (at least or exactly once, to an agent or pool
        with a name: see "Durable delivery" in the README), once the journal committed it.

        Under a retrying guarantee a failed delivery is retried later, so this raises only for
        bad arguments or a journal's fault; at most once, it raises what stopped the delivery.

        Raises:
            MailboxFull: at most once, the mailbox is bounded, full, and rejects; or the agent
                sent it from its own task into its own mailbox, full and blocking, where it
                would wait for room only it can make (the message is not sent).
            CircuitOpen: at most once, the agent's circuit breaker is open.
            InvalidMessage, UnencodablePayload: the journal keeps the message and cannot
                encode it (the message is not sent).
            JournalError: the journal keeps the message and could not commit it: it was
                accepted and is delivered in this run, but would not survive a crash.
            InvalidConfig: ``priority`` or ``options`` is not valid.
            WrongThread: called from a thread other than the system's.
        """
        envelope = self._envelope(_CAST, payload, priority, options)
        # A cancellation point, before a pool chooses (a cancelled cast is not routed); then
        # at once when nothing stands in the way (a schedule point once every ``SEND_BUDGET``
        # sends), as ``Mailbox.put`` would, with three coroutines fewer; else through
        # delivery, which may wait.
        await trio.lowlevel.checkpoint_if_cancelled()
        endpoint = self._endpoint or self._address.route(envelope)
        delivery = self._delivery
        if not delivery.put_cast_nowait(endpoint, envelope):
            await delivery.send(endpoint, envelope)
        elif send_budget_spent():
            await trio.lowlevel.cancel_shielded_checkpoint()

    def cast_nowait(
        self,
        payload: Any,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> None:
        """:meth:`cast` without waiting or checkpointing: a full mailbox is a failure at once
        (retried later, or raised at most once). A message the journal keeps is committed
        with its next group commit, which nothing waits for: ``await system.flush()`` does.

        Raises as :meth:`cast`, but never ``JournalError``."""
        envelope = self._envelope(_CAST, payload, priority, options)
        self._delivery.send_nowait(self._endpoint or self._address.route(envelope), envelope)

    async def info(
        self,
        payload: Any,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> None:
        """Send an info message (handled by ``handle_info``); returns and raises as
        :meth:`cast` (a journal keeps infos as it keeps casts)."""
        envelope = self._envelope(_INFO, payload, priority, options)
        await trio.lowlevel.checkpoint_if_cancelled()  # as in ``cast``
        endpoint = self._endpoint or self._address.route(envelope)
        delivery = self._delivery
        if not delivery.put_cast_nowait(endpoint, envelope):
            await delivery.send(endpoint, envelope)
        elif send_budget_spent():
            await trio.lowlevel.cancel_shielded_checkpoint()

    def info_nowait(
        self,
        payload: Any,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> None:
        """:meth:`info` without waiting or checkpointing; raises as :meth:`cast_nowait`."""
        envelope = self._envelope(_INFO, payload, priority, options)
        self._delivery.send_nowait(self._endpoint or self._address.route(envelope), envelope)

    async def call(
        self,
        payload: Any,
        timeout: float = 5.0,
        *,
        priority: Priority = Priority.NORMAL,
        options: MessageOptions | None = None,
    ) -> Any:
        """Send a request and wait for the reply.

        Called from inside a handler, the call also ends no later than the call being handled.
        A failure before the handler ran (agent missing, mailbox full, circuit open) is retried
        within the deadline under a retrying guarantee; a handler's error never is.

        Raises:
            CallTimeout: no reply within ``timeout`` seconds (or the inherited deadline).
            CallFailed: the callee raised while handling it (the original is ``__cause__``).
            AgentStopped: the callee stopped or crashed before replying.
            CallToSelf: the agent called itself.
            DeliveryFailed: the call could not be delivered within its retries (the last
                failure is the ``__cause__``); ``CircuitOpen`` at most once.
            SystemClosed: the system shut down while the call waited to be tried again.
            MailboxFull: at most once, the mailbox is bounded, full, and rejects.
            InvalidConfig: ``timeout``, ``priority`` or ``options`` is not valid.
            WrongThread: called from a thread other than the system's.
        """
        check_seconds("timeout", timeout)
        envelope = self._envelope(_CALL, payload, priority, options, timeout)
        handle = envelope.reply
        assert handle is not None
        deadline = handle.deadline
        await trio.lowlevel.checkpoint_if_cancelled()  # as in ``cast``
        endpoint = self._endpoint or self._address.route(envelope)
        if endpoint is not None and endpoint.occupant.in_own_task:
            raise CallToSelf(f"{self.id!r} called itself and would wait forever")
        system = self._system
        delivery = system.delivery
        delivered_to = endpoint if delivery.put_call_nowait(endpoint, envelope) else None
        if delivered_to is None:
            # Something stands in the way (a full mailbox, a circuit, no such agent yet):
            # delivery may wait and retry, within the deadline.
            with trio.CancelScope(deadline=deadline):
                delivered_to = await delivery.send_call(endpoint, envelope)
        if delivered_to is not None:
            # A timer, not a cancel scope, ends the wait at the deadline: a scope with a
            # deadline costs more than a scheduler round.
            timer = system.timers.call_at(deadline, handle.expire)
            try:
                return await handle.wait_unbounded()
            except CallTimeout:
                if not handle.expired:
                    raise  # its budgets refused it for its deadline: the error says so
                delivery.call_timed_out(delivered_to, envelope)  # against its circuit
            finally:
                timer.discard()
        handle.abandon()
        own = deadline == envelope.created_at + timeout
        waited = f"{timeout} s" if own else "its caller's deadline"
        quoted = (
            bounded_repr(payload) if endpoint is None else endpoint.occupant.format_message(payload)
        )
        raise CallTimeout(f"{self.id!r} did not reply to {quoted} within {waited}")

    # -- where its messages go ---------------------------------------------------------------

    def destination(self, envelope: Envelope | None) -> Endpoint | None:
        """The endpoint that gets ``envelope`` now, as the router asks it for a message it
        routed (and counted): the agent's own (the one that took over its id, when its subtree
        was restarted), or the member a group chooses; ``None`` when no member can take it.
        A send through the ref resolves the same way, counted by a group as routed."""
        return self._address.choose(envelope)

    def _agent(self) -> AgentCell:
        """The one agent behind this ref, for monitoring it (an agent on another node is
        monitored through the same members as a cell).

        Raises:
            InvalidConfig: the ref is a pool's.
        """
        return cast("AgentCell", self._address.only().occupant)

    def _local_agent(self, what: str) -> AgentCell:
        """The one agent behind this ref, for what only an agent of this node allows.

        Raises:
            InvalidConfig: the ref is a pool's, or the agent runs on another node.
        """
        occupant = self._address.only().occupant
        if getattr(occupant, "remote", False):
            raise InvalidConfig(
                f"{what} takes an agent of this node; {self.id!r} runs on another node"
            )
        return cast("AgentCell", occupant)

    def _envelope(
        self,
        kind: MessageKind,
        payload: Any,
        priority: Priority,
        options: MessageOptions | None,
        call_timeout: float | None = None,
    ) -> Envelope:
        """The envelope of a send from the current task; a call's (``call_timeout`` given)
        with its reply slot and deadline."""
        system = self._system
        # Every send passes here first, before anything is counted or queued.
        if current_thread_id() != system.thread_id:
            raise _wrong_thread(self, kind)
        if options is None:
            if priority.__class__ is not Priority:
                raise InvalidConfig(f"priority must be a Priority, got {bounded_repr(priority)}")
            resolved = self._delivery.defaults[priority]
        else:
            check_instance("options", options, MessageOptions)
            if priority is not _NORMAL and priority is not options.priority:
                raise InvalidConfig("give the priority in options, or as priority=, not both")
            resolved = self._delivery.resolve(options)
        sender = None if (cell := current_cell.get()) is None else cell.id
        created_at = system.clock.current_time()
        if call_timeout is None:
            # ``Envelope.for_send`` spelled out: the call it saves is a thirtieth of a cast.
            # Built as an ``UnsealedEnvelope``, whose slots are set at C speed, then sealed.
            envelope: Envelope = _new_object(UnsealedEnvelope)
            envelope.id = new_message_id()
            envelope.kind = kind
            envelope.payload = payload
            envelope.sender = sender
            envelope.recipient = self.id
            envelope.options = resolved
            envelope.created_at = created_at
            envelope.headers = NO_HEADERS
            envelope.attempt = 0
            envelope.reply = None
            envelope.deadline = _NO_DEADLINE
            envelope.reply_to = None
            envelope.__class__ = Envelope
            if system.headers_from is not None:
                self._add_headers(envelope, system.headers_from)
            return envelope
        # This call's deadline, or the deadline of the call being handled when that is tighter.
        # A tighter Trio scope around the caller cancels it as any scope does, but the envelope
        # carries that deadline too, so that the callee can skip work nobody waits for.
        deadline = min(created_at + call_timeout, inherited_deadline.get())
        envelope = Envelope.for_send(
            kind,
            payload,
            sender,
            self.id,
            resolved,
            created_at,
            ReplyHandle(deadline),
            min(deadline, trio.current_effective_deadline()),
        )
        if system.headers_from is not None:
            self._add_headers(envelope, system.headers_from)
        return envelope

    def _add_headers(self, envelope: Envelope, instruments: Instruments) -> None:
        """Give ``envelope``, just built, the headers ``instruments`` add (a trace context):
        set once, before anyone sees it, as ``Envelope(headers=...)`` sets them."""
        headers = instruments.outgoing_headers(envelope.kind, self.id, NO_HEADERS)
        if headers is not NO_HEADERS:
            object.__setattr__(envelope, "headers", headers)


def _wrong_thread(ref: AgentRef, kind: MessageKind) -> WrongThread:
    """The error for a send of ``kind`` through ``ref`` from a foreign thread."""
    name = kind.value
    remedy = f"trio.from_thread.run(ref.{name}, ...)"
    if kind is not _CALL:
        remedy += f" (or trio.from_thread.run_sync(ref.{name}_nowait, ...))"
    return wrong_thread(f"{name} through {ref!r}", remedy)


class PoolRef(AgentRef):
    """The one ref of a pool: each ``call``, ``cast`` and ``info`` goes to the member its
    balancer chooses (see :class:`LoadBalancing`); :meth:`broadcast` goes to all of them.

    A message that fails is retried through the pool, so it may reach another member.
    """

    __slots__ = ("_address",)

    _address: Group  # the group, which chooses a member for each message

    def __init__(self, group: Group, system: _Sender) -> None:
        self._address = group
        super().__init__(group, system)

    def __repr__(self) -> str:
        return f"PoolRef({self.id!r}, {len(self._address.positions)} members)"

    @property
    def group(self) -> Group:
        """The group behind the ref (for the system that stops it)."""
        return self._address

    @property
    def strategy(self) -> LoadBalancing:
        """How the pool chooses a member."""
        return self._address.strategy

    @property
    def members(self) -> list[AgentRef]:
        """Refs to the members that take messages (not stopped, nor stopping, for good), in
        pool order."""
        return [AgentRef(endpoint, self._system) for endpoint in self._address.members()]

    @property
    def alive(self) -> bool:
        """False once the pool has stopped."""
        return self._address.live

    async def broadcast(self, payload: Any, *, priority: Priority = Priority.NORMAL) -> None:
        """Cast ``payload`` to every member (each send as :meth:`AgentRef.cast`).

        A member that refuses it (at most once: its circuit open, its mailbox full and
        rejecting) does not keep it from the others: every member is sent it, then the first
        refusal is raised, with a note naming each member that refused.

        Raises:
            MessagingError: as :meth:`AgentRef.cast`, once every member was sent it.
        """
        refusals: list[tuple[AgentRef, MessagingError]] = []
        for member in self.members:
            try:
                await member.cast(payload, priority=priority)
            except MessagingError as refusal:
                refusals.append((member, refusal))
        if refusals:
            first = refusals[0][1]
            first.add_note(
                "broadcast refused by "
                + ", ".join(f"{member!r} ({type(error).__name__})" for member, error in refusals)
                + "; every other member was sent it"
            )
            raise first
