"""The ``terraphim-actors`` command: ``demo`` runs a small supervised-style agent system."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import trio

from ._demo import run_demo

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="terraphim-actors",
        description="Erlang/OTP-style message passing for AI agents, built on Trio.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run a small multi-agent system and show what happens, then exit"
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulated model")
    demo.add_argument(
        "--questions", type=int, default=5, help="questions the planner answers (default 5)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    arguments = _parser().parse_args(argv)
    if arguments.command == "demo":
        if arguments.questions < 1:
            _parser().error("--questions must be at least 1")
        return trio.run(run_demo, arguments.seed, arguments.questions)
    raise AssertionError(f"unknown command {arguments.command!r}")  # pragma: no cover
