"""The agents of ``demo --cluster``: a planner that hands out tasks to workers on other nodes, and
the workers that do them; each tells the demo's parent process what it does.

The planner casts each task at least once to a worker by name, monitors every worker, and
keeps which worker has which task until its result comes back. A worker's ``Down`` (its node
killed: ``StopReason.NOCONNECTION`` once the node's heartbeats stop) makes it hand that worker's
unfinished tasks to the workers still up. Workers cast each result back to the planner by name.
A result may come twice (a worker finished a task whose result died with its node, and the
task went to another worker): the first counts, the others are told as duplicates.

What happens is written to standard output as one JSON object a line (``emit``), which the
parent reads; payloads cross the nodes through the codec, so they are registered here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from terraphim_actors import Agent, Context, Down, MonitorRef, register_payload

__all__ = ["PLANNER", "ClusterTask", "Emit", "Planner", "Start", "TaskDone", "Worker", "emit"]

#: The planner's name, by which workers send it their results.
PLANNER = "planner"
#: How long a worker waits for its node to hear of the planner's name.
FIND_PLANNER_TIMEOUT = 10.0

#: How a node tells the parent what happened: an event name and its fields.
Emit = Callable[..., None]


def emit(event: str, **fields: Any) -> None:
    """Tell the parent process: one JSON line on standard output, flushed at once (the parent
    reacts to it, and a SIGKILL must not lose what was written)."""
    print(json.dumps({"event": event, **fields}), file=sys.stdout, flush=True)


@attrs.frozen
class ClusterTask:
    """A unit of work: ``cost`` seconds of a simulated model run."""

    id: str
    cost: float


@attrs.frozen
class TaskDone:
    """A worker's result for a task."""

    task_id: str
    worker: str


@attrs.frozen
class Start:
    """Tells the planner to hand out its tasks."""


for _payload in (ClusterTask, TaskDone, Start):
    register_payload(_payload, tag=f"terraphim_actors.demo.cluster.{_payload.__name__}")


class Planner(Agent):
    """Hands out ``tasks`` over ``workers`` (agent names on other nodes), round robin, and
    collects their results; ``done`` is set once every task has one."""

    def __init__(
        self, tasks: Sequence[ClusterTask], workers: Sequence[str], emit: Emit, done: trio.Event
    ) -> None:
        self.tasks = {task.id: task for task in tasks}
        self.up = list(workers)
        self.emit = emit
        self.done = done
        #: The worker each task was last sent to.
        self.assigned: dict[str, str] = {}
        #: The worker whose result came first, by task.
        self.results: dict[str, str] = {}
        self.watching: dict[MonitorRef, str] = {}

    async def handle_cast(self, payload: Any, ctx: Context) -> None:
        if isinstance(payload, Start):
            for worker in self.up:
                self.watching[ctx.monitor(ctx.system.ref(worker))] = worker
            await self._hand_out(ctx, list(self.tasks), again=False)
        elif isinstance(payload, TaskDone):
            first = payload.task_id not in self.results
            if first:
                self.results[payload.task_id] = payload.worker
            self.emit("result", task=payload.task_id, worker=payload.worker, first=first)
            if len(self.results) == len(self.tasks):
                self.done.set()

    async def handle_info(self, payload: Any, ctx: Context) -> None:
        if not isinstance(payload, Down):
            return
        worker = self.watching.pop(payload.monitor, None)
        if worker is None:
            return
        reason = payload.reason
        self.emit("down", worker=worker, reason=getattr(reason, "value", repr(reason)))
        self.up.remove(worker)
        unfinished = [
            task_id
            for task_id, holder in self.assigned.items()
            if holder == worker and task_id not in self.results
        ]
        if self.up:
            await self._hand_out(ctx, unfinished, again=True)

    async def _hand_out(self, ctx: Context, task_ids: list[str], *, again: bool) -> None:
        """Cast each task to the workers up, round robin (each cast returns once JetStream
        stored it)."""
        refs = {worker: ctx.system.ref(worker) for worker in self.up}
        for index, task_id in enumerate(task_ids):
            worker = self.up[index % len(self.up)]
            await refs[worker].cast(self.tasks[task_id])
            self.assigned[task_id] = worker
        self.emit(
            "sent",
            tasks={task_id: self.assigned[task_id] for task_id in task_ids},
            again=again,
        )


class Worker(Agent):
    """Does each task it is cast (sleeps its cost), tells the parent, and casts the result to
    the planner by name once ``planner_known`` (its node has heard of the planner's name)."""

    def __init__(self, name: str, emit: Emit, planner_known: trio.Event) -> None:
        self.name = name
        self.emit = emit
        self.planner_known = planner_known

    async def handle_cast(self, payload: Any, ctx: Context) -> None:
        if not isinstance(payload, ClusterTask):
            return
        await trio.sleep(payload.cost)
        self.emit("handled", task=payload.id, worker=self.name)
        # Known at once, but for a first task whose message overtook the planner's name.
        with trio.fail_after(FIND_PLANNER_TIMEOUT):
            await self.planner_known.wait()
        await ctx.system.ref(PLANNER).cast(TaskDone(payload.id, self.name))
