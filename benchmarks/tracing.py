"""What tracing costs per message: the same casts (1 -> 1) with no instrument, with
``TracingInstrument`` on OpenTelemetry's API alone (no SDK: its spans are no-ops), and on the
SDK with spans kept by an in-memory exporter, beside the bare-channel floor, in one run.

The traced sides send their casts inside a root span, so that each message carries a
``traceparent`` and its handler's span is that span's child: the whole path of a traced
message (inject at the send, extract, a span, attach and detach). The SDK side keeps its spans
in memory (cleared after each run). Each side is reported as a rate, its ratio to the floor,
and its cost relative to untraced casts: time per message traced over time per message
untraced (1.00 means tracing is free); the microseconds a span adds to a message are printed.

    uv run python benchmarks/tracing.py [--quick] [--runs R] [--messages N]
"""

from __future__ import annotations

from collections.abc import Sequence

from _harness import Options, Report, run_trio, settle
from _workloads import Counter, Tally, agent_casts, floor_casts, timed_casts
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from terraphim_actors import MessageSystemConfig, open_message_system
from terraphim_actors.otel import TracingInstrument


def options() -> Options:
    choice = Options(__doc__.splitlines()[0], runs=5, quick_runs=3)
    choice.size("--messages", full=50_000, quick=2_000, help="casts per run")
    return choice


async def traced_casts(messages: int, provider: trace.TracerProvider) -> float:
    """Seconds until one agent has handled ``messages`` casts sent in a root span, with
    ``TracingInstrument`` on ``provider``; start and shutdown are not timed."""
    tally = Tally(messages)
    config = MessageSystemConfig(instruments=[TracingInstrument(tracer_provider=provider)])
    tracer = provider.get_tracer("benchmark")
    async with open_message_system(config) as system:
        ref = await system.spawn(Counter, tally)
        await settle()
        with tracer.start_as_current_span("casts"):
            elapsed = await timed_casts([ref.cast_nowait], tally, 1, 1)
    return elapsed


#: The sides, in the order each run measures them, with their labels.
SIDES = {
    "floor": "floor (memory channel)",
    "untraced": "casts, no instrument",
    "api": "casts traced, API only (no-op spans)",
    "sdk": "casts traced, SDK + in-memory exporter",
}


def main(argv: Sequence[str] | None = None) -> None:
    arguments = options().parse(argv)
    count = arguments.messages
    report = Report("tracing", arguments, {"messages": count})
    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    api = trace.NoOpTracerProvider()
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    spans_per_run = []
    for _ in range(arguments.runs):  # each run measures every side, so that drift hits all
        rates["floor"].append(count / run_trio(floor_casts, count, 1, 1, 1))
        rates["untraced"].append(count / run_trio(agent_casts, count, 1, 1, 1))
        rates["api"].append(count / run_trio(traced_casts, count, api))
        rates["sdk"].append(count / run_trio(traced_casts, count, sdk))
        spans_per_run.append(len(exporter.get_finished_spans()))
        exporter.clear()
    sdk.shutdown()
    summaries = {
        side: report.measure(side, label, "casts/s", rates[side]) for side, label in SIDES.items()
    }
    floor, untraced = summaries["floor"].median, summaries["untraced"].median
    notes = []
    for side in ("untraced", "api", "sdk"):
        report.ratio(f"{side}_ratio_to_floor", summaries[side].median / floor)
    for side in ("api", "sdk"):
        traced = summaries[side].median
        report.ratio(f"{side}_cost_ratio_to_untraced", untraced / traced)
        added = (1 / traced - 1 / untraced) * 1e6
        report.extra(f"{side}_added_us_per_message", added)
        notes.append(f"{SIDES[side]}: {added:+.1f} µs a message")
    report.extra("spans_per_run", spans_per_run)
    notes.append(f"spans exported per run (SDK): {spans_per_run} (one per cast, and the root)")
    report.print(f"tracing, {count:_} casts 1 -> 1", notes)


if __name__ == "__main__":
    main()
