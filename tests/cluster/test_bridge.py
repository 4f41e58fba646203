"""The Trio <-> nats-py bridge against a real nats-server: work run on the asyncio side, its
results, errors and cancellation on the Trio side; bursts crossing in few wake-ups; core
subscriptions, request/reply, JetStream pulls and acks; and a close that never hangs."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import pytest
import trio
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from nats_support import cluster_config

from terraphim_actors.cluster import ClusterConfig, LocalNatsServer
from terraphim_actors.cluster._bridge import Bridge, ConnectionEvent
from terraphim_actors.errors import ClusterError


def _count_wakeups(pump: Any) -> list[int]:
    """Count the wake-ups a crossing asks for (one per burst)."""
    counter = [0]
    wake = pump._wake

    def counting(drain: Callable[[], None]) -> None:
        counter[0] += 1
        wake(drain)

    pump._wake = counting
    return counter


async def _add_stream(bridge: Bridge, name: str, subjects: list[str]) -> None:
    await bridge.run(lambda: bridge.jetstream.add_stream(name=name, subjects=subjects))


async def _ack_pending(bridge: Bridge, stream: str, durable: str) -> int:
    info = await bridge.run(lambda: bridge.jetstream.consumer_info(stream, durable))
    return info.num_ack_pending


async def _until(check: Callable[[], Awaitable[bool] | bool]) -> None:
    """Wait (bounded by the caller's ``fail_after``) until ``check()`` is true: for a state
    that announces no event of its own (a consumer's ack count on the server, messages
    arriving in a subscription nobody receives from)."""
    while not await _truth(check()):  # noqa: ASYNC110
        await trio.sleep(0.01)


async def _truth(value: Awaitable[bool] | bool) -> bool:
    return value if isinstance(value, bool) else await value


def _collector() -> tuple[list[Any], Callable[[Any], None], trio.Event]:
    """A list, a callback appending to it, and an event set at its first append."""
    items: list[Any] = []
    first = trio.Event()

    def append(item: Any) -> None:
        items.append(item)
        first.set()

    return items, append, first


async def test_run_returns_the_works_result(bridge: Bridge) -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    with trio.fail_after(5):
        assert await bridge.run(answer) == 42


async def test_run_raises_what_the_work_raised(bridge: Bridge) -> None:
    async def fail() -> None:
        raise KeyError("missing")

    with trio.fail_after(5), pytest.raises(KeyError, match="missing"):
        await bridge.run(fail)


async def test_cancelling_a_run_cancels_its_asyncio_task(bridge: Bridge) -> None:
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    saw_cancellation = threading.Event()

    async def forever() -> None:
        token.run_sync_soon(started.set)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            saw_cancellation.set()
            raise

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def runner() -> None:
                with scope:
                    await bridge.run(forever)

            nursery.start_soon(runner)
            await started.wait()
            scope.cancel()
        assert scope.cancelled_caught
        assert await trio.to_thread.run_sync(saw_cancellation.wait, 5.0)


async def test_a_run_in_a_cancelled_scope_never_starts(bridge: Bridge) -> None:
    subject = "bridge.cancelled-run"
    subscription = await bridge.subscribe(subject)

    async def publish(payload: bytes) -> None:
        await bridge.client.publish(subject, payload)
        await bridge.client.flush()

    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            scope.cancel()
            await bridge.run(lambda: publish(b"must not be sent"))
        assert scope.cancelled_caught
        await bridge.run(lambda: publish(b"marker"))
        assert (await subscription.receive()).data == b"marker"
        assert subscription.pending == 0


async def test_every_submitted_work_reports_its_outcome_and_a_burst_crosses_together(
    bridge: Bridge,
) -> None:
    count = 2000
    to_loop = _count_wakeups(bridge._to_loop)
    to_trio = _count_wakeups(bridge._to_trio)
    results: dict[int, outcome.Outcome[int]] = {}
    all_done = trio.Event()

    def work(index: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            if index % 100 == 0:
                raise ValueError(index)
            return index * 2

        return run

    def done_for(index: int) -> Callable[[outcome.Outcome[int]], None]:
        def done(result: outcome.Outcome[int]) -> None:
            results[index] = result
            if len(results) == count:
                all_done.set()

        return done

    with trio.fail_after(5):
        for index in range(count):
            bridge.submit(work(index), done_for(index))
        await all_done.wait()
    assert sorted(results) == list(range(count))
    for index, result in results.items():
        if index % 100 == 0:
            assert isinstance(result, outcome.Error)
            assert isinstance(result.error, ValueError)
        else:
            assert result.unwrap() == index * 2
    assert to_loop == [1]
    assert to_trio == [1]


async def test_a_subscription_receives_a_burst_of_publishes_in_order(bridge: Bridge) -> None:
    count = 10_000
    subscription = await bridge.subscribe("bridge.burst")
    for index in range(count):
        bridge.publish_nowait("bridge.burst", str(index).encode())
    received: list[bytes] = []
    with trio.fail_after(10):
        while len(received) < count:
            received += [message.data for message in await subscription.receive_batch()]
    assert received == [str(index).encode() for index in range(count)]


async def test_a_request_is_answered_through_respond_nowait(bridge: Bridge) -> None:
    service = await bridge.subscribe("bridge.echo")

    async def serve() -> None:
        async for request in service:
            bridge.respond_nowait(request, request.data.upper(), {"served-by": "test"})

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            reply = await bridge.run(lambda: bridge.client.request("bridge.echo", b"hi", timeout=2))
            nursery.cancel_scope.cancel()
    assert reply.data == b"HI"
    assert reply.headers == {"served-by": "test"}


async def test_respond_to_a_message_without_a_reply_subject_is_refused(bridge: Bridge) -> None:
    subscription = await bridge.subscribe("bridge.no-reply")
    bridge.publish_nowait("bridge.no-reply", b"x")
    with trio.fail_after(5):
        message = await subscription.receive()
    with pytest.raises(ClusterError, match="no reply subject"):
        bridge.respond_nowait(message, b"y")


async def test_unsubscribe_ends_the_iteration_after_what_arrived(bridge: Bridge) -> None:
    subscription = await bridge.subscribe("bridge.unsubscribe")
    bridge.publish_nowait("bridge.unsubscribe", b"before")
    with trio.fail_after(5):
        await _until(lambda: subscription.pending > 0)
        await subscription.unsubscribe()
        assert [message.data async for message in subscription] == [b"before"]
        with pytest.raises(trio.EndOfChannel):
            await subscription.receive()


async def test_pulled_messages_arrive_and_their_acks_settle_them(bridge: Bridge) -> None:
    await _add_stream(bridge, "PULL_ACK", ["pull-ack.>"])
    for index in range(5):
        payload = str(index).encode()
        await bridge.run(lambda payload=payload: bridge.jetstream.publish("pull-ack.x", payload))
    subscription = await bridge.pull("PULL_ACK", "worker", "pull-ack.>", batch=2)
    received: list[bytes] = []
    with trio.fail_after(5):
        while len(received) < 5:
            for message in await subscription.receive_batch():
                received.append(message.data)
                bridge.ack_nowait(message)
        await _until(lambda: _no_ack_pending(bridge, "PULL_ACK", "worker"))
    assert received == [b"0", b"1", b"2", b"3", b"4"]


async def _no_ack_pending(bridge: Bridge, stream: str, durable: str) -> bool:
    return await _ack_pending(bridge, stream, durable) == 0


async def test_a_nakd_message_is_redelivered_and_a_termed_one_is_not(bridge: Bridge) -> None:
    await _add_stream(bridge, "PULL_NAK", ["pull-nak.>"])
    await bridge.run(lambda: bridge.jetstream.publish("pull-nak.x", b"again"))
    await bridge.run(lambda: bridge.jetstream.publish("pull-nak.x", b"never"))
    subscription = await bridge.pull("PULL_NAK", "worker", "pull-nak.>")
    deliveries: list[tuple[bytes, int]] = []
    with trio.fail_after(5):
        while len(deliveries) < 3:
            message = await subscription.receive()
            deliveries.append((message.data, message.metadata.num_delivered))
            if message.data == b"never":
                bridge.term_nowait(message)
            elif message.metadata.num_delivered == 1:
                bridge.nak_nowait(message)
            else:
                bridge.ack_nowait(message)
        await _until(lambda: _no_ack_pending(bridge, "PULL_NAK", "worker"))
    assert sorted(deliveries) == [(b"again", 1), (b"again", 2), (b"never", 1)]
    assert subscription.pending == 0


async def test_closing_while_a_pulled_message_is_unacknowledged_returns_promptly(
    nats_server: LocalNatsServer,
) -> None:
    with trio.fail_after(5):
        async with Bridge.connect(cluster_config(nats_server)) as bridge:
            await _add_stream(bridge, "PULL_HELD", ["pull-held.>"])
            await bridge.run(lambda: bridge.jetstream.publish("pull-held.x", b"held"))
            subscription = await bridge.pull(
                "PULL_HELD", "worker", "pull-held.>", config=ConsumerConfig(ack_wait=60)
            )
            held: Msg = await subscription.receive()
            assert held.data == b"held"
        assert bridge.closed
        assert not bridge.connected
        with trio.fail_after(1):
            assert [message async for message in subscription] == []


async def test_after_close_work_is_refused_with_cluster_error(nats_server: LocalNatsServer) -> None:
    async with Bridge.connect(cluster_config(nats_server)) as bridge:
        pass
    with pytest.raises(ClusterError, match="closed"):
        await bridge.run(lambda: asyncio.sleep(0))
    outcomes, done, reported = _collector()
    bridge.submit(lambda: asyncio.sleep(0), done)
    with trio.fail_after(5):
        await reported.wait()
    assert isinstance(outcomes[0], outcome.Error)
    assert isinstance(outcomes[0].error, ClusterError)


async def test_work_still_running_at_close_fails_with_cluster_error(
    nats_server: LocalNatsServer,
) -> None:
    outcomes, done, reported = _collector()
    with trio.fail_after(5):
        async with Bridge.connect(cluster_config(nats_server)) as bridge:
            bridge.submit(lambda: asyncio.sleep(3600), done)
        await reported.wait()
    assert isinstance(outcomes[0], outcome.Error)
    assert isinstance(outcomes[0].error, ClusterError)


async def test_connecting_where_nothing_listens_fails_within_the_connect_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClusterConfig(
        servers=[f"nats://127.0.0.1:{port}"], cluster="test", node="n", connect_timeout=0.5
    )
    with trio.fail_after(2), pytest.raises(ClusterError, match=f"127.0.0.1:{port}"):
        async with Bridge.connect(config):
            pass


async def test_a_server_crash_and_restart_is_told_and_traffic_resumes(
    own_nats_server: LocalNatsServer,
) -> None:
    events, listener, told = _collector()
    with trio.fail_after(10):
        async with Bridge.connect(cluster_config(own_nats_server)) as bridge:
            bridge.add_listener(listener)
            subscription = await bridge.subscribe("bridge.crash")
            own_nats_server.kill()
            await told.wait()
            assert not bridge.connected
            own_nats_server.restart()
            await bridge.wait_connected()
            assert events == [ConnectionEvent.DISCONNECTED, ConnectionEvent.RECONNECTED]
            bridge.publish_nowait("bridge.crash", b"after")
            assert (await subscription.receive()).data == b"after"


async def test_a_paused_server_times_requests_out_and_serves_them_once_resumed(
    own_nats_server: LocalNatsServer,
) -> None:
    async def request(timeout: float) -> Msg:
        return await bridge.client.request("bridge.paused", b"ping", timeout=timeout)

    async def serve(service: Any) -> None:
        async for message in service:
            bridge.respond_nowait(message, b"pong")

    with trio.fail_after(10):
        async with (
            Bridge.connect(cluster_config(own_nats_server)) as bridge,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(serve, await bridge.subscribe("bridge.paused"))
            own_nats_server.pause()
            with pytest.raises(TimeoutError):
                await bridge.run(lambda: request(0.2))
            own_nats_server.resume()
            assert (await bridge.run(lambda: request(2.0))).data == b"pong"
            nursery.cancel_scope.cancel()


async def test_jetstream_data_survives_a_server_kill_and_restart(
    own_nats_server: LocalNatsServer,
) -> None:
    with trio.fail_after(10):
        async with Bridge.connect(cluster_config(own_nats_server)) as bridge:
            await _add_stream(bridge, "KEPT", ["kept.>"])
            for index in range(3):
                payload = str(index).encode()
                await bridge.run(
                    lambda payload=payload: bridge.jetstream.publish("kept.x", payload)
                )
        own_nats_server.kill()
        own_nats_server.restart()
        async with Bridge.connect(cluster_config(own_nats_server)) as bridge:
            info = await bridge.run(lambda: bridge.jetstream.stream_info("KEPT"))
    assert info.state.messages == 3


async def test_a_pull_holds_at_most_a_batch_of_unreceived_messages(bridge: Bridge) -> None:
    await _add_stream(bridge, "PULL_FLOW", ["pull-flow.>"])
    for index in range(30):
        payload = str(index).encode()
        await bridge.run(lambda payload=payload: bridge.jetstream.publish("pull-flow.x", payload))
    subscription = await bridge.pull("PULL_FLOW", "worker", "pull-flow.>", batch=4)
    with trio.fail_after(5):
        await _until(lambda: subscription.pending == 4)
        assert await _ack_pending(bridge, "PULL_FLOW", "worker") == 4
        first = [message.data for message in await subscription.receive_batch(2)]
        await _until(lambda: subscription.pending == 4)
        assert await _ack_pending(bridge, "PULL_FLOW", "worker") == 6
    assert first == [b"0", b"1"]
    assert [message.data for message in await subscription.receive_batch()] == [
        b"2",
        b"3",
        b"4",
        b"5",
    ]
