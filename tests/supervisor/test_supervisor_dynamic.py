"""DynamicSupervisor: children started on demand from one template (simple_one_for_one)."""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable

import attrs
import pytest
import trio
import trio.testing
from supervised import Crash, Handle, Log, ask_to_stop, starts, worker

from supervisor import (
    ChildKind,
    ChildNotFound,
    ChildSpec,
    ChildStartFailed,
    ChildState,
    DynamicSupervisor,
    InvalidSpec,
    RestartBackoff,
    RestartIntensityExceeded,
    RestartType,
    Supervisor,
    SupervisorNotRunning,
    TooManyChildren,
)

Clock = trio.testing.MockClock


def template(
    log: Log, *, restart: RestartType = RestartType.PERMANENT, stop: object = None
) -> ChildSpec:
    """A template whose children are helper workers; ``start_child(name, **options)``."""

    async def start(
        name: str,
        crashes: list[float] | None = None,
        return_after: float | None = None,
        fail_start: bool = False,
        *,
        task_status: trio.TaskStatus[Handle] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await worker(
            log,
            name,
            crashes=crashes,
            return_after=return_after,
            fail_start=fail_start,
            task_status=task_status,
        )

    return ChildSpec("w", start, restart=restart, stop=stop)  # type: ignore[arg-type]


class TestStartChild:
    async def test_start_child_runs_the_template_with_the_arguments(
        self, autojump_clock: Clock
    ) -> None:
        """Each ``start_child(*args)`` starts ``template.start(*args)`` as a new child."""
        log = Log()
        async with DynamicSupervisor(template(log)) as sup:
            await sup.start_child("x")
            await sup.start_child("y")
            assert starts(log) == ["x", "y"]

    async def test_child_ids_number_the_template_id(self, autojump_clock: Clock) -> None:
        """Children are called ``(template.id, 1)``, ``(template.id, 2)``, ..."""
        log = Log()
        async with DynamicSupervisor(template(log)) as sup:
            first = await sup.start_child("x")
            second = await sup.start_child("y")
            assert (first.id, second.id) == (("w", 1), ("w", 2))
            assert [child.id for child in sup.which_children()] == [("w", 1), ("w", 2)]

    async def test_start_child_reports_the_started_child(self, autojump_clock: Clock) -> None:
        """``start_child`` returns the new child's info, running, with its started value."""
        log = Log()
        async with DynamicSupervisor(template(log, restart=RestartType.TRANSIENT)) as sup:
            child = await sup.start_child("x")
            assert (child.state, child.restart) == (ChildState.RUNNING, RestartType.TRANSIENT)
            assert isinstance(child.value, Handle)

    async def test_starts_with_no_children(self, autojump_clock: Clock) -> None:
        """A dynamic supervisor starts empty; the template alone starts nothing."""
        log = Log()
        async with DynamicSupervisor(template(log)) as sup:
            assert (sup.which_children(), log) == ([], [])

    async def test_child_failing_to_start(self, autojump_clock: Clock) -> None:
        """A child raising before it started raises ``ChildStartFailed`` and is not kept."""
        log = Log()
        async with DynamicSupervisor(template(log)) as sup:
            with pytest.raises(ChildStartFailed) as caught:
                await sup.start_child("x", None, None, True)
            assert isinstance(caught.value.__cause__, Crash)
            assert sup.which_children() == []

    async def test_start_child_before_running(self, autojump_clock: Clock) -> None:
        """A dynamic supervisor that is not running refuses new children."""
        log = Log()
        sup = DynamicSupervisor(template(log))
        with pytest.raises(SupervisorNotRunning):
            await sup.start_child("x")
        assert log == []


class TestRestarts:
    async def test_crashed_child_restarts_with_its_own_arguments(
        self, autojump_clock: Clock
    ) -> None:
        """A child is restarted with the arguments it was started with, alone."""
        log = Log()
        async with DynamicSupervisor(template(log)) as sup:
            await sup.start_child("x")
            await sup.start_child("y", [1.0])
            await trio.sleep(2)
            assert starts(log) == ["x", "y", "y"]
            assert [child.restarts for child in sup.which_children()] == [0, 1]

    async def test_intensity_is_shared_by_the_children(self, autojump_clock: Clock) -> None:
        """Restarts of all the children count in one window."""
        log = Log()

        async def start_two_and_wait() -> None:
            async with DynamicSupervisor(template(log), max_restarts=2) as sup:
                await sup.start_child("x", [1.0])
                await sup.start_child("y", [1.5, 1.0])
                await trio.sleep(100)

        with pytest.raises(RestartIntensityExceeded):
            await start_two_and_wait()
        assert starts(log) == ["x", "y", "x", "y"]

    async def test_backoff_applies_to_its_children(self, autojump_clock: Clock) -> None:
        """A dynamic supervisor's backoff delays its children's restarts."""
        log = Log()
        backoff = RestartBackoff(initial=3.0, jitter=0.0)
        began = trio.current_time()
        async with DynamicSupervisor(template(log), backoff=backoff) as sup:
            await sup.start_child("x", [1.0])
            await trio.sleep(10)
        assert log.when("start x") == [began, began + 4.0]

    async def test_temporary_child_is_forgotten_when_it_exits(self, autojump_clock: Clock) -> None:
        """A temporary child that exits is not restarted and leaves the children."""
        log = Log()
        async with DynamicSupervisor(template(log, restart=RestartType.TEMPORARY)) as sup:
            await sup.start_child("x", [1.0])
            await trio.sleep(2)
            assert (starts(log), sup.which_children()) == (["x"], [])

    async def test_transient_child_is_forgotten_when_it_returns(
        self, autojump_clock: Clock
    ) -> None:
        """A transient child that returns is not restarted and leaves the children, as in OTP."""
        log = Log()
        async with DynamicSupervisor(template(log, restart=RestartType.TRANSIENT)) as sup:
            await sup.start_child("x", None, 1.0)
            await trio.sleep(2)
            assert (starts(log), sup.which_children()) == (["x"], [])


class TestMaxChildren:
    async def test_one_child_too_many(self, autojump_clock: Clock) -> None:
        """At ``max_children`` children, ``start_child`` raises ``TooManyChildren``."""
        log = Log()
        async with DynamicSupervisor(template(log), max_children=2) as sup:
            await sup.start_child("x")
            await sup.start_child("y")
            with pytest.raises(TooManyChildren):
                await sup.start_child("z")
            assert starts(log) == ["x", "y"]

    async def test_terminated_child_frees_its_place(self, autojump_clock: Clock) -> None:
        """Once a child is terminated, another may start in its place."""
        log = Log()
        async with DynamicSupervisor(template(log), max_children=1) as sup:
            first = await sup.start_child("x")
            await sup.terminate_child(first.id)
            await sup.start_child("y")
            assert starts(log) == ["x", "y"]

    async def test_child_that_ended_for_good_frees_its_place(self, autojump_clock: Clock) -> None:
        """A transient child that returned no longer counts towards ``max_children``."""
        log = Log()
        restart = RestartType.TRANSIENT
        async with DynamicSupervisor(template(log, restart=restart), max_children=1) as sup:
            await sup.start_child("x", None, 1.0)
            await trio.sleep(2)
            await sup.start_child("y")
            assert starts(log) == ["x", "y"]

    async def test_starts_waiting_together_for_the_supervisor_do_not_all_fit(
        self, autojump_clock: Clock
    ) -> None:
        """Two starts that wait while a restart holds the supervisor, with room for one
        more child: one starts, the other raises ``TooManyChildren``, as OTP's supervisor,
        taking one request at a time, would answer them."""
        crash = trio.Event()
        restart_may_finish = trio.Event()
        runs = 0

        async def start(
            name: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            nonlocal runs
            if name == "slow to restart":
                runs += 1
                if runs == 2:
                    await restart_may_finish.wait()  # its restart holds the supervisor
                task_status.started()
                if runs == 1:
                    await crash.wait()
                    raise Crash(name)
            else:
                task_status.started()
            await trio.sleep_forever()

        outcomes: list[str] = []

        async def start_one_more(sup: DynamicSupervisor) -> None:
            try:
                await sup.start_child("more")
                outcomes.append("started")
            except TooManyChildren:
                outcomes.append("too many")

        async with DynamicSupervisor(ChildSpec("w", start), max_children=2) as sup:
            await sup.start_child("slow to restart")
            crash.set()
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(start_one_more, sup)
                nursery.start_soon(start_one_more, sup)
                await trio.testing.wait_all_tasks_blocked()
                restart_may_finish.set()
            assert sorted(outcomes) == ["started", "too many"]
            assert len(sup.which_children()) == 2

    @pytest.mark.parametrize("max_children", [0, -1, 1.5, True])
    def test_bad_max_children(self, max_children: object) -> None:
        """``max_children`` is None or an int of at least 1."""
        with pytest.raises(InvalidSpec, match="max_children"):
            DynamicSupervisor(template(Log()), max_children=max_children)  # type: ignore[arg-type]


class TestTerminateChild:
    async def test_terminate_child_stops_and_forgets_it(self, autojump_clock: Clock) -> None:
        """``terminate_child`` stops the child by the template's shutdown and forgets it."""
        log = Log()
        async with DynamicSupervisor(template(log, stop=ask_to_stop)) as sup:
            child = await sup.start_child("x")
            await sup.start_child("y")
            await sup.terminate_child(child.id)
            assert [info.id for info in sup.which_children()] == [("w", 2)]
            assert log == ["start x", "start y", "stop x", "end x"]

    async def test_the_templates_retire_hook_learns_which_child_went(
        self, autojump_clock: Clock
    ) -> None:
        """Children share the template (no spec each): its retire hook is given the child."""
        retired: list[Hashable] = []
        shared = attrs.evolve(template(Log()), retire=lambda child: retired.append(child.id))
        async with DynamicSupervisor(shared) as sup:
            await sup.start_child("x")
            await sup.start_child("y")
            await sup.terminate_child(("w", 2))
            assert set(retired) == {("w", 2)}

    async def test_a_terminate_cancelled_while_it_waits_still_forgets_the_child(
        self, autojump_clock: Clock
    ) -> None:
        """The stop completes all the same, and the child goes: no terminated child is left
        holding a place under ``max_children``."""
        log = Log()
        slow = ChildSpec(
            "w", functools.partial(worker, log, linger=3.0), shutdown=5.0, stop=ask_to_stop
        )
        async with DynamicSupervisor(slow, max_children=1) as sup:
            child = await sup.start_child("x")
            with trio.move_on_after(1.0):
                await sup.terminate_child(child.id)
            assert sup.which_children() == []
            await sup.start_child("y")
            assert starts(log) == ["x", "y"]

    async def test_terminate_unknown_child(self, autojump_clock: Clock) -> None:
        """Terminating an id the supervisor does not know raises ``ChildNotFound``."""
        async with DynamicSupervisor(template(Log())) as sup:
            with pytest.raises(ChildNotFound):
                await sup.terminate_child(("w", 7))

    async def test_busy_children_stop_together_within_one_shutdown_time(
        self, autojump_clock: Clock
    ) -> None:
        """As OTP stops simple_one_for_one children, every child is asked at once and waited
        for together: four busy children take one shutdown time, not four."""
        log = Log()
        busy = ChildSpec("w", functools.partial(worker, log, linger=math.inf), stop=ask_to_stop)
        async with DynamicSupervisor(busy) as sup:
            for name in "wxyz":
                await sup.start_child(name)
            began = trio.current_time()
        assert trio.current_time() - began == pytest.approx(5.0)
        assert sorted(event for event in log if not event.startswith("start")) == [
            *(f"cancel {name}" for name in "wxyz"),
            *(f"stop {name}" for name in "wxyz"),
        ]
        assert {time for event, time in log.times if event.startswith("stop")} == {began}


class TestInATree:
    async def test_runs_as_a_child_supervisor(self, autojump_clock: Clock) -> None:
        """``as_child`` puts the dynamic supervisor in a tree as a supervisor child."""
        log = Log()
        dynamic = DynamicSupervisor(template(log))
        async with Supervisor([dynamic.as_child("pool")]) as root:
            [child] = root.which_children()
            assert (child.id, child.kind, child.state) == (
                "pool",
                ChildKind.SUPERVISOR,
                ChildState.RUNNING,
            )
            await dynamic.start_child("x")
        assert log == ["start x", "cancel x"]

    async def test_restarted_by_its_parent_it_starts_empty(self, autojump_clock: Clock) -> None:
        """A dynamic supervisor that gave up is restarted by its parent with no children."""
        log = Log()
        dynamic = DynamicSupervisor(template(log), max_restarts=0)
        async with Supervisor([dynamic.as_child("pool")]) as root:
            await dynamic.start_child("x", [1.0])
            await trio.sleep(2)
            assert dynamic.which_children() == []
            assert [child.restarts for child in root.which_children()] == [1]
            await dynamic.start_child("y")
            assert starts(log) == ["x", "y"]

    async def test_runs_with_nursery_start(self, autojump_clock: Clock) -> None:
        """``await nursery.start(dynamic.run)`` starts it; ``stop`` stops its children."""
        log = Log()
        dynamic = DynamicSupervisor(template(log))
        async with trio.open_nursery() as nursery:
            await nursery.start(dynamic.run)
            await dynamic.start_child("x")
            await dynamic.stop()
        assert log == ["start x", "cancel x"]


class TestIntrospection:
    async def test_count_children(self, autojump_clock: Clock) -> None:
        """``count_children`` counts the children made from the template."""
        log = Log()
        async with DynamicSupervisor(template(log)) as sup:
            await sup.start_child("x")
            await sup.start_child("y")
            counts = sup.count_children()
            assert (counts.specs, counts.active, counts.workers, counts.supervisors) == (2, 2, 2, 0)

    async def test_stats_counts_restarts(self, autojump_clock: Clock) -> None:
        """``stats`` counts the restarts of the children."""
        log = Log()
        async with DynamicSupervisor(template(log)) as sup:
            await sup.start_child("x", [1.0])
            await trio.sleep(2)
            stats = sup.stats()
            assert (stats.total_restarts, stats.children[ChildState.RUNNING]) == (1, 1)

    def test_name_and_template(self) -> None:
        """The name given is used, and the template is kept."""
        spec = template(Log())
        sup = DynamicSupervisor(spec, name="pool")
        assert (sup.name, sup.template) == ("pool", spec)
        assert "pool" in repr(sup)

    def test_template_must_be_a_child_spec(self) -> None:
        """The template is a ``ChildSpec``."""
        with pytest.raises(InvalidSpec, match="template"):
            DynamicSupervisor(worker)  # type: ignore[arg-type]
