"""The cluster-wide directory: which node holds each agent name, and which nodes are alive.

Two JetStream key-value buckets hold it: ``ta_<cluster>_names`` maps each name to its
placement (node, agent uid, the node's incarnation), ``ta_<cluster>_nodes`` holds one heartbeat
per live node (its incarnation), which the bucket's TTL removes once the node stops beating.
The delivery layer resolves a name on every send, so lookups never cross to NATS: watchers on
both buckets keep a local copy current, and ``lookup`` is a dict read. Claims go to NATS and
are decided there by compare-and-set (create, or update at the last revision seen), so of two
concurrent claims of one name anywhere exactly one wins.

A server does not tell a watcher when a key's TTL removes it (unless the bucket places limit
markers, which servers before 2.11 cannot), so a node counts as gone once its last heartbeat
seen here is older than the TTL, checked every beat interval; a deleted heartbeat (a node that
left cleanly) counts at once. A placement is live only while its node is alive with the same
incarnation: a node that restarted (a new incarnation) no longer holds what its earlier process
held, and takes those names back at once when it claims them. That is for a process that is
gone: a second live process joining under the name of a node that still beats is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import nats.errors
import nats.js.errors
import outcome
import trio
from nats.js.api import KeyValueConfig
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .._core.bounded_repr import bounded_repr
from ..errors import ClusterError, DuplicateAgent, InvalidConfig
from ._bridge import Bridge, ConnectionEvent
from .config import ClusterConfig

__all__ = [
    "ClusterDirectory",
    "DirectoryEvent",
    "NameFreed",
    "NameTaken",
    "NodeDown",
    "NodeUp",
    "Placement",
]

_T = TypeVar("_T")

logger = logging.getLogger("terraphim_actors.cluster")

#: How long a clean leave may take to free this node's names and heartbeat.
LEAVE_TIMEOUT = 2.0
#: Between two attempts to watch a bucket again after a reconnection.
WATCH_AGAIN_WAIT = 0.25
#: How many of its heartbeat intervals a joining node waits for a beat of another incarnation
#: under its own name, when the bucket holds one: only a live process beats again.
_TWIN_BEATS = 2
#: How many departed incarnations are remembered (to refuse them without asking NATS).
_DEPARTED_KEPT = 1024
#: Error code of a stream created again with another configuration (another node's settings).
_STREAM_NAME_IN_USE = 10058
#: Error codes of a write refused because the key's last revision was not the one expected.
_WRONG_LAST_SEQUENCE = (10071, 10164)
#: Characters kept as they are in a key; every other byte of a name's UTF-8 is ``=XX``.
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@attrs.frozen
class Placement:
    """Where a name lives: the node holding it, the uid of the agent under it there, and that
    node's incarnation (a node started again under the same name has a new one)."""

    node: str
    uid: uuid.UUID
    incarnation: str


@attrs.frozen
class NodeUp:
    """A node started beating (or beats again with a new incarnation)."""

    node: str
    incarnation: str


@attrs.frozen
class NodeDown:
    """A node's incarnation is gone: it left, or its heartbeat expired, or it came back as a
    new incarnation (then a ``NodeUp`` follows)."""

    node: str
    incarnation: str


@attrs.frozen
class NameTaken:
    """A name was given to a placement (after a ``NameFreed`` of its previous one if it
    moved)."""

    name: str
    placement: Placement


@attrs.frozen
class NameFreed:
    """A name no longer holds ``placement``: it was released, or taken over."""

    name: str
    placement: Placement


DirectoryEvent = NodeUp | NodeDown | NameTaken | NameFreed


def name_key(name: str) -> str:
    """The key-value key of an agent name: reversible and distinct per name, made only of the
    characters a key accepts (``.`` is a token separator there and never appears)."""
    if not name:
        return "="
    return "".join(chr(byte) if byte in _PLAIN else f"={byte:02X}" for byte in name.encode("utf-8"))


def key_name(key: str) -> str:
    """The agent name of a key made by ``name_key``."""
    if key == "=":
        return ""
    raw = bytearray()
    index = 0
    while index < len(key):
        if key[index] == "=":
            raw.append(int(key[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.append(ord(key[index]))
            index += 1
    return raw.decode("utf-8")


def _encode_placement(placement: Placement) -> bytes:
    return json.dumps(
        {"node": placement.node, "uid": placement.uid.hex, "incarnation": placement.incarnation},
        separators=(",", ":"),
    ).encode()


def _decode_placement(value: bytes | None) -> Placement | None:
    try:
        fields = json.loads(value or b"")
        return Placement(
            node=str(fields["node"]),
            uid=uuid.UUID(hex=str(fields["uid"])),
            incarnation=str(fields["incarnation"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


@attrs.define
class _Held:
    placement: Placement
    revision: int


@attrs.define
class _Watched:
    """A watched bucket: how to make it, to apply its entries, to drop what a new watch's
    snapshot no longer holds; ``ready`` once the first snapshot is applied."""

    config: KeyValueConfig
    apply: Callable[[KeyValue.Entry, bool], None]
    ready: trio.Event
    resync: Callable[[set[str]], None] | None = None


@attrs.define
class _Releasing:
    count: int = 0
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define
class _Beat:
    incarnation: str
    seen_at: float


class ClusterDirectory:
    """The names and live nodes of one cluster, as seen by this node.

    ``run`` joins (buckets bound, heartbeats, watchers) and must be running for ``claim``;
    ``lookup``, ``node_alive`` and ``live_nodes`` read the local copy and never wait. All
    methods are called from the Trio thread of the bridge.

    ``on_change``, if given, is called with each change the moment the copy holds it, before
    any watcher hears of it: for what must hold before anything can read the new copy (a
    name's new agent given a fresh circuit before a send resolves the name to it).
    """

    def __init__(
        self,
        bridge: Bridge,
        config: ClusterConfig,
        *,
        on_change: Callable[[DirectoryEvent], None] | None = None,
    ) -> None:
        self._bridge = bridge
        self._config = config
        self._on_change = on_change
        self.node = config.node
        #: This process's incarnation of its node: placements it claims carry it.
        self.incarnation = uuid.uuid4().hex
        self._names_kv: KeyValue | None = None
        self._nodes_kv: KeyValue | None = None
        self._names: dict[str, _Held] = {}
        self._nodes: dict[str, _Beat] = {}
        self._departed: OrderedDict[str, None] = OrderedDict()
        #: Names this incarnation holds, with the uid and revision it wrote.
        self._own: dict[str, _Held] = {}
        #: Names being claimed here, and names whose release from here is on its way.
        self._claiming: set[str] = set()
        self._releasing: dict[str, _Releasing] = {}
        self._watchers: list[trio.MemorySendChannel[DirectoryEvent]] = []
        self._names_config = KeyValueConfig(
            bucket=f"ta_{config.cluster}_names", history=1, replicas=config.replicas
        )
        self._nodes_config = KeyValueConfig(
            bucket=f"ta_{config.cluster}_nodes",
            history=1,
            ttl=config.heartbeat_ttl,
            replicas=config.replicas,
        )
        #: Reconnections seen, and the scopes of the watches they make stale.
        self._reconnections = 0
        self._watching: set[trio.CancelScope] = set()
        self._running = False
        self._ended = False
        #: Whether this incarnation's heartbeat is in the bucket (it joined).
        self._beating = False
        self._started = False
        self._scope: trio.CancelScope | None = None
        self._failure: ClusterError | None = None

    # -- reading the local copy ---------------------------------------------------------

    def lookup(self, name: str) -> Placement | None:
        """Where ``name`` lives, or None if it is free or its holder's incarnation is gone."""
        held = self._names.get(name)
        if held is None:
            return None
        placement = held.placement
        beat = self._nodes.get(placement.node)
        if beat is None or beat.incarnation != placement.incarnation:
            return None
        return placement

    def node_alive(self, node: str) -> bool:
        """Whether ``node`` beats (as last seen here)."""
        return node in self._nodes

    def live_nodes(self) -> frozenset[str]:
        """The nodes that beat (as last seen here), this one included once it runs."""
        return frozenset(self._nodes)

    def watch(self) -> trio.MemoryReceiveChannel[DirectoryEvent]:
        """Every change seen after this call, in order. Close the channel to stop watching.
        It ends (``trio.EndOfChannel``) when the directory stops running, at once if it has
        (nothing changes in it then)."""
        send, receive = trio.open_memory_channel[DirectoryEvent](math.inf)
        if self._ended:
            send.close()
        else:
            self._watchers.append(send)
        return receive

    # -- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster's directory until cancelled, then leave it cleanly.

        Creates or binds the buckets, beats every ``heartbeat_interval``, and keeps the local
        copy current; ``task_status.started()`` once the copy holds what the buckets held at
        the start. ``ClusterError`` if the servers do not answer within
        ``config.connect_timeout`` while joining. When cancelled, deletes this node's names
        and heartbeat (within ``LEAVE_TIMEOUT``, shielded) so other nodes see them free at
        once; a node that dies without leaving is seen gone when its heartbeat expires.
        """
        if self._running:
            raise ClusterError("this directory is already running")
        self._running = True
        self._failure = None
        try:
            self._bridge.add_listener(self._on_connection)
            await self._join()
            seen = self._reconnections
            names_watch = await self._call(_watch_all, self._names_bucket)
            nodes_watch = await self._call(_watch_all, self._nodes_bucket)
            names_ready = trio.Event()
            nodes_ready = trio.Event()
            # Failures of the tasks below end the nursery through _fail and are raised after
            # it as themselves, not wrapped in an exception group.
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                names = _Watched(
                    self._names_config, self._on_name, names_ready, self._drop_names_not_in
                )
                nodes = _Watched(self._nodes_config, self._on_beat, nodes_ready)
                nursery.start_soon(self._follow, names_watch, seen, names)
                nursery.start_soon(self._follow, nodes_watch, seen, nodes)
                nursery.start_soon(self._beat_forever)
                with trio.move_on_after(self._config.connect_timeout + self._config.heartbeat_ttl):
                    await names_ready.wait()
                    await nodes_ready.wait()
                if names_ready.is_set() and nodes_ready.is_set():
                    nursery.start_soon(self._sweep_forever)
                    self._started = True
                    task_status.started()
                else:
                    self._fail(
                        ClusterError(
                            "the cluster directory could not read its buckets within"
                            f" {self._config.connect_timeout:g} s"
                        )
                    )
            if self._failure is not None:
                raise self._failure
        finally:
            self._bridge.remove_listener(self._on_connection)
            self._started = False
            self._scope = None
            await self._leave()
            self._ended = True
            for send in self._watchers:
                send.close()
            self._watchers.clear()

    def _fail(self, error: ClusterError) -> None:
        """End ``run`` with ``error`` (the first failure wins)."""
        if self._failure is None:
            self._failure = error
        if self._scope is not None:
            self._scope.cancel()

    async def _join(self) -> None:
        names, nodes = self._names_config, self._nodes_config
        self._names_kv = await self._call(_create_or_bind, self._bridge, names)
        self._nodes_kv = await self._call(_create_or_bind, self._bridge, nodes)
        await self._refuse_a_live_twin()
        await self._call(_put, self._nodes_bucket, self.node, self.incarnation.encode())
        self._beating = True

    async def _refuse_a_live_twin(self) -> None:
        """Refuse to join while another live process is this node.

        A heartbeat of another incarnation under this node's name is either this node's
        earlier process, crashed (its names are taken back at once), or a second process
        started under the same name by mistake, which would take this node's names over from
        the live agents holding them and share its queue. Only a live process beats again:
        this waits up to ``_TWIN_BEATS`` heartbeat intervals for it to.

        Raises:
            ClusterError: another live process beats under this node's name.
        """
        nodes = self._nodes_bucket
        held = await self._call(_read, nodes, self.node)
        if held is None:
            return
        seen = held[1]
        feed = await self._call(_watch_key, nodes, self.node)
        try:
            with trio.move_on_after(_TWIN_BEATS * self._config.heartbeat_interval):
                while True:
                    for entry in await self._call(feed.take):
                        if (
                            entry is not None
                            and (entry.revision or 0) > seen
                            and entry.operation not in (KV_DEL, KV_PURGE)
                        ):
                            raise ClusterError(
                                f"another live process is node {self.node!r} of cluster"
                                f" {self._config.cluster!r}: each process needs a node name"
                                " of its own"
                            )
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(LEAVE_TIMEOUT),
                contextlib.suppress(ClusterError, nats.errors.Error, OSError),
            ):
                await self._bridge.run(feed.stop)

    async def _leave(self) -> None:
        own = [(name_key(name), held.revision) for name, held in self._own.items()]
        self._own.clear()
        names, nodes = self._names_kv, self._nodes_kv
        if nodes is None or names is None or not self._bridge.connected:
            return  # nothing can reach the servers: the heartbeat's expiry tells the others
        # A join refused never beat: the heartbeat under this node's name is another's.
        beating, self._beating = self._beating, False

        async def leave() -> None:
            await asyncio.gather(
                *(_delete_at(names, key, revision) for key, revision in own),
                return_exceptions=True,
            )
            if beating:
                await nodes.delete(self.node)

        with trio.CancelScope(shield=True), trio.move_on_after(LEAVE_TIMEOUT):
            try:
                await self._bridge.run(leave)
            except (ClusterError, nats.errors.Error, OSError) as error:
                logger.warning(
                    "node %s could not leave the directory cleanly: %r", self.node, error
                )

    async def _beat_forever(self) -> None:
        config = self._config
        beat = self.incarnation.encode()
        while True:
            await trio.sleep(config.heartbeat_interval)
            with trio.move_on_after(config.heartbeat_ttl):
                try:
                    await self._bridge.run(lambda: _put(self._nodes_bucket, self.node, beat))
                except (ClusterError, nats.errors.Error, OSError) as error:
                    logger.debug("node %s missed a heartbeat: %r", self.node, error)

    async def _sweep_forever(self) -> None:
        config = self._config
        while True:
            await trio.sleep(config.heartbeat_interval)
            oldest = trio.current_time() - config.heartbeat_ttl
            for node, beat in list(self._nodes.items()):
                if beat.seen_at < oldest:
                    self._node_gone(node)

    def _on_connection(self, event: ConnectionEvent) -> None:
        # A server that restarted may have lost the watches' consumers, and a watch that
        # lost its consumer stays silent: after every reconnection, watch again.
        if event is ConnectionEvent.RECONNECTED:
            self._reconnections += 1
            for scope in self._watching:
                scope.cancel()

    async def _follow(self, feed: _Feed, seen: int, watched: _Watched) -> None:
        """Apply what ``feed`` brings; watch again after each reconnection. ``seen``: the
        reconnections counted before ``feed`` began."""
        while True:
            with trio.CancelScope() as scope:
                self._watching.add(scope)
                if self._reconnections != seen:
                    scope.cancel()
                try:
                    await self._consume(feed, watched)
                finally:
                    self._watching.discard(scope)
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(LEAVE_TIMEOUT),
                        contextlib.suppress(ClusterError, nats.errors.Error, OSError),
                    ):
                        await self._bridge.run(feed.stop)
            seen = self._reconnections
            feed = await self._watch_again(watched.config)

    async def _consume(self, feed: _Feed, watched: _Watched) -> None:
        """Apply ``feed``'s entries; what the bucket held when it began replaces the copy."""
        snapshot: set[str] | None = set()
        while True:
            try:
                entries = await self._bridge.run(feed.take)
            except (ClusterError, nats.errors.Error, OSError) as error:
                self._fail(
                    ClusterError(f"the cluster directory lost its watch: {bounded_repr(error)}")
                )
                await trio.sleep_forever()
            for entry in entries:
                if entry is None:
                    if snapshot is not None and watched.resync is not None:
                        watched.resync(snapshot)
                    snapshot = None
                    watched.ready.set()
                    continue
                if snapshot is not None:
                    snapshot.add(entry.key)
                watched.apply(entry, snapshot is not None)

    async def _watch_again(self, config: KeyValueConfig) -> _Feed:
        """A new watch of ``config``'s bucket (made again if the server lost it), retried
        while the servers cannot answer."""
        while True:
            if self._bridge.closed:
                self._fail(ClusterError("the bridge closed under the cluster directory"))
                await trio.sleep_forever()
            try:
                return await self._call(_bind_and_watch, self._bridge, config)
            except ClusterError as error:
                logger.debug("the directory could not watch %s again: %r", config.bucket, error)
                await trio.sleep(WATCH_AGAIN_WAIT)

    def _drop_names_not_in(self, keys: set[str]) -> None:
        """After a new watch's snapshot: names it did not hold are free (unless claimed here
        meanwhile, whose entries come after the snapshot)."""
        for name in list(self._names):
            if name not in self._own and name_key(name) not in keys:
                held = self._names.pop(name)
                self._emit(NameFreed(name, held.placement))

    # -- applying what the watchers saw -------------------------------------------------

    def _on_name(self, entry: KeyValue.Entry, fresh: bool = False) -> None:
        """Apply a names entry; ``fresh``: from a new watch's snapshot, which is the truth
        whatever revision this copy holds, except against a newer claim made here."""
        name = key_name(entry.key)
        revision = entry.revision or 0
        held = self._names.get(name)
        if held is not None and revision <= held.revision and not fresh:
            return
        own = self._own.get(name)
        if own is not None and revision < own.revision:
            return  # older than this node's own claim, which its watch has not reached yet
        if entry.operation in (KV_DEL, KV_PURGE):
            if held is not None:
                del self._names[name]
                self._emit(NameFreed(name, held.placement))
            if own is not None:
                del self._own[name]
            return
        placement = _decode_placement(entry.value)
        if placement is None:
            logger.warning("ignored an unreadable placement of %r in the directory", name)
            return
        self._hold(name, placement, revision, fresh)

    def _hold(self, name: str, placement: Placement, revision: int, fresh: bool = False) -> None:
        held = self._names.get(name)
        if held is not None and revision <= held.revision and not fresh:
            return
        self._names[name] = _Held(placement, revision)
        if held is not None and held.placement != placement:
            self._emit(NameFreed(name, held.placement))
        if held is None or held.placement != placement:
            self._emit(NameTaken(name, placement))
        own = self._own.get(name)
        if own is not None and own.placement != placement:
            del self._own[name]

    def _on_beat(self, entry: KeyValue.Entry, fresh: bool = False) -> None:
        node = entry.key
        if entry.operation in (KV_DEL, KV_PURGE):
            self._node_gone(node)
            return
        incarnation = (entry.value or b"").decode("utf-8", "replace")
        beat = self._nodes.get(node)
        now = trio.current_time()
        if beat is not None and beat.incarnation == incarnation:
            beat.seen_at = now
            return
        if beat is not None:
            self._node_gone(node)
        self._departed.pop(incarnation, None)
        self._nodes[node] = _Beat(incarnation, now)
        self._emit(NodeUp(node, incarnation))

    def _node_gone(self, node: str) -> None:
        beat = self._nodes.pop(node, None)
        if beat is None:
            return
        self._departed[beat.incarnation] = None
        while len(self._departed) > _DEPARTED_KEPT:
            self._departed.popitem(last=False)
        self._emit(NodeDown(node, beat.incarnation))

    def _emit(self, event: DirectoryEvent) -> None:
        if self._on_change is not None:
            try:
                self._on_change(event)
            except Exception:  # the copy must stay current whatever its listener does
                logger.exception("the listener of the cluster directory raised on %r", event)
        watchers = self._watchers
        for send in list(watchers):
            try:
                send.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                watchers.remove(send)

    # -- claiming and releasing -----------------------------------------------------------

    async def claim(self, name: str, uid: uuid.UUID) -> None:
        """Give ``name`` to this node's agent ``uid`` across the cluster.

        Raises:
            DuplicateAgent: an agent of a live node holds the name (or another agent here).
            ClusterError: the directory is not running, or the servers did not answer within
                ``config.connect_timeout``.
            InvalidConfig: ``name`` is not a str or ``uid`` not a UUID.
        """
        if not isinstance(name, str):
            raise InvalidConfig(f"name must be a str, got {bounded_repr(name)}")
        if not isinstance(uid, uuid.UUID):
            raise InvalidConfig(f"uid must be a uuid.UUID, got {bounded_repr(uid)}")
        if not self._started:
            raise ClusterError("the cluster directory is not running")
        if name in self._claiming:
            raise DuplicateAgent(
                f"the name {bounded_repr(name)} is being claimed on this node already"
            )
        placement = Placement(self.node, uid, self.incarnation)
        self._claiming.add(name)
        try:
            with trio.fail_after(self._config.connect_timeout):
                # A release of this name from here still on its way would undo the claim.
                while (releasing := self._releasing.get(name)) is not None:
                    await releasing.done.wait()
                revision = await self._claim(name, placement)
        except trio.TooSlowError:
            self._forget(name, placement)
            raise ClusterError(
                f"could not claim the name {bounded_repr(name)}: the NATS servers did not answer"
                f" within {self._config.connect_timeout:g} s"
            ) from None
        except BaseException as error:
            if not isinstance(error, DuplicateAgent):
                # The claim may have landed before the failure or cancellation.
                self._forget(name, placement)
            raise
        finally:
            self._claiming.discard(name)
        self._own[name] = _Held(placement, revision)
        self._hold(name, placement, revision)

    async def _claim(self, name: str, placement: Placement) -> int:
        """Write ``placement`` under ``name`` by compare-and-set; its revision."""
        key = name_key(name)
        value = _encode_placement(placement)
        names = self._names_bucket
        while True:
            held = await self._call(_create_or_read, names, key, value)
            if isinstance(held, int):
                return held
            if held is None:
                continue  # freed between the create and the read
            holder, last = held
            if holder == placement:
                return last
            if not await self._may_take(name, holder):
                raise DuplicateAgent(
                    f"an agent named {bounded_repr(name)} is already registered"
                    + ("" if holder is None else f" on node {holder.node!r}")
                )
            replaced = await self._call(_replace, names, key, value, last)
            if replaced is not None:
                return replaced

    async def _may_take(self, name: str, holder: Placement | None) -> bool:
        """Whether a name held by ``holder`` may be taken over: its holder is unreadable, this
        node's earlier incarnation or a released agent of this one, or an incarnation gone."""
        if holder is None:
            return True
        if holder.node == self.node:
            own = self._own.get(name)
            return holder.incarnation != self.incarnation or own is None or own.placement != holder
        beat = self._nodes.get(holder.node)
        if beat is not None:
            return beat.incarnation != holder.incarnation
        if holder.incarnation in self._departed:
            return True
        # Not seen here yet: the node may have started a moment ago, so NATS decides.
        beating = await self._call(_read, self._nodes_bucket, holder.node)
        return beating is None or beating[0] != holder.incarnation.encode()

    def release_nowait(self, name: str, uid: uuid.UUID) -> None:
        """Free ``name`` if this node's agent ``uid`` still holds it, in the background (a
        compare-and-set delete, so a name taken over meanwhile stays with its new holder);
        a failure is logged. A claim of the name here waits for it."""
        own = self._own.get(name)
        if own is not None and own.placement.uid != uid:
            return
        self._own.pop(name, None)
        self._forget(name, Placement(self.node, uid, self.incarnation))

    def _forget(self, name: str, placement: Placement) -> None:
        """Delete ``name`` in the background if ``placement`` holds it."""
        names = self._names_kv
        if names is None:
            return
        key = name_key(name)
        releasing = self._releasing.get(name)
        if releasing is None:
            releasing = self._releasing[name] = _Releasing()
        releasing.count += 1

        def done(result: outcome.Outcome[bool]) -> None:
            if isinstance(result, outcome.Error):
                logger.warning(
                    "node %s could not release the name %r: %r", self.node, name, result.error
                )
            releasing.count -= 1
            if releasing.count == 0:
                releasing.done.set()
                if self._releasing.get(name) is releasing:
                    del self._releasing[name]

        self._bridge.submit(lambda: _delete_if_held(names, key, placement), done)

    # -- helpers ------------------------------------------------------------------------

    @property
    def _names_bucket(self) -> KeyValue:
        if self._names_kv is None:
            raise ClusterError("the cluster directory is not running")
        return self._names_kv

    @property
    def _nodes_bucket(self) -> KeyValue:
        if self._nodes_kv is None:
            raise ClusterError("the cluster directory is not running")
        return self._nodes_kv

    async def _call(self, function: Callable[..., Awaitable[_T]], *arguments: Any) -> _T:
        """Run ``function(*arguments)`` on the bridge's loop, within ``connect_timeout``, a
        NATS failure raised as ``ClusterError``."""
        try:
            with trio.fail_after(self._config.connect_timeout):
                return await self._bridge.run(lambda: function(*arguments))
        except trio.TooSlowError:
            raise ClusterError(
                f"the NATS servers at {', '.join(self._config.servers)} did not answer within"
                f" {self._config.connect_timeout:g} s"
            ) from None
        except (nats.errors.Error, OSError) as error:
            raise ClusterError(
                f"the cluster directory's NATS request failed: {bounded_repr(error)}"
            ) from error


# -- on the bridge's loop -------------------------------------------------------------------


async def _create_or_bind(bridge: Bridge, config: KeyValueConfig) -> KeyValue:
    jetstream = bridge.jetstream
    try:
        return await jetstream.create_key_value(config)
    except nats.js.errors.APIError as error:
        if error.err_code != _STREAM_NAME_IN_USE:
            raise
        # Made by a node with other settings (a TTL or replica count): use it as it is.
        return await jetstream.key_value(config.bucket)


async def _put(bucket: KeyValue, key: str, value: bytes) -> int:
    return await bucket.put(key, value)


async def _read(bucket: KeyValue, key: str) -> tuple[bytes, int] | None:
    try:
        entry = await bucket.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return (entry.value or b"", entry.revision or 0)


async def _create_or_read(
    bucket: KeyValue, key: str, value: bytes
) -> int | tuple[Placement | None, int] | None:
    """Create ``key``: its revision; else what holds it and at which revision; None if it
    was freed in between (try again)."""
    try:
        return await bucket.create(key, value)
    except nats.js.errors.KeyWrongLastSequenceError:
        pass
    held = await _read(bucket, key)
    if held is None:
        return None
    return (_decode_placement(held[0]), held[1])


async def _replace(bucket: KeyValue, key: str, value: bytes, last: int) -> int | None:
    """Write ``key`` if its last revision is still ``last``: the new revision, else None."""
    try:
        return await bucket.update(key, value, last=last)
    except nats.js.errors.KeyWrongLastSequenceError:
        return None


async def _delete_if_held(bucket: KeyValue, key: str, placement: Placement) -> bool:
    """Delete ``key`` if ``placement`` holds it (at the revision read): whether it did."""
    held = await _read(bucket, key)
    if held is None or _decode_placement(held[0]) != placement:
        return False
    return await _delete_at(bucket, key, held[1])


async def _delete_at(bucket: KeyValue, key: str, last: int) -> bool:
    """Delete ``key`` if its last revision is still ``last``; False if it moved on."""
    try:
        await bucket.delete(key, last=last)
    except nats.js.errors.APIError as error:
        if error.err_code in _WRONG_LAST_SEQUENCE:
            return False
        raise
    return True


class _Feed:
    """A bucket watcher's entries gathered on the loop, taken by the Trio side in bursts;
    None marks the end of what the bucket held when the watch began."""

    def __init__(self, watcher: KeyValue.KeyWatcher) -> None:
        self._watcher = watcher
        self._entries: list[KeyValue.Entry | None] = []
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._gather())

    async def _gather(self) -> None:
        async for entry in self._watcher:
            self._entries.append(entry)
            self._arrived.set()

    async def take(self) -> list[KeyValue.Entry | None]:
        while not self._entries:
            self._arrived.clear()
            await self._arrived.wait()
        taken, self._entries = self._entries, []
        return taken

    async def stop(self) -> None:
        self._task.cancel()
        await self._watcher.stop()  # type: ignore[no-untyped-call]


async def _watch_all(bucket: KeyValue) -> _Feed:
    return _Feed(await bucket.watchall())


async def _watch_key(bucket: KeyValue, key: str) -> _Feed:
    return _Feed(await bucket.watch(key))


async def _bind_and_watch(bridge: Bridge, config: KeyValueConfig) -> _Feed:
    return await _watch_all(await _create_or_bind(bridge, config))
