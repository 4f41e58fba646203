"""The ``terraphim-actors`` command: ``demo`` runs a research assistant of agents that fail;
``bench`` runs the benchmark suite against bare Trio channels."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path

import trio

from ._bench import add_bench_parser, run_bench
from ._demo import DemoSettings, run_demo
from .demo.world import Endpoint

__all__ = ["main"]

#: The most nodes ``demo --cluster`` starts (each is a Python process).
MAX_NODES = 8


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="terraphim-actors",
        description="Erlang/OTP-style message passing for AI agents, built on Trio.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a research assistant of agents that fail, shown live, then account for it",
        description="A planner, a pool of simulated LLM workers, a flaky search tool behind a"
        " circuit breaker and an aggregator, under a supervision tree; offline and seeded"
        " (with --llm-url, the workers ask a real model)."
        " Exits 0 when every task is accounted for: answered, or a dead letter with its reason.",
    )
    demo.add_argument(
        "--duration", type=float, default=10.0, help="seconds the run lasts at most (default 10)"
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of every random decision")
    demo.add_argument("--workers", type=int, default=4, help="LLM workers in the pool (default 4)")
    demo.add_argument(
        "--crash-rate",
        type=float,
        default=0.15,
        help="chance that one model run raises or hangs, from 0 to 1 (default 0.15)",
    )
    demo.add_argument(
        "--questions", type=int, default=16, help="questions the user asks (default 16)"
    )
    demo.add_argument(
        "--journal",
        type=Path,
        metavar="PATH",
        help="run on a SQLite journal at PATH in a child process, kill it with SIGKILL mid-run,"
        " start it again on the same journal, and account for every task across the crash",
    )
    demo.add_argument(
        "--cluster",
        type=int,
        metavar="NODES",
        help="run a planner and its workers as NODES processes (at least 3: the planner's node"
        " and worker nodes) over a local nats-server, kill a worker node with SIGKILL mid-run,"
        " and account for every task across the nodes",
    )
    demo.add_argument(
        "--tasks",
        type=int,
        default=24,
        help="tasks the planner hands out, with --cluster (default 24)",
    )
    demo.add_argument(
        "--llm-url",
        metavar="URL",
        help="make the workers ChatModel agents that ask the OpenAI-compatible endpoint at URL"
        " (such as http://localhost:11434/v1) instead of the simulated model; needs --model",
    )
    demo.add_argument("--model", metavar="NAME", help="the model to ask, with --llm-url")
    demo.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="the environment variable that holds the endpoint's API key, with --llm-url"
        " (default: no key)",
    )
    add_bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.command == "demo":
        settings = _demo_settings(parser, arguments)
        if arguments.cluster is not None:
            # Imported here: the plain demo needs none of the cluster.
            from .demo.cluster import ClusterSettings, run_cluster_demo

            return run_cluster_demo(
                ClusterSettings(nodes=arguments.cluster, tasks=arguments.tasks, seed=settings.seed)
            )
        if arguments.journal is not None:
            # Imported here: the child process runs that module as __main__.
            from .demo.durable import run_durable_demo

            return run_durable_demo(settings, arguments.journal)
        return trio.run(run_demo, settings)
    if arguments.command == "bench":
        return run_bench(arguments)
    raise AssertionError(f"unknown command {arguments.command!r}")  # pragma: no cover


def _demo_settings(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> DemoSettings:
    """The demo's settings, or a usage error (exit code 2) for a value out of range."""
    if not 0 < arguments.duration < math.inf:
        parser.error("--duration must be a positive number of seconds")
    if arguments.seed < 0:
        parser.error("--seed must be at least 0")
    if arguments.workers < 1:
        parser.error("--workers must be at least 1")
    if not 0 <= arguments.crash_rate <= 1:
        parser.error("--crash-rate must be between 0 and 1")
    if arguments.questions < 1:
        parser.error("--questions must be at least 1")
    if arguments.cluster is not None:
        if arguments.journal is not None:
            parser.error("--cluster and --journal cannot be used together")
        if not 3 <= arguments.cluster <= MAX_NODES:
            parser.error(
                f"--cluster must be from 3 to {MAX_NODES} nodes: the planner's and at least"
                " two workers', one of which is killed"
            )
        if arguments.tasks < 2 * (arguments.cluster - 1):
            parser.error(
                "--tasks must be at least 2 for each worker node, so that the one killed"
                " leaves a task unfinished"
            )
    return DemoSettings(
        duration=arguments.duration,
        seed=arguments.seed,
        workers=arguments.workers,
        crash_rate=arguments.crash_rate,
        questions=arguments.questions,
        endpoint=_endpoint(parser, arguments),
    )


def _endpoint(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> Endpoint | None:
    """The real model the workers ask (``--llm-url``), or a usage error; None: simulated."""
    if arguments.llm_url is None:
        if arguments.model is not None or arguments.api_key_env is not None:
            parser.error("--model and --api-key-env go with --llm-url")
        return None
    if arguments.journal is not None or arguments.cluster is not None:
        parser.error("--llm-url cannot be used with --journal or --cluster")
    if not arguments.model:
        parser.error("--llm-url needs --model NAME")
    api_key = None
    if arguments.api_key_env is not None:
        api_key = os.environ.get(arguments.api_key_env)
        if not api_key:
            parser.error(
                f"--api-key-env: the environment variable {arguments.api_key_env} is not set"
            )
    return Endpoint(url=arguments.llm_url, model=arguments.model, api_key=api_key)
