"""``terraphim-actors bench``: run the benchmark scripts and set their figures beside the claims
of the Rust crate we re-create and the targets we hold ourselves to.

Each script in ``benchmarks/`` measures a pattern and, in the same run, a bare Trio memory
channel doing the same (the floor), and prints one JSON record last. This command runs every
script in a process of its own (so that one's memory and garbage do not weigh on the next),
echoes its table, collects the records, and prints one summary. The targets are judged on
ratios to the floor, which hold on a shared machine where absolute times drift; a missed
target is reported, never an error: only a script that fails makes the exit code non-zero.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import terraphim_actors

__all__ = ["add_bench_parser", "benchmarks_directory", "run_bench"]

#: The scripts in the order they run (quick ones first); any other script runs after them.
ORDER = (
    "cast_throughput",
    "call_latency",
    "delivery_guarantees",
    "tracing",
    "admission",
    "durable_delivery",
    "cluster",
    "pool_routing",
    "restart_latency",
    "idle_agents",
    "hibernation",
    "soak",
)

#: The soak's memory counts as flat when neither its RSS nor its count of live allocations
#: grows by more than this fraction after the warm-up (both move a little when nothing leaks:
#: an arena here, the soak's own samples there).
FLAT_GROWTH = 0.05


def add_bench_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``bench`` command to the ``terraphim-actors`` parser."""
    parser = subparsers.add_parser(
        "bench",
        help="run the benchmarks and compare them with the floor, the seed's claims and targets",
        description="Run every script in benchmarks/ (each measures a pattern beside a bare Trio"
        " memory channel doing the same, in the same run), then print one table with the"
        " original crate's claims, our figures and our targets. Exits 1 only if"
        " a script fails: a missed target is reported, not an error.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, not minutes")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these scripts (names without .py)"
    )
    parser.add_argument(
        "--runs",
        type=_at_least_one,
        metavar="R",
        help="runs per measurement (default: each script's own)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write every record and the summary here"
    )
    return parser


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def benchmarks_directory() -> Path:
    """Where the scripts are: ``benchmarks/`` beside the package, in a source checkout."""
    return Path(terraphim_actors.__file__).resolve().parent.parent / "benchmarks"


def run_bench(arguments: argparse.Namespace, stream: TextIO | None = None) -> int:
    """Run the benchmarks that ``arguments`` ask for; returns the exit code (0: every script
    ran; 1: one failed; 2: nothing to run)."""
    out = sys.stdout if stream is None else stream
    directory = benchmarks_directory()
    if not directory.is_dir():
        print(
            f"error: no benchmarks at {directory}: the scripts ship with the source repository,"
            " not with the installed package; run this command from a checkout",
            file=sys.stderr,
        )
        return 2
    scripts = _scripts(directory)
    unknown = sorted(set(arguments.only or ()) - set(scripts))
    if unknown:
        print(
            f"error: no benchmark named {', '.join(unknown)}; choose from {', '.join(scripts)}",
            file=sys.stderr,
        )
        return 2
    chosen = [name for name in scripts if not arguments.only or name in arguments.only]
    flags = ["--quick"] * arguments.quick + (
        [] if arguments.runs is None else ["--runs", str(arguments.runs)]
    )
    records: list[dict[str, Any]] = []
    failed: list[str] = []
    for name in chosen:
        record = _run_script(scripts[name], flags, out)
        if record is None:
            failed.append(name)
        else:
            records.append(record)
    rows = summarise(records, chosen)
    if arguments.json is not None:
        _write_json(arguments.json, arguments.quick, records, rows, failed)
    _print_summary(rows, arguments.quick, out)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=out)
        return 1
    return 0


def _scripts(directory: Path) -> dict[str, Path]:
    found = {path.stem: path for path in directory.glob("*.py") if not path.name.startswith("_")}
    known = [name for name in ORDER if name in found]
    return {name: found[name] for name in known + sorted(set(found) - set(known))}


def _run_script(script: Path, flags: Sequence[str], out: TextIO) -> dict[str, Any] | None:
    """Run one script, echo its table, and return its JSON record (``None`` if it failed)."""
    print(f"\n== {script.stem} ==", file=out, flush=True)
    command = [sys.executable, str(script), *flags]
    record: dict[str, Any] | None = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            parsed = _record_in(line)
            if parsed is None:
                print(line, end="", file=out, flush=True)
            else:
                record = parsed
    if process.returncode != 0 or record is None:
        why = f"exit code {process.returncode}" if process.returncode else "no JSON record"
        print(f"{script.stem} failed ({why})", file=out)
        return None
    return record


def _record_in(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        parsed = json.loads(line)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) and "benchmark" in parsed else None


def _write_json(
    path: Path,
    quick: bool,
    records: list[dict[str, Any]],
    rows: list[SummaryRow],
    failed: list[str],
) -> None:
    document = {
        "quick": quick,
        "records": records,
        "summary": [row.as_dict() for row in rows],
        "failed": failed,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# -- the summary ---------------------------------------------------------------------------


class NotRun(Exception):
    """The benchmark a summary row needs was not run (``--only``) or failed."""


class Records:
    """The collected records, by benchmark name, with lookups that say what is missing."""

    def __init__(self, records: Iterable[Mapping[str, Any]]) -> None:
        self._records = {record["benchmark"]: record for record in records}

    def record(self, benchmark: str) -> Mapping[str, Any]:
        try:
            return self._records[benchmark]
        except KeyError:
            raise NotRun(benchmark) from None

    def median(self, benchmark: str, key: str) -> float:
        return float(self.record(benchmark)["measurements"][key]["median"])

    def ratio(self, benchmark: str, key: str) -> float:
        return float(self.record(benchmark)["ratios"][key])


#: What a row shows of our figures, and whether the target is met (None: no target).
Verdict = tuple[str, bool | None]


@dataclass(frozen=True)
class SummaryRow:
    """One line of the summary: a topic, the seed's claim, ours, the target, and the verdict."""

    topic: str
    claim: str
    ours: str
    target: str
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "claim": self.claim,
            "ours": self.ours,
            "target": self.target,
            "met": self.met,
        }


def _cast_one_to_one(records: Records) -> Verdict:
    rate = records.median("cast_throughput", "agents_one_to_one")
    ratio = records.ratio("cast_throughput", "cast_one_to_one_ratio_to_floor")
    return f"{rate:,.0f} casts/s handled, 1->1 ({ratio:.2f}x floor)", ratio >= 2.5


def _cast_pattern(pattern: str, shown: str) -> Callable[[Records], Verdict]:
    def verdict(records: Records) -> Verdict:
        rate = records.median("cast_throughput", f"agents_{pattern}")
        ratio = records.ratio("cast_throughput", f"cast_{pattern}_ratio_to_floor")
        return f"{rate:,.0f} casts/s handled, {shown} ({ratio:.2f}x floor)", None

    return verdict


def _cast_awaited(records: Records) -> Verdict:
    rate = records.median("cast_throughput", "agents_awaited")
    ratio = records.ratio("cast_throughput", "cast_awaited_ratio_to_floor")
    return f"{rate:,.0f} casts/s handled, await ref.cast ({ratio:.2f}x await send)", ratio >= 3


def _call_p50(records: Records) -> Verdict:
    p50 = records.median("call_latency", "agent_p50")
    ratio = records.ratio("call_latency", "call_p50_latency_ratio_to_floor")
    return f"call round trip p50 {p50:.0f} µs ({ratio:.2f}x floor's time)", ratio <= 1.0


def _call_p99(records: Records) -> Verdict:
    p99 = records.median("call_latency", "agent_p99")
    ratio = records.ratio("call_latency", "call_p99_latency_ratio_to_p50")
    return f"call round trip p99 {p99:.0f} µs ({ratio:.2f}x p50)", ratio <= 3.0


def _guarantee_cost(name: str, limit: float) -> Callable[[Records], Verdict]:
    def verdict(records: Records) -> Verdict:
        costs = [
            records.ratio("delivery_guarantees", f"{kind}_{name}_cost_ratio_to_at_most_once")
            for kind in ("cast", "call")
        ]
        shown = f"casts {costs[0]:.2f}x, calls {costs[1]:.2f}x the cost of at-most-once"
        return shown, max(costs) <= limit

    return verdict


def _tracing(records: Records) -> Verdict:
    record = records.record("tracing")
    added = record["sdk_added_us_per_message"]
    cost = records.ratio("tracing", "sdk_cost_ratio_to_untraced")
    api = records.ratio("tracing", "api_cost_ratio_to_untraced")
    untraced = records.ratio("tracing", "untraced_ratio_to_floor")
    shown = (
        f"a span per cast (SDK, in memory) adds {added:.1f} µs ({cost:.2f}x an untraced cast;"
        f" API only {api:.2f}x); not installed {untraced:.2f}x floor"
    )
    return shown, None


def _admission(records: Records) -> Verdict:
    record = records.record("admission")
    costs = ", ".join(
        f"{label} {records.ratio('admission', f'{side}_cost_ratio_to_no_budget'):.2f}x"
        f" ({record[f'{side}_added_us_per_message']:+.1f} µs)"
        for side, label in (("rate", "rate"), ("tokens", "tokens"), ("concurrency", "concurrent"))
    )
    return f"a cast past a budget that admits it, vs none: {costs}", None


def _durable_cast(records: Records) -> Verdict:
    costs = [records.median("durable_delivery", f"durable_{senders}") for senders in (1, 64)]
    ratios = [
        records.ratio("durable_delivery", f"durable_{senders}_cost_ratio_to_floor")
        for senders in (1, 64)
    ]
    shown = (
        f"await cast journaled: {costs[0]:.0f} µs/msg with 1 sender, {costs[1]:.0f} with 64"
        f" ({ratios[0]:.2f}x / {ratios[1]:.2f}x bare SQLite)"
    )
    return shown, max(ratios) <= 1.5


def _replay(records: Records) -> Verdict:
    record = records.record("durable_delivery")
    seconds = records.median("durable_delivery", "replay_delivered")
    ratio = records.ratio("durable_delivery", "replay_time_ratio_to_bare_read")
    shown = (
        f"{record['parameters']['replay']:,} unsettled replayed at open in {seconds:.2f} s"
        f" ({ratio:.2f}x a bare read and decode)"
    )
    return shown, ratio <= 2.0


#: Cross-node casts must reach this fraction of the raw throughput of their transport.
CLUSTER_CAST_FLOOR = 0.7
#: A cross-node call's p50 may be at most this multiple of a raw request/reply's.
CLUSTER_CALL_CEILING = 1.3


def _cluster_casts(records: Records) -> Verdict:
    sides = (
        ("at_most_once", "cast_at_most_once_ratio_to_raw_publish", "at most once"),
        ("at_least_once", "cast_at_least_once_ratio_to_raw_jetstream", "at least once, awaited"),
        (
            "at_least_once_nowait",
            "cast_nowait_at_least_once_ratio_to_raw_jetstream",
            "at least once, nowait",
        ),
    )
    shown, ratios = [], []
    for measurement, ratio_key, what in sides:
        rate = records.median("cluster", measurement)
        ratio = records.ratio("cluster", ratio_key)
        shown.append(f"{what} {rate:,.0f}/s ({ratio:.2f}x raw)")
        ratios.append(ratio)
    return "; ".join(shown), min(ratios) >= CLUSTER_CAST_FLOOR


def _cluster_calls(records: Records) -> Verdict:
    p50 = records.median("cluster", "call_p50")
    p99 = records.median("cluster", "call_p99")
    ratio = records.ratio("cluster", "call_p50_latency_ratio_to_raw_request")
    shown = f"cross-node call p50 {p50:.0f} µs, p99 {p99:.0f} µs ({ratio:.2f}x raw request/reply)"
    return shown, ratio <= CLUSTER_CALL_CEILING


def _pool_routing(records: Records) -> Verdict:
    record = records.record("pool_routing")
    rates = {
        key.removeprefix("pool_"): value["median"]
        for key, value in record["measurements"].items()
        if key.startswith("pool_")
    }
    slowest = min(rates, key=rates.__getitem__)
    single = records.ratio("pool_routing", f"pool_{slowest}_ratio_to_single_agent")
    shown = (
        f"pool of {record['parameters']['size']}: {1e6 / rates[slowest]:.1f} µs a cast at worst"
        f" ({slowest.replace('_', '-')}: {single:.2f}x one agent's rate)"
    )
    return shown, None


def _fast_fail(records: Records) -> Verdict:
    refused = records.median("pool_routing", "refused_cast")
    accepted = records.median("pool_routing", "successful_cast")
    return f"open circuit refuses a cast in {refused:,.0f} ns (accepted: {accepted:,.0f} ns)", None


def _largest_count(records: Records) -> int:
    return int(max(records.record("idle_agents")["parameters"]["agents"]))


def _idle_memory(records: Records) -> Verdict:
    count = _largest_count(records)
    agent = records.median("idle_agents", f"agents_memory_at_{count}")
    floor = records.median("idle_agents", f"floor_memory_at_{count}")
    ratio = records.ratio("idle_agents", f"memory_ratio_to_floor_at_{count}")
    shown = (
        f"{agent / 1024:.1f} KB per idle agent (RSS, {count:,}), floor {floor / 1024:.1f} KB"
        f" ({ratio:.2f}x)"
    )
    return shown, ratio <= 1.25


def _spawn_rate(records: Records) -> Verdict:
    count = _largest_count(records)
    rate = records.median("idle_agents", f"agents_spawn_rate_at_{count}")
    ratio = records.ratio("idle_agents", f"spawn_rate_ratio_to_floor_at_{count}")
    return f"{count:,} agents under one supervisor, {rate:,.0f}/s ({ratio:.2f}x floor)", (
        ratio >= 0.5
    )


def _shutdown(records: Records) -> Verdict:
    count = _largest_count(records)
    seconds = records.median("idle_agents", f"agents_shutdown_at_{count}")
    shown = f"{count:,} agents shut down in {seconds:.2f} s"
    return shown, (seconds <= 2.0 if count >= 100_000 else None)


def _hibernated_memory(records: Records) -> Verdict:
    record = records.record("hibernation")
    count = int(max(record["parameters"]["agents"]))
    traced_at = int(min(record["parameters"]["agents"]))
    traced = records.median("hibernation", f"hibernated_traced_memory_at_{traced_at}")
    # The target leaves out the user's own state: what the agent's instance itself takes.
    framework = records.median(
        "hibernation", f"hibernated_traced_memory_beyond_own_state_at_{traced_at}"
    )
    rss = records.median("hibernation", f"hibernated_memory_at_{count}")
    process = records.median("hibernation", f"hibernated_process_rss_at_{count}")
    shown = (
        f"{framework:,.0f} B per hibernated agent beyond its own state ({traced:,.0f} B traced"
        f" with it, {traced_at:,}), {rss:,.0f} B RSS ({count:,}); process {process:,.0f} MB"
    )
    met = framework <= 1024 and (process <= 1536 if count >= 1_000_000 else True)
    return shown, met


def _wake(records: Records) -> Verdict:
    p50 = records.median("hibernation", "wake_p50")
    p99 = records.median("hibernation", "wake_p99")
    spawn = records.ratio("hibernation", "wake_p50_latency_ratio_to_spawn")
    floor = records.ratio("hibernation", "wake_p50_latency_ratio_to_floor")
    shown = (
        f"call to a sleeper: p50 {p50:.0f} µs, p99 {p99:.0f} µs ({spawn:.2f}x a spawn,"
        f" {floor:.2f}x a bare task started to answer)"
    )
    return shown, None


def _hibernated_shutdown(records: Records) -> Verdict:
    count = int(max(records.record("hibernation")["parameters"]["agents"]))
    seconds = records.median("hibernation", f"hibernated_shutdown_at_{count}")
    return f"{count:,} hibernated agents shut down in {seconds:.2f} s", None


def _restart(records: Records) -> Verdict:
    p50 = records.median("restart_latency", "agent_p50")
    p99 = records.median("restart_latency", "agent_p99")
    ratio = records.ratio("restart_latency", "restart_p50_latency_ratio_to_floor")
    return f"crash to next message handled: p50 {p50:.0f} µs, p99 {p99:.0f} µs ({ratio:.2f}x)", None


def _soak_memory(records: Records) -> Verdict:
    record = records.record("soak")
    runs = record["memory"]["agents"]
    grown = max(run["rss_growth"] for run in runs)
    blocks = max(run["live_blocks_growth"] for run in runs)
    fraction = max(
        max(run["rss_growth_fraction"], run["live_blocks_growth_fraction"]) for run in runs
    )
    parameters = record["parameters"]
    shown = (
        f"after warm-up: RSS {grown / 2**20:+.1f} MB, live blocks {blocks:+,.0f}"
        f" (at most {fraction:+.1%}); {parameters['messages']:,} messages to"
        f" {parameters['agents']:,} agents"
    )
    return shown, fraction <= FLAT_GROWTH


def _reliability(records: Records) -> Verdict:
    delivery = records.record("soak")["delivery"]
    handled, expected = delivery["handled"], delivery["expected"]
    shown = (
        f"{handled:,} of {expected:,} handled ({handled / expected:.3%}),"
        f" {delivery['retried']:,} retried after crashes"
    )
    return shown, handled == expected


@dataclass(frozen=True)
class Claim:
    """A line of the summary before it is judged: its topic, the benchmark it reads, the seed's
    claim (its README's words), our target, and how to read ours from the records."""

    topic: str
    benchmark: str
    claim: str
    target: str
    judge: Callable[[Records], Verdict]


CLAIMS = (
    Claim(
        "throughput",
        "cast_throughput",
        "10,000+ messages/second",
        ">= 2.5x floor",
        _cast_one_to_one,
    ),
    Claim("fan-in", "cast_throughput", "", "", _cast_pattern("fan_in", "many->1")),
    Claim("fan-out", "cast_throughput", "", "", _cast_pattern("fan_out", "1->many")),
    Claim("awaited cast", "cast_throughput", "", ">= 3x await send", _cast_awaited),
    Claim(
        "latency", "call_latency", "sub-millisecond message routing", "p50 <= 1.0x floor", _call_p50
    ),
    Claim("latency tail", "call_latency", "", "p99 <= 3x p50", _call_p99),
    Claim(
        "at-least-once",
        "delivery_guarantees",
        "",
        "<= 1.5x at-most-once",
        _guarantee_cost("at_least_once", 1.5),
    ),
    Claim(
        "exactly-once",
        "delivery_guarantees",
        "",
        "<= 2x at-most-once",
        _guarantee_cost("exactly_once", 2.0),
    ),
    Claim("tracing", "tracing", "", "", _tracing),
    Claim("admission", "admission", "", "", _admission),
    Claim(
        "durable cast",
        "durable_delivery",
        "",
        "<= 1.5x bare SQLite",
        _durable_cast,
    ),
    Claim("replay", "durable_delivery", "", "<= 2x bare read", _replay),
    Claim(
        "cross-node casts",
        "cluster",
        "",
        f">= {CLUSTER_CAST_FLOOR}x raw NATS",
        _cluster_casts,
    ),
    Claim(
        "cross-node calls",
        "cluster",
        "",
        f"p50 <= {CLUSTER_CALL_CEILING}x raw request",
        _cluster_calls,
    ),
    Claim("pool routing", "pool_routing", "sub-millisecond message routing", "", _pool_routing),
    Claim("circuit breaker", "pool_routing", "", "", _fast_fail),
    Claim(
        "memory",
        "idle_agents",
        "~1KB per mailbox + message storage",
        "<= 1.25x floor",
        _idle_memory,
    ),
    Claim(
        "scalability",
        "idle_agents",
        "supports 1000+ concurrent agents",
        "spawn >= 0.5x floor",
        _spawn_rate,
    ),
    Claim("shutdown", "idle_agents", "", "100,000 agents <= 2 s", _shutdown),
    Claim(
        "hibernated memory",
        "hibernation",
        "",
        "<= 1 KB each; 1M under 1.5 GB RSS",
        _hibernated_memory,
    ),
    Claim("wake-up", "hibernation", "", "", _wake),
    Claim("hibernated shutdown", "hibernation", "", "", _hibernated_shutdown),
    Claim("restart", "restart_latency", "", "", _restart),
    Claim("soak memory", "soak", "", f"flat (<= {FLAT_GROWTH:.0%} growth)", _soak_memory),
    Claim(
        "reliability",
        "soak",
        "99.9%+ delivery success rate with retries",
        "none lost",
        _reliability,
    ),
)


def summarise(
    records: Iterable[Mapping[str, Any]], ran: Collection[str] | None = None
) -> list[SummaryRow]:
    """The summary rows for ``records``; only those of the benchmarks that ``ran`` (default:
    all), where one that ran but left no record (it failed) says so."""
    collected = Records(records)
    rows = []
    for claim in CLAIMS:
        if ran is not None and claim.benchmark not in ran:
            continue
        try:
            ours, met = claim.judge(collected)
        except NotRun:
            ours, met = f"{claim.benchmark} failed", None
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
            ours, met = f"record incomplete ({error!r})", None
        rows.append(SummaryRow(claim.topic, claim.claim or "-", ours, claim.target or "-", met))
    return rows


def _verdict(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "no")


#: Printed under the summary, since every ratio in it is read against the floor.
FOOTNOTE = "ratios are to a bare Trio memory channel doing the same, measured in the same run"


def _print_summary(rows: list[SummaryRow], quick: bool, out: TextIO) -> None:
    title = "terraphim-actors beside the original crate's claims" + (
        " (--quick: small sizes, indicative only)" * quick
    )
    headers = ("", "original crate claims", "terraphim-actors, this run", "target", "met")
    cells = [(row.topic, row.claim, row.ours, row.target, _verdict(row.met)) for row in rows]
    print(file=out)
    try:
        _print_rich(title, headers, cells, out)
    except ImportError:
        _print_plain(title, headers, cells, out)
    print(FOOTNOTE, file=out)


def _print_rich(
    title: str, headers: Sequence[str], cells: Sequence[Sequence[str]], out: TextIO
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header in headers:
        table.add_column(header)
    colours = {"yes": "green", "no": "red"}
    for *texts, verdict in cells:
        shown = f"[{colours[verdict]}]{verdict}[/]" if verdict in colours else verdict
        table.add_row(*texts, shown)
    Console(file=out, width=max(Console(file=out).width, 150)).print(table)


def _print_plain(
    title: str, headers: Sequence[str], cells: Sequence[Sequence[str]], out: TextIO
) -> None:
    lines = [headers, *cells]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    print(title, file=out)
    for line in lines:
        padded = (text.ljust(width) for text, width in zip(line, widths, strict=True))
        print("  ".join(padded).rstrip(), file=out)
