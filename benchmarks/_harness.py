"""What every benchmark script shares: its options, repeated measurements, and its report.

A script measures a pattern through terraphim-actors and, in the same run, the same pattern on
a bare Trio memory channel (the floor), because this machine is shared and absolute times drift
by a fifth from one run to the next while the ratio between two measurements taken side by side
holds. The report prints a table (median, min and max of the runs) and then, as the very last
line, one JSON record that ``terraphim-actors bench`` collects:

    {"benchmark": NAME, "quick": bool, "runs": R, "parameters": {...},
     "measurements": {KEY: {"label", "unit", "median", "min", "max"}, ...},
     "ratios": {KEY: number, ...}, ...}

A ratio's key says which way is better: ``..._ratio_to_floor`` compares rates (larger is
better: 2.0 means twice the floor's throughput), while ``..._latency_ratio_...``,
``..._time_ratio_...``, ``..._memory_ratio_...`` and ``..._cost_ratio_...`` compare times,
bytes or costs (smaller is better: 0.5 means half the floor's time).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from terraphim_actors import DeliveryGuarantee

__all__ = [
    "Options",
    "Report",
    "Summary",
    "discard_logs",
    "percentile",
    "resident_bytes",
    "run_side",
    "run_trio",
    "settle",
]

T = TypeVar("T")

#: A ratio's key that compares times, bytes or costs, where smaller is better.
_SMALLER_IS_BETTER = re.compile(r"(^|_)(latency|time|memory|cost)_ratio")


@dataclass(frozen=True)
class Summary:
    """The median, min and max of one measurement over the runs."""

    median: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("a measurement needs at least one value")
        return cls(statistics.median(values), min(values), max(values))


class Options:
    """A script's command line: ``--quick``, ``--runs`` and its sizes, each size with a full and
    a quick default, so that ``--quick`` changes every size the user did not set."""

    def __init__(self, description: str, *, runs: int = 5, quick_runs: int = 1) -> None:
        self.parser = argparse.ArgumentParser(description=description)
        self._runs = (runs, quick_runs)
        self._sizes: dict[str, tuple[object, object]] = {}
        self.parser.add_argument(
            "--quick", action="store_true", help="small sizes that run in seconds"
        )
        self.parser.add_argument(
            "--runs",
            type=_positive_int,
            default=None,
            help=f"repetitions of each measurement (default {runs}, {quick_runs} with --quick)",
        )

    def size(
        self,
        flag: str,
        *,
        full: object,
        quick: object,
        help: str,
        kind: Callable[[str], object] | None = None,
        many: bool = False,
    ) -> None:
        """Add an option whose default depends on ``--quick``."""
        action = self.parser.add_argument(
            flag,
            type=_positive_int if kind is None else kind,
            nargs="+" if many else None,
            default=None,
            help=f"{help} (default {_shown(full)}, {_shown(quick)} with --quick)",
        )
        self._sizes[action.dest] = (full, quick)

    def guarantee(self, whose: str) -> None:
        """Add ``--guarantee``: the delivery guarantee of ``whose`` messages (at least once,
        the system's default, unless given)."""
        self.parser.add_argument(
            "--guarantee",
            choices=[guarantee.value for guarantee in DeliveryGuarantee],
            default=DeliveryGuarantee.AT_LEAST_ONCE.value,
            help=f"{whose} delivery guarantee (default: at-least-once, the system's default)",
        )

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse ``argv`` and fill in each size the user left out from ``--quick``."""
        arguments = self.parser.parse_args(argv)
        choice = 1 if arguments.quick else 0
        if arguments.runs is None:
            arguments.runs = self._runs[choice]
        for dest, defaults in self._sizes.items():
            if getattr(arguments, dest) is None:
                setattr(arguments, dest, defaults[choice])
        return arguments


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _shown(value: object) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(_shown, value))
    return f"{value:_}" if isinstance(value, int) else str(value)


@dataclass(frozen=True)
class _Row:
    label: str
    unit: str
    summary: Summary


class Report:
    """One script's results: measurements (summaries over the runs) and ratios between them,
    printed as a table and then as the JSON line that must come last on stdout."""

    def __init__(
        self, benchmark: str, arguments: argparse.Namespace, parameters: dict[str, Any]
    ) -> None:
        self.record: dict[str, Any] = {
            "benchmark": benchmark,
            "quick": bool(arguments.quick),
            "runs": arguments.runs,
            "parameters": parameters,
            "measurements": {},
            "ratios": {},
        }
        self._rows: dict[str, _Row] = {}

    def measure(self, key: str, label: str, unit: str, values: Sequence[float]) -> Summary:
        """Record a measurement taken once per run, and return its summary."""
        summary = Summary.of(values)
        self._rows[key] = _Row(label, unit, summary)
        self.record["measurements"][key] = {
            "label": label,
            "unit": unit,
            "median": summary.median,
            "min": summary.minimum,
            "max": summary.maximum,
        }
        return summary

    def median(self, key: str) -> float:
        return self._rows[key].summary.median

    def latencies(self, labels: dict[str, str], runs: dict[str, list[list[float]]]) -> None:
        """Measure p50 and p99, in µs, of each side's runs of latencies (in seconds), as
        ``{side}_p50`` and ``{side}_p99``, labelled ``labels[side]``."""
        for side, label in labels.items():
            for name, fraction in (("p50", 0.5), ("p99", 0.99)):
                self.measure(
                    f"{side}_{name}",
                    f"{label} {name}",
                    "µs",
                    [percentile(run, fraction) * 1e6 for run in runs[side]],
                )

    def ratio(self, key: str, value: float) -> float:
        """Record a ratio (its key says which way is better, see the module docstring)."""
        self.record["ratios"][key] = value
        return value

    def extra(self, key: str, value: Any) -> None:
        """Record something that is not a measurement over the runs (samples, counters)."""
        self.record[key] = value

    def print(self, title: str, notes: Sequence[str] = ()) -> None:
        """Print the table, the ratios and ``notes``, then the JSON line last."""
        runs = self.record["runs"]
        print(f"{title} ({runs} run{'s' if runs != 1 else ''}{', quick' * self.record['quick']})")
        width = max([len(row.label) for row in self._rows.values()] + [12])
        print(f"{'':{width}}  {'unit':>10}  {'median':>12}  {'min':>12}  {'max':>12}")
        for row in self._rows.values():
            summary = row.summary
            print(
                f"{row.label:{width}}  {row.unit:>10}  {_number(summary.median):>12}"
                f"  {_number(summary.minimum):>12}  {_number(summary.maximum):>12}"
            )
        for key, value in self.record["ratios"].items():
            better = "smaller" if _SMALLER_IS_BETTER.search(key) else "larger"
            print(f"{key}: {value:.2f}x ({better} is better)")
        for note in notes:
            print(note)
        print(json.dumps(self.record), flush=True)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5 for the median, 0.99 for p99)."""
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def run_trio(async_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """One measurement in a fresh Trio run, after a full collection, so that the garbage of
    the previous measurement is not collected on this one's time."""
    gc.collect()
    return trio.run(async_fn, *args)


async def settle() -> None:
    """Return once every other task of the run is blocked: consumers parked on their empty
    channels or mailboxes before a measurement starts.

    ``trio.testing.wait_all_tasks_blocked`` says it exactly, but importing ``trio.testing``
    imports pytest where it is installed, which costs each benchmark process most of a second.
    Here the run queue must be seen empty (only this task was scheduled) a few times in a row.
    """
    quiet_rounds = 0
    while quiet_rounds < 3:
        await trio.lowlevel.checkpoint()
        idle = trio.lowlevel.current_statistics().tasks_runnable == 0
        quiet_rounds = quiet_rounds + 1 if idle else 0


def discard_logs() -> None:
    """Keep the library's error logs (a crash logs its traceback) off the terminal, for the
    scripts that crash agents on purpose. Records are still made, as in an application that
    logs; only the writing of thousands of tracebacks is left out of the measurement."""
    for name in ("terraphim_actors", "supervisor"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def resident_bytes() -> int:
    """This process's resident set size now (Linux: from ``/proc/self/statm``).

    Freed memory is rarely given back to the system, so compare two readings of one process
    that only grew in between; measure each side of a comparison in its own process.
    """
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError as error:
        raise RuntimeError("measuring memory needs /proc/self/statm (Linux)") from error
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def run_side(script: str, *arguments: str) -> dict[str, Any]:
    """Run ``script`` again in a fresh Python process (with ``--side ...`` in ``arguments``)
    and return the JSON record it prints last: a measurement of memory that no earlier
    measurement has touched."""
    result = subprocess.run(
        [sys.executable, script, *arguments],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(script).name} {' '.join(arguments)} failed ({result.returncode}):\n"
            f"{result.stderr[-3000:]}"
        )
    record: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return record
