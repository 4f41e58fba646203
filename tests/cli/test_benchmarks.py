"""The benchmark suite runs end to end at its quick size, through ``terraphim-actors bench``,
and every record has the shape that the summary and the README read. No speed is asserted:
the machine is shared, and a benchmark reports a missed target, it does not fail on one."""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from terraphim_actors.cli import _bench
from terraphim_actors.cli._bench import CLAIMS, add_bench_parser, benchmarks_directory, run_bench

#: Each benchmark and ratios that the summary reads from its record.
HEADLINE_RATIOS = {
    "cast_throughput": [
        "cast_one_to_one_ratio_to_floor",
        "cast_fan_in_ratio_to_floor",
        "cast_fan_out_ratio_to_floor",
        "cast_awaited_ratio_to_floor",
    ],
    "call_latency": ["call_p50_latency_ratio_to_floor", "call_p99_latency_ratio_to_p50"],
    "delivery_guarantees": [
        f"{kind}_{guarantee}_cost_ratio_to_at_most_once"
        for kind in ("cast", "call")
        for guarantee in ("at_least_once", "exactly_once")
    ],
    "tracing": [
        "untraced_ratio_to_floor",
        "api_cost_ratio_to_untraced",
        "sdk_cost_ratio_to_untraced",
    ],
    "admission": [
        "none_ratio_to_floor",
        "rate_cost_ratio_to_no_budget",
        "tokens_cost_ratio_to_no_budget",
        "concurrency_cost_ratio_to_no_budget",
    ],
    "durable_delivery": [
        "durable_1_cost_ratio_to_floor",
        "durable_64_cost_ratio_to_floor",
        "replay_time_ratio_to_bare_read",
    ],
    "cluster": [
        "cast_at_most_once_ratio_to_raw_publish",
        "cast_at_least_once_ratio_to_raw_jetstream",
        "cast_nowait_at_least_once_ratio_to_raw_jetstream",
        "call_p50_latency_ratio_to_raw_request",
    ],
    "pool_routing": [
        "pool_round_robin_ratio_to_single_agent",
        "refused_cast_cost_ratio_to_successful_cast",
    ],
    "restart_latency": ["restart_p50_latency_ratio_to_floor"],
    "idle_agents": [
        "memory_ratio_to_floor_at_1000",
        "spawn_rate_ratio_to_floor_at_1000",
        "shutdown_time_ratio_to_floor_at_1000",
    ],
    "hibernation": [
        "memory_ratio_to_floor_at_1000",
        "shutdown_time_ratio_to_floor_at_1000",
        "wake_p50_latency_ratio_to_floor",
        "wake_p50_latency_ratio_to_spawn",
    ],
    "soak": ["soak_ratio_to_floor"],
}


def bench(*argv: str) -> tuple[int, str]:
    """Run ``terraphim-actors bench`` with ``argv``; return its exit code and output."""
    parser = argparse.ArgumentParser(prog="terraphim-actors")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    out = io.StringIO()
    code = run_bench(parser.parse_args(["bench", *argv]), out)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    """One quick run of every benchmark (a few seconds each), shared by the tests below."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    code, output = bench("--quick", "--runs", "1", "--json", str(path))
    return code, output, json.loads(path.read_text())


def records_of(quick_run: tuple[int, str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {record["benchmark"]: record for record in quick_run[2]["records"]}


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


class TestQuickSuite:
    def test_every_benchmark_runs_and_the_command_exits_zero(
        self, quick_run: tuple[int, str, dict[str, Any]]
    ) -> None:
        """Each script ran, printed its record, and the command reports success."""
        code, _, document = quick_run
        assert code == 0
        assert document["failed"] == []
        assert document["quick"] is True
        assert set(records_of(quick_run)) == set(HEADLINE_RATIOS)

    def test_each_record_has_measurements_and_ratios_that_are_positive(
        self, quick_run: tuple[int, str, dict[str, Any]]
    ) -> None:
        """Every measurement has a label, a unit and a positive median within its min and max;
        every ratio is positive."""
        for name, record in records_of(quick_run).items():
            assert record["quick"] is True, name
            assert record["runs"] == 1, name
            assert isinstance(record["parameters"], dict), name
            assert record["measurements"], name
            for key, measured in record["measurements"].items():
                assert isinstance(measured["label"], str), key
                assert isinstance(measured["unit"], str), key
                assert all(positive(measured[field]) for field in ("median", "min", "max")), key
                assert measured["min"] <= measured["median"] <= measured["max"], key
            assert record["ratios"], name
            assert all(positive(value) for value in record["ratios"].values()), name

    def test_ratio_keys_say_what_they_compare(
        self, quick_run: tuple[int, str, dict[str, Any]]
    ) -> None:
        """A ratio's key names what it is relative to, and the summary's ratios are there."""
        for name, record in records_of(quick_run).items():
            assert all("_ratio_to_" in key for key in record["ratios"]), name
            assert set(HEADLINE_RATIOS[name]) <= set(record["ratios"]), name

    def test_the_soak_accounts_for_every_message_and_samples_each_round(
        self, quick_run: tuple[int, str, dict[str, Any]]
    ) -> None:
        """The soak handled every message meant to be handled, retried its crashes, and took
        one memory sample per round on each side."""
        soak = records_of(quick_run)["soak"]
        delivery = soak["delivery"]
        assert delivery["handled"] == delivery["expected"] > 0
        assert delivery["retried"] > 0
        assert delivery["dead_letters_by_reason"]["unhandled"] > 0
        rounds = soak["parameters"]["rounds"]
        assert [len(soak["samples"][side]) for side in ("floor", "agents")] == [rounds, rounds]

    def test_the_summary_judges_every_claim(
        self, quick_run: tuple[int, str, dict[str, Any]]
    ) -> None:
        """One summary row per claim, each with our figures, beside the seed's words."""
        _, output, document = quick_run
        rows = document["summary"]
        assert [row["topic"] for row in rows] == [claim.topic for claim in CLAIMS]
        assert not [row for row in rows if "failed" in row["ours"] or "incomplete" in row["ours"]]
        assert "10,000+ messages/second" in output
        assert "original crate claims" in output


class TestCommand:
    def test_an_unknown_benchmark_is_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``--only`` with a name that is not a script exits 2 and lists the names."""
        code, _ = bench("--only", "no_such_benchmark")
        assert code == 2
        assert "cast_throughput" in capsys.readouterr().err

    def test_a_missing_benchmarks_directory_is_a_clear_error(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Without the source checkout's ``benchmarks/`` the command says where it looked."""
        monkeypatch.setattr(_bench, "benchmarks_directory", lambda: tmp_path / "missing")
        code, _ = bench("--quick")
        assert code == 2
        assert str(tmp_path / "missing") in capsys.readouterr().err

    def test_a_failing_script_makes_the_exit_code_one(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """A script that fails is named, and the others' summary is still printed."""
        (tmp_path / "broken.py").write_text("raise SystemExit(3)\n")
        monkeypatch.setattr(_bench, "benchmarks_directory", lambda: tmp_path)
        code, output = bench("--quick")
        assert code == 1
        assert "broken failed (exit code 3)" in output


def test_the_durable_delivery_benchmark_runs_at_tiny_sizes() -> None:
    """``durable_delivery.py`` with a few casts and a few replayed messages measures every side
    (journaled, in memory, bare SQLite; replay and bare read) and says what it replayed."""
    script = benchmarks_directory() / "durable_delivery.py"
    result = subprocess.run(
        [sys.executable, str(script), "--runs", "1", "--messages", "64", "--replay", "100"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["parameters"]["replay"] == 100
    assert set(record["measurements"]) == {
        *(f"{side}_{senders}" for side in ("floor", "memory", "durable") for senders in (1, 64)),
        "durable_1_per_commit",
        "durable_64_per_commit",
        "replay_bare",
        "replay_delivered",
        "replay_handled",
    }
    assert all(positive(value) for value in record["ratios"].values())
