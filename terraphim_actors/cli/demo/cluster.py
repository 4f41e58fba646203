"""``demo --cluster NODES``: a planner and its workers on separate processes over NATS JetStream;
one worker node killed mid-run, and every task accounted for across the nodes.

The parent (this module) starts a nats-server on loopback (``LocalNatsServer``, its store in a
temporary directory) and the nodes, each a process of its own running ``cluster_node``: the
worker nodes first, then the planner's node, which hands out the tasks by name, at least once.
Once the last worker has handled a third of its tasks, its node is killed with SIGKILL: the
planner's monitor of that worker gets ``Down`` with ``StopReason.NOCONNECTION`` when the node's
heartbeats stop, and the planner sends its unfinished tasks to the other workers. The nodes tell
the parent what happens as JSON lines; the parent prints it, then each node's books
(``DeliveryStats``, with what it ``forwarded`` to the cluster) and the cluster's, and accounts for
every task: its result reached the planner (handled on which node), or it is lost.

Every wait is bounded, and every process started here is reaped on every way out (the end, an
error, Ctrl+C); the nodes run in sessions of their own, so a Ctrl+C reaches only this process,
which stops them.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from terraphim_actors.cluster import LocalNatsServer
from terraphim_actors.errors import ClusterError

from .._words import plural

__all__ = ["ClusterAccount", "ClusterSettings", "cluster_summary", "run_cluster_demo"]

PLANNER_NODE = "planner-node"
CLUSTER = "demo"
#: Seconds the nodes may take to start and join the cluster.
START_TIMEOUT = 15.0
#: Seconds the planner may take to collect every result once it has handed out the tasks.
RUN_TIMEOUT = 25.0
#: Seconds each node may take to leave the cluster and exit.
LEAVE_TIMEOUT = 5.0
#: The share of the doomed worker's tasks it handles before its node is killed (with at least
#: two tasks each, at least one of its own is left unfinished).
KILL_AFTER = 1 / 3


@attrs.frozen(kw_only=True)
class ClusterSettings:
    """A run: ``nodes`` processes (the planner's and ``nodes - 1`` workers'), ``tasks`` tasks
    whose costs come from ``seed``."""

    nodes: int = 3
    tasks: int = 24
    seed: int = 7

    @property
    def workers(self) -> list[str]:
        return [f"worker-{number}" for number in range(1, self.nodes)]


def node_of(worker: str) -> str:
    """The node a worker runs on: ``worker-2`` on ``worker-node-2``."""
    return worker.replace("worker-", "worker-node-", 1)


@attrs.define
class ClusterAccount:
    """What the nodes told, and every task's fate."""

    tasks: list[str] = attrs.Factory(list)
    #: The worker each task was first sent to.
    sent: dict[str, str] = attrs.Factory(dict)
    #: The worker each task went to after its first worker's ``Down``.
    resent: dict[str, str] = attrs.Factory(dict)
    #: What each worker reported as handled, in order.
    handled: dict[str, list[str]] = attrs.Factory(lambda: collections.defaultdict(list))
    #: The worker whose result reached the planner first, by task.
    results: dict[str, str] = attrs.Factory(dict)
    duplicates: int = 0
    killed: str | None = None
    #: The worker whose ``Down`` the planner got, and its reason.
    downs: dict[str, str] = attrs.Factory(dict)
    #: Books by node, and the cluster's as the planner summed them over ``live`` nodes.
    books: dict[str, dict[str, int]] = attrs.Factory(dict)
    cluster_books: dict[str, int] | None = None
    live: list[str] = attrs.Factory(list)

    @property
    def lost(self) -> list[str]:
        """Tasks planned whose result never reached the planner."""
        return [task for task in self.tasks if task not in self.results]

    @property
    def accounted_for(self) -> bool:
        return bool(self.tasks) and not self.lost


class _Failed(Exception):
    """The run cannot go on: why, to print."""


class _Node:
    """A node's process, and the file its standard error goes to (shown if it fails)."""

    def __init__(self, name: str, process: trio.Process, errors: Path) -> None:
        self.name = name
        self.process = process
        self.errors = errors

    def failure(self) -> str:
        text = self.errors.read_text(errors="replace").strip()[-2000:]
        return f"{self.name} (exit code {self.process.returncode}):\n{text or '(no output)'}"

    async def leave(self) -> None:
        """Ask the node to leave (its standard input closes) and wait, bounded."""
        stdin = self.process.stdin
        if stdin is not None:
            with trio.move_on_after(LEAVE_TIMEOUT):
                await stdin.aclose()
        with trio.move_on_after(LEAVE_TIMEOUT):
            await self.process.wait()

    async def reap(self) -> None:
        """Kill it if it still runs, and wait for it (shielded: this runs on the way out)."""
        with trio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.kill()
            with trio.move_on_after(LEAVE_TIMEOUT):
                await self.process.wait()


async def _read_events(
    node: str, stream: trio.abc.ReceiveStream, events: trio.MemorySendChannel[Any]
) -> None:
    """Each JSON line ``node`` writes, as ``(node, event)``; ``(node, None)`` at its end."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.send_nowait((node, event))
    events.send_nowait((node, None))


class _Run:
    """One run of the demo: the nodes, what they tell, what is printed."""

    def __init__(self, settings: ClusterSettings, url: str, out: TextIO, logs: Path) -> None:
        self.settings = settings
        self.url = url
        self.out = out
        self.logs = logs
        self.account = ClusterAccount()
        self.nodes: dict[str, _Node] = {}
        self.began = time.monotonic()
        self.killed_at: float | None = None
        self.send_events, self.events = trio.open_memory_channel[Any](math.inf)
        #: The nodes killed or asked to leave: their output ends, as expected.
        self.ended: set[str] = set()
        #: Why the run could not go on, if it could not.
        self.failure: str | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:5.1f} s] {text}", file=self.out, flush=True)

    async def start(self, nursery: trio.Nursery, name: str, arguments: list[str]) -> None:
        errors = self.logs / f"{name}.stderr"
        with errors.open("wb") as stream:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "terraphim_actors.cli.demo.cluster_node", *arguments],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stream,
                start_new_session=True,
            )
        self.nodes[name] = _Node(name, process, errors)
        assert process.stdout is not None
        nursery.start_soon(_read_events, name, process.stdout, self.send_events.clone())

    async def next_event(self, deadline: float, waiting_for: str) -> tuple[str, dict[str, Any]]:
        """The next event any node tells; ``_Failed`` if a node ends first, or at ``deadline``."""
        with trio.move_on_at(deadline):
            node, event = await self.events.receive()
            while event is None and node in self.ended:
                node, event = await self.events.receive()
            if event is None:
                process = self.nodes[node].process
                with trio.move_on_after(LEAVE_TIMEOUT):
                    await process.wait()
                raise _Failed(f"node {self.nodes[node].failure()}\nwhile waiting for {waiting_for}")
            return node, event
        raise _Failed(f"nothing came within its time while waiting for {waiting_for}")

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            try:
                await self._run(nursery, self.settings.workers)
            except _Failed as failure:
                self.failure = str(failure)
            finally:
                for node in self.nodes.values():
                    await node.reap()
                nursery.cancel_scope.cancel()

    async def _run(self, nursery: trio.Nursery, workers: list[str]) -> None:
        settings = self.settings
        for worker in workers:
            await self.start(
                nursery, node_of(worker), ["worker", self.url, CLUSTER, node_of(worker), worker]
            )
        # The planner's node starts at once too: it waits until it sees the workers' names.
        await self.start(
            nursery,
            PLANNER_NODE,
            [
                "planner",
                self.url,
                CLUSTER,
                PLANNER_NODE,
                str(settings.seed),
                str(settings.tasks),
                repr(RUN_TIMEOUT),
                *workers,
            ],
        )
        deadline = trio.current_time() + START_TIMEOUT
        while not self.account.tasks:
            node, event = await self.next_event(deadline, "the nodes to join the cluster")
            self.hear(node, event)
        # The planner gives up collecting after RUN_TIMEOUT, and then sends its books.
        deadline = trio.current_time() + RUN_TIMEOUT + LEAVE_TIMEOUT
        while True:
            node, event = await self.next_event(deadline, "the planner's results")
            self.hear(node, event)
            if node == PLANNER_NODE and event["event"] == "books":
                break
            await self.maybe_kill(workers[-1])
        planner = self.nodes[PLANNER_NODE]
        self.ended.add(PLANNER_NODE)
        await planner.leave()
        if planner.process.returncode != 0:
            raise _Failed(f"node {planner.failure()}")
        self.say(f"{PLANNER_NODE} left the cluster")
        for worker in workers:
            if worker != self.account.killed:
                await self.leave_worker(worker)

    async def leave_worker(self, worker: str) -> None:
        """Ask a surviving worker node to leave, and read its final books."""
        name = node_of(worker)
        node = self.nodes[name]
        self.ended.add(name)
        await node.leave()
        if node.process.returncode != 0:
            raise _Failed(f"node {node.failure()}")
        deadline = trio.current_time() + LEAVE_TIMEOUT
        while name not in self.account.books:
            told, event = await self.next_event(deadline, f"{name}'s books")
            self.hear(told, event)
        self.say(f"{name} left the cluster")

    async def maybe_kill(self, doomed: str) -> None:
        """Kill the doomed worker's node once it has handled its share before the kill."""
        account = self.account
        if account.killed is not None or not account.sent:
            return
        share = sum(worker == doomed for worker in account.sent.values())
        if len(account.handled[doomed]) < math.ceil(share * KILL_AFTER):
            return
        node = self.nodes[node_of(doomed)]
        self.ended.add(node.name)
        node.process.kill()
        with trio.move_on_after(LEAVE_TIMEOUT):
            await node.process.wait()
        account.killed = doomed
        self.killed_at = time.monotonic()
        unfinished = share - len(account.handled[doomed])
        self.say(
            f"SIGKILL to {node.name} (pid {node.process.pid}) after {doomed} handled"
            f" {len(account.handled[doomed])} of its {share} tasks;"
            f" {plural(unfinished, 'task')} of its own not handled"
        )

    def hear(self, node: str, event: dict[str, Any]) -> None:
        """Note what ``node`` told, and say it."""
        account, kind = self.account, event["event"]
        if kind == "ready":
            joined = (
                f"{node} joined the cluster (pid {self.nodes[node].process.pid}), running"
                f" {', '.join(event['agents'])}"
            )
            if node == PLANNER_NODE:
                account.tasks = list(event["tasks"])
                joined += f", which monitors {', '.join(self.settings.workers)} (ctx.monitor)"
            self.say(joined)
        elif kind == "sent":
            self._sent(event["tasks"], again=event["again"])
        elif kind == "handled":
            account.handled[event["worker"]].append(event["task"])
            self.say(f"  {event['task']} handled by {event['worker']} on {node}")
        elif kind == "result":
            if event["first"]:
                account.results[event["task"]] = event["worker"]
                if len(account.results) == len(account.tasks):
                    self.say(f"{PLANNER_NODE} has a result for every task")
            else:
                account.duplicates += 1
                self.say(
                    f"  {event['task']}'s result came again, from {event['worker']}:"
                    " a duplicate (the first counts)"
                )
        elif kind == "down":
            account.downs[event["worker"]] = event["reason"]
            since = (
                ""
                if self.killed_at is None
                else f" {time.monotonic() - self.killed_at:.1f} s after the kill"
            )
            self.say(
                f"{PLANNER_NODE} got Down({event['worker']}, {event['reason']}){since}:"
                f" {node_of(event['worker'])} stopped beating"
            )
        elif kind == "books":
            account.books[node] = event["books"]
            if "cluster" in event:
                account.cluster_books = event["cluster"]
                account.live = list(event["nodes"])

    def _sent(self, tasks: dict[str, str], *, again: bool) -> None:
        account = self.account
        counts = collections.Counter(tasks.values())
        spread = ", ".join(
            f"{count} to {worker} on {node_of(worker)}" for worker, count in sorted(counts.items())
        )
        if again:
            account.resent.update(tasks)
            gone = ", ".join(sorted({account.sent[task] for task in tasks})) or "the worker"
            self.say(
                f"{PLANNER_NODE} sent {gone}'s {plural(len(tasks), 'unfinished task')} again"
                f" ({spread}): {', '.join(tasks) or 'none'}"
            )
        else:
            account.sent.update(tasks)
            self.say(
                f"{PLANNER_NODE} sent {plural(len(tasks), 'task')} by name, at least once"
                f" (each stored by JetStream): {spread}"
            )


_BALANCE = (
    "acknowledged",
    "duplicates_suppressed",
    "failed",
    "dead_lettered",
    "forwarded",
    "pending",
)


def books_line(books: dict[str, int]) -> str:
    """``sent N = acknowledged A + forwarded F ...`` with the terms that are not zero."""
    terms = [f"{key.replace('_', ' ')} {books[key]}" for key in _BALANCE if books.get(key)]
    balanced = books["sent"] == sum(books.get(key, 0) for key in _BALANCE)
    return f"sent {books['sent']} = {' + '.join(terms) or '0'}" + (
        "" if balanced else "  (does not balance)"
    )


def cluster_summary(account: ClusterAccount, settings: ClusterSettings) -> list[str]:
    """The books and the account across the nodes, as printed."""
    lines = ["Books (DeliveryStats: sent = acknowledged + ... + forwarded + pending)"]
    for node in [PLANNER_NODE, *map(node_of, settings.workers)]:
        books = account.books.get(node)
        if books is not None:
            lines.append(f"  {node:<16}{books_line(books)}")
        elif account.killed is not None and node == node_of(account.killed):
            lines.append(f"  {node:<16}its books died with it (SIGKILL)")
    if account.cluster_books is not None:
        lines.append(
            f"  {'cluster':<16}{books_line(account.cluster_books)}"
            f"  (live nodes: {', '.join(account.live)})"
        )
    lines.append("Summary across the nodes")
    lines.append(
        f"  tasks           {len(account.tasks)} planned, {len(account.sent)} sent,"
        f" {len(account.resent)} sent again after a Down"
    )
    by_worker = collections.Counter(account.results.values())
    for worker in settings.workers:
        handled = account.handled.get(worker, [])
        again = sum(account.resent.get(task) == worker for task in handled)
        line = f"  {node_of(worker):<16}{worker} handled {len(handled)}"
        if again:
            line += f" ({again} sent again from another worker)"
        line += f", {by_worker[worker]} of them first to reach the planner"
        if worker == account.killed:
            line += f"; killed, Down: {account.downs.get(worker, 'never came')}"
        lines.append(line)
    lines.append(
        f"  {PLANNER_NODE:<16}{len(account.results)} results,"
        f" {plural(account.duplicates, 'duplicate')}"
    )
    handlers: dict[str, list[str]] = collections.defaultdict(list)
    for worker, tasks in account.handled.items():
        for task in tasks:
            handlers[task].append(worker)
    repeated = [
        f"{task} ({', '.join(workers)})" for task, workers in handlers.items() if workers[1:]
    ]
    if repeated:
        lines.append(
            f"  {'at least once':<16}handled more than once: {', '.join(sorted(repeated))}"
        )
    if account.lost:
        lines.append(f"Lost across the nodes: {', '.join(account.lost)}.")
    elif account.tasks:
        spread = ", ".join(
            f"{by_worker[worker]} on {node_of(worker)}" for worker in settings.workers
        )
        lines.append(
            f"Every task is accounted for across the nodes: {len(account.results)} handled"
            f" ({spread}), none lost."
        )
    else:
        lines.append("No task was planned.")
    return lines


def run_cluster_demo(settings: ClusterSettings, stream: TextIO | None = None) -> int:
    """Run the demo on a local cluster; returns the exit code (0: every task accounted for,
    1: not, or a node failed, 2: no nats-server or nats-py here, 130: interrupted)."""
    out = sys.stdout if stream is None else stream
    if importlib.util.find_spec("nats") is None:
        print("error: the cluster demo needs nats-py: install the `cluster` extra", file=sys.stderr)
        return 2
    try:
        server = LocalNatsServer()
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    workers = settings.workers
    print(
        f"terraphim-actors demo on a cluster: {PLANNER_NODE} and"
        f" {plural(len(workers), 'worker node')} ({', '.join(map(node_of, workers))}),"
        " each a process of its own, over NATS JetStream",
        file=out,
        flush=True,
    )
    interrupted = False
    try:
        with server, tempfile.TemporaryDirectory(prefix="terraphim-cluster-demo-") as logs:
            print(
                f"nats-server on {server.url} (pid {server.pid}), JetStream on",
                file=out,
                flush=True,
            )
            run = _Run(settings, server.url, out, Path(logs))
            try:
                trio.run(run.run)
            except* KeyboardInterrupt:
                interrupted = True
            elapsed = time.monotonic() - run.began
    except KeyboardInterrupt:  # while the server started or stopped
        interrupted = True
    except ClusterError as error:  # the server did not start
        print(f"error: {error}", file=sys.stderr)
        return 1
    if interrupted:
        print("\ninterrupted: every node stopped", file=out, flush=True)
        return 130
    if run.failure is not None:
        print(f"\nthe demo failed: {run.failure}", file=out, flush=True)
        return 1
    print(
        "\n" + "\n".join(cluster_summary(run.account, settings)) + f"\n(ran {elapsed:.1f} s)",
        file=out,
        flush=True,
    )
    return 0 if run.account.accounted_for else 1
