"""The cluster under faults: a node killed with SIGKILL, the server paused, a server of a NATS
cluster killed, garbage on a node's queue.

A node that must die a real death runs in a process of its own (``node_process.py``, followed
through the JSON lines it prints); the test's own node is a message system in the test's Trio
run. Every wait is bounded, and every process and server a test starts is reaped however the
test ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from nodes import (
    BOUND,
    Recorder,
    fresh_cluster,
    node_config,
    node_of,
    spawn_seen,
    two_nodes,
    until_event,
    watch,
)

from terraphim_actors import (
    CircuitBreakerConfig,
    DeadLetterReason,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystem,
    MessageSystemConfig,
    RouterConfig,
    StopReason,
    open_message_system,
)
from terraphim_actors.cluster import ClusterConfig, LocalNatsCluster, LocalNatsServer
from terraphim_actors.cluster._directory import NameTaken
from terraphim_actors.cluster._node import ACK_WAIT
from terraphim_actors.cluster._server import _free_port, find_nats_server
from terraphim_actors.cluster._subjects import Subjects
from terraphim_actors.errors import AgentNotFound, ClusterError, MessagingError, NodeDown

NODE_SCRIPT = Path(__file__).with_name("node_process.py")

#: The heartbeat TTL of every node here (``node_config``'s and the script's default).
HEARTBEAT_TTL = 0.5

#: The agents of the node killed: one takes casts, one is called and never answers.
SPAWNED = ("worker", "sleeper")


class NodeProcess:
    """A node running ``node_process.py``: what its agents handled, as it reports it."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.ready = trio.Event()
        #: Each payload a cast carried, in the order handled, across the node's agents.
        self.handled: list[Any] = []
        self._changed = trio.Event()

    def kill(self) -> None:
        """SIGKILL: the node gets no chance to leave, acknowledge or hand anything back."""
        self.process.kill()

    async def wait_for(self, enough: Callable[[list[Any]], bool]) -> None:
        """Until ``enough(self.handled)`` (the caller bounds the wait)."""
        while not enough(self.handled):
            await self._changed.wait()

    async def follow(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        pending = b""
        async for chunk in stdout:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                event = json.loads(line)
                if event["event"] == "ready":
                    self.ready.set()
                elif event["event"] == "handled":
                    self.handled.append(event["payload"])
            self._changed.set()
            self._changed = trio.Event()


@contextlib.asynccontextmanager
async def node_process(
    servers: Sequence[str],
    cluster: str,
    node: str,
    *,
    spawn: Sequence[str] = ("worker",),
    pause: float = 0.0,
) -> AsyncIterator[NodeProcess]:
    """``node`` of ``cluster`` in a process of its own, ready (its agents spawned); killed and
    reaped when the block ends, however it ends."""
    command = [sys.executable, str(NODE_SCRIPT), "--cluster", cluster, "--node", node]
    command += [f"--server={url}" for url in servers]
    command += [f"--spawn={name}" for name in spawn]
    command += [f"--pause={pause}"]
    # Its stdin stays open while this process lives: the node ends when it closes.
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        async with trio.open_nursery() as nursery:
            running = NodeProcess(process)
            nursery.start_soon(running.follow)
            with trio.fail_after(BOUND):
                await running.ready.wait()
            yield running
            running.kill()
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def test_a_node_killed_mid_stream_is_seen_down_and_loses_no_message(
    nats_server: LocalNatsServer,
) -> None:
    """SIGKILL of a node while at-least-once casts to its agent are stored and being handled:
    the monitor hears ``NOCONNECTION`` within twice the heartbeat TTL, a call waiting on it
    fails with ``NodeDown`` long before its timeout, the agent's name can be spawned again
    elsewhere, and the node started again under its name is handed every message it had not
    acknowledged, so each cast is handled at least once across both runs."""
    count, call_timeout = 300, 8.0
    cluster, url = fresh_cluster(), nats_server.url
    handled: list[Any] = []
    async with open_message_system(node_config(nats_server, cluster, "test")) as system:
        events = node_of(system).directory.watch()
        async with node_process([url], cluster, "far", spawn=SPAWNED, pause=0.005) as far:
            await until_event(events, NameTaken, "worker")
            await until_event(events, NameTaken, "sleeper")
            ref = system.ref("worker")
            downs = await watch(system, ref)
            call_ended: list[tuple[BaseException | None, float]] = []

            async def wait_on_a_call() -> None:
                try:
                    await system.ref("sleeper").call("hang", timeout=call_timeout)
                except NodeDown as error:
                    call_ended.append((error, trio.current_time()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_on_a_call)
                with trio.fail_after(BOUND):
                    for number in range(count):
                        await ref.cast(number)
                    await far.wait_for(lambda seen: len(seen) >= count // 3)
                far.kill()
                killed_at = trio.current_time()
                with trio.fail_after(BOUND):
                    down = await downs.receive()
                noticed = trio.current_time() - killed_at
        handled += far.handled
        assert down.reason is StopReason.NOCONNECTION
        assert noticed <= 2 * HEARTBEAT_TTL
        [(error, failed_at)] = call_ended
        assert isinstance(error, NodeDown)
        assert failed_at - killed_at <= 2 * HEARTBEAT_TTL
        assert len(handled) < count  # the kill came mid-stream

        # The name is free: an agent of this node takes it (and whatever of the killed
        # node's queue this node hands on to it meanwhile), then gives it back.
        send, seen_here = trio.open_memory_channel[Any](math.inf)
        here = await system.spawn(Recorder, send, name="worker")
        await system.stop(here)

        async with node_process([url], cluster, "far", spawn=SPAWNED) as again:
            handled += _drain(seen_here)
            # What the killed node had taken is offered again once JetStream's ack wait
            # for it ran out (what it had not taken yet, at once).
            with trio.fail_after(ACK_WAIT + BOUND):
                await again.wait_for(lambda seen: set(handled + seen) >= set(range(count)))
    assert set(handled + again.handled + _drain(seen_here)) == set(range(count))


async def test_a_remote_agent_back_after_its_node_died_is_reachable_at_once(
    nats_server: LocalNatsServer,
) -> None:
    """A send to a remote agent's name while its node is dead finds nobody
    (``AgentNotFound``), as a send to a local name nobody holds, and counts nothing against
    the circuit of the name's endpoint: once the node is back with the agent, the same ref
    reaches it at once, not an open circuit for the breaker's reset timeout."""
    cluster, url = fresh_cluster(), nats_server.url
    config = attrs.evolve(
        node_config(nats_server, cluster, "test", DeliveryGuarantee.AT_MOST_ONCE),
        router=RouterConfig(circuit_breaker=CircuitBreakerConfig(failure_threshold=1)),
    )
    async with open_message_system(config) as system:
        events = node_of(system).directory.watch()
        async with node_process([url], cluster, "far") as far:
            await until_event(events, NameTaken, "worker")
            ref = system.ref("worker")
            assert await ref.call("before", timeout=BOUND) == "before"
            far.kill()
            with trio.fail_after(BOUND):
                while ref.alive:
                    await events.receive()
        with pytest.raises(AgentNotFound):
            await ref.cast("while its node is dead")
        async with node_process([url], cluster, "far"):
            await until_event(events, NameTaken, "worker")
            assert await ref.call("after", timeout=BOUND) == "after"


async def test_a_server_without_jetstream_fails_the_join_with_a_cluster_error() -> None:
    """A NATS server without JetStream cannot carry a cluster: joining it raises
    ``ClusterError``, a fault of NATS itself, not nats-py's own error."""
    port = _free_port()
    command = [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port)]
    server = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(BOUND):
            await _ready(server)
            config = MessageSystemConfig(
                cluster=ClusterConfig(
                    servers=[f"nats://127.0.0.1:{port}"],
                    cluster=fresh_cluster(),
                    node="a",
                    connect_timeout=2.0,
                )
            )
            with pytest.raises(ClusterError, match="JetStream"):
                async with open_message_system(config):
                    pass
    finally:
        server.kill()
        with trio.CancelScope(shield=True):
            await server.wait()


async def _ready(server: trio.Process) -> None:
    """Until ``server`` (a nats-server) logs that it is ready."""
    log = server.stderr
    assert log is not None
    seen = b""
    async for chunk in log:
        seen += chunk
        if b"Server is ready" in seen:
            return
    raise AssertionError(f"nats-server ended before it was ready: {seen.decode()}")


def _drain(channel: trio.MemoryReceiveChannel[Any]) -> list[Any]:
    """What waits on ``channel`` now."""
    items = []
    with contextlib.suppress(trio.WouldBlock):
        while True:
            items.append(channel.receive_nowait())
    return items


#: Seconds the server stays paused.
PAUSE = 2.0


async def test_while_the_server_is_paused_sends_end_in_time_and_traffic_recovers(
    own_nats_server: LocalNatsServer,
) -> None:
    """The server stopped with SIGSTOP for two seconds, then resumed: each cast and call made
    meanwhile either completes within its deadline or fails with a typed error, none hangs;
    afterwards a cast and a call between the nodes succeed."""
    call_timeout = 1.0
    send, seen = trio.open_memory_channel[Any](math.inf)
    with trio.fail_after(4 * BOUND):
        async with two_nodes(own_nats_server) as (a, b):
            ref = await spawn_seen(b, a, "worker", send)
            with trio.fail_after(BOUND):
                assert await ref.call(1, timeout=BOUND) == 2
            ended: list[tuple[str, object, float]] = []
            stored: set[int] = set()

            async def cast_meanwhile(number: int) -> None:
                started = trio.current_time()
                try:
                    await ref.cast(("meanwhile", number))
                    result: object = "sent"
                    stored.add(number)
                except MessagingError as error:
                    result = type(error)
                ended.append(("cast", result, trio.current_time() - started))

            async def call_meanwhile(number: int) -> None:
                started = trio.current_time()
                try:
                    result: object = await ref.call(number, timeout=call_timeout)
                except MessagingError as error:
                    result = type(error)
                ended.append(("call", result, trio.current_time() - started))

            events = node_of(a).directory.watch()
            own_nats_server.pause()
            try:
                with trio.fail_after(BOUND):
                    async with trio.open_nursery() as nursery:
                        for number in range(5):
                            nursery.start_soon(cast_meanwhile, number)
                        # Fewer calls than the circuit breaker's threshold (5): a call that
                        # times out counts against its recipient's circuit, as locally, and
                        # an open circuit would fail every call fast for its reset timeout.
                        for number in range(3):
                            nursery.start_soon(call_meanwhile, number)
                        await trio.sleep(PAUSE)
                        own_nats_server.resume()
            finally:
                own_nats_server.resume()
            assert len(ended) == 8
            for kind, result, took in ended:
                if kind == "call":
                    assert took <= call_timeout + 0.5, (kind, result, took)

            with trio.fail_after(BOUND):
                while node_of(a).directory.lookup("worker") is None:
                    await events.receive()
                await ref.cast("after")
                assert await ref.call(21, timeout=BOUND) == 42
                arrived = [await seen.receive()]
                while arrived[-1] != "after":
                    arrived.append(await seen.receive())
            # Every cast JetStream took meanwhile was delivered, before the one sent after.
            expected = [("meanwhile", number) for number in sorted(stored)]
            assert sorted(tuple(payload) for payload in arrived[:-1]) == expected


async def test_a_server_of_a_nats_cluster_killed_loses_no_acknowledged_message(
    tmp_path: Path,
) -> None:
    """Two nodes on a 3-server NATS cluster with streams replicated on all three: the server
    leading the cluster's stream is killed with SIGKILL mid-stream; every cast whose
    ``await`` returned (stored, or waiting in the sender's retries while the stream had no
    leader) reaches the agent, and a call between the nodes succeeds afterwards."""
    count = 200
    send, seen = trio.open_memory_channel[Any](math.inf)
    with LocalNatsCluster(size=3, store_dir=tmp_path) as servers, trio.fail_after(6 * BOUND):
        cluster = fresh_cluster()

        def config(node: str) -> MessageSystemConfig:
            joined = ClusterConfig(
                servers=servers.urls,
                cluster=cluster,
                node=node,
                replicas=3,
                connect_timeout=BOUND,
                # The buckets of the directory lose their leader too: a TTL beyond the
                # election keeps the nodes from taking each other for gone meanwhile.
                heartbeat_interval=0.5,
                heartbeat_ttl=15.0,
            )
            # JetStream elects a new leader for the stream within seconds (5 to 7 measured
            # here), during which it takes nothing: with the default delivery settings, the
            # casts meanwhile wait for it without spending their retries, and without
            # counting against the recipient's circuit.
            return MessageSystemConfig(cluster=joined)

        async with (
            open_message_system(config("a")) as a,
            open_message_system(config("b")) as b,
        ):
            ref = await spawn_seen(b, a, "worker", send)
            stream = await _stream_info(a)
            assert stream.config.num_replicas == 3
            # The server that leads the stream: the one whose loss a replica must make good.
            leader = stream.cluster.leader
            with trio.fail_after(3 * BOUND):
                for number in range(count):
                    await ref.cast(number)
                    if number == count // 2:
                        servers.kill(int(leader.rpartition("-")[2]))
            with trio.fail_after(BOUND):
                assert await ref.call(21, timeout=BOUND) == 42
                arrived: set[int] = set()
                while not arrived >= set(range(count)):
                    arrived.add(await seen.receive())


async def test_the_queue_of_a_node_that_never_comes_back_ends_in_dead_letters_at_expiry(
    nats_server: LocalNatsServer,
) -> None:
    """SIGKILL of a node while at-least-once casts to its agent are being handled, and the
    node never comes back, nor its agent's name elsewhere: the live node that adopts its queue
    files what the killed node had not acknowledged as dead letters (``EXPIRED``) once their
    timeout passed; each cast was handled or is a dead letter, none lost."""
    count, timeout = 100, 1.0
    cluster = fresh_cluster()
    async with open_message_system(node_config(nats_server, cluster, "heir")) as system:
        events = node_of(system).directory.watch()
        send, letters = trio.open_memory_channel[Any](math.inf)
        system.subscribe_dead_letters(await system.spawn(Recorder, send))
        async with node_process([nats_server.url], cluster, "far", pause=0.005) as far:
            await until_event(events, NameTaken, "worker")
            ref = system.ref("worker")
            with trio.fail_after(BOUND):
                for number in range(count):
                    await ref.cast(number, options=MessageOptions(timeout=timeout))
                await far.wait_for(lambda seen: len(seen) >= count // 4)
            far.kill()

        # What the killed node had taken comes back to the heir once the ack wait ran out.
        dead: list[Any] = []
        accounted = set(far.handled)
        with trio.fail_after(ACK_WAIT + BOUND):
            while not accounted >= set(range(count)):
                _, letter = await letters.receive()
                dead.append(letter)
                accounted.add(letter.envelope.payload)
        assert len(far.handled) < count  # the kill came mid-stream
        assert {letter.reason for letter in dead} == {DeadLetterReason.EXPIRED}


async def _stream_info(system: MessageSystem) -> Any:
    """The cluster's stream as the server describes it."""
    node = node_of(system)

    async def info() -> Any:
        return await node.bridge.jetstream.stream_info(node.subjects.stream)

    with trio.fail_after(BOUND):
        return await node.bridge.run(info)


@pytest.mark.parametrize(
    ("guarantee", "subject_of"),
    [
        (DeliveryGuarantee.AT_LEAST_ONCE, Subjects.queue),
        (DeliveryGuarantee.AT_MOST_ONCE, Subjects.casts),
    ],
)
async def test_an_undecodable_arrival_is_a_dead_letter_and_the_node_keeps_serving(
    nats_server: LocalNatsServer,
    guarantee: DeliveryGuarantee,
    subject_of: Callable[[Subjects, str], str],
) -> None:
    """Bytes that are no message, published straight to the subject where a node takes its
    JetStream queue (or its at-most-once casts): a dead letter on that node, ``UNDECODABLE``,
    and the casts behind them are handled."""
    send, seen = trio.open_memory_channel[Any](math.inf)
    async with two_nodes(nats_server, guarantee) as (a, b):
        ref = await spawn_seen(b, a, "worker", send)
        sender = node_of(a)
        subject = subject_of(sender.subjects, "b")

        async def garbage() -> None:
            if guarantee is DeliveryGuarantee.AT_MOST_ONCE:
                await sender.bridge.client.publish(subject, b"\xff\x00 not a message")
            else:
                await sender.bridge.jetstream.publish(subject, b"\xff\x00 not a message")

        with trio.fail_after(BOUND):
            await sender.bridge.run(garbage)
            await ref.cast("after")
            assert await seen.receive() == "after"
        [dead] = b.dead_letters
        assert dead.reason is DeadLetterReason.UNDECODABLE
        with trio.fail_after(BOUND):
            assert await ref.call(21, timeout=BOUND) == 42
