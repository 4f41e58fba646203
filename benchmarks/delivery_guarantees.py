"""What each delivery guarantee costs: the same casts (1 -> 1) and calls under at-most-once,
at-least-once and exactly-once, beside the bare-channel floor, in one run.

The cast workload is ``cast_nowait`` of N messages to one agent until it has handled them all;
the call workload is N / 10 calls one after the other. Each is reported as a rate, its ratio to
the floor (casts: a producer and a consumer task on a memory channel; calls: ping-pong over two
channels), and its cost relative to at-most-once: time per message under the guarantee over
time per message under at-most-once (1.00 means the guarantee is free).

    uv run python benchmarks/delivery_guarantees.py [--quick] [--runs R] [--messages N]
"""

from __future__ import annotations

from collections.abc import Sequence

from _harness import Options, Report, run_trio
from _workloads import agent_casts, agent_round_trips, floor_casts, floor_round_trips

from terraphim_actors import DeliveryConfig, DeliveryGuarantee, MessageSystemConfig


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=5, quick_runs=3)
    choice.size("--messages", full=100_000, quick=5_000, help="casts per run (calls: a tenth)")
    return choice


def with_guarantee(guarantee: DeliveryGuarantee) -> MessageSystemConfig:
    return MessageSystemConfig(delivery=DeliveryConfig(guarantee=guarantee))


#: The sides of each workload: the floor (``None``), then each guarantee.
SIDES: tuple[DeliveryGuarantee | None, ...] = (None, *DeliveryGuarantee)


def rate(kind: str, guarantee: DeliveryGuarantee | None, count: int) -> float:
    """Messages per second of one run of the ``kind`` workload (the floor if ``guarantee`` is
    None)."""
    if kind == "cast":
        if guarantee is None:
            return count / run_trio(floor_casts, count, 1, 1, 1)
        return count / run_trio(agent_casts, count, 1, 1, 1, with_guarantee(guarantee))
    if guarantee is None:
        return count / sum(run_trio(floor_round_trips, count))
    return count / sum(run_trio(agent_round_trips, count, with_guarantee(guarantee)))


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    sizes = {"cast": arguments.messages, "call": max(arguments.messages // 10, 1)}
    report = Report(
        "delivery_guarantees", arguments, {"casts": sizes["cast"], "calls": sizes["call"]}
    )
    rates: dict[tuple[str, DeliveryGuarantee | None], list[float]] = {}
    for _ in range(arguments.runs):  # each run measures every side, so that drift hits all
        for kind, count in sizes.items():
            for guarantee in SIDES:
                rates.setdefault((kind, guarantee), []).append(rate(kind, guarantee, count))
    for kind in sizes:
        unit = f"{kind}s/s"
        floor = report.measure(f"floor_{kind}", f"floor {kind}", unit, rates[kind, None])
        cheapest = report.measure(
            f"{kind}_at_most_once",
            f"{kind} at-most-once",
            unit,
            rates[kind, DeliveryGuarantee.AT_MOST_ONCE],
        )
        report.ratio(f"{kind}_at_most_once_ratio_to_floor", cheapest.median / floor.median)
        for guarantee in (DeliveryGuarantee.AT_LEAST_ONCE, DeliveryGuarantee.EXACTLY_ONCE):
            name = guarantee.value.replace("-", "_")
            measured = report.measure(
                f"{kind}_{name}", f"{kind} {guarantee.value}", unit, rates[kind, guarantee]
            )
            report.ratio(f"{kind}_{name}_ratio_to_floor", measured.median / floor.median)
            report.ratio(
                f"{kind}_{name}_cost_ratio_to_at_most_once", cheapest.median / measured.median
            )
    report.print(f"delivery guarantees, {sizes['cast']:_} casts and {sizes['call']:_} calls")


if __name__ == "__main__":
    main()
