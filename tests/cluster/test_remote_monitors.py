"""Monitors across nodes: ``ctx.monitor(remote_ref)`` works as for a local ref, and the
``Down`` carries the reason the remote agent stopped for (a crash as a ``RemoteError``)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from nodes import (
    BOUND,
    Recorder,
    fresh_cluster,
    node_config,
    node_of,
    received,
    spawn_seen,
    two_nodes,
    until_event,
    watch,
)

from terraphim_actors import (
    Agent,
    Context,
    RestartType,
    StopReason,
    open_message_system,
)
from terraphim_actors.cluster import LocalNatsServer, _node
from terraphim_actors.cluster._directory import NameFreed, NameTaken
from terraphim_actors.errors import RemoteError


class Fragile(Agent):
    """Crashes on any cast."""

    async def handle_cast(self, payload: Any, ctx: Context) -> None:
        raise ValueError(f"cannot take {payload!r}")


async def test_a_monitor_of_a_remote_agent_hears_it_stop(nats_server: LocalNatsServer) -> None:
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        downs = await watch(a, ref)
        await b.stop(b.ref("worker"))
        [down] = await received(downs, 1)
        assert down.reason is StopReason.NORMAL
        assert down.ref == ref


async def test_a_remote_agents_crash_reaches_the_monitor_as_a_remote_error(
    nats_server: LocalNatsServer,
) -> None:
    async with two_nodes(nats_server) as (a, b):
        events = a.cluster.directory.watch()  # type: ignore[union-attr]
        await b.spawn(Fragile, name="fragile", restart=RestartType.TEMPORARY)
        await until_event(events, NameTaken, "fragile")
        ref = a.ref("fragile")
        downs = await watch(a, ref)
        await ref.cast("anything")
        [down] = await received(downs, 1)
        assert isinstance(down.reason, RemoteError)
        assert down.reason.type_name == "ValueError"


async def test_a_monitor_set_on_a_remote_agent_already_gone_hears_noproc(
    nats_server: LocalNatsServer,
) -> None:
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        events = a.cluster.directory.watch()  # type: ignore[union-attr]
        await b.stop(b.ref("worker"))
        await until_event(events, NameFreed, "worker")
        downs = await watch(a, ref)
        [down] = await received(downs, 1)
        assert down.reason is StopReason.NOPROC


async def test_a_monitor_set_after_the_stop_was_announced_hears_noproc(
    nats_server: LocalNatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The announcement of a remote agent's stop can come before its name's release, and
    before anything here asked after the name: a monitor set in between, while the name still
    looks held, hears ``NOPROC`` at once, as a monitor of a local agent that has stopped."""
    async with two_nodes(nats_server) as (a, b):
        events = node_of(a).directory.watch()
        await b.spawn(Recorder, name="gone")
        neighbour = await spawn_seen(b, a, "neighbour")
        neighbour_downs = await watch(a, neighbour)
        await until_event(events, NameTaken, "gone")
        # The release of the names stays on its way: they look held here all along.
        monkeypatch.setattr(node_of(b).directory, "release_nowait", lambda name, uid: None)
        await b.stop(b.ref("gone"))
        await b.stop(b.ref("neighbour"))
        # Stop announcements arrive in order: "gone"'s has been heard here, before anything
        # here asked after that name.
        await received(neighbour_downs, 1)
        ref = a.whereis("gone")
        assert ref is not None  # its name has not been released yet
        downs = await watch(a, ref)
        [down] = await received(downs, 1)
        assert down.reason is StopReason.NOPROC


async def test_a_monitor_hears_noproc_when_the_name_is_freed_unannounced(
    nats_server: LocalNatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop announcement travels at most once: if it is lost, the release of the agent's
    name still ends the monitors of that agent, with ``NOPROC``."""
    monkeypatch.setattr(_node, "UNANNOUNCED_WAIT", 0.1)  # instead of waiting a second for it
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        downs = await watch(a, ref)
        node = node_of(b)
        monkeypatch.setattr(
            node,
            "release",
            lambda agent_id, reason: node.directory.release_nowait(agent_id.name, agent_id.uid),
        )
        await b.stop(b.ref("worker"))
        [down] = await received(downs, 1)
        assert down.reason is StopReason.NOPROC


async def test_a_node_shutting_down_gives_monitors_of_its_agents_a_shutdown_down(
    nats_server: LocalNatsServer,
) -> None:
    """A node that shuts down stops its agents first: a monitor on another node hears each
    one's ``Down``, with ``SHUTDOWN`` as a local monitor would, or with ``NOCONNECTION`` when
    it hears of the node's departure first (the two come by different ways)."""
    cluster = fresh_cluster()
    async with open_message_system(node_config(nats_server, cluster, "a")) as a:
        async with open_message_system(node_config(nats_server, cluster, "b")) as b:
            ref = await spawn_seen(b, a, "worker")
            downs = await watch(a, ref)
        [down] = await received(downs, 1)
        assert down.reason in (StopReason.SHUTDOWN, StopReason.NOCONNECTION)


async def test_a_recorder_is_reachable_after_its_monitor_fired(
    nats_server: LocalNatsServer,
) -> None:
    """After a remote agent stopped and its name was spawned again, the same ref reaches the
    new agent (a ref by name follows the name)."""
    send, seen = trio.open_memory_channel[Any](10)
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        downs = await watch(a, ref)
        await b.stop(b.ref("worker"))
        await received(downs, 1)
        events = a.cluster.directory.watch()  # type: ignore[union-attr]
        await b.spawn(Recorder, send, name="worker")
        with trio.fail_after(BOUND):
            async for event in events:
                if type(event).__name__ == "NameTaken":
                    break
        await ref.cast("again")
        assert await received(seen, 1) == ["again"]
