"""Cast throughput, 1 -> 1: one task casts N messages that one agent handles.

The floor is the same pattern on a bare Trio memory channel: a producer task doing
``send_nowait`` and a consumer task receiving each message. Both run in the same process and
the same run, and the script prints their ratio, because absolute times drift on a shared
machine.

    uv run python benchmarks/cast_throughput.py [--messages N] [--runs R]
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

from terraphim_actors import Agent, Context, MessageSystemConfig, open_message_system


class Sink(Agent):
    async def on_start(self) -> None:
        self.count = 0

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        self.count += 1

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return self.count


async def floor(messages: int) -> float:
    """Seconds for a bare channel: producer ``send_nowait``, consumer ``receive`` per message."""
    send, receive = trio.open_memory_channel[int](math.inf)
    done = trio.Event()

    async def consume() -> None:
        count = 0
        async for _ in receive:
            count += 1
            if count == messages:
                done.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        started = time.perf_counter()
        for number in range(messages):
            send.send_nowait(number)
        await done.wait()
        elapsed = time.perf_counter() - started
    return elapsed


async def agent(messages: int, config: MessageSystemConfig | None = None) -> float:
    """Seconds for an agent: ``cast_nowait`` from the main task, then a call to wait for it."""
    async with open_message_system(config) as system:
        sink = await system.spawn(Sink)
        await trio.testing.wait_all_tasks_blocked()
        started = time.perf_counter()
        for number in range(messages):
            sink.cast_nowait(number)
        handled = await sink.call("count", timeout=600)
        elapsed = time.perf_counter() - started
        assert handled == messages
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    floors: list[float] = []
    agents: list[float] = []
    for _ in range(arguments.runs):
        floors.append(trio.run(floor, arguments.messages))
        agents.append(trio.run(agent, arguments.messages))
    rate = {
        "floor": [arguments.messages / seconds for seconds in floors],
        "agent": [arguments.messages / seconds for seconds in agents],
    }
    print(f"cast 1->1, {arguments.messages} messages, {arguments.runs} runs (messages/s)")
    print(f"{'':8} {'median':>12} {'min':>12} {'max':>12}")
    for name, values in rate.items():
        print(
            f"{name:8} {statistics.median(values):12,.0f} {min(values):12,.0f} {max(values):12,.0f}"
        )
    ratio = statistics.median(rate["agent"]) / statistics.median(rate["floor"])
    print(f"ratio agent/floor (median): {ratio:.2f}x")
    print(
        json.dumps(
            {
                "benchmark": "cast_1_to_1",
                "messages": arguments.messages,
                "runs": arguments.runs,
                "floor_per_second": statistics.median(rate["floor"]),
                "agent_per_second": statistics.median(rate["agent"]),
                "ratio": ratio,
            }
        )
    )


if __name__ == "__main__":
    main()
