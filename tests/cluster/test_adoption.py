"""The queue of a node that left is handed on by whichever live node is its heir now, even a
node that joined after it left."""

from __future__ import annotations

from typing import Any

import trio
from nodes import Recorder, fresh_cluster, node_config, node_of, received

from terraphim_actors import cast, open_message_system
from terraphim_actors.cluster import LocalNatsServer
from terraphim_actors.cluster._wire import encode_message


async def test_a_node_joining_after_another_left_hands_on_its_queue(
    nats_server: LocalNatsServer,
) -> None:
    cluster = fresh_cluster()
    async with open_message_system(node_config(nats_server, cluster, "c")) as c:
        node = node_of(c)
        envelope = cast(None, "left behind", recipient="worker")
        envelope = envelope.evolve(options=c.delivery.resolve(envelope.options))
        body, headers = encode_message(envelope, node.now(), node.max_payload, "c")
    # Stored for node c, which has left: nobody takes it until a node adopts c's queue.
    async with open_message_system(node_config(nats_server, cluster, "b")) as b:
        node = node_of(b)

        async def publish() -> None:
            await node.bridge.jetstream.publish(node.subjects.queue("c"), body, headers=headers)

        await node.bridge.run(publish)
        send, seen = trio.open_memory_channel[Any](10)
        await b.spawn(Recorder, send, name="worker")
        assert await received(seen, 1) == ["left behind"]
