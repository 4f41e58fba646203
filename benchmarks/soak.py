"""Soak: many agents, millions of messages, and the process's memory sampled after each round,
to show that it stays flat once the bounded tables have filled; the same traffic on bare memory
channels (one consumer task per agent) is the floor.

Each round sends one message per agent, round robin: at-least-once and exactly-once casts in
turn, an exactly-once call now and then, an info the agents do not handle (a dead letter), and
rarely a cast that crashes its agent once (a restart and a retry). So the dedup windows, the
statistics, the dead letters and the retry tables are all in use. The round ends when every
message meant to be handled has been handled; then the resident set size (RSS) is sampled.
Growth is the last sample minus the first one after the warm-up rounds, during which the
bounded tables fill. Each side runs in a process of its own (this script with ``--side``).

    uv run python benchmarks/soak.py [--quick] [--agents N] [--messages M] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from _harness import Options, Report, discard_logs, resident_bytes, run_side, settle
from _workloads import Tally

from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    DedupWindow,
    DeliveryConfig,
    DeliveryGuarantee,
    MessageOptions,
    MessageSystemConfig,
    open_message_system,
)

SIDES = ("floor", "agents")
EXACTLY_ONCE = MessageOptions(guarantee=DeliveryGuarantee.EXACTLY_ONCE)
#: Seconds a round may take before the soak reports messages lost.
ROUND_TIMEOUT = 600.0
MEGABYTE = 2**20


class Crash(Exception):
    """Raised on purpose, once per crashing message."""


class Ledger(Tally):
    """The run's tally, and which crashing messages have crashed already (so that their
    retry succeeds)."""

    __slots__ = ("crashed",)

    def __init__(self) -> None:
        super().__init__(0)
        self.crashed: set[int] = set()

    def expect(self, more: int) -> None:
        """Wait for ``more`` handled messages from now on."""
        self.target += more
        self.done = trio.Event()
        if self.count >= self.target:
            self.done.set()


class Worker(Agent):
    """Counts what it handles; crashes the first time it sees a crashing message; does not
    handle infos (they become dead letters)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if message.__class__ is tuple:
            _, token = message
            if token not in self.ledger.crashed:
                self.ledger.crashed.add(token)
                raise Crash(token)
            self.ledger.crashed.discard(token)
        self.ledger.add()

    async def handle_call(self, message: Any, ctx: Context) -> Any:
        self.ledger.add()
        return message


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=1, quick_runs=1)
    choice.size("--agents", full=100_000, quick=500, help="agents (floor: consumer tasks)")
    choice.size("--messages", full=3_000_000, quick=20_000, help="messages in all")
    choice.size("--rounds", full=30, quick=20, help="rounds (one RSS sample after each)")
    choice.size("--call-every", full=100, quick=100, help="one message in N is a call")
    choice.size("--unhandled-every", full=1_000, quick=1_000, help="one in N is a dead letter")
    choice.size("--crash-every", full=100_000, quick=5_000, help="one in N crashes its agent")
    choice.size(
        "--dead-letter-capacity", full=100, quick=3, help="dead letters kept (all are counted)"
    )
    choice.size("--dedup-messages", full=4, quick=4, help="exactly-once window, in messages")
    choice.size(
        "--dedup-age", full=5.0, quick=5.0, kind=float, help="exactly-once window, in seconds"
    )
    choice.parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    return choice


class Traffic:
    """Which kind each message of the soak is, by its number."""

    def __init__(self, arguments: argparse.Namespace) -> None:
        self.call_every = arguments.call_every
        self.unhandled_every = arguments.unhandled_every
        self.crash_every = arguments.crash_every

    def kind(self, number: int) -> str:
        if number % self.crash_every == self.crash_every // 2:
            return "crash"
        if number % self.unhandled_every == self.unhandled_every - 1:
            return "unhandled"
        if number % self.call_every == self.call_every - 1:
            return "call"
        return "exactly-once" if number % 2 else "at-least-once"

    def handled_in(self, numbers: range) -> int:
        """How many of ``numbers`` a handler counts (all but the unhandled ones)."""
        return sum(self.kind(number) != "unhandled" for number in numbers)


async def soak_rounds(
    arguments: argparse.Namespace,
    ledger: Ledger,
    send: Callable[[int, str, int], Awaitable[Any] | None],
) -> tuple[float, list[dict[str, float]]]:
    """Send the rounds through ``send(recipient, kind, number)``; return the seconds spent
    sending and handling (sampling excluded) and the samples."""
    traffic = Traffic(arguments)
    per_round = max(arguments.messages // arguments.rounds, 1)
    busy = 0.0
    samples = []
    for round_number in range(arguments.rounds):
        numbers = range(round_number * per_round, (round_number + 1) * per_round)
        ledger.expect(traffic.handled_in(numbers))
        started = time.perf_counter()
        for number in numbers:
            result = send(number % arguments.agents, traffic.kind(number), number)
            if result is not None:
                await result
        with trio.move_on_after(ROUND_TIMEOUT) as waited:
            await ledger.done.wait()
        if waited.cancelled_caught:
            raise RuntimeError(
                f"round {round_number}: {ledger.target - ledger.count} messages not handled"
                f" after {ROUND_TIMEOUT} s"
            )
        busy += time.perf_counter() - started
        gc.collect()
        samples.append(
            {
                "messages": numbers.stop,
                "seconds": busy,
                "rss_bytes": float(resident_bytes()),
                "live_blocks": float(sys.getallocatedblocks()),
            }
        )
    return busy, samples


async def agents_side(arguments: argparse.Namespace) -> dict[str, Any]:
    config = MessageSystemConfig(
        max_restarts=1_000_000,
        dead_letter_capacity=arguments.dead_letter_capacity,
        delivery=DeliveryConfig(
            guarantee=DeliveryGuarantee.AT_LEAST_ONCE,
            retry_delay=0.01,
            jitter=0.0,
            dedup_window=DedupWindow(
                max_messages=arguments.dedup_messages, max_age=arguments.dedup_age
            ),
        ),
    )
    ledger = Ledger()
    async with open_message_system(config) as system:
        refs = [await system.spawn(Worker, ledger) for _ in range(arguments.agents)]
        await settle()

        def send(recipient: int, kind: str, number: int) -> Awaitable[Any] | None:
            ref = refs[recipient]
            if kind == "call":
                return ref.call(number, options=EXACTLY_ONCE)
            _send_now(ref, kind, number)
            return None

        busy, samples = await soak_rounds(arguments, ledger, send)
        stats, _ = system.get_stats()
        delivery = system.delivery.get_stats()
    by_reason = {reason.value: count for reason, count in stats.dead_letters_by_reason.items()}
    return {
        "seconds": busy,
        "samples": samples,
        "handled": ledger.count,
        "delivery": {
            "sent": delivery.sent,
            "acknowledged": delivery.acknowledged,
            "retried": delivery.retried,
            "duplicates_suppressed": delivery.duplicates_suppressed,
            "dead_lettered": delivery.dead_lettered,
            "pending": delivery.pending,
        },
        "dead_letters_by_reason": by_reason,
        "agent_restarts": stats.agent_restarts,
    }


def _send_now(ref: AgentRef, kind: str, number: int) -> None:
    if kind == "at-least-once":
        ref.cast_nowait(number)
    elif kind == "exactly-once":
        ref.cast_nowait(number, options=EXACTLY_ONCE)
    elif kind == "crash":
        ref.cast_nowait(("crash", number))
    else:
        ref.info_nowait(number)


async def floor_side(arguments: argparse.Namespace) -> dict[str, Any]:
    """The same rounds on memory channels: a call is a request carrying a reply channel, an
    unhandled message is received and dropped, a crashing one is an ordinary message."""
    ledger = Ledger()
    reply_send, reply_receive = trio.open_memory_channel[int](math.inf)

    async def consume(receive: trio.MemoryReceiveChannel[Any]) -> None:
        async for message in receive:
            if message.__class__ is tuple:
                reply_send.send_nowait(message[0])
            elif message < 0:
                continue
            ledger.add()

    async with trio.open_nursery() as nursery:
        senders = []
        for _ in range(arguments.agents):
            channel, receive = trio.open_memory_channel[Any](math.inf)
            senders.append(channel)
            nursery.start_soon(consume, receive)
        await settle()

        async def call(channel: trio.MemorySendChannel[Any], number: int) -> None:
            channel.send_nowait((number,))
            await reply_receive.receive()

        def send(recipient: int, kind: str, number: int) -> Awaitable[None] | None:
            channel = senders[recipient]
            if kind == "call":
                return call(channel, number)
            channel.send_nowait(-1 - number if kind == "unhandled" else number)
            return None

        busy, samples = await soak_rounds(arguments, ledger, send)
        for channel in senders:
            channel.close()
    return {"seconds": busy, "samples": samples, "handled": ledger.count}


def growth(samples: list[dict[str, float]], warm_up: int) -> dict[str, float]:
    """Growth from the end of the warm-up rounds to the last sample, of the RSS and of the
    live allocations (``sys.getallocatedblocks``). The RSS keeps the peak of the spawn, so
    it can hide growth below that peak; the count of live blocks cannot."""
    result = {}
    for field in ("rss_bytes", "live_blocks"):
        settled = samples[min(warm_up, len(samples)) - 1][field]
        after = [sample[field] for sample in samples[warm_up - 1 :]]
        name = field.removesuffix("_bytes")
        result[f"{name}_after_warm_up"] = settled
        result[f"{name}_last"] = after[-1]
        result[f"{name}_growth"] = after[-1] - settled
        result[f"{name}_growth_fraction"] = (after[-1] - settled) / settled
        result[f"{name}_spread_after_warm_up"] = max(after) - min(after)
    return result


def run_one_side(arguments: argparse.Namespace) -> None:
    discard_logs()
    measure = floor_side if arguments.side == "floor" else agents_side
    print(json.dumps(trio.run(measure, arguments)))


def side_arguments(arguments: argparse.Namespace, side: str) -> list[str]:
    names = (
        "agents",
        "messages",
        "rounds",
        "call_every",
        "unhandled_every",
        "crash_every",
        "dead_letter_capacity",
        "dedup_messages",
        "dedup_age",
    )
    flags = [f"--{name.replace('_', '-')}={getattr(arguments, name)}" for name in names]
    return ["--side", side, *flags]


def print_samples(results: dict[str, dict[str, Any]]) -> None:
    print(
        f"{'messages':>12}  {'floor RSS MB':>12}  {'agents RSS MB':>13}"
        f"  {'floor blocks':>12}  {'agents blocks':>13}  {'agents s':>9}"
    )
    samples = zip(results["floor"]["samples"], results["agents"]["samples"], strict=True)
    for floor, agents in samples:
        print(
            f"{agents['messages']:>12,.0f}  {floor['rss_bytes'] / MEGABYTE:>12.1f}"
            f"  {agents['rss_bytes'] / MEGABYTE:>13.1f}  {floor['live_blocks']:>12,.0f}"
            f"  {agents['live_blocks']:>13,.0f}  {agents['seconds']:>9.1f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    if arguments.side is not None:
        run_one_side(arguments)
        return
    warm_up = max(arguments.rounds // 3, 1)
    per_round = max(arguments.messages // arguments.rounds, 1)
    messages = per_round * arguments.rounds
    report = Report(
        "soak",
        arguments,
        {
            "agents": arguments.agents,
            "messages": messages,
            "rounds": arguments.rounds,
            "warm_up_rounds": warm_up,
            "call_every": arguments.call_every,
            "unhandled_every": arguments.unhandled_every,
            "crash_every": arguments.crash_every,
            "dead_letter_capacity": arguments.dead_letter_capacity,
            "dedup_window": [arguments.dedup_messages, arguments.dedup_age],
        },
    )
    runs: list[dict[str, dict[str, Any]]] = [
        {side: run_side(__file__, *side_arguments(arguments, side)) for side in SIDES}
        for _ in range(arguments.runs)
    ]
    for side in SIDES:
        report.measure(
            f"{side}_throughput",
            f"{side} messages handled",
            "messages/s",
            [messages / run[side]["seconds"] for run in runs],
        )
    report.ratio(
        "soak_ratio_to_floor",
        report.median("agents_throughput") / report.median("floor_throughput"),
    )
    memory = {side: [growth(run[side]["samples"], warm_up) for run in runs] for side in SIDES}
    report.extra("memory", memory)
    report.extra("samples", {side: runs[-1][side]["samples"] for side in SIDES})
    last = runs[-1]["agents"]
    report.extra(
        "delivery",
        {
            "handled": last["handled"],
            "expected": Traffic(arguments).handled_in(range(messages)),
            **last["delivery"],
            "dead_letters_by_reason": last["dead_letters_by_reason"],
            "agent_restarts": last["agent_restarts"],
        },
    )
    print_samples(runs[-1])
    notes = []
    for side in SIDES:
        rss = statistics.median(entry["rss_growth"] for entry in memory[side])
        rss_fraction = statistics.median(entry["rss_growth_fraction"] for entry in memory[side])
        blocks = statistics.median(entry["live_blocks_growth"] for entry in memory[side])
        blocks_fraction = statistics.median(
            entry["live_blocks_growth_fraction"] for entry in memory[side]
        )
        notes.append(
            f"{side}: growth after the {warm_up} warm-up rounds: RSS {rss / MEGABYTE:+.1f} MB"
            f" ({rss_fraction:+.1%}), live blocks {blocks:+,.0f} ({blocks_fraction:+.1%})"
        )
    report.print(f"soak, {arguments.agents:_} agents, {messages:_} messages", notes)


if __name__ == "__main__":
    main()
