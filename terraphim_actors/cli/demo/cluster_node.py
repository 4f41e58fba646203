"""One node of ``demo --cluster``, in a process of its own (the parent runs this module):

- ``worker URL CLUSTER NODE WORKER``: a system joined to the cluster as ``NODE``, running the
  worker ``WORKER`` until the parent closes this process's standard input;
- ``planner URL CLUSTER NODE SEED TASKS BOUND WORKER...``: the planner's node, which waits
  until it sees the workers' names, hands out ``TASKS`` tasks (their costs drawn from
  ``SEED``), collects the results for at most ``BOUND`` seconds, sends the books, and leaves.

Each node tells the parent what happens as JSON lines on standard output; a node whose standard
input closes (its parent is gone) leaves the cluster and exits.
"""

from __future__ import annotations

import os
import random
import sys

import attrs
import trio

from terraphim_actors import (
    DeliveryConfig,
    DeliveryGuarantee,
    MessageSystem,
    MessageSystemConfig,
    open_message_system,
)
from terraphim_actors.cluster import ClusterConfig

from .cluster_agents import PLANNER, ClusterTask, Planner, Start, Worker, emit

__all__ = ["node_config", "node_main", "planned_tasks"]

#: Seconds between a node's heartbeats, and after its last one until it counts as gone: short,
#: so that the planner hears of a killed node within about a second.
HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_TTL = 1.0
#: How long the planner waits for the workers' names to reach its node.
FIND_WORKERS_TIMEOUT = 10.0
#: How long the planner waits for the last messages to settle across the cluster before it
#: reads the books.
SETTLE_TIMEOUT = 2.0


def node_config(url: str, cluster: str, node: str) -> MessageSystemConfig:
    """A node of ``cluster`` on the server at ``url``, delivering at least once."""
    return MessageSystemConfig(
        delivery=DeliveryConfig(guarantee=DeliveryGuarantee.AT_LEAST_ONCE),
        cluster=ClusterConfig(
            servers=[url],
            cluster=cluster,
            node=node,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            heartbeat_ttl=HEARTBEAT_TTL,
        ),
    )


def planned_tasks(seed: int, count: int) -> list[ClusterTask]:
    """The tasks of a run: ``t01``, ``t02``, ... each costing 0.1 to 0.25 s."""
    chance = random.Random(seed)
    width = len(str(count))
    return [
        ClusterTask(f"t{number:0{width}d}", round(chance.uniform(0.1, 0.25), 3))
        for number in range(1, count + 1)
    ]


async def _parent_gone() -> None:
    """Return once standard input closes: the parent asks this node to leave, or is gone."""
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        while await stdin.receive_some():
            pass


def _books(system: MessageSystem) -> dict[str, int]:
    return attrs.asdict(system.delivery.get_stats())


async def _learn_of(system: MessageSystem, name: str, known: trio.Event) -> None:
    """Set ``known`` once this node knows of the agent ``name`` (spawned on another node)."""
    assert system.cluster is not None  # every node's configuration names the cluster
    await system.cluster.wait_for(name)
    known.set()


async def _worker(url: str, cluster: str, node: str, worker: str) -> None:
    async with (
        open_message_system(node_config(url, cluster, node), handle_signals=True) as system,
        trio.open_nursery() as nursery,
    ):
        planner_known = trio.Event()
        nursery.start_soon(_learn_of, system, PLANNER, planner_known)
        await system.spawn(Worker, worker, emit, planner_known, name=worker)
        emit("ready", node=node, agents=[worker])
        await _parent_gone()
        nursery.cancel_scope.cancel()
    emit("books", node=node, books=_books(system))


async def _planner(
    url: str, cluster: str, node: str, seed: int, count: int, bound: float, workers: list[str]
) -> None:
    tasks = planned_tasks(seed, count)
    async with (
        open_message_system(node_config(url, cluster, node), handle_signals=True) as system,
        trio.open_nursery() as nursery,
    ):

        async def leave_when_parent_is_gone() -> None:
            await _parent_gone()
            nursery.cancel_scope.cancel()

        nursery.start_soon(leave_when_parent_is_gone)
        membership = system.cluster
        assert membership is not None  # every node's configuration names the cluster
        with trio.fail_after(FIND_WORKERS_TIMEOUT):
            for worker in workers:
                await membership.wait_for(worker)
        done = trio.Event()
        planner = await system.spawn(Planner, tasks, workers, emit, done, name=PLANNER)
        emit("ready", node=node, agents=[PLANNER], tasks=[task.id for task in tasks])
        await planner.cast(Start())
        with trio.move_on_after(bound):
            await done.wait()
        # The last result's handler, and the worker's, settle a moment after the last result.
        cluster_books = await membership.delivery_stats()
        with trio.move_on_after(SETTLE_TIMEOUT):
            while cluster_books.pending:
                await trio.sleep(0.02)
                cluster_books = await membership.delivery_stats()
        emit(
            "books",
            node=node,
            books=_books(system),
            cluster=attrs.asdict(cluster_books),
            nodes=sorted(membership.nodes),
        )
        nursery.cancel_scope.cancel()


def node_main(argv: list[str]) -> int:
    """Run one node as ``argv`` says (see the module's docstring); returns the exit code."""
    role, url, cluster, node, *rest = argv
    if role == "worker":
        (worker,) = rest
        trio.run(_worker, url, cluster, node, worker)
    elif role == "planner":
        seed, count, bound, *workers = rest
        trio.run(_planner, url, cluster, node, int(seed), int(count), float(bound), workers)
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(node_main(sys.argv[1:]))
