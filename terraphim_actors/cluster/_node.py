"""One system's membership of a cluster: its connection, its directory, and the receiving side
of the transport.

A node takes what other nodes send its agents on three subjects of its own: at-most-once casts
and infos over core NATS (in batches, :mod:`._batches`), calls as NATS requests, and
at-least-once and exactly-once casts and infos from its durable consumer on the cluster's
JetStream stream. Each arriving message enters this node's delivery layer as a message sent
here would (counted from its arrival, retried and
dead-lettered here), addressed to the agent by name. A message taken from JetStream is
acknowledged to it once it is settled here (the ledger's settlement listener): handled, a
duplicate, or a dead letter. One the shutdown stopped is left unacknowledged, and JetStream
delivers it again, to this node when it is back or to whichever node holds the name then.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import nats.errors
import outcome
import trio

from .._behaviour.refs import AgentRef
from .._core.bounded_repr import bounded_repr
from .._core.ids import AgentId, MessageId
from .._core.messages import Envelope, MessageKind, cast
from .._core.notifications import ExitReason, StopReason
from .._core.reply import ReplyHandle
from .._core.settlement import Settlement
from .._delivery.dead_letters import DeadLetterReason
from .._delivery.ledger import DeliveryStats
from ..errors import CallTimeout, ClusterError, InvalidMessage, MessagingError, RemoteError
from ._adoption import adopt, heir_of
from ._batches import CastBatches
from ._bridge import Bridge
from ._directory import ClusterDirectory, DirectoryEvent, NameFreed, NameTaken, Placement
from ._directory import NodeDown as NodeLeft
from ._msgpack import decode_batch
from ._remote import RemoteEndpoint
from ._subjects import Subjects
from ._wire import decode_message, encode_answer, encode_failure, time_in_stream, time_left

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from .._delivery.pipeline import DeliveryManager
    from .._routing.endpoint import Endpoint
    from .._system.system import MessageSystem
    from ._bridge import Subscription
    from .config import ClusterConfig

__all__ = ["ClusterNode"]

_Part = TypeVar("_Part")

logger = logging.getLogger("terraphim_actors.cluster")

#: Seconds JetStream waits for a node's acknowledgement of a message before offering it again.
#: A node tells JetStream every third of it that the messages it holds are in progress, so
#: that this bounds only how long the messages a crashed node held wait to be offered again.
ACK_WAIT = 6.0

#: Seconds a request for another node's books may take.
STATS_TIMEOUT = 2.0

#: What NATS raises for a request it could not serve (nats-py's errors, among them JetStream's
#: and its timeouts, and the socket's): a fault of the cluster, raised as ``ClusterError``.
_NATS_FAULTS = (nats.errors.Error, OSError)

#: Seconds before a failed look for departed nodes' queues, or a failed adoption of one, is
#: tried again (JetStream may not answer for a few seconds while it elects a leader).
ADOPT_AGAIN = 1.0

#: How many stop announcements are kept for names nothing here has asked after yet.
STOPS_KEPT = 1024

#: Seconds the monitors of an agent whose name was freed wait for the announcement of its stop
#: (which comes by another way, at most once, before or after) before they get ``NOPROC``.
UNANNOUNCED_WAIT = 1.0


class ClusterNode:
    """This system's node in the cluster ``config.cluster``, under the name ``config.node``.

    Reached as ``system.cluster``. Made by the system from its ``MessageSystemConfig(cluster=)``
    and run by it beside its agents: connected before the first agent starts, left after the
    last one stopped.
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.subjects = Subjects(config.cluster)
        self._system: MessageSystem | None = None
        self._bridge: Bridge | None = None
        self._directory: ClusterDirectory | None = None
        self._max_payload = 1024 * 1024
        self._batches: CastBatches | None = None
        #: Remote endpoints by agent name, made on first use and kept (refs hold them).
        self._endpoints: dict[str, RemoteEndpoint] = {}
        #: Messages taken from JetStream and not settled here yet, by id.
        self._awaiting: dict[MessageId, Msg] = {}
        #: Arrivals that could not be decoded (each is a dead letter here).
        self.undecodable = 0
        #: Calls waiting for an answer from each node, each with what fails it if that node
        #: leaves the cluster first.
        self._calls: dict[str, dict[MessageId, Callable[[], None]]] = {}
        #: The departed nodes whose queues this node is handing on.
        self._adopting: set[str] = set()
        #: Set when the queues of departed nodes are to be looked for (made in ``run``).
        self._orphans_wanted: trio.Event | None = None
        #: The last agent announced stopped under each name that has no endpoint here yet
        #: (its name may look held a moment longer): given to the endpoint when it is made.
        self._stops_unheard: OrderedDict[str, tuple[uuid.UUID, ExitReason]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<ClusterNode {self.config.node!r} of {self.config.cluster!r}>"

    @property
    def node(self) -> str:
        """This node's name in the cluster."""
        return self.config.node

    @property
    def nodes(self) -> frozenset[str]:
        """The nodes alive now, this one among them."""
        return self.directory.live_nodes()

    # -- what the remote endpoints send through ---------------------------------------------

    @property
    def bridge(self) -> Bridge:
        return _running(self._bridge)

    @property
    def directory(self) -> ClusterDirectory:
        return _running(self._directory)

    @property
    def delivery(self) -> DeliveryManager:
        return self._host.delivery

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def connected(self) -> bool:
        """Whether this node runs, connected to a NATS server now."""
        return self._bridge is not None and self._bridge.connected

    def lookup(self, name: str) -> Placement | None:
        """Where ``name`` lives, as this node knows now: nowhere once it has left."""
        return None if self._directory is None else self._directory.lookup(name)

    @property
    def batches(self) -> CastBatches:
        return _running(self._batches)

    def now(self) -> float:
        return self._host.clock.current_time()

    def local_endpoint(self, name: str) -> Endpoint | None:
        """The endpoint of this system's agent named ``name``, if it runs here."""
        if self._system is None:
            return None
        registry = self._system.registry
        agent_id = registry.local_id(name)
        return None if agent_id is None else registry.local_endpoint(agent_id)

    def call_started(self, node: str, envelope: Envelope, node_gone: Callable[[], None]) -> None:
        self._calls.setdefault(node, {})[envelope.id] = node_gone

    def call_ended(self, node: str, envelope: Envelope) -> bool:
        waiting = self._calls.get(node)
        return waiting is not None and waiting.pop(envelope.id, None) is not None

    # -- what the system asks of its membership ---------------------------------------------

    def settled(self, message_id: MessageId, outcome: Settlement) -> None:
        """A message was settled here: if it came from JetStream, acknowledge it there."""
        message = self._awaiting.pop(message_id, None)
        if message is not None:
            self.bridge.ack_nowait(message)

    async def claim(self, name: str, agent_id: AgentId) -> None:
        """Give ``name`` to this node's agent ``agent_id`` cluster-wide.

        Raises:
            DuplicateAgent: an agent on a live node has the name.
            ClusterError: the cluster could not be reached.
        """
        await self.directory.claim(name, agent_id.uid)

    def release(self, agent_id: AgentId, reason: ExitReason) -> None:
        """``agent_id`` stopped for good, for ``reason``: tell the other nodes (their monitors
        of it fire), and free its name cluster-wide."""
        name = agent_id.name
        if name is None or self._directory is None or self._bridge is None:
            return
        announcement = {"name": name, "uid": agent_id.uid.hex, "reason": _reason_to_json(reason)}
        self._bridge.publish_nowait(
            self.subjects.downs(self.config.node), json.dumps(announcement).encode()
        )
        self._directory.release_nowait(name, agent_id.uid)

    def resolve(self, name: str) -> AgentId | None:
        """The id of the agent named ``name`` on another live node, if any."""
        placement = None if self._directory is None else self._directory.lookup(name)
        if placement is None or placement.node == self.config.node:
            return None
        return AgentId(uid=placement.uid, name=name)

    def endpoint(self, agent_id: AgentId) -> RemoteEndpoint | None:
        """The endpoint of the agent ``agent_id`` on another node, found by its name."""
        name = agent_id.name
        if name is None or self.resolve(name) is None:
            return None
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            endpoint = RemoteEndpoint(AgentId(uid=agent_id.uid, name=name), self)
            endpoint.remote.ref = AgentRef(endpoint, self._host)
            self._endpoints[name] = endpoint
            stopped = self._stops_unheard.pop(name, None)
            if stopped is not None:
                endpoint.remote.heard_stopped(*stopped)
        return endpoint

    async def wait_for(self, name: str) -> AgentRef:
        """The ref of the agent (or pool) named ``name``, here or on any node, once this
        node knows of it. A name spawned on another node is known here when the cluster's
        directory tells this node, a moment after that spawn returned: this waits for that
        moment (bound it with a Trio cancel scope, as any wait).

        Raises:
            ClusterError: the node is not running (its system is not open), or it left the
                cluster (its system closed) before it knew of the name.
        """
        events = self.directory.watch()
        with events:
            try:
                while (ref := self._host.whereis(name)) is None:
                    await events.receive()
            except trio.EndOfChannel:
                raise ClusterError(
                    f"node {self.node!r} left the cluster before it knew of {name!r}"
                ) from None
        return ref

    async def delivery_stats(self) -> DeliveryStats:
        """Every live node's books, summed: across the cluster, ``sent == acknowledged +
        duplicates_suppressed + failed + dead_lettered + forwarded + pending`` as on one node
        (what is in flight between nodes is counted as forwarded by its sender and not yet
        as sent by its receiver)."""
        totals = attrs.asdict(self.delivery.get_stats())
        bridge = self.bridge
        for node in sorted(self.nodes - {self.config.node}):
            subject = self.subjects.stats(node)

            async def ask(subject: str = subject) -> bytes:
                reply = await bridge.client.request(subject, b"", timeout=STATS_TIMEOUT)
                return reply.data

            try:
                books = json.loads(await bridge.run(ask))
            except Exception as error:  # a node that left meanwhile has nothing to add
                logger.warning("node %r did not send its books: %r", node, error)
                continue
            for key in totals:
                totals[key] += int(books.get(key, 0))
        return DeliveryStats(**totals)

    # -- running -----------------------------------------------------------------------------

    @property
    def _host(self) -> MessageSystem:
        return _running(self._system)

    async def run(
        self,
        system: MessageSystem,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Join the cluster for ``system``: connect, bind the stream, start the directory and
        the three subscriptions; report started; serve until cancelled, then leave (the
        messages taken from JetStream and not settled are handed back). Once it has left,
        what it knew is gone: its parts raise ``ClusterError``, as before it ran."""
        self._system = system
        try:
            await self._join_and_serve(task_status)
        finally:
            self._system = self._bridge = self._directory = self._batches = None
            self._orphans_wanted = None

    async def _join_and_serve(self, task_status: trio.TaskStatus[None]) -> None:
        config = self.config
        async with Bridge.connect(config) as bridge:
            self._bridge = bridge
            self._max_payload = bridge.client.max_payload
            batches = CastBatches(bridge.publish_nowait, self._max_payload)
            self._batches = batches
            await self._bind_stream(bridge)
            directory = ClusterDirectory(bridge, config, on_change=self._directory_changed)
            self._directory = directory
            joined = False
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(directory.run)
                    self._orphans_wanted = trio.Event()
                    self._orphans_wanted.set()  # the nodes that left before this one came
                    nursery.start_soon(self._follow_directory, directory.watch())
                    nursery.start_soon(self._adopt_orphans_when_wanted, nursery)
                    subjects, node = self.subjects, config.node
                    downs = await bridge.subscribe(subjects.all_downs)
                    nursery.start_soon(self._hear_downs, downs)
                    casts = await bridge.subscribe(subjects.casts(node))
                    calls = await bridge.subscribe(subjects.calls(node))
                    stats = await bridge.subscribe(subjects.stats(node))
                    queue = await self.pull_queue(node)
                    nursery.start_soon(batches.run)
                    nursery.start_soon(self._take, casts, self._batch_arrived)
                    nursery.start_soon(self._take, queue, self._stored_arrived)
                    nursery.start_soon(self._serve_calls, calls)
                    nursery.start_soon(self._serve_stats, stats)
                    nursery.start_soon(self._keep_in_progress)
                    task_status.started()
                    joined = True
            except BaseExceptionGroup as group:
                # A join that failed (a node of this name alive elsewhere, the buckets not
                # read in time) raises its ClusterError as itself, as a join that failed
                # before the nursery does, for the opener of the system to catch.
                failure = _alone(group)
                if joined or not isinstance(failure, ClusterError):
                    raise
                raise failure from None
            finally:
                for message in self._awaiting.values():
                    bridge.nak_nowait(message)
                self._awaiting.clear()

    async def pull_queue(self, node: str) -> Subscription:
        """Take the messages JetStream holds for ``node`` (this one's, or a departed one's).

        Raises:
            ClusterError: JetStream did not give the queue (no JetStream on the servers, a
                timeout while it elects a leader, a closed connection).
        """
        subjects = self.subjects
        durable, subject = subjects.consumer(node), subjects.queue(node)
        try:
            return await self.bridge.pull(
                subjects.stream, durable, subject, config=_consumer_config(durable, subject)
            )
        except _NATS_FAULTS as error:
            raise ClusterError(
                f"JetStream did not give the queue of node {node!r}: {error!r}"
            ) from error

    async def _keep_in_progress(self) -> None:
        """Tell JetStream, every third of its ack wait, that the messages taken here and not
        settled yet are still in hand (in a mailbox or a handler), so that it does not offer
        them again meanwhile."""
        while True:
            await trio.sleep(ACK_WAIT / 3)
            bridge = self.bridge
            for message in self._awaiting.values():
                bridge.submit(message.in_progress, _ignored)

    async def _bind_stream(self, bridge: Bridge) -> None:
        """Make the cluster's stream if no node made it yet."""
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        subjects, config = self.subjects, self.config
        stream = StreamConfig(
            name=subjects.stream,
            subjects=[subjects.all_queues],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=config.replicas,
            duplicate_window=config.duplicate_window,
        )

        async def bind() -> None:
            try:
                await bridge.jetstream.stream_info(subjects.stream)
            except NotFoundError:
                await bridge.jetstream.add_stream(stream)

        try:
            await bridge.run(bind)
        except _NATS_FAULTS as error:
            raise ClusterError(
                f"could not bind the stream {subjects.stream!r} of the cluster (is JetStream"
                f" enabled on the servers?): {error!r}"
            ) from error

    # -- other nodes' queues ------------------------------------------------------------------

    async def _adopt_orphans_when_wanted(self, nursery: trio.Nursery) -> None:
        """Look for the queues to adopt each time it is wanted (at the start, after each
        departure), and again after a pause while looking fails: JetStream may not answer
        for a while, and a queue must not wait for the next departure to be adopted."""
        while True:
            wanted = self._orphans_wanted
            assert wanted is not None
            await wanted.wait()
            again = self._orphans_wanted = trio.Event()
            if not await self._adopt_orphans(nursery):
                await trio.sleep(ADOPT_AGAIN)
                again.set()

    async def _adopt_orphans(self, nursery: trio.Nursery) -> bool:
        """Adopt the queue of every node that is gone and whose heir this node is now: the
        one that just left, but also one whose heir left in its turn, or that left before
        this node joined. A queue is a durable consumer of the stream, so the stream lists
        them all. False if they could not be listed."""
        subjects = self.subjects

        async def consumers() -> list[str]:
            infos = await self.bridge.jetstream.consumers_info(subjects.stream)
            return [info.name for info in infos]

        try:
            names = await self.bridge.run(consumers)
        except (ClusterError, *_NATS_FAULTS) as error:
            logger.warning(
                "could not list the queues of the cluster (trying again in %g s): %r",
                ADOPT_AGAIN,
                error,
            )
            return False
        prefix = subjects.consumer("")
        for name in names:
            node = name.removeprefix(prefix)
            if name.startswith(prefix) and node not in self._adopting and self._heir_to(node):
                self._adopting.add(node)
                nursery.start_soon(self._adopt, node)
        return True

    def _heir_to(self, node: str) -> bool:
        """Whether ``node`` is gone and this node its heir now."""
        directory = self.directory
        return (
            not directory.node_alive(node)
            and heir_of(node, directory.live_nodes()) == self.config.node
        )

    async def _adopt(self, node: str) -> None:
        """Hand on ``node``'s queue while it is gone and this node its heir. A failure (its
        queue could not be taken, as while JetStream elects a leader) is logged and the
        adoption tried again after a pause, never raised into the node."""
        try:
            while self._heir_to(node):
                try:
                    await adopt(self, node)
                except (ClusterError, trio.EndOfChannel, *_NATS_FAULTS) as error:
                    logger.warning(
                        "could not adopt the queue of node %r (trying again in %g s): %r",
                        node,
                        ADOPT_AGAIN,
                        error,
                    )
                    await trio.sleep(ADOPT_AGAIN)
        finally:
            self._adopting.discard(node)

    # -- other nodes' agents stopping ---------------------------------------------------------

    def _directory_changed(self, event: DirectoryEvent) -> None:
        """What follows a change of the directory before anything can read it: a name given
        to another agent gives its endpoint a fresh circuit; a name freed ends the monitors
        of the agent that held it, with the reason its stop announcement gives, or with
        ``NOPROC`` if none comes soon (it travels at most once, by another way)."""
        if not isinstance(event, NameTaken | NameFreed):
            return
        endpoint = self._endpoints.get(event.name)
        if endpoint is None:
            return
        if isinstance(event, NameTaken):
            endpoint.name_taken(event.placement)
            return
        occupant = endpoint.remote
        if occupant.watched == event.placement:
            unannounced = functools.partial(occupant.stopped_unannounced, event.placement)
            self._host.timers.call_at(self.now() + UNANNOUNCED_WAIT, unannounced)

    async def _follow_directory(self, events: trio.MemoryReceiveChannel[DirectoryEvent]) -> None:
        """A node that leaves takes its agents with it: the monitors of them get ``Down``
        with ``NOCONNECTION``, the calls waiting on it fail with ``NodeDown``, and the first
        live node adopts its queue (``_adoption``)."""
        async for event in events:
            if not isinstance(event, NodeLeft):
                continue
            for node_gone in self._calls.pop(event.node, {}).values():
                node_gone()
            if self._orphans_wanted is not None:
                self._orphans_wanted.set()
            for endpoint in self._endpoints.values():
                occupant = endpoint.remote
                if occupant.watches_node(event.node, event.incarnation):
                    occupant.down(StopReason.NOCONNECTION)

    async def _hear_downs(self, subscription: Subscription) -> None:
        """Another node's named agent stopped for good: its monitors here get ``Down`` with
        the reason it stopped for (a crash as a ``RemoteError``). Heard before anything here
        asked after the name, the stop is kept for the name's endpoint: its name may look
        held a moment longer, and a monitor set meanwhile must hear ``NOPROC``."""
        while True:
            try:
                messages = await subscription.receive_batch()
            except trio.EndOfChannel:
                return
            for message in messages:
                try:
                    announcement = json.loads(message.data)
                    name, uid = str(announcement["name"]), uuid.UUID(str(announcement["uid"]))
                    reason = _reason_from_json(announcement["reason"])
                except Exception as error:  # whatever the network brings, never a crash
                    logger.warning("an unreadable stop announcement: %r", error)
                    continue
                endpoint = self._endpoints.get(name)
                if endpoint is not None:
                    endpoint.remote.heard_stopped(uid, reason)
                else:  # a monitor set before the name's release comes must hear of it
                    stops = self._stops_unheard
                    stops.pop(name, None)
                    stops[name] = (uid, reason)
                    if len(stops) > STOPS_KEPT:
                        stops.popitem(last=False)

    # -- arrivals ----------------------------------------------------------------------------

    async def _take(self, subscription: Subscription, arrived: Callable[[Msg], None]) -> None:
        """Hand each message arriving on ``subscription`` to ``arrived``, in order."""
        while True:
            try:
                messages = await subscription.receive_batch()
            except trio.EndOfChannel:
                return
            for message in messages:
                arrived(message)

    def _batch_arrived(self, message: Msg) -> None:
        """At-most-once casts, a batch of them: each on to its agent, in order."""
        try:
            envelopes = decode_batch(message.data, self.now())
        except InvalidMessage as error:
            self._undecodable(message, error, False)
            return
        for envelope in envelopes:
            if envelope.kind is MessageKind.CALL:
                self.undecodable += 1
                self.delivery.refuse_arrival(
                    envelope, DeadLetterReason.UNDECODABLE, "a call without a reply"
                )
            else:
                self._deliver(envelope)

    def _stored_arrived(self, message: Msg) -> None:
        """A message JetStream kept: on to its agent, acknowledged once settled here."""
        try:
            waited = time_in_stream(message)
            envelope = decode_message(message.data, message.headers, self.now(), waited)
        except InvalidMessage as error:
            self._undecodable(message, error, True)
            return
        if envelope.kind is MessageKind.CALL:  # a call comes as a request, with its answer's way
            self._undecodable(message, InvalidMessage("a call without a reply"), True)
            return
        if envelope.id in self._awaiting:
            # JetStream delivered it again while the first copy still waits here: the first
            # copy's settlement acknowledges it.
            self._awaiting[envelope.id] = message
            return
        self._awaiting[envelope.id] = message
        self._deliver(envelope)

    def _deliver(self, envelope: Envelope) -> None:
        """Send an arrival on to the agent of its recipient's name here."""
        delivery = self.delivery
        try:
            endpoint = self._local(envelope)
        except Exception as error:  # a pool's key function: user code
            delivery.refuse_arrival(
                envelope, DeadLetterReason.NOT_FOUND, f"routing it raised {bounded_repr(error)}"
            )
            return
        # At most once, a failure is filed as a dead letter already; nobody here to tell.
        with contextlib.suppress(MessagingError):
            delivery.send_nowait(endpoint, envelope)

    def _local(self, envelope: Envelope) -> Endpoint | None:
        """Where an arrival goes on this node: the agent of its recipient's name, or the
        member a pool of that name chooses; never on to another node."""
        recipient = envelope.recipient
        registry = self._host.registry
        agent_id = registry.local_id(recipient) if isinstance(recipient, str) else recipient
        if not isinstance(agent_id, AgentId):
            return None
        group = self._host.router.pools.get(agent_id)
        if group is not None:
            return group.choose(envelope)
        return registry.local_endpoint(agent_id)

    def _undecodable(self, message: Msg, error: InvalidMessage, from_jetstream: bool) -> None:
        """An arrival this node cannot read: a dead letter here, never a crash, and never
        delivered again by JetStream."""
        self.undecodable += 1
        self.delivery.refuse_arrival(
            cast(None, message.data, recipient=f"?{self.config.node}"),
            DeadLetterReason.UNDECODABLE,
            f"from subject {message.subject}: {error}",
        )
        if from_jetstream:
            self.bridge.term_nowait(message)

    # -- calls -------------------------------------------------------------------------------

    async def _serve_calls(self, subscription: Subscription) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    messages = await subscription.receive_batch()
                except trio.EndOfChannel:
                    return
                for message in messages:
                    if message.reply:
                        nursery.start_soon(self._serve_call, message)
                    else:  # nowhere to answer: not a request a node sends
                        self._undecodable(message, InvalidMessage("a call without a reply"), False)

    async def _serve_call(self, message: Msg) -> None:
        """Handle one call from another node here, as a local call, and answer it."""
        try:
            now = self.now()
            envelope = decode_message(message.data, message.headers, now)
            deadline = now + time_left(message.headers)
            if envelope.kind is not MessageKind.CALL:
                raise InvalidMessage(f"a request must be a call, got {envelope!r}")
            answer = encode_answer(await self._call(envelope, deadline))
        except Exception as error:  # a pool's key function among them: user code
            answer = encode_failure(error)
        self.bridge.respond_nowait(message, *answer)

    async def _call(self, envelope: Envelope, deadline: float) -> Any:
        """Deliver the call ``envelope`` here and wait for its answer until ``deadline``."""
        handle = ReplyHandle(deadline)
        envelope = envelope.evolve(reply=handle, deadline=deadline)
        delivery, timers = self.delivery, self._host.timers
        endpoint = self._local(envelope)
        delivered = endpoint is not None and delivery.put_call_nowait(endpoint, envelope)
        if not delivered:
            with trio.CancelScope(deadline=deadline):
                await delivery.send_call(endpoint, envelope)
                delivered = True
        if delivered:
            timer = timers.call_at(deadline, handle.expire)
            try:
                return await handle.wait_unbounded()
            finally:
                timer.cancel()
        handle.abandon()
        raise CallTimeout(f"{envelope!r} could not be delivered before its caller's deadline")

    async def _serve_stats(self, subscription: Subscription) -> None:
        """Answer other nodes' requests for this node's books."""
        while True:
            try:
                messages = await subscription.receive_batch()
            except trio.EndOfChannel:
                return
            books = json.dumps(attrs.asdict(self.delivery.get_stats())).encode()
            for message in messages:
                if message.reply:
                    self.bridge.respond_nowait(message, books)


def _running(part: _Part | None) -> _Part:
    """A part the node has while it runs (its system, bridge, directory)."""
    if part is None:
        raise ClusterError("the cluster node is not running: its system is not open")
    return part


def _alone(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in ``group`` (through nested groups), if there is only one."""
    while len(group.exceptions) == 1:
        [only] = group.exceptions
        if not isinstance(only, BaseExceptionGroup):
            return only
        group = only
    return None


def _ignored(_: outcome.Outcome[None]) -> None:
    """What is done with the outcome of telling JetStream a message is in progress: a failure
    only means JetStream may offer the message again, which a duplicate's handling covers."""


def _reason_to_json(reason: ExitReason) -> dict[str, str]:
    if isinstance(reason, StopReason):
        return {"stop": reason.value}
    if isinstance(reason, RemoteError):
        return {"type_name": reason.type_name, "message": reason.message}
    return {"type_name": type(reason).__qualname__, "message": str(reason)}


def _reason_from_json(value: dict[str, str]) -> ExitReason:
    """The reason an announcement gives: a ``StopReason``, or a crash as a ``RemoteError``."""
    if "stop" in value:
        return StopReason(value["stop"])
    return RemoteError(str(value["type_name"]), str(value["message"]))


def _consumer_config(durable: str, subject: str) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ACK_WAIT,
        max_deliver=-1,
    )
