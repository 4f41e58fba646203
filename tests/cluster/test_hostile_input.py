"""What the network brings never ends a node: unreadable announcements, requests with nowhere
to answer, a call where a cast belongs, a message in the wrong node's queue. Each is a dead
letter or is ignored, and the nodes keep serving."""

from __future__ import annotations

import json
from typing import Any

import trio
from nodes import BOUND, Recorder, node_of, received, spawn_seen, two_nodes

from terraphim_actors import (
    DeadLetter,
    DeadLetterReason,
    DeliveryGuarantee,
    MessageKind,
    MessageOptions,
    cast,
)
from terraphim_actors.cluster import LocalNatsServer
from terraphim_actors.cluster._msgpack import batch_of, encode_record
from terraphim_actors.cluster._wire import encode_message


class Opaque:
    """A payload type registered nowhere: the codec cannot carry it."""


async def test_unreadable_stop_announcements_are_ignored(nats_server: LocalNatsServer) -> None:
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        garbage: list[Any] = [
            {"name": "worker", "uid": 5, "reason": {"stop": "normal"}},
            {"name": ["worker"], "uid": "0" * 32, "reason": {"stop": "normal"}},
            {"name": "worker", "uid": "0" * 32, "reason": ["not", "a", "reason"]},
            "not an announcement",
        ]
        bridge, subjects = node_of(b).bridge, node_of(b).subjects
        for announcement in garbage:
            bridge.publish_nowait(subjects.downs("b"), json.dumps(announcement).encode())
        bridge.publish_nowait(subjects.downs("b"), b"\xff not json")
        with trio.fail_after(BOUND):
            assert await ref.call(4) == 8  # both nodes still serve


async def test_requests_with_nowhere_to_answer_are_dead_letters(
    nats_server: LocalNatsServer,
) -> None:
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker")
        envelope = cast(None, 1, recipient="worker")
        body, headers = encode_message(envelope, 0.0, 1 << 20, "b")
        bridge, subjects = node_of(a).bridge, node_of(a).subjects
        bridge.publish_nowait(subjects.calls("b"), body, headers)  # published, not requested
        bridge.publish_nowait(subjects.stats("b"), b"")
        with trio.fail_after(BOUND):
            assert await ref.call(4) == 8
        reasons = [letter.reason for letter in b.dead_letters]
        assert reasons == [DeadLetterReason.UNDECODABLE]


async def test_a_call_sent_as_a_cast_is_a_dead_letter_not_a_crash(
    nats_server: LocalNatsServer,
) -> None:
    send, seen = trio.open_memory_channel[Any](10)
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker", send)
        call = cast(None, 1, recipient="worker").evolve(kind=MessageKind.CALL)
        beside = cast(None, "beside", recipient="worker")
        body = batch_of([encode_record(call, 0.0), encode_record(beside, 0.0)])
        node_of(a).bridge.publish_nowait(node_of(a).subjects.casts("b"), body)
        await ref.cast("after")
        assert sorted(await received(seen, 2)) == ["after", "beside"]  # two ways: any order
        assert [letter.reason for letter in b.dead_letters] == [DeadLetterReason.UNDECODABLE]
        assert b.get_stats()[0].agent_crashes == 0


async def test_an_unreadable_batch_of_casts_is_one_dead_letter_not_a_crash(
    nats_server: LocalNatsServer,
) -> None:
    send, seen = trio.open_memory_channel[Any](10)
    async with two_nodes(nats_server) as (a, b):
        ref = await spawn_seen(b, a, "worker", send)
        node_of(a).bridge.publish_nowait(node_of(a).subjects.casts("b"), b"\x93not a batch")
        # After the garbage on the same subject and connection: b reads it first.
        ref.cast_nowait("after", options=MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE))
        assert await received(seen, 1) == ["after"]
        assert [letter.reason for letter in b.dead_letters] == [DeadLetterReason.UNDECODABLE]


async def test_a_message_in_the_wrong_nodes_queue_is_passed_on_to_its_agent(
    nats_server: LocalNatsServer,
) -> None:
    """A message stored for node a, whose recipient runs on b (the sender's view was stale,
    or the name moved), reaches it: a passes it on, and JetStream keeps that hop (it is not
    a republish of the same publish)."""
    send, seen = trio.open_memory_channel[Any](10)
    async with two_nodes(nats_server) as (a, b):
        await spawn_seen(b, a, "worker", send)
        node = node_of(a)
        envelope = cast(None, "stale", recipient="worker")
        envelope = envelope.evolve(options=a.delivery.resolve(envelope.options))
        body, headers = encode_message(envelope, node.now(), node.max_payload, "a")

        async def publish() -> None:
            await node.bridge.jetstream.publish(node.subjects.queue("a"), body, headers=headers)

        await node.bridge.run(publish)
        assert await received(seen, 1) == ["stale"]


async def test_a_retry_the_codec_cannot_carry_is_rejected_not_a_crash(
    nats_server: LocalNatsServer,
) -> None:
    """A cast to a name nobody holds yet, with a payload only a local agent could take, is
    retried; when the name turns up on another node, the retry cannot be encoded: it is a
    ``REJECTED`` dead letter, and the node keeps serving."""
    send, seen = trio.open_memory_channel[Any](10)
    async with two_nodes(nats_server) as (a, b):
        a.subscribe_dead_letters(await a.spawn(Recorder, send))
        options = MessageOptions(max_retries=50, retry_delay=0.05)
        await a.send_message(cast(None, Opaque(), recipient="worker", options=options))
        ref = await spawn_seen(b, a, "worker")
        [(_, letter)] = await received(seen, 1)
        assert isinstance(letter, DeadLetter)
        assert letter.reason is DeadLetterReason.REJECTED
        with trio.fail_after(BOUND):
            assert await ref.call(1) == 2
