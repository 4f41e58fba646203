"""The sending side of the transport: an agent on another node, as delivery sees it.

An agent elsewhere in the cluster is an ordinary :class:`~terraphim_actors._routing.endpoint.
Endpoint` whose inbox publishes instead of queueing (the transport seam), so that refs, the
pipeline, its retries and its books work unchanged: a ref's ``cast``, ``info`` and ``call``
reach a remote agent through the same code, and raise the same errors, as a local one.

The inbox resolves the agent's name on every send (from the directory's cache: a dict read),
so a ref obtained by name reaches the agent wherever it runs now, after a restart on another
node too. What each guarantee rides on:

- at most once: a core NATS publish, settled here as forwarded once it is out;
- at least once and exactly once: a JetStream publish with the message id as ``Nats-Msg-Id``
  (JetStream drops a republished copy), settled as forwarded once JetStream stored it; if no
  server takes it, delivery retries it on its schedule, and it ends as a dead letter at its
  expiry;
- a call: a NATS request carrying the time left before the caller's deadline; the answer
  fills the caller's reply slot, and a node that is gone fails it at once with ``NodeDown``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import outcome
import trio

from .._core.bounded_repr import bounded_repr
from .._core.ids import AgentId
from .._core.messages import DeliveryGuarantee, Envelope
from .._core.notifications import Down, ExitReason, MonitorRef, StopReason
from .._primitives.admission import AdmissionGate
from .._primitives.circuit import CircuitBreaker
from .._process.lifecycle import CellState
from .._routing.endpoint import Endpoint
from ..errors import (
    AgentNotFound,
    AgentStopped,
    CallTimeout,
    ClusterError,
    MailboxClosed,
    MessagingError,
    NodeDown,
)
from ._wire import decode_answer, encode_message, encode_record_for

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from .._delivery.pipeline import DeliveryManager
    from ._batches import CastBatches
    from ._bridge import Bridge
    from ._directory import ClusterDirectory, Placement
    from ._subjects import Subjects

__all__ = ["RemoteEndpoint", "RemoteInbox", "RemoteOccupant"]

#: Seconds a JetStream publish may wait for the server's acknowledgement. Past it the message
#: counts as not taken, and delivery tries it again on its retry schedule.
PUBLISH_TIMEOUT = 5.0

AT_MOST_ONCE = DeliveryGuarantee.AT_MOST_ONCE


class Link(Protocol):
    """What a remote inbox sends through: this node's connection to the cluster."""

    @property
    def bridge(self) -> Bridge: ...

    @property
    def directory(self) -> ClusterDirectory: ...

    @property
    def subjects(self) -> Subjects: ...

    @property
    def delivery(self) -> DeliveryManager: ...

    @property
    def max_payload(self) -> int: ...

    @property
    def connected(self) -> bool:
        """Whether the node runs, connected to a NATS server now."""
        ...

    def lookup(self, name: str) -> Placement | None:
        """Where ``name`` lives, as the node knows now (nowhere once it has left)."""
        ...

    @property
    def batches(self) -> CastBatches:
        """Where at-most-once casts to other nodes wait for the end of the round."""
        ...

    def now(self) -> float: ...

    def local_endpoint(self, name: str) -> Endpoint | None: ...

    def call_started(self, node: str, envelope: Envelope, node_gone: Callable[[], None]) -> None:
        """A call went to ``node``: ``node_gone`` fails it if the node leaves first."""
        ...

    def call_ended(self, node: str, envelope: Envelope) -> bool:
        """The call's answer came: False if it was failed already (its node left)."""
        ...


class RemoteOccupant:
    """The agent behind a remote endpoint, as routing and delivery ask after it (serving while
    a live node holds its name), and as a monitor watches it: ``ctx.monitor`` registers here as
    on a local agent's cell, and the node fires the ``Down`` when the agent watched stops for
    good (its node says so) or its node leaves the cluster."""

    __slots__ = ("_last", "_link", "_stopped", "_watched", "_watchers", "id", "ref")

    def __init__(self, agent_id: AgentId, link: Link) -> None:
        self.id = agent_id
        self._link = link
        #: The monitors set on the agent, by monitor, as a cell keeps them.
        self._watchers: dict[MonitorRef, Any] = {}
        #: Where the agent the monitors watch runs (its name may move on).
        self._watched: Placement | None = None
        #: The ref that a ``Down`` names (set by the endpoint's owner).
        self.ref: Any = None
        #: Where the name was last seen held, and the uid of the agent under it last said to
        #: have stopped for good: a send that finds the name free is refused when they match.
        self._last: Placement | None = None
        self._stopped: uuid.UUID | None = None

    #: A remote agent is never this node's own: what needs a cell of this node refuses it.
    remote = True

    @property
    def state(self) -> CellState:
        """Running while a live node holds the name; stopped otherwise (a monitor set now gets
        its ``Down`` at once, with ``NOPROC``). Setting a monitor now watches that placement."""
        placement = self.placement()
        if placement is None:
            return CellState.STOPPED
        if not self._watchers or self._watched is None:
            self._watched = placement
        return CellState.RUNNING

    @property
    def watched(self) -> Placement | None:
        """Where the agent the monitors watch runs, while any monitor waits."""
        return self._watched if self._watchers else None

    def watches_node(self, node: str, incarnation: str) -> bool:
        """Whether monitors wait here on an agent of that node's incarnation."""
        watched = self._watched
        return (
            bool(self._watchers)
            and watched is not None
            and (watched.node, watched.incarnation) == (node, incarnation)
        )

    def down(self, reason: ExitReason) -> None:
        """The agent watched has stopped for good, or its node is gone: tell every monitor."""
        watchers, self._watchers = self._watchers, {}
        self._watched = None
        for monitor, watcher in watchers.items():
            watcher._watching.pop(monitor, None)
            watcher.notify(Down(self.ref, reason, monitor))

    def __repr__(self) -> str:
        return f"<RemoteOccupant {self.id!r}>"

    @property
    def in_own_task(self) -> bool:
        """Never: a task of this process is not the remote agent's."""
        return False

    @property
    def serving(self) -> bool:
        return self.placement() is not None

    @property
    def gone(self) -> bool:
        """Whether no live node holds its name now (it may be spawned again anywhere)."""
        return self.placement() is None

    @property
    def leaving(self) -> bool:
        """As :attr:`gone`: a remote agent's stopping is known only once it is over."""
        return self.gone

    @property
    def stopped_for_good(self) -> bool:
        """Whether the agent last seen under the name said it stopped for good, and nothing
        holds the name since."""
        last = self._last
        return last is not None and last.uid == self._stopped and self.placement() is None

    def heard_stopped(self, uid: uuid.UUID, reason: ExitReason) -> None:
        """The agent ``uid`` under this name stopped for good, for ``reason``: its monitors
        get their ``Down``."""
        self._stopped = uid
        watched = self.watched
        if watched is not None and watched.uid == uid:
            self.down(reason)

    def stopped_unannounced(self, placement: Placement) -> None:
        """The name left ``placement`` a while ago, and the monitors that watch the agent
        there still wait: the announcement of its stop is lost (it travels at most once), so
        they get their ``Down`` with ``NOPROC``."""
        if self.watched == placement:
            self.down(StopReason.NOPROC)

    @property
    def load(self) -> int:
        """Unknown here: what least-loaded balancing reads as idle."""
        return 0

    @property
    def last_seen(self) -> Placement | None:
        """Where the name was last seen held (by a send, a monitor or a ref asking)."""
        return self._last

    def placement(self) -> Placement | None:
        """The live node holding the agent's name now, if any (not the agent that said it
        stopped for good, whose name is being freed)."""
        name = self.id.name
        placement = None if name is None else self._link.lookup(name)
        if placement is None or placement.uid == self._stopped:
            return None
        self._last = placement
        return placement

    def refusal(self) -> AgentStopped:
        return AgentStopped(f"{self.id!r} is not running on any node")

    def describe(self, envelope: Envelope) -> str:
        return envelope.describe(self.format_message(envelope.payload))

    def format_message(self, payload: Any) -> str:
        return bounded_repr(payload)


class RemoteInbox:
    """Where delivery puts a message for an agent on another node: a publish to that node.

    It never fills up: the cluster pushes back through its acknowledgements, which delivery
    settles (forwarded) or retries.
    """

    __slots__ = ("_endpoint", "_link")

    def __init__(self, link: Link) -> None:
        self._link = link
        self._endpoint: RemoteEndpoint | None = None

    def __len__(self) -> int:
        return 0

    def has_room(self) -> bool:
        """Whether the message can go now: the agent's name is held here, or by a live node
        while NATS is reachable. A call that finds neither takes delivery's way, which
        retries it within its deadline."""
        link, endpoint = self._link, self._endpoint
        assert endpoint is not None
        local = link.local_endpoint(self._name())
        if local is not None:  # spawned again here: as that agent's own endpoint would say
            return local.admission is None and local.inbox.has_room()
        return link.connected and endpoint.remote.placement() is not None

    def put_nowait(self, envelope: Envelope) -> None:
        """Send ``envelope`` on its way; its outcome settles it later.

        Raises:
            UnencodablePayload, InvalidMessage: it cannot be encoded, or is larger than NATS
                carries; nothing was sent.
            AgentNotFound: no live node holds the agent's name now (delivery retries it, as
                for a local name nobody holds).
            ClusterError: the connection to NATS is down (delivery retries it).
        """
        local, node = self._destination()
        if local is not None:
            local.inbox.put_nowait(envelope)
            return
        link = self._link
        if envelope.reply is None and envelope.options.guarantee is AT_MOST_ONCE:
            # Out once it is in this round's batch: at most once promises nothing after.
            record = encode_record_for(envelope, link.now(), link.max_payload)
            link.batches.add(link.subjects.casts(node), record)
            link.delivery.forwarded(envelope)
            return
        body, headers = encode_message(envelope, link.now(), link.max_payload, node)
        if envelope.reply is not None:
            self._request(node, envelope, body, headers)
            return
        store = self._storing(node, envelope, body, headers)
        link.bridge.submit(store, lambda result: self._settle(envelope, result))

    async def put(self, envelope: Envelope) -> None:
        """Send ``envelope`` and, for a cast or an info kept by JetStream, return once it
        stored it.

        Raises:
            ClusterError: no server took it in time (delivery retries it); and as
                :meth:`put_nowait`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled, it sent nothing
        if envelope.reply is not None or envelope.options.guarantee is AT_MOST_ONCE:
            self.put_nowait(envelope)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        local, node = self._destination()
        if local is not None:
            await local.inbox.put(envelope)
            return
        link = self._link
        body, headers = encode_message(envelope, link.now(), link.max_payload, node)
        try:
            # Shielded (the publish is bounded by its timeout): once it is under way, only its
            # outcome says whether the message was sent.
            with trio.CancelScope(shield=True):
                await link.bridge.run(self._storing(node, envelope, body, headers))
        except ClusterError:
            raise
        except Exception as error:  # nats-py's: a timeout, no responders, a closed connection
            raise ClusterError(
                f"the cluster did not take {envelope!r}: {bounded_repr(error)}"
            ) from error
        link.delivery.forwarded(envelope)

    def _storing(
        self, node: str, envelope: Envelope, body: bytes, headers: dict[str, str]
    ) -> Callable[[], Awaitable[None]]:
        """The JetStream publish of ``envelope`` to ``node``'s queue, to run on the bridge."""
        jetstream, subject = self._link.bridge.jetstream, self._link.subjects.queue(node)
        timeout = _publish_timeout(envelope, self._link.now())

        async def store() -> None:
            await jetstream.publish(subject, body, timeout=timeout, headers=headers)

        return store

    def attach(self, endpoint: RemoteEndpoint) -> None:
        self._endpoint = endpoint

    def _name(self) -> str:
        endpoint = self._endpoint
        assert endpoint is not None
        name = endpoint.id.name
        assert name is not None  # only named agents are reached across nodes
        return name

    def _destination(self) -> tuple[Endpoint | None, str]:
        """The local endpoint when the agent's name is held here now, else the node holding
        it.

        Raises:
            MailboxClosed: the agent stopped for good, and no node holds its name since.
            AgentNotFound: no live node holds it.
            ClusterError: the connection to NATS is down.
        """
        name = self._name()
        link = self._link
        local = link.local_endpoint(name)
        if local is not None:
            return local, ""
        endpoint = self._endpoint
        assert endpoint is not None
        placement = endpoint.remote.placement()
        if placement is None:
            if endpoint.remote.stopped_for_good:
                raise MailboxClosed(f"{bounded_repr(name)} has stopped")
            raise AgentNotFound(f"no agent is registered as {bounded_repr(name)} on any live node")
        if not link.connected:
            # As a local send to a missing agent: the message waits for a retry at once,
            # instead of the sender waiting for a connection.
            raise ClusterError(f"no NATS server is reachable to reach {bounded_repr(name)}")
        return None, placement.node

    def _request(self, node: str, envelope: Envelope, body: bytes, headers: dict[str, str]) -> None:
        """Ask ``node`` to handle the call ``envelope``; its answer fills the reply slot."""
        link = self._link
        subject = link.subjects.calls(node)
        timeout = max(envelope.deadline - link.now(), 0.001)
        if not math.isfinite(timeout):
            timeout = PUBLISH_TIMEOUT

        async def request() -> Msg:
            return await link.bridge.client.request(subject, body, timeout=timeout, headers=headers)

        def answered(result: outcome.Outcome[Msg]) -> None:
            if link.call_ended(node, envelope):
                self._answered(node, envelope, result)

        def node_gone() -> None:
            gone = NodeDown(f"{self._name()!r}'s node {node!r} left the cluster")
            self._answered(node, envelope, outcome.Error(gone))

        link.call_started(node, envelope, node_gone)
        link.bridge.submit(request, answered)

    def _answered(self, node: str, envelope: Envelope, result: outcome.Outcome[Msg]) -> None:
        """The call's answer came (or did not, or its node left): fill its reply slot and
        settle it."""
        handle = envelope.reply
        assert handle is not None
        delivery = self._link.delivery
        endpoint = self._endpoint
        assert endpoint is not None
        if isinstance(result, outcome.Value):
            try:
                ok, value = decode_answer(result.value.data, result.value.headers)
            except MessagingError as error:
                ok, value = False, error
            if ok:
                handle.reply(value)
            else:
                handle.fail(value)
            delivery.forwarded(envelope)
            return
        assert isinstance(result, outcome.Error)
        failure = _call_error(endpoint.id, node, result.error)
        if isinstance(failure, CallTimeout) and math.isfinite(envelope.deadline):
            # The request's timeout is the caller's deadline: whichever of it and the
            # caller's own timer fires first, the caller times out the same way (and the
            # timeout counts against the agent's circuit, as a local call's does).
            handle.expire()
        else:
            handle.fail(failure)
        delivery.forward_failed(endpoint, envelope, ClusterError(str(failure)))

    def _settle(self, envelope: Envelope, result: outcome.Outcome[Any]) -> None:
        """A cast or info went out (or did not): settle it, or have delivery retry it."""
        delivery = self._link.delivery
        if isinstance(result, outcome.Value):
            delivery.forwarded(envelope)
            return
        endpoint = self._endpoint
        assert endpoint is not None
        assert isinstance(result, outcome.Error)
        error = result.error
        failure = (
            error
            if isinstance(error, ClusterError)
            else ClusterError(f"the cluster did not take {envelope!r}: {bounded_repr(error)}")
        )
        delivery.forward_failed(endpoint, envelope, failure)


class RemoteEndpoint(Endpoint):
    """An agent on another node, addressed by its name: refs and delivery treat it as any
    endpoint; its inbox publishes to whichever node holds the name."""

    __slots__ = ("remote",)

    def __init__(self, agent_id: AgentId, link: Link) -> None:
        inbox = RemoteInbox(link)
        #: The agent behind it, as monitors watch it (``occupant``, typed as routing sees it).
        self.remote = RemoteOccupant(agent_id, link)
        super().__init__(agent_id, inbox, self.remote)
        inbox.attach(self)

    def __repr__(self) -> str:
        return f"<RemoteEndpoint {self.id!r}>"

    def name_taken(self, placement: Placement) -> None:
        """The name was given to ``placement``. If that is another agent than the one last
        seen under it (spawned again, here or on any node), the circuit, which judged the
        agent before, starts afresh, as a local agent spawned again has a fresh endpoint."""
        last = self.remote.last_seen
        if last is not None and last.uid == placement.uid:
            return
        admission = self.admission
        if isinstance(admission, CircuitBreaker):
            self.admission = None
        elif isinstance(admission, AdmissionGate):
            admission.breaker = None


def _publish_timeout(envelope: Envelope, now: float) -> float:
    """How long a publish of ``envelope`` may wait: at most until it expires."""
    left = envelope.created_at + envelope.options.timeout - now
    return max(0.001, min(PUBLISH_TIMEOUT, left))


def _call_error(agent_id: AgentId, node: str, error: BaseException) -> MessagingError:
    """The error a caller gets when no answer came back from ``node``."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    if isinstance(error, NoRespondersError):
        return NodeDown(f"{agent_id!r}'s node {node!r} is gone: nothing answers there")
    if isinstance(error, NatsTimeout | TimeoutError):
        return CallTimeout(f"{agent_id!r} on node {node!r} did not reply in time")
    if isinstance(error, MessagingError):
        return error
    return ClusterError(f"the call to {agent_id!r} on node {node!r} failed: {bounded_repr(error)}")
