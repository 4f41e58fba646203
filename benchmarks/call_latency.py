"""Call round trip: the latency of each ``call`` to an agent (p50 and p99), beside a ping-pong
between two tasks over a request and a reply memory channel (the floor).

Every call is timed on its own, so the tail (p99) shows the pauses a caller meets: garbage
collection, a batch of other work, a slow path. Each run reports its p50 and p99; the table
gives the median, min and max of those over the runs.

    uv run python benchmarks/call_latency.py [--quick] [--runs R] [--calls N]
"""

from __future__ import annotations

from collections.abc import Sequence

from _harness import Options, Report, run_trio
from _workloads import agent_round_trips, floor_round_trips

from terraphim_actors import DeliveryConfig, DeliveryGuarantee, MessageSystemConfig


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=5, quick_runs=3)
    choice.size("--calls", full=20_000, quick=1_000, help="timed calls per run")
    choice.guarantee("the calls'")
    return choice


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    guarantee = DeliveryGuarantee(arguments.guarantee)
    config = MessageSystemConfig(delivery=DeliveryConfig(guarantee=guarantee))
    report = Report(
        "call_latency", arguments, {"calls": arguments.calls, "guarantee": guarantee.value}
    )
    latencies: dict[str, list[list[float]]] = {"floor": [], "agent": []}
    for _ in range(arguments.runs):
        latencies["floor"].append(run_trio(floor_round_trips, arguments.calls))
        latencies["agent"].append(run_trio(agent_round_trips, arguments.calls, config))
    report.latencies({"floor": "floor round trip", "agent": "agent call"}, latencies)
    report.ratio(
        "call_p50_latency_ratio_to_floor", report.median("agent_p50") / report.median("floor_p50")
    )
    report.ratio(
        "call_p99_latency_ratio_to_floor", report.median("agent_p99") / report.median("floor_p99")
    )
    report.ratio(
        "call_p99_latency_ratio_to_p50", report.median("agent_p99") / report.median("agent_p50")
    )
    report.print(f"call round trip, {arguments.calls:_} calls per run, {guarantee.value}")


if __name__ == "__main__":
    main()
