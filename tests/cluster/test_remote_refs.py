"""Refs to agents on another node: the same call/cast/info, the same errors, the same books.

Two message systems in one Trio run, each a node of one cluster on the session's nats-server
(each test its own cluster, so that tests never hear each other's messages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from nodes import (
    BOUND,
    Recorder,
    fresh_cluster,
    node_config,
    node_of,
    received,
    spawn_seen,
    two_nodes,
)

from terraphim_actors import (
    CircuitBreakerConfig,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystemConfig,
    RouterConfig,
    cast,
    open_message_system,
)
from terraphim_actors.cluster import LocalNatsServer
from terraphim_actors.cluster._directory import NameTaken
from terraphim_actors.errors import (
    CallFailed,
    CallTimeout,
    CircuitOpen,
    DuplicateAgent,
    InvalidMessage,
    RemoteError,
    UnencodablePayload,
)
from terraphim_actors.journal import SqliteJournal


async def test_a_cast_reaches_an_agent_on_another_node(nats_server: LocalNatsServer) -> None:
    send, seen = trio.open_memory_channel[Any](100)
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker", send)
        for number in range(5):
            await ref.cast(number)
        await ref.info("done")
        assert await received(seen, 6) == [0, 1, 2, 3, 4, ("info", "done")]
        books = a.delivery.get_stats()
        assert (books.sent, books.forwarded, books.pending) == (6, 6, 0)


async def test_cast_nowait_reaches_an_agent_on_another_node(nats_server: LocalNatsServer) -> None:
    send, seen = trio.open_memory_channel[Any](1000)
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker", send)
        for number in range(100):
            ref.cast_nowait(number)
        assert await received(seen, 100) == list(range(100))


async def test_the_receiving_node_counts_and_acknowledges_what_arrives(
    nats_server: LocalNatsServer,
) -> None:
    send, seen = trio.open_memory_channel[Any](100)
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker", send)
        for number in range(3):
            await ref.cast(number)
        await received(seen, 3)
        await trio.testing.wait_all_tasks_blocked()
        books = b.delivery.get_stats()
        assert (books.sent, books.acknowledged, books.pending) == (3, 3, 0)


async def test_an_at_most_once_cast_reaches_an_agent_on_another_node(
    nats_server: LocalNatsServer,
) -> None:
    send, seen = trio.open_memory_channel[Any](100)
    async with two_nodes(nats_server, DeliveryGuarantee.AT_MOST_ONCE) as (a, b):
        ref = await spawn_seen(b, a, "worker", send)
        await ref.cast("hello")
        assert await received(seen, 1) == ["hello"]


async def test_at_most_once_casts_in_many_batches_arrive_all_and_in_order(
    nats_server: LocalNatsServer,
) -> None:
    """Casts that fill several batches (each leaves once it holds 64 KB) arrive in the order
    they were sent, and are counted as forwarded by the sender."""
    count = 2000
    send, seen = trio.open_memory_channel[Any](count)
    async with two_nodes(nats_server, DeliveryGuarantee.AT_MOST_ONCE) as (a, b):
        ref = await spawn_seen(b, a, "worker", send)
        for number in range(count):
            ref.cast_nowait([number, "x" * 100])
        arrived = await received(seen, count)
        assert [number for number, _ in arrived] == list(range(count))
        assert a.delivery.get_stats().forwarded == count


async def test_a_call_returns_the_remote_handlers_answer(nats_server: LocalNatsServer) -> None:
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        with trio.fail_after(BOUND):
            assert await ref.call(21) == 42
        books = a.delivery.get_stats()
        assert (books.sent, books.forwarded, books.pending) == (1, 1, 0)


async def test_a_remote_handlers_error_is_call_failed_caused_by_a_remote_error(
    nats_server: LocalNatsServer,
) -> None:
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        with trio.fail_after(BOUND), pytest.raises(CallFailed) as caught:
            await ref.call("boom")
        cause = caught.value.__cause__
        assert isinstance(cause, RemoteError)
        assert (cause.type_name, cause.message) == ("ValueError", "it went boom")


async def test_a_remote_name_spawned_again_reaches_the_new_agent_past_the_old_circuit(
    nats_server: LocalNatsServer,
) -> None:
    """A call that times out counts against the circuit of a remote agent's endpoint, as of a
    local one's; once the name is spawned again (another agent), the same ref reaches the new
    agent at once, as a local agent spawned again has a fresh endpoint."""
    cluster = fresh_cluster()

    def config(node: str) -> MessageSystemConfig:
        return attrs.evolve(
            node_config(nats_server, cluster, node, DeliveryGuarantee.AT_MOST_ONCE),
            router=RouterConfig(circuit_breaker=CircuitBreakerConfig(failure_threshold=1)),
        )

    async with open_message_system(config("a")) as a, open_message_system(config("b")) as b:
        ref = await spawn_seen(b, a, "worker")
        with pytest.raises(CallTimeout):
            await ref.call("slow", timeout=0.1)
        with trio.fail_after(BOUND), pytest.raises(CircuitOpen):
            await ref.call(1)
        events = node_of(a).directory.watch()
        await b.stop(b.ref("worker"))
        again = await b.spawn(Recorder, name="worker")
        with trio.fail_after(BOUND):
            while (held := node_of(a).directory.lookup("worker")) is None or (
                held.uid != again.id.uid
            ):
                await events.receive()
            assert await ref.call(21) == 42


async def test_a_name_taken_on_one_node_cannot_be_spawned_on_another(
    nats_server: LocalNatsServer,
) -> None:
    async with two_nodes(nats_server) as (a, b):
        await b.spawn(Recorder, name="worker")
        with pytest.raises(DuplicateAgent):
            await a.spawn(Recorder, name="worker")


async def test_an_unencodable_payload_is_refused_at_the_send(nats_server: LocalNatsServer) -> None:
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        with pytest.raises(UnencodablePayload):
            await ref.cast(object())
        assert a.delivery.get_stats().sent == 0


async def test_a_payload_larger_than_nats_carries_is_refused_at_the_send(
    nats_server: LocalNatsServer,
) -> None:
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        with pytest.raises(InvalidMessage, match="max_payload"):
            ref.cast_nowait("x" * (2 * 1024 * 1024))
        assert a.delivery.get_stats().sent == 0


async def test_an_exactly_once_message_sent_twice_is_handled_once(
    nats_server: LocalNatsServer,
) -> None:
    """The same message sent twice (a sender's retry after a lost acknowledgement) is handled
    once: JetStream drops the copy by its ``Nats-Msg-Id``."""
    send, seen = trio.open_memory_channel[Any](100)
    async with two_nodes(nats_server, DeliveryGuarantee.EXACTLY_ONCE) as (a, b):
        await spawn_seen(b, a, "worker", send)
        envelope = cast(None, "once", recipient="worker").evolve(
            options=MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)
        )
        await a.send_message(envelope)
        await a.send_message(envelope)
        await a.send_message(cast(None, "after", recipient="worker"))
        assert await received(seen, 2) == ["once", "after"]


async def test_a_pool_on_another_node_is_reached_by_its_name(nats_server: LocalNatsServer) -> None:
    send, seen = trio.open_memory_channel[Any](100)
    async with two_nodes(nats_server) as (a, b):
        events = node_of(a).directory.watch()
        await b.spawn_pool(Recorder, send, size=3, name="workers")
        with trio.fail_after(BOUND):
            async for event in events:
                if isinstance(event, NameTaken) and event.name == "workers":
                    break
        pool = a.ref("workers")
        for number in range(6):
            await pool.cast(number)
        assert sorted(await received(seen, 6)) == list(range(6))


async def test_the_clusters_books_balance_across_nodes(nats_server: LocalNatsServer) -> None:
    """Summed over the nodes, every message sent is settled once: what one node forwarded,
    the other counted as sent and acknowledged."""
    send, seen = trio.open_memory_channel[Any](100)
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker", send)
        for number in range(4):
            await ref.cast(number)
        assert await ref.call(1) == 2
        await received(seen, 4)
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(BOUND):
            books = await node_of(a).delivery_stats()
        assert books.sent == 10  # 5 sent from a, each counted again on its arrival at b
        assert books.forwarded == 5
        assert books.acknowledged == 5
        assert books.pending == 0


async def test_a_journaled_cast_to_another_node_is_settled_once_stored(
    nats_server: LocalNatsServer, tmp_path: Path
) -> None:
    """The sender's journal keeps a cast to another node until JetStream stored it, then
    settles it (forwarded): nothing of it is left to replay at the sender's next open."""
    path = tmp_path / "a.db"
    cluster = fresh_cluster()
    sender = attrs.evolve(node_config(nats_server, cluster, "a"), journal=SqliteJournal(path))
    send, seen = trio.open_memory_channel[Any](10)
    async with (
        open_message_system(sender) as a,
        open_message_system(node_config(nats_server, cluster, "b")) as b,
    ):
        ref = await spawn_seen(b, a, "worker", send)
        for number in range(3):
            await ref.cast(number)
        assert await received(seen, 3) == [0, 1, 2]
    reopened = SqliteJournal(path)
    async with open_message_system(MessageSystemConfig(journal=reopened)):
        assert reopened.unsettled() == []
