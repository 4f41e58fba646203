"""A node's membership lasts as long as its system: once the system has closed, the node knows
nothing of the cluster, and what asks it raises ``ClusterError`` instead of answering from what
it knew, or waiting for news that cannot come. And a node name is one live process's."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from nats.js.kv import KV_DEL, KV_PURGE
from nodes import BOUND, Recorder, fresh_cluster, node_config, node_of, spawn_seen

from terraphim_actors import open_message_system
from terraphim_actors.cluster import LocalNatsServer
from terraphim_actors.cluster._bridge import Bridge
from terraphim_actors.cluster._directory import _watch_key
from terraphim_actors.errors import ClusterError


async def test_wait_for_on_a_node_whose_system_closed_raises_cluster_error(
    nats_server: LocalNatsServer,
) -> None:
    async with open_message_system(node_config(nats_server, fresh_cluster(), "a")) as a:
        node = node_of(a)
    with trio.fail_after(BOUND), pytest.raises(ClusterError):
        await node.wait_for("nobody")


async def test_wait_for_pending_while_the_system_closes_raises_cluster_error(
    nats_server: LocalNatsServer,
) -> None:
    config = node_config(nats_server, fresh_cluster(), "a")
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery, open_message_system(config) as a:
            node = node_of(a)

            async def wait() -> None:
                with pytest.raises(ClusterError, match="left the cluster"):
                    await node.wait_for("nobody")

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()


async def test_a_node_whose_system_closed_answers_nothing_from_what_it_knew(
    nats_server: LocalNatsServer,
) -> None:
    cluster = fresh_cluster()
    async with open_message_system(node_config(nats_server, cluster, "b")) as b:
        async with open_message_system(node_config(nats_server, cluster, "a")) as a:
            ref = await spawn_seen(b, a, "worker")
            node = node_of(a)
        assert a.whereis("worker") is None
        assert not ref.alive
        with pytest.raises(ClusterError):
            node.nodes  # noqa: B018
        with pytest.raises(ClusterError):
            await node.delivery_stats()


async def test_a_second_live_process_under_a_nodes_name_is_refused(
    nats_server: LocalNatsServer, bridge: Bridge
) -> None:
    """A second process joining under the name of a live node would take that node's names
    from its live agents and share its queue: its join is refused with ``ClusterError``, and
    the live node keeps its names and its heartbeat. (A node started again after a crash
    takes its names back: ``test_a_restarted_node_takes_its_names_back_at_once``.)"""
    cluster = fresh_cluster()
    async with open_message_system(node_config(nats_server, cluster, "a")) as first:
        worker = await first.spawn(Recorder, name="worker")

        async def watch_heartbeat() -> Any:
            nodes = await bridge.jetstream.key_value(f"ta_{cluster}_nodes")
            return await _watch_key(nodes, "a")

        heartbeat = await bridge.run(watch_heartbeat)
        await bridge.run(heartbeat.take)  # what it held; then each beat, as it comes
        with trio.fail_after(BOUND):
            with pytest.raises(ClusterError, match="another live process"):
                async with open_message_system(node_config(nats_server, cluster, "a")):
                    pass
            # Every change to the heartbeat from the refusal on, until the next beat.
            changes = await bridge.run(heartbeat.take)
            while not any(entry is not None and entry.operation is None for entry in changes):
                changes += await bridge.run(heartbeat.take)
        await bridge.run(heartbeat.stop)
        assert not [e for e in changes if e is not None and e.operation in (KV_DEL, KV_PURGE)]
        placement = node_of(first).directory.lookup("worker")
        assert placement is not None
        assert placement.uid == worker.id.uid
