"""Many idle agents: the time to spawn them under one supervisor, the memory each costs, and
the time to shut them all down, beside idle Trio tasks each blocked on its own memory channel.

Spawning is ``system.spawn`` one agent after the other under the root supervisor, until every
agent waits on its empty mailbox; the floor starts one task per channel until every task
waits. Shutting down is leaving ``open_message_system``; the floor closes every channel so
that each task's loop ends, and waits for the nursery.

Memory per agent is the growth of the resident set size (RSS) over the spawn, divided by the
count. Freed memory is not given back to the system, so each side of each measurement runs in
a process of its own (this script, run again with ``--side``). ``tracemalloc`` gives a second
opinion once per side at the smallest count (it slows spawning, so its run is not timed).

    uv run python benchmarks/idle_agents.py [--quick] [--runs R] [--agents N [N ...]]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import trio
from _harness import Options, Report, resident_bytes, run_side, settle

from terraphim_actors import Agent, open_message_system

SIDES = ("floor", "agents")


class Idle(Agent):
    """An agent that only waits for messages."""


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=3, quick_runs=1)
    choice.size(
        "--agents", full=[10_000, 100_000], quick=[1_000], many=True, help="agents per measurement"
    )
    choice.parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    choice.parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    choice.parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    return choice


def memory_now(traced: bool) -> int:
    """Bytes in use now, after a full collection: traced by ``tracemalloc``, or the RSS."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0] if traced else resident_bytes()


async def floor_side(count: int, traced: bool) -> dict[str, float]:
    """Spawn ``count`` idle tasks, each on its own channel, then end them by closing those."""

    async def idle(receive: trio.MemoryReceiveChannel[object]) -> None:
        async for _ in receive:
            pass

    async with trio.open_nursery() as nursery:
        warm_up, receive = trio.open_memory_channel[object](math.inf)
        nursery.start_soon(idle, receive)
        await settle()
        before = memory_now(traced)
        started = time.perf_counter()
        senders = []
        for _ in range(count):
            send, receive = trio.open_memory_channel[object](math.inf)
            senders.append(send)
            nursery.start_soon(idle, receive)
        await settle()
        spawned = time.perf_counter() - started
        after = memory_now(traced)
        stopping = time.perf_counter()
        warm_up.close()
        for send in senders:
            send.close()
    stopped = time.perf_counter() - stopping
    return {
        "spawn_seconds": spawned,
        "shutdown_seconds": stopped,
        "memory_bytes": after - before,
        "rss_bytes": after,
    }


async def agents_side(count: int, traced: bool) -> dict[str, float]:
    """Spawn ``count`` idle agents under the root supervisor, then leave the system."""
    async with open_message_system() as system:
        await system.spawn(Idle)  # the first spawn pays for what is made once
        await settle()
        before = memory_now(traced)
        started = time.perf_counter()
        for _ in range(count):
            await system.spawn(Idle)
        await settle()
        spawned = time.perf_counter() - started
        after = memory_now(traced)
        stopping = time.perf_counter()
    stopped = time.perf_counter() - stopping
    return {
        "spawn_seconds": spawned,
        "shutdown_seconds": stopped,
        "memory_bytes": after - before,
        "rss_bytes": after,
    }


def run_one_side(arguments: argparse.Namespace) -> None:
    """The ``--side`` process: one measurement, printed as a JSON line."""
    if arguments.tracemalloc:
        tracemalloc.start()
    measure = floor_side if arguments.side == "floor" else agents_side
    print(json.dumps(trio.run(measure, arguments.count, arguments.tracemalloc)))


def measure_sides(count: int, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Every run of both sides at ``count``, alternating, each in a fresh process."""
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for _ in range(runs):
        for side in SIDES:
            results[side].append(run_side(__file__, "--side", side, "--count", str(count)))
    return results


def report_count(report: Report, count: int, results: dict[str, list[dict[str, Any]]]) -> None:
    for side in SIDES:
        runs = results[side]
        report.measure(
            f"{side}_spawn_rate_at_{count}",
            f"{side} spawn {count:_}",
            "spawned/s",
            [count / run["spawn_seconds"] for run in runs],
        )
        report.measure(
            f"{side}_memory_at_{count}",
            f"{side} RSS each, {count:_}",
            "bytes",
            [run["memory_bytes"] / count for run in runs],
        )
        report.measure(
            f"{side}_shutdown_at_{count}",
            f"{side} shutdown {count:_}",
            "s",
            [run["shutdown_seconds"] for run in runs],
        )
    ratios = {
        "spawn_rate_ratio_to_floor": "spawn_rate",
        "memory_ratio_to_floor": "memory",
        "shutdown_time_ratio_to_floor": "shutdown",
    }
    for name, measured in ratios.items():
        agents = report.median(f"agents_{measured}_at_{count}")
        report.ratio(f"{name}_at_{count}", agents / report.median(f"floor_{measured}_at_{count}"))


def report_traced(report: Report, count: int) -> None:
    """The second opinion on memory: bytes per agent as ``tracemalloc`` counts them."""
    traced = {
        side: run_side(__file__, "--side", side, "--count", str(count), "--tracemalloc")
        for side in SIDES
    }
    for side in SIDES:
        report.measure(
            f"{side}_traced_memory_at_{count}",
            f"{side} traced each, {count:_}",
            "bytes",
            [traced[side]["memory_bytes"] / count],
        )
    report.ratio(
        f"traced_memory_ratio_to_floor_at_{count}",
        report.median(f"agents_traced_memory_at_{count}")
        / report.median(f"floor_traced_memory_at_{count}"),
    )


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    if arguments.side is not None:
        run_one_side(arguments)
        return
    counts = sorted(set(arguments.agents))
    report = Report("idle_agents", arguments, {"agents": counts})
    for count in counts:
        report_count(report, count, measure_sides(count, arguments.runs))
    report_traced(report, counts[0])
    report.print(
        f"idle agents: spawn, memory and shutdown at {', '.join(f'{n:_}' for n in counts)}",
        ["memory: RSS growth over the spawn per agent (traced: tracemalloc, one run)"],
    )


if __name__ == "__main__":
    main()
