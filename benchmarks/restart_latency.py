"""Restart latency: from an agent's crash until its new instance has handled the next message,
beside a task that a nursery loop starts again after it raises (the floor).

The crashing message and the next one wait in the mailbox together, so what is timed is the
supervisor noticing the crash, starting a fresh instance (``on_start``) and the new instance
taking the message that survived the restart. The floor's channel survives its task the same
way. Messages are sent at most once, so that the crashing one is not retried.

    uv run python benchmarks/restart_latency.py [--quick] [--runs R] [--restarts N]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import trio
from _harness import Options, Report, discard_logs, run_trio, settle

from terraphim_actors import (
    Agent,
    Context,
    DeliveryConfig,
    DeliveryGuarantee,
    MessageSystemConfig,
    RouterConfig,
    open_message_system,
)

CRASH = "crash"


class Crash(Exception):
    """Raised on purpose, by the agent or the floor's task."""


class Stopwatch:
    """When the last crash happened, and a wake-up once the next message is handled."""

    def __init__(self) -> None:
        self.crashed_at = 0.0
        self.latencies: list[float] = []
        self.handled = trio.Event()

    def crash(self) -> None:
        self.crashed_at = time.perf_counter()
        raise Crash("on purpose")

    def next_handled(self) -> None:
        self.latencies.append(time.perf_counter() - self.crashed_at)
        self.handled.set()

    async def wait(self) -> None:
        await self.handled.wait()
        self.handled = trio.Event()


class Fragile(Agent):
    """Crashes on ``CRASH``; reports any other message to the stopwatch."""

    def __init__(self, stopwatch: Stopwatch) -> None:
        self.stopwatch = stopwatch

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if message == CRASH:
            self.stopwatch.crash()
        self.stopwatch.next_handled()


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=5, quick_runs=3)
    choice.size("--restarts", full=2_000, quick=200, help="crashes (and restarts) per run")
    return choice


async def agent_restarts(restarts: int) -> list[float]:
    """Seconds from each crash to the next message handled by the restarted agent."""
    config = MessageSystemConfig(
        max_restarts=restarts + 1,
        max_seconds=3600.0,
        delivery=DeliveryConfig(guarantee=DeliveryGuarantee.AT_MOST_ONCE),
        router=RouterConfig(circuit_breaker=None),  # it only crashes on purpose
    )
    stopwatch = Stopwatch()
    async with open_message_system(config) as system:
        ref = await system.spawn(Fragile, stopwatch)
        await settle()
        for number in range(restarts):
            ref.cast_nowait(CRASH)
            ref.cast_nowait(number)
            await stopwatch.wait()
    return stopwatch.latencies


async def floor_restarts(restarts: int) -> list[float]:
    """Seconds from each crash of a task to the next message handled by its next run."""
    send, receive = trio.open_memory_channel[Any](math.inf)
    stopwatch = Stopwatch()

    async def serve() -> None:
        async for message in receive:
            if message == CRASH:
                stopwatch.crash()
            stopwatch.next_handled()

    async def restart_forever() -> None:
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serve)
            except* Crash:
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(restart_forever)
        await settle()
        for number in range(restarts):
            send.send_nowait(CRASH)
            send.send_nowait(number)
            await stopwatch.wait()
        nursery.cancel_scope.cancel()
    return stopwatch.latencies


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    discard_logs()
    report = Report("restart_latency", arguments, {"restarts": arguments.restarts})
    latencies: dict[str, list[list[float]]] = {"floor": [], "agent": []}
    for _ in range(arguments.runs):
        latencies["floor"].append(run_trio(floor_restarts, arguments.restarts))
        latencies["agent"].append(run_trio(agent_restarts, arguments.restarts))
    report.latencies({"floor": "floor task restart", "agent": "agent restart"}, latencies)
    for name in ("p50", "p99"):
        report.ratio(
            f"restart_{name}_latency_ratio_to_floor",
            report.median(f"agent_{name}") / report.median(f"floor_{name}"),
        )
    report.print(f"restart latency, crash to next message handled, {arguments.restarts:_} crashes")


if __name__ == "__main__":
    main()
