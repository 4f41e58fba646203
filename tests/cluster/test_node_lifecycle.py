"""A node's membership lasts as long as its system: once the system has closed, the node knows
nothing of the cluster, and what asks it raises ``ClusterError`` instead of answering from what
it knew, or waiting for news that cannot come."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from nodes import BOUND, fresh_cluster, node_config, node_of, spawn_seen

from terraphim_actors import open_message_system
from terraphim_actors.cluster import LocalNatsServer
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
