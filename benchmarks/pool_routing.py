"""Pool routing and the circuit breaker's fast fail.

Pool routing: casts through a pool's ref (``spawn_pool``) under each load-balancing strategy,
until every member has handled its share, beside the same casts to one plain agent and the
floor (one producer, one consumer task per member's channel, round robin).

Fast fail: the time one at-most-once ``cast_nowait`` takes when the recipient's circuit is open
(it raises ``CircuitOpen`` and files a dead letter), beside a cast that succeeds, and the floor's
``send_nowait`` into an open and into a closed memory channel (which raises).

    uv run python benchmarks/pool_routing.py [--quick] [--runs R] [--messages N] [--size K]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import trio
from _harness import Options, Report, discard_logs, run_trio, settle
from _workloads import Counter, Tally, agent_casts, floor_casts, timed_casts

from terraphim_actors import (
    Agent,
    AgentRef,
    CircuitBreakerConfig,
    CircuitState,
    Context,
    DeliveryConfig,
    DeliveryGuarantee,
    LoadBalancing,
    MessageSystemConfig,
    RouterConfig,
    open_message_system,
)
from terraphim_actors.errors import CircuitOpen

NANOSECONDS = 1e9

#: A circuit that opens on the first failure and stays open for the whole measurement.
FRAGILE = MessageSystemConfig(
    delivery=DeliveryConfig(guarantee=DeliveryGuarantee.AT_MOST_ONCE),
    router=RouterConfig(
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1, reset_timeout=3600.0)
    ),
)


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=5, quick_runs=3)
    choice.size("--messages", full=100_000, quick=5_000, help="casts per routing measurement")
    choice.size("--size", full=4, quick=4, help="members of the pool")
    choice.size("--sends", full=100_000, quick=5_000, help="sends per fast-fail measurement")
    return choice


async def pool_casts(messages: int, size: int, strategy: LoadBalancing) -> float:
    """Seconds for a pool of ``size`` to handle ``messages`` casts sent through its ref."""
    tally = Tally(messages)
    async with open_message_system() as system:
        pool = await system.spawn_pool(Counter, tally, size=size, strategy=strategy, seed=1)
        await settle()
        elapsed = await timed_casts([pool.cast_nowait], tally, 1, 1)
    return elapsed


class Fragile(Agent):
    """Fails on ``"fail"``, which opens its circuit (threshold 1)."""

    async def handle_cast(self, message: Any, ctx: Context) -> None:
        if message == "fail":
            raise RuntimeError("a failure that opens the circuit")


async def refused_casts(sends: int) -> float:
    """Seconds per at-most-once cast refused by an open circuit."""
    async with open_message_system(FRAGILE) as system:
        ref = await system.spawn(Fragile)
        ref.cast_nowait("fail")
        await settle()  # crashed, restarted, circuit open
        if system.router.stats().circuits.get(ref.id) is not CircuitState.OPEN:
            raise RuntimeError("the circuit did not open: nothing to measure")
        started = time.perf_counter()
        refused = _refused(ref, sends)
        elapsed = time.perf_counter() - started
    if refused != sends:
        raise RuntimeError(f"only {refused} of {sends} casts were refused")
    return elapsed / sends


def _refused(ref: AgentRef, sends: int) -> int:
    refused = 0
    for number in range(sends):
        try:
            ref.cast_nowait(number)
        except CircuitOpen:
            refused += 1
    return refused


async def successful_casts(sends: int) -> float:
    """Seconds per at-most-once cast accepted by a healthy agent (the send alone)."""
    tally = Tally(sends)
    async with open_message_system(FRAGILE) as system:
        ref = await system.spawn(Counter, tally)
        await settle()
        started = time.perf_counter()
        for number in range(sends):
            ref.cast_nowait(number)
        elapsed = time.perf_counter() - started
        await tally.done.wait()
    return elapsed / sends


async def floor_sends(sends: int, closed: bool) -> float:
    """Seconds per ``send_nowait`` into a memory channel, or into a closed one (which
    raises ``trio.ClosedResourceError``, counted as the agents' refusals are)."""
    send, receive = trio.open_memory_channel[int](math.inf)
    if closed:
        send.close()
    refused = 0
    started = time.perf_counter()
    for number in range(sends):
        try:
            send.send_nowait(number)
        except trio.ClosedResourceError:
            refused += 1
    elapsed = time.perf_counter() - started
    receive.close()
    if refused != (sends if closed else 0):
        raise RuntimeError(f"{refused} of {sends} sends were refused")
    return elapsed / sends


def routing(report: Report, arguments: argparse.Namespace) -> None:
    messages, size, runs = arguments.messages, arguments.size, arguments.runs
    rates: dict[str, list[float]] = {}
    for _ in range(runs):
        rates.setdefault("floor", []).append(messages / run_trio(floor_casts, messages, 1, size, 1))
        rates.setdefault("single", []).append(messages / run_trio(agent_casts, messages, 1, 1, 1))
        for strategy in LoadBalancing:
            seconds = run_trio(pool_casts, messages, size, strategy)
            rates.setdefault(strategy.name.lower(), []).append(messages / seconds)
    unit = "messages/s"
    floor = report.measure("floor_routing", f"floor 1->{size} channels", unit, rates["floor"])
    single = report.measure("single_agent", "one plain agent", unit, rates["single"])
    for strategy in LoadBalancing:
        key = strategy.name.lower()
        pool = report.measure(f"pool_{key}", f"pool of {size}, {strategy.value}", unit, rates[key])
        report.ratio(f"pool_{key}_ratio_to_floor", pool.median / floor.median)
        report.ratio(f"pool_{key}_ratio_to_single_agent", pool.median / single.median)


def fast_fail(report: Report, arguments: argparse.Namespace) -> None:
    sends, runs = arguments.sends, arguments.runs
    times: dict[str, list[float]] = {}
    for _ in range(runs):
        times.setdefault("floor_send", []).append(run_trio(floor_sends, sends, False))
        times.setdefault("floor_refused", []).append(run_trio(floor_sends, sends, True))
        times.setdefault("successful", []).append(run_trio(successful_casts, sends))
        times.setdefault("refused", []).append(run_trio(refused_casts, sends))
    in_ns = {key: [seconds * NANOSECONDS for seconds in values] for key, values in times.items()}
    floor_send = report.measure("floor_send", "floor send_nowait", "ns", in_ns["floor_send"])
    floor_refused = report.measure(
        "floor_refused_send", "floor send_nowait, closed", "ns", in_ns["floor_refused"]
    )
    successful = report.measure("successful_cast", "cast accepted", "ns", in_ns["successful"])
    refused = report.measure("refused_cast", "cast, circuit open", "ns", in_ns["refused"])
    report.ratio("refused_cast_cost_ratio_to_successful_cast", refused.median / successful.median)
    report.ratio("refused_cast_cost_ratio_to_floor", refused.median / floor_refused.median)
    report.ratio("successful_cast_cost_ratio_to_floor", successful.median / floor_send.median)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    discard_logs()
    report = Report(
        "pool_routing",
        arguments,
        {"messages": arguments.messages, "size": arguments.size, "sends": arguments.sends},
    )
    routing(report, arguments)
    fast_fail(report, arguments)
    report.print(
        f"pool routing ({arguments.messages:_} casts) and circuit fast fail"
        f" ({arguments.sends:_} sends)"
    )


if __name__ == "__main__":
    main()
