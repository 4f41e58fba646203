"""Cast throughput, handled by agents: 1 -> 1, fan-in (many senders -> 1) and fan-out
(1 -> many agents), each beside the same pattern on bare Trio memory channels; and the awaited
cast, 1 -> 1.

Throughput counts messages handled, not merely sent: a run ends when the last recipient has
counted the last message. The floor is a producer doing ``send_nowait`` into a channel per
recipient and one consumer task per channel receiving each message. Fan-in senders are tasks
that yield after each burst, as independent producers take turns. The awaited pattern sends
with ``await ref.cast(...)`` in a loop, beside ``await send.send(...)`` on a channel, which is
a scheduler round per send (the cast keeps a cooperative budget instead: one round per 64).

    uv run python benchmarks/cast_throughput.py [--quick] [--runs R] [--messages N]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from _harness import Options, Report, run_trio
from _workloads import agent_awaited_casts, agent_casts, floor_awaited_casts, floor_casts

from terraphim_actors import DeliveryConfig, DeliveryGuarantee, MessageSystemConfig

PATTERNS = ("one_to_one", "fan_in", "fan_out")


def shape(pattern: str, arguments: argparse.Namespace) -> tuple[int, int]:
    """How many senders and recipients ``pattern`` has."""
    return {
        "one_to_one": (1, 1),
        "fan_in": (arguments.senders, 1),
        "fan_out": (1, arguments.recipients),
    }[pattern]


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=5, quick_runs=3)
    choice.size("--messages", full=200_000, quick=5_000, help="messages per measurement")
    choice.size("--senders", full=100, quick=100, help="sender tasks of the fan-in")
    choice.size("--recipients", full=100, quick=100, help="agents of the fan-out")
    choice.size("--burst", full=10, quick=10, help="sends of a fan-in sender between yields")
    choice.guarantee("the agents'")
    return choice


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    guarantee = DeliveryGuarantee(arguments.guarantee)
    config = MessageSystemConfig(delivery=DeliveryConfig(guarantee=guarantee))
    report = Report(
        "cast_throughput",
        arguments,
        {
            "messages": arguments.messages,
            "senders": arguments.senders,
            "recipients": arguments.recipients,
            "burst": arguments.burst,
            "guarantee": guarantee.value,
        },
    )
    messages = arguments.messages
    for key in PATTERNS:
        senders, recipients = shape(key, arguments)
        floors, agents = [], []
        for _ in range(arguments.runs):
            floors.append(run_trio(floor_casts, messages, senders, recipients, arguments.burst))
            agents.append(
                run_trio(agent_casts, messages, senders, recipients, arguments.burst, config)
            )
        shown = f"{senders}->{recipients}"
        floor = report.measure(
            f"floor_{key}", f"floor {shown}", "messages/s", [messages / s for s in floors]
        )
        agent = report.measure(
            f"agents_{key}", f"agents {shown}", "messages/s", [messages / s for s in agents]
        )
        report.ratio(f"cast_{key}_ratio_to_floor", agent.median / floor.median)
    floors, agents = [], []
    for _ in range(arguments.runs):
        floors.append(run_trio(floor_awaited_casts, messages))
        agents.append(run_trio(agent_awaited_casts, messages, config))
    floor = report.measure(
        "floor_awaited", "floor await send 1->1", "messages/s", [messages / s for s in floors]
    )
    agent = report.measure(
        "agents_awaited", "agents await cast 1->1", "messages/s", [messages / s for s in agents]
    )
    report.ratio("cast_awaited_ratio_to_floor", agent.median / floor.median)
    report.print(f"cast throughput, {messages:_} messages handled, {guarantee.value}")


if __name__ == "__main__":
    main()
