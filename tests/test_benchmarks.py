"""Each benchmark script runs at a small size and prints its JSON line (no speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_cast_throughput_prints_a_ratio_to_the_floor() -> None:
    """The cast benchmark measures agent and floor in one run and reports their ratio."""
    script = BENCHMARKS / "cast_throughput.py"
    result = subprocess.run(
        [sys.executable, str(script), "--messages", "2000", "--runs", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["benchmark"] == "cast_1_to_1"
    assert record["messages"] == 2000
    assert record["floor_per_second"] > 0
    assert record["agent_per_second"] > 0
    assert record["ratio"] > 0


def test_delivery_guarantees_prints_each_guarantee_beside_the_floor() -> None:
    """The guarantees benchmark reports casts and calls under each guarantee, with ratios."""
    script = BENCHMARKS / "delivery_guarantees.py"
    result = subprocess.run(
        [sys.executable, str(script), "--messages", "500", "--runs", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["benchmark"] == "delivery_guarantees"
    for kind in ("cast", "call"):
        for guarantee in ("at_most_once", "at_least_once", "exactly_once"):
            measured = record[f"{kind}_{guarantee}"]
            assert measured["per_second"] > 0
            assert measured["ratio_to_floor"] > 0
            assert measured["cost_vs_at_most_once"] > 0
