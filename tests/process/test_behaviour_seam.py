"""The Behaviour seam: a cell runs any behaviour's instances and needs nothing of call/cast.

A minimal behaviour (no Agent, no handlers, no mailbox reads) runs in a cell hosted by a fake
system that offers only the services a cell asks of its host; the cell's lifecycle, its
restarts, its final stop and its refusal of an illegal move are seen through it.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

from supervisor import RestartType
from terraphim_actors._core.ids import AgentId
from terraphim_actors._core.notifications import AgentExited, AgentStarted, ExitReason, StopReason
from terraphim_actors._primitives.mailbox import MailboxConfig
from terraphim_actors._process.cell import AgentCell
from terraphim_actors._process.lifecycle import CellState, IllegalTransition


class FakeHost:
    """A host with no delivery, timers or nursery: a cell that serves nothing needs none."""

    def __init__(self) -> None:
        self.clock = trio.lowlevel.current_clock()
        self.closing = False
        self.over_by = math.inf
        self.published: list[object] = []
        self.retired: list[AgentCell] = []
        self.crashes = 0
        self.restarts = 0

    def publish(self, notification: object) -> None:
        self.published.append(notification)

    def starts_seen(self) -> bool:
        return True  # it records every notice

    def stops_seen(self) -> bool:
        return True  # it records every notice

    def count_crash(self) -> None:
        self.crashes += 1

    def count_restart(self) -> None:
        self.restarts += 1

    def retire(self, cell: AgentCell) -> None:
        self.retired.append(cell)


class Waiting:
    """An instance that waits until its cell is asked to stop, then ends with ``ends_with``."""

    def __init__(self, cell: AgentCell, log: list[str], ends_with: ExitReason) -> None:
        self._cell = cell
        self._log = log
        self._ends_with = ends_with

    @property
    def begin(self) -> Any:
        return self.begin_fn

    async def begin_fn(self) -> None:
        self._log.append(f"start in {self._cell.state.name}")
        await trio.lowlevel.checkpoint()

    async def run(self) -> ExitReason:
        self._log.append(f"run in {self._cell.state.name}")
        while self._cell.stop_requested_at is None:
            await self._cell.mailbox.wait_for_arrival()  # the cell's request_stop wakes it
        return self._ends_with

    def settle(self, reason: ExitReason) -> None:
        self._log.append(f"settle {reason!r} in {self._cell.state.name}")

    async def cleanup_fn(self, reason: ExitReason) -> None:
        self._log.append(f"cleanup {reason!r}")

    @property
    def cleanup(self) -> Any:
        return self.cleanup_fn

    def format_message(self, payload: Any) -> str:
        return f"<{payload} as Waiting shows it>"


class WaitingBehaviour:
    def __init__(self, ends_with: list[ExitReason]) -> None:
        self.log: list[str] = []
        self._ends_with = ends_with
        self.shutdown = 1.0
        self.restart = RestartType.PERMANENT

    def build(self, cell: AgentCell) -> Waiting:
        return Waiting(cell, self.log, self._ends_with.pop(0))


def make_cell(behaviour: WaitingBehaviour) -> tuple[AgentCell, FakeHost]:
    host = FakeHost()
    cell = AgentCell(
        host,  # type: ignore[arg-type]
        behaviour,
        AgentId(name="minimal"),
        MailboxConfig(),
    )
    cell.ref = "the ref its maker gave it"  # opaque to the cell: only passed on
    return cell, host


async def test_a_cell_runs_a_behaviour_that_knows_no_call_or_cast() -> None:
    behaviour = WaitingBehaviour([StopReason.SHUTDOWN, StopReason.NORMAL])
    cell, host = make_cell(behaviour)
    assert cell.state is CellState.STARTING
    assert cell.format_message(7) == "7"  # the bounded repr before any instance

    async with trio.open_nursery() as nursery:
        assert await nursery.start(cell.run) == "the ref its maker gave it"
        assert cell.state is CellState.RUNNING
        assert cell.format_message(7) == "<7 as Waiting shows it>"
        cell.request_stop(StopReason.SHUTDOWN, final=False)
    assert cell.state is CellState.RESTARTING  # the mailbox stays open for the next instance
    assert host.restarts == 0

    async with trio.open_nursery() as nursery:
        await nursery.start(cell.run)
        assert cell.state is CellState.RUNNING
        cell.request_stop(StopReason.NORMAL, final=True)
    assert cell.state is CellState.STOPPED
    assert cell.exit_reason is StopReason.NORMAL
    assert host.retired == [cell]
    assert host.restarts == 1
    assert host.crashes == 0
    assert behaviour.log == [
        "start in STARTING",
        "run in RUNNING",
        f"settle {StopReason.SHUTDOWN!r} in STOPPING",
        f"cleanup {StopReason.SHUTDOWN!r}",
        "start in STARTING",
        "run in RUNNING",
        f"settle {StopReason.NORMAL!r} in STOPPING",
        f"cleanup {StopReason.NORMAL!r}",
    ]
    assert host.published == [
        AgentStarted(cell.id),
        AgentExited(cell.id, StopReason.SHUTDOWN),
        AgentStarted(cell.id),
        AgentExited(cell.id, StopReason.NORMAL),
    ]


async def test_a_new_instance_starts_with_no_stop_asked_of_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """What the last instance's stop set (when, the deadline) is not the new instance's: the
    shutdown watch would otherwise see a running agent as held up in a stop."""
    cell, _ = make_cell(WaitingBehaviour([StopReason.SHUTDOWN, StopReason.NORMAL]))
    async with trio.open_nursery() as nursery:
        await nursery.start(cell.run)
        cell.request_stop(StopReason.SHUTDOWN, final=False)
        now = trio.current_time()
        assert (cell.stop_requested_at, cell.stop_deadline) == (now, now + 1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(cell.run)
        assert (cell.stop_requested_at, cell.stop_deadline) == (None, math.inf)
        assert cell.state is CellState.RUNNING
        cell.request_stop(StopReason.NORMAL, final=True)
    assert cell.exit_reason is StopReason.NORMAL


async def test_an_instance_that_ends_with_an_error_crashes_its_cell() -> None:
    crash = ValueError("the behaviour's own failure")
    behaviour = WaitingBehaviour([crash])
    cell, host = make_cell(behaviour)
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="the behaviour's own failure")):
        async with trio.open_nursery() as nursery:
            await nursery.start(cell.run)
            cell.request_stop(StopReason.NORMAL, final=False)
    assert cell.state is CellState.RESTARTING
    assert host.crashes == 1


async def test_a_stopped_cell_refuses_to_start_again() -> None:
    """Stopped is for good: a start of a stopped cell is a bug (its starter makes a new cell),
    refused at the move."""
    cell, _ = make_cell(WaitingBehaviour([StopReason.NORMAL]))
    async with trio.open_nursery() as nursery:
        await nursery.start(cell.run)
        cell.request_stop(StopReason.NORMAL, final=True)
    assert cell.state is CellState.STOPPED
    with pytest.raises(IllegalTransition, match="from STOPPED to STARTING"):
        await cell.run()
    assert cell.state is CellState.STOPPED
