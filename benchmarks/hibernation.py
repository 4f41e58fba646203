"""Hibernated agents: the memory each costs, the time a message takes to wake one (beside a
spawn, and beside a bare Trio task started to answer), and the time to shut many down.

Memory: ``N`` agents spawned with ``hibernate_after`` are left until every one sleeps; what
each costs is the growth of the resident set size (RSS) over that, divided by ``N``, the
user's state being nothing (an ``Agent`` subclass with no attributes). The floor is an idle
Trio task blocked on its own memory channel (as in ``idle_agents.py``), measured at up to
100,000 tasks. Each side runs in a process of its own (freed memory is not given back);
``tracemalloc`` gives a second opinion at the smallest count, in a run that is not timed.
The process's whole RSS with the ``N`` sleepers is reported too (the target: 1,000,000 in one
process under 1.5 GB, ``--agents 1000000``).

Wake latency: a call to a hibernated agent, from the send until the caller has its answer
(the supervisor starts the kept instance again, ``on_wake`` is not defined); beside it
``system.spawn`` of a fresh agent, and the floor: a bare Trio task started to take one
request from a channel and answer on another.

Shutdown: leaving ``open_message_system`` with the ``N`` sleepers; the floor closes ``N``
channels so that each idle task's loop ends.

    uv run python benchmarks/hibernation.py [--quick] [--runs R] [--agents N [N ...]]
        [--wakes W]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import trio
from _harness import Options, Report, run_side, run_trio, settle
from idle_agents import floor_side, memory_now

from terraphim_actors import Agent, Context, MessageSystem, open_message_system

SIDES = ("floor", "hibernated")
#: Seconds idle before the benchmark's agents hibernate (real time: the benchmark waits it out).
HIBERNATE_AFTER = 0.05
#: The most idle tasks the memory floor is measured with (a million would take ~5 GB).
FLOOR_CAP = 100_000


class Sleeper(Agent):
    """An agent with no state of its own that answers a call with its message."""

    hibernate_after = HIBERNATE_AFTER

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        return message


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=3, quick_runs=1)
    choice.size(
        "--agents", full=[100_000], quick=[1_000], many=True, help="hibernated agents per run"
    )
    choice.size("--wakes", full=2_000, quick=200, help="wake-ups (and spawns) timed per run")
    choice.parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    choice.parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    choice.parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    return choice


async def all_asleep(system: MessageSystem, count: int) -> None:
    """Wait until ``count`` agents have fallen asleep: each is idle since the last spawn."""
    await settle()
    await trio.sleep(HIBERNATE_AFTER * 2)
    await settle()
    asleep = system.get_stats()[0].agents_hibernated
    if asleep < count:
        raise RuntimeError(f"only {asleep} of {count} agents hibernated")


async def hibernated_side(count: int, traced: bool) -> dict[str, float]:
    """``count`` agents spawned and left to fall asleep; then the system's shutdown."""
    async with open_message_system() as system:
        first = await system.spawn(Sleeper)  # the first spawn pays for what is made once
        await first.call(None)
        await all_asleep(system, 1)
        before = memory_now(traced)
        for _ in range(count):
            await system.spawn(Sleeper)
        await all_asleep(system, count + 1)
        after = memory_now(traced)
        own = own_state_bytes(count) if traced else 0
        stopping = time.perf_counter()
    stopped = time.perf_counter() - stopping
    return {
        "shutdown_seconds": stopped,
        "memory_bytes": after - before,
        "rss_bytes": after,
        "own_state_bytes": own,
    }


def own_state_bytes(count: int) -> int:
    """What ``count`` bare ``Sleeper`` instances take as ``tracemalloc`` counts them: the
    user's own state, which the issue's target leaves out (the list holding them is not)."""
    before = memory_now(traced=True)
    instances = [Sleeper() for _ in range(count)]
    taken = memory_now(traced=True) - before - sys.getsizeof(instances)
    del instances
    return taken


def run_one_side(arguments: argparse.Namespace) -> None:
    """The ``--side`` process: one measurement, printed as a JSON line."""
    if arguments.tracemalloc:
        tracemalloc.start()
    measure = floor_side if arguments.side == "floor" else hibernated_side
    print(json.dumps(trio.run(measure, arguments.count, arguments.tracemalloc)))


async def wake_latencies(wakes: int) -> dict[str, list[float]]:
    """Seconds per wake-up (a call to a sleeper), per spawn, and per floor round trip."""
    times: dict[str, list[float]] = {"wake": [], "spawn": [], "floor": []}
    async with open_message_system() as system:
        refs = [await system.spawn(Sleeper) for _ in range(wakes)]
        await all_asleep(system, wakes)
        for ref in refs:
            started = time.perf_counter()
            await ref.call(None)
            times["wake"].append(time.perf_counter() - started)
        for _ in range(wakes):
            started = time.perf_counter()
            await system.spawn(Agent)
            times["spawn"].append(time.perf_counter() - started)
    async with trio.open_nursery() as nursery:

        async def answer_once(
            requests: trio.MemoryReceiveChannel[object], replies: trio.MemorySendChannel[object]
        ) -> None:
            await replies.send(await requests.receive())

        for _ in range(wakes):
            ask, requests = trio.open_memory_channel[object](1)
            answer, replies = trio.open_memory_channel[object](1)
            started = time.perf_counter()
            nursery.start_soon(answer_once, requests, answer)
            await ask.send(None)
            await replies.receive()
            times["floor"].append(time.perf_counter() - started)
    return times


def measure_sides(count: int, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Every run of both sides at ``count`` (the floor at most at ``FLOOR_CAP``),
    alternating, each in a fresh process."""
    counts = {"floor": min(count, FLOOR_CAP), "hibernated": count}
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for _ in range(runs):
        for side in SIDES:
            results[side].append(run_side(__file__, "--side", side, "--count", str(counts[side])))
    for side in SIDES:
        for run in results[side]:
            run["count"] = counts[side]
    return results


def report_count(report: Report, count: int, results: dict[str, list[dict[str, Any]]]) -> None:
    floor_count = min(count, FLOOR_CAP)
    report.measure(
        f"hibernated_memory_at_{count}",
        f"hibernated RSS each, {count:_}",
        "bytes",
        [run["memory_bytes"] / count for run in results["hibernated"]],
    )
    report.measure(
        f"floor_memory_at_{count}",
        f"idle task RSS each, {floor_count:_}",
        "bytes",
        [run["memory_bytes"] / floor_count for run in results["floor"]],
    )
    report.measure(
        f"hibernated_process_rss_at_{count}",
        f"process RSS with {count:_} asleep",
        "MB",
        [run["rss_bytes"] / 2**20 for run in results["hibernated"]],
    )
    for side, label in (("hibernated", f"{count:_} hibernated"), ("floor", f"{floor_count:_}")):
        report.measure(
            f"{side}_shutdown_at_{count}",
            f"shut down {label}" + (" tasks' channels" if side == "floor" else ""),
            "s",
            [run["shutdown_seconds"] for run in results[side]],
        )
    report.ratio(
        f"memory_ratio_to_floor_at_{count}",
        report.median(f"hibernated_memory_at_{count}") / report.median(f"floor_memory_at_{count}"),
    )
    # Per agent, since the floor may have been measured at fewer tasks.
    per_agent = report.median(f"hibernated_shutdown_at_{count}") / count
    per_task = report.median(f"floor_shutdown_at_{count}") / floor_count
    report.ratio(f"shutdown_time_ratio_to_floor_at_{count}", per_agent / per_task)


def report_traced(report: Report, count: int) -> None:
    """The second opinion on memory: bytes per hibernated agent as ``tracemalloc`` counts."""
    traced = run_side(__file__, "--side", "hibernated", "--count", str(count), "--tracemalloc")
    report.measure(
        f"hibernated_traced_memory_at_{count}",
        f"hibernated traced each, {count:_}",
        "bytes",
        [traced["memory_bytes"] / count],
    )
    report.measure(
        f"hibernated_traced_memory_beyond_own_state_at_{count}",
        f"  of which the framework's, {count:_}",
        "bytes",
        [(traced["memory_bytes"] - traced["own_state_bytes"]) / count],
    )


def report_wakes(report: Report, wakes: int, runs: int) -> None:
    measured = [run_trio(wake_latencies, wakes) for _ in range(runs)]
    report.latencies(
        {"wake": "wake (call to a sleeper)", "spawn": "spawn", "floor": "floor task + reply"},
        {side: [run[side] for run in measured] for side in ("wake", "spawn", "floor")},
    )
    report.ratio(
        "wake_p50_latency_ratio_to_floor", report.median("wake_p50") / report.median("floor_p50")
    )
    report.ratio(
        "wake_p50_latency_ratio_to_spawn", report.median("wake_p50") / report.median("spawn_p50")
    )


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    if arguments.side is not None:
        run_one_side(arguments)
        return
    counts = sorted(set(arguments.agents))
    report = Report("hibernation", arguments, {"agents": counts, "wakes": arguments.wakes})
    for count in counts:
        report_count(report, count, measure_sides(count, arguments.runs))
    report_traced(report, counts[0])
    report_wakes(report, arguments.wakes, arguments.runs)
    report.print(
        f"hibernated agents: memory, wake-up and shutdown at {', '.join(f'{n:_}' for n in counts)}",
        [
            "memory: RSS growth per agent while they all sleep (traced: tracemalloc, one run);"
            f" the floor is idle Trio tasks, at most {FLOOR_CAP:_}",
            "shutdown ratio: seconds per agent over seconds per floor task",
        ],
    )


if __name__ == "__main__":
    main()
