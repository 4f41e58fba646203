"""A node of a cluster in a process of its own, for the fault tests (run with ``sys.executable``).

The fault tests kill a node with SIGKILL, which a node inside the test's own Trio run cannot
suffer; so this script joins the cluster given on its command line, spawns the agents named
there, and reports as JSON lines on stdout (flushed at once, so the test follows them live):

- ``{"event": "ready", "node": ...}`` once every agent is spawned (their names are claimed);
- ``{"event": "handled", "agent": ..., "payload": ...}`` after an agent handled a cast.

It runs until it is killed, or until its stdin closes (the test that started it is gone, so
that no node outlives its test). An agent answers a call with its argument, except
``"hang"``, which it never answers (so that a caller is left waiting on it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

from terraphim_actors import (
    Agent,
    Context,
    DeliveryConfig,
    DeliveryGuarantee,
    MessageSystemConfig,
    open_message_system,
)
from terraphim_actors.cluster import ClusterConfig


def report(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Worker(Agent):
    """Reports each cast it handled, after ``pause`` seconds of work."""

    def __init__(self, name: str, pause: float) -> None:
        self.name = name
        self.pause = pause

    async def handle_cast(self, payload: Any, ctx: Context) -> None:
        if self.pause:
            await trio.sleep(self.pause)
        report(event="handled", agent=self.name, payload=payload)

    async def handle_call(self, payload: Any, ctx: Context) -> Any:
        if payload == "hang":
            await trio.sleep_forever()
        return payload


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", action="append", required=True, help="a NATS url")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--spawn", action="append", default=[], help="an agent's name")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds each cast takes")
    parser.add_argument("--heartbeat-interval", type=float, default=0.1)
    parser.add_argument("--heartbeat-ttl", type=float, default=0.5)
    parser.add_argument("--replicas", type=int, default=1)
    return parser.parse_args()


async def main(options: argparse.Namespace) -> None:
    cluster = ClusterConfig(
        servers=options.server,
        cluster=options.cluster,
        node=options.node,
        connect_timeout=2.0,
        heartbeat_interval=options.heartbeat_interval,
        heartbeat_ttl=options.heartbeat_ttl,
        replicas=options.replicas,
    )
    config = MessageSystemConfig(
        delivery=DeliveryConfig(guarantee=DeliveryGuarantee.AT_LEAST_ONCE), cluster=cluster
    )
    async with open_message_system(config) as system:
        for name in options.spawn:
            await system.spawn(Worker, name, options.pause, name=name)
        report(event="ready", node=options.node)
        await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)


if __name__ == "__main__":
    trio.run(main, arguments())
