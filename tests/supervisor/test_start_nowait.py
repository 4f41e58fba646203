"""``Supervisor.start_child_nowait``: a child whose start has nothing left to do counts as
started at once, and its code runs from the caller's next schedule point, whatever comes
before then."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from supervisor import (
    ChildSpec,
    ChildState,
    CurrentChild,
    DuplicateChild,
    Supervisor,
    SupervisorNotRunning,
    current_child,
)


class Worker:
    """A child that records what it does, reports ``started`` with a value of its own (which a
    child started without waiting has already reported), then waits for its stop hook."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.record: CurrentChild | None = None
        self.stopping = trio.Event()

    async def start(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.log.append("began")
        self.record = current_child()
        task_status.started("its own report")
        try:
            await self.stopping.wait()
            self.log.append("stopped when asked")
        finally:
            self.log.append("settled")

    def stop(self, _value: Any) -> None:
        self.stopping.set()

    def spec(self, *, asks: bool = True) -> ChildSpec:
        return ChildSpec("worker", self.start, stop=self.stop if asks else None)


async def test_a_child_started_nowait_counts_as_started_before_its_code_runs() -> None:
    worker = Worker()
    async with Supervisor() as supervisor:
        record = supervisor.start_child_nowait(worker.spec(), value="ready")
        [info] = supervisor.which_children()
        assert (info.state, info.value, worker.log) == (ChildState.RUNNING, "ready", [])
        await trio.testing.wait_all_tasks_blocked()
        assert worker.log == ["began"]
        assert worker.record is record
        assert (record.id, record.supervisor) == ("worker", supervisor)


async def test_a_report_from_a_child_started_nowait_changes_nothing() -> None:
    worker = Worker()
    async with Supervisor() as supervisor:
        supervisor.start_child_nowait(worker.spec(), value="ready")
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.which_children()[0].value == "ready"


async def test_a_child_stopped_before_its_code_ran_is_asked_to_stop_when_it_runs() -> None:
    worker = Worker()
    async with Supervisor() as supervisor:
        supervisor.start_child_nowait(worker.spec())
        await supervisor.terminate_child("worker")
        assert worker.log == ["began", "stopped when asked", "settled"]
        assert supervisor.which_children()[0].state is ChildState.TERMINATED


async def test_a_child_cancelled_before_its_code_ran_still_runs_to_settle() -> None:
    worker = Worker()
    async with Supervisor() as supervisor:
        supervisor.start_child_nowait(worker.spec(asks=False))  # stopped by cancelling it
        await supervisor.terminate_child("worker")
        assert worker.log == ["began", "settled"]


async def test_a_child_started_nowait_whose_start_takes_no_task_status_runs_once() -> None:
    ran: list[str] = []

    async def plain() -> None:
        ran.append("began")
        await trio.sleep_forever()

    with trio.fail_after(10):  # a child restarted over and over never lets all tasks block
        async with Supervisor() as supervisor:
            supervisor.start_child_nowait(ChildSpec("plain", plain), value="ready")
            await trio.testing.wait_all_tasks_blocked()
            [info] = supervisor.which_children()
            assert (ran, info.state, info.restarts) == (["began"], ChildState.RUNNING, 0)


async def test_start_child_nowait_would_block_while_a_start_is_under_way() -> None:
    release = trio.Event()

    async def slow_start(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await release.wait()
        task_status.started()
        await trio.sleep_forever()

    async with Supervisor() as supervisor, trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.start_child, ChildSpec("slow", slow_start))
        await trio.testing.wait_all_tasks_blocked()
        assert not supervisor.can_start_nowait()
        with pytest.raises(trio.WouldBlock):
            supervisor.start_child_nowait(Worker().spec())
        assert [child.id for child in supervisor.which_children()] == ["slow"]
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.can_start_nowait()
        supervisor.start_child_nowait(Worker().spec())
        assert [child.id for child in supervisor.which_children()] == ["slow", "worker"]
        nursery.cancel_scope.cancel()


async def test_start_child_nowait_refuses_a_taken_id() -> None:
    async with Supervisor() as supervisor:
        supervisor.start_child_nowait(Worker().spec())
        with pytest.raises(DuplicateChild):
            supervisor.start_child_nowait(Worker().spec())
        assert len(supervisor.which_children()) == 1


async def test_start_child_nowait_refuses_once_the_supervisor_has_stopped() -> None:
    async with Supervisor() as supervisor:
        pass
    assert not supervisor.can_start_nowait()
    with pytest.raises(SupervisorNotRunning):
        supervisor.start_child_nowait(Worker().spec())
