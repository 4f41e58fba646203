"""Two message systems as nodes of one cluster, for the tests of what crosses between them.

Both run in the test's Trio run, each a node of a fresh cluster (its own name) on the session's
nats-server, so that tests never hear each other's messages.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import trio

from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    DeliveryConfig,
    DeliveryGuarantee,
    Down,
    MessageSystem,
    MessageSystemConfig,
    open_message_system,
)
from terraphim_actors.cluster import ClusterConfig, LocalNatsServer
from terraphim_actors.cluster._node import ClusterNode

#: Every wait in these tests is bounded by this many seconds.
BOUND = 10.0


class Recorder(Agent):
    """Reports what it is cast (and sent as info) on ``seen``; answers a call with its
    argument doubled, raises for "boom", and takes longer than any test waits for "slow"."""

    def __init__(self, seen: trio.MemorySendChannel[Any] | None = None) -> None:
        self.seen = seen

    async def handle_cast(self, payload: Any, ctx: Context) -> None:
        assert self.seen is not None
        self.seen.send_nowait(payload)

    async def handle_info(self, payload: Any, ctx: Context) -> None:
        assert self.seen is not None
        self.seen.send_nowait(("info", payload))

    async def handle_call(self, payload: Any, ctx: Context) -> Any:
        if payload == "slow":
            await trio.sleep(BOUND)
        if payload == "boom":
            raise ValueError("it went boom")
        return payload * 2


def node_config(
    server: LocalNatsServer,
    cluster: str,
    node: str,
    guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
) -> MessageSystemConfig:
    """A system's configuration as ``node`` of ``cluster`` on ``server``, with short
    heartbeats so that a node's departure is seen quickly."""
    joined = ClusterConfig(
        servers=[server.url],
        cluster=cluster,
        node=node,
        connect_timeout=2.0,
        heartbeat_interval=0.1,
        heartbeat_ttl=0.5,
    )
    return MessageSystemConfig(delivery=DeliveryConfig(guarantee=guarantee), cluster=joined)


def fresh_cluster() -> str:
    """A cluster name no other test uses."""
    return f"c{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def two_nodes(
    server: LocalNatsServer, guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE
) -> AsyncIterator[tuple[MessageSystem, MessageSystem]]:
    """Nodes ``a`` and ``b`` of a fresh cluster on ``server``."""
    cluster = fresh_cluster()
    async with (
        open_message_system(node_config(server, cluster, "a", guarantee)) as a,
        open_message_system(node_config(server, cluster, "b", guarantee)) as b,
    ):
        yield a, b


def node_of(system: MessageSystem) -> ClusterNode:
    node = system.cluster
    assert isinstance(node, ClusterNode)
    return node


async def spawn_seen(on: MessageSystem, seen_by: MessageSystem, name: str, *args: Any) -> Any:
    """Spawn a ``Recorder`` named ``name`` on ``on``; return its ref on ``seen_by``, once that
    node knows of it."""
    await on.spawn(Recorder, *args, name=name)
    with trio.fail_after(BOUND):
        return await node_of(seen_by).wait_for(name)


async def received(channel: trio.MemoryReceiveChannel[Any], count: int) -> list[Any]:
    """The next ``count`` items on ``channel`` (bounded)."""
    with trio.fail_after(BOUND):
        return [await channel.receive() for _ in range(count)]


class Watcher(Agent):
    """Monitors the ref it is called with; reports each ``Down`` on ``downs``."""

    def __init__(self, downs: trio.MemorySendChannel[Down]) -> None:
        self.downs = downs

    async def handle_call(self, payload: Any, ctx: Context) -> Any:
        ctx.monitor(payload)
        return "watching"

    async def handle_info(self, payload: Any, ctx: Context) -> None:
        if isinstance(payload, Down):
            self.downs.send_nowait(payload)


async def watch(system: MessageSystem, ref: AgentRef) -> trio.MemoryReceiveChannel[Down]:
    """A channel of the ``Down`` a monitor of ``ref`` on ``system`` gets."""
    send, downs = trio.open_memory_channel[Down](10)
    watcher = await system.spawn(Watcher, send)
    with trio.fail_after(BOUND):
        assert await watcher.call(ref) == "watching"
    return downs


async def until_event(events: trio.MemoryReceiveChannel[Any], kind: type[Any], name: str) -> None:
    """Until the directory sends an event of ``kind`` about ``name`` (within ``BOUND``)."""
    with trio.fail_after(BOUND):
        async for event in events:
            if isinstance(event, kind) and getattr(event, "name", None) == name:
                return
