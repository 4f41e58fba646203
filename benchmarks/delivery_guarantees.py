"""What each delivery guarantee costs: the same casts (1 -> 1) and calls under at-most-once,
at-least-once and exactly-once, beside the bare-channel floor, in one run.

The cast workload is ``cast_nowait`` of N messages then one call to wait for them; the call
workload is N calls one after the other. Each is reported as a rate, its ratio to the floor
(casts: a producer and a consumer task on a memory channel; calls: ping-pong over two channels)
and its cost relative to at-most-once.

    uv run python benchmarks/delivery_guarantees.py [--messages N] [--runs R]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

import trio
import trio.testing
from cast_throughput import Sink, agent, floor

from terraphim_actors import (
    DeliveryConfig,
    DeliveryGuarantee,
    MessageSystemConfig,
    open_message_system,
)


async def call_floor(calls: int) -> float:
    """Seconds for ``calls`` round trips between two tasks over a request and a reply channel."""
    request_send, request_receive = trio.open_memory_channel[int](math.inf)
    reply_send, reply_receive = trio.open_memory_channel[int](math.inf)

    async def serve() -> None:
        async for number in request_receive:
            reply_send.send_nowait(number)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        started = time.perf_counter()
        for number in range(calls):
            request_send.send_nowait(number)
            await reply_receive.receive()
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return elapsed


async def casts(guarantee: DeliveryGuarantee, messages: int) -> float:
    """Seconds for an agent to handle ``messages`` casts sent under ``guarantee``."""
    return await agent(messages, MessageSystemConfig(delivery=DeliveryConfig(guarantee=guarantee)))


async def calls(guarantee: DeliveryGuarantee, count: int) -> float:
    """Seconds for ``count`` calls one after the other under ``guarantee``."""
    config = MessageSystemConfig(delivery=DeliveryConfig(guarantee=guarantee))
    async with open_message_system(config) as system:
        sink = await system.spawn(Sink)
        started = time.perf_counter()
        for _ in range(count):
            await sink.call("count")
        elapsed = time.perf_counter() - started
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    count = arguments.messages
    seconds: dict[str, list[float]] = {}
    for _ in range(arguments.runs):
        seconds.setdefault("cast floor", []).append(trio.run(floor, count))
        seconds.setdefault("call floor", []).append(trio.run(call_floor, count // 10))
        for guarantee in DeliveryGuarantee:
            seconds.setdefault(f"cast {guarantee.value}", []).append(
                trio.run(casts, guarantee, count)
            )
            seconds.setdefault(f"call {guarantee.value}", []).append(
                trio.run(calls, guarantee, count // 10)
            )
    sizes = {"cast": count, "call": count // 10}
    rates = {
        name: [sizes[name.split()[0]] / elapsed for elapsed in values]
        for name, values in seconds.items()
    }
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{count} casts and {count // 10} calls per run, {arguments.runs} runs (per second)")
    print(f"{'':26} {'median':>10} {'min':>10} {'max':>10} {'/floor':>7} {'cost':>6}")
    record: dict[str, Any] = {"benchmark": "delivery_guarantees", "messages": count}
    for name, values in rates.items():
        kind = name.split()[0]
        to_floor = medians[name] / medians[f"{kind} floor"]
        cost = 0.0 if "floor" in name else medians[f"{kind} at-most-once"] / medians[name]
        shown_cost = f"{cost:5.2f}x" if cost else "     -"
        print(
            f"{name:26} {medians[name]:10,.0f} {min(values):10,.0f} {max(values):10,.0f}"
            f" {to_floor:6.2f}x {shown_cost}"
        )
        record[name.replace(" ", "_").replace("-", "_")] = {
            "per_second": medians[name],
            "ratio_to_floor": to_floor,
            "cost_vs_at_most_once": cost,
        }
    print("cost: time per message relative to at-most-once (1.00x = free)")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
