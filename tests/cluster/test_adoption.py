"""The queue of a node that left is handed on by whichever live node is its heir now, even a
node that joined after it left, and even when JetStream does not answer it for a while."""

from __future__ import annotations

from typing import Any

import nats.errors
import pytest
import trio
from nats.js.manager import JetStreamManager
from nodes import Recorder, fresh_cluster, node_config, node_of, received

from terraphim_actors import MessageSystem, cast, open_message_system
from terraphim_actors.cluster import LocalNatsServer, _node
from terraphim_actors.cluster._bridge import Bridge, Subscription
from terraphim_actors.cluster._subjects import Subjects
from terraphim_actors.cluster._wire import encode_message


async def _joined_and_left(server: LocalNatsServer, cluster: str, departed: str) -> Any:
    """Node ``departed`` joins ``cluster`` (its queue is made) and leaves; returns the store
    of a cast to "worker" for that queue, to run on another node's system."""
    async with open_message_system(node_config(server, cluster, departed)) as system:
        node = node_of(system)
        envelope = cast(None, "left behind", recipient="worker")
        envelope = envelope.evolve(options=system.delivery.resolve(envelope.options))
        body, headers = encode_message(envelope, node.now(), node.max_payload, departed)

    async def store(on: MessageSystem) -> None:
        """Stored for the departed node: nobody takes it until a node adopts its queue."""
        here = node_of(on)

        async def publish() -> None:
            await here.bridge.jetstream.publish(
                here.subjects.queue(departed), body, headers=headers
            )

        await here.bridge.run(publish)

    return store


async def _handed_on(heir: MessageSystem) -> list[Any]:
    """What the agent "worker", spawned on ``heir``, is handed of the departed node's queue."""
    send, seen = trio.open_memory_channel[Any](10)
    await heir.spawn(Recorder, send, name="worker")
    return await received(seen, 1)


async def test_a_node_joining_after_another_left_hands_on_its_queue(
    nats_server: LocalNatsServer,
) -> None:
    cluster = fresh_cluster()
    store = await _joined_and_left(nats_server, cluster, "c")
    async with open_message_system(node_config(nats_server, cluster, "b")) as b:
        await store(b)
        assert await _handed_on(b) == ["left behind"]


async def test_an_adoption_that_fails_is_tried_again_and_the_heir_stays_up(
    nats_server: LocalNatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JetStream may not give a departed node's queue for a while (a timeout while it elects a
    leader): the heir tries again after a pause, and hands the queue on; its system stays up."""
    monkeypatch.setattr(_node, "ADOPT_AGAIN", 0.05)
    cluster = fresh_cluster()
    store = await _joined_and_left(nats_server, cluster, "c")
    failures = [nats.errors.TimeoutError()]
    departed = Subjects(cluster).consumer("c")
    pull = Bridge.pull

    async def failing_once(
        bridge: Bridge, stream: str, durable: str, subject_filter: str, **options: Any
    ) -> Subscription:
        if durable == departed and failures:
            raise failures.pop()
        return await pull(bridge, stream, durable, subject_filter, **options)

    monkeypatch.setattr(Bridge, "pull", failing_once)
    async with open_message_system(node_config(nats_server, cluster, "b")) as b:
        await store(b)
        assert await _handed_on(b) == ["left behind"]
    assert not failures


async def test_a_failed_look_for_departed_nodes_queues_is_tried_again(
    nats_server: LocalNatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heir lists the stream's queues to find those of departed nodes: if JetStream does
    not answer, it looks again after a pause, not only at the next departure."""
    monkeypatch.setattr(_node, "ADOPT_AGAIN", 0.05)
    cluster = fresh_cluster()
    store = await _joined_and_left(nats_server, cluster, "c")
    failures = [nats.errors.TimeoutError()]
    consumers_info = JetStreamManager.consumers_info

    async def failing_once(manager: JetStreamManager, *arguments: Any, **options: Any) -> Any:
        if failures:
            raise failures.pop()
        return await consumers_info(manager, *arguments, **options)

    monkeypatch.setattr(JetStreamManager, "consumers_info", failing_once)
    async with open_message_system(node_config(nats_server, cluster, "b")) as b:
        await store(b)
        assert await _handed_on(b) == ["left behind"]
    assert not failures
