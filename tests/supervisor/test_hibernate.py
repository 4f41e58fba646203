"""A child that ends its run with ``Hibernate`` is kept without a task until ``wake_child``."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from supervisor import ChildSpec, ChildState, Hibernate, RestartBackoff, Supervisor


class Sleepy:
    """A child that reports ``started`` with its run's number, then hibernates at once (or
    waits for a stop, once ``stay`` is set); ``stops`` records what its stop hook got."""

    def __init__(self, *, wake_to_stop: bool) -> None:
        self.runs = 0
        self.stops: list[Any] = []
        self.wake_to_stop = wake_to_stop
        self.stay = False
        self.stopping = trio.Event()

    async def start(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.runs == 1:
            task_status.started(f"run {self.runs}")
        await trio.lowlevel.checkpoint()
        if not self.stay:
            raise Hibernate(wake_to_stop=self.wake_to_stop)
        await self.stopping.wait()

    def stop(self, value: Any) -> None:
        self.stops.append(value)
        self.stopping.set()

    def spec(self) -> ChildSpec:
        return ChildSpec("sleepy", self.start, stop=self.stop)


def state(supervisor: Supervisor) -> ChildState:
    [child] = supervisor.which_children()
    return child.state


async def test_a_hibernating_child_is_kept_without_a_run() -> None:
    child = Sleepy(wake_to_stop=True)
    async with Supervisor([child.spec()]) as supervisor:
        await trio.testing.wait_all_tasks_blocked()
        assert state(supervisor) is ChildState.HIBERNATED
        assert supervisor.which_children()[0].value == "run 1"
        assert supervisor.count_children().active == 1
        assert child.runs == 1
        assert supervisor.stats().total_restarts == 0


async def test_wake_child_starts_its_next_run_without_counting_a_restart() -> None:
    child = Sleepy(wake_to_stop=True)
    async with Supervisor([child.spec()]) as supervisor:
        await trio.testing.wait_all_tasks_blocked()
        child.stay = True
        assert supervisor.wake_child("sleepy") is True
        assert supervisor.wake_child("sleepy") is False  # awake already
        await trio.testing.wait_all_tasks_blocked()
        assert (state(supervisor), child.runs) == (ChildState.RUNNING, 2)
        assert supervisor.stats().total_restarts == 0
        assert supervisor.wake_child("nobody") is False


async def test_stopping_a_child_that_wakes_to_stop_starts_its_run_then_stops_it() -> None:
    child = Sleepy(wake_to_stop=True)
    async with Supervisor([child.spec()]) as supervisor:
        await trio.testing.wait_all_tasks_blocked()
        child.stay = True
    assert child.runs == 2
    assert child.stops == ["run 1"]
    assert state(supervisor) is ChildState.TERMINATED


async def test_stopping_any_other_sleeper_calls_its_stop_hook_alone() -> None:
    child = Sleepy(wake_to_stop=False)
    async with Supervisor([child.spec()]) as supervisor:
        await trio.testing.wait_all_tasks_blocked()
        await supervisor.terminate_child("sleepy")
        assert state(supervisor) is ChildState.TERMINATED
        assert supervisor.wake_child("sleepy") is False
    assert child.runs == 1
    assert child.stops == ["run 1"]


class CrashesWhenTold:
    """Reports ``started``, then hibernates, crashes or waits, as ``next`` says at each run;
    ``starts`` records the Trio time of every run's start."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.next = "wait"
        self.told = trio.Event()

    async def start(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts.append(trio.current_time())
        task_status.started()
        await self.told.wait()
        self.told = trio.Event()
        if self.next == "hibernate":
            raise Hibernate()
        raise ValueError("crash")

    def tell(self, what: str) -> None:
        self.next = what
        self.told.set()


async def test_the_backoff_counts_time_asleep_as_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A child restarted once, then quiet for longer than ``reset_after`` (mostly asleep,
    woken shortly before it crashes), waits ``initial`` again: a wake is no restart, and
    the quiet period runs across it."""
    child = CrashesWhenTold()
    backoff = RestartBackoff(initial=1.0, multiplier=10.0, jitter=0.0, reset_after=60.0)
    async with Supervisor([ChildSpec("child", child.start)], backoff=backoff) as supervisor:
        await trio.testing.wait_all_tasks_blocked()
        child.tell("crash")
        await trio.sleep(2.0)  # restarted after 1 s
        child.tell("hibernate")
        await trio.sleep(1000.0)
        assert supervisor.wake_child("child")
        await trio.sleep(5.0)
        crashed_at = trio.current_time()
        child.tell("crash")
        await trio.sleep(20.0)
        supervisor.request_stop()
    assert child.starts[-1] - crashed_at == 1.0
