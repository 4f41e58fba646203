"""The supervisor: start order, strategies, restart types, intensity, shutdown, backoff, health
checks, auto shutdown, children by hand, introspection, and the two ways to run it."""

from __future__ import annotations

import contextvars
import functools
import logging
import math
from collections.abc import Hashable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from guarded import run_guarded
from supervised import (
    Crash,
    Handle,
    Log,
    Unprintable,
    ask_to_stop,
    failing_stop,
    plain,
    starts,
    worker,
)

from supervisor import (
    AutoShutdown,
    ChildInfo,
    ChildIsCaller,
    ChildKind,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildStartFailed,
    ChildState,
    CurrentChild,
    DuplicateChild,
    FinalExit,
    HealthCheck,
    HealthCheckFailed,
    InvalidSpec,
    RestartBackoff,
    RestartIntensityExceeded,
    RestartStrategy,
    RestartType,
    Shutdown,
    Supervisor,
    SupervisorError,
    SupervisorNotRunning,
    current_child,
)

Clock = trio.testing.MockClock

TRANSIENT = RestartType.TRANSIENT
TEMPORARY = RestartType.TEMPORARY


def spec(
    log: Log,
    name: str,
    *,
    restart: RestartType = RestartType.PERMANENT,
    shutdown: float | Shutdown = 5.0,
    stop: Any = None,
    significant: bool = False,
    health_check: HealthCheck | None = None,
    **behaviour: Any,
) -> ChildSpec:
    """A spec for a helper ``worker`` called ``name``; ``behaviour`` goes to the worker."""
    return ChildSpec(
        name,
        functools.partial(worker, log, name, **behaviour),
        restart=restart,
        shutdown=shutdown,
        stop=stop,
        significant=significant,
        health_check=health_check,
    )


def info(sup: Supervisor, id: Hashable) -> ChildInfo:
    """The ``ChildInfo`` of one child."""
    [found] = [child for child in sup.which_children() if child.id == id]
    return found


def named(placement: CurrentChild | None) -> tuple[Supervisor, Hashable] | None:
    """The supervisor and id that ``current_child()`` gave."""
    return None if placement is None else (placement.supervisor, placement.id)


def ids(sup: Supervisor) -> list[Hashable]:
    return [child.id for child in sup.which_children()]


def after(log: Log, event: str) -> list[str]:
    """What the log recorded after the first ``event``."""
    return log[log.index(event) + 1 :]


class TestStartOrder:
    async def test_children_start_in_list_order(self, autojump_clock: Clock) -> None:
        """Children start in the order of the list given to the supervisor."""
        log = Log()
        async with Supervisor([spec(log, name) for name in "cab"]):
            assert starts(log) == ["c", "a", "b"]

    async def test_next_child_waits_for_started(self, autojump_clock: Clock) -> None:
        """A child starts only once the one before it has called ``task_status.started``."""
        log = Log()
        began = trio.current_time()
        async with Supervisor([spec(log, "a", start_delay=3.0), spec(log, "b")]):
            assert log.when("start b") == [began + 3.0]

    async def test_child_without_task_status_is_started_at_once(
        self, autojump_clock: Clock
    ) -> None:
        """A child whose start takes no ``task_status`` does not hold up the next one."""
        log = Log()
        children = [ChildSpec("p", functools.partial(plain, log, "p")), spec(log, "b")]
        with trio.fail_after(1):
            async with Supervisor(children) as sup:
                assert starts(log) == ["p", "b"]
                assert info(sup, "p").state is ChildState.RUNNING

    async def test_started_value_is_reported(self, autojump_clock: Clock) -> None:
        """What a child passes to ``task_status.started`` is its ``ChildInfo.value``."""
        log = Log()
        async with Supervisor([spec(log, "a")]) as sup:
            value = info(sup, "a").value
            assert isinstance(value, Handle)
            assert value.name == "a"

    async def test_reporting_started_twice_is_refused_as_trio_refuses_it(
        self, autojump_clock: Clock
    ) -> None:
        """A second ``task_status.started`` raises RuntimeError in the child, as with Trio's
        ``nursery.start``; the value reported first stands."""
        refused: list[RuntimeError] = []

        async def twice(*, task_status: trio.TaskStatus[str]) -> None:
            task_status.started("first")
            try:
                task_status.started("second")
            except RuntimeError as error:
                refused.append(error)
            await trio.sleep_forever()

        async with Supervisor([ChildSpec("twice", twice)]) as sup:
            assert info(sup, "twice").value == "first"
        assert len(refused) == 1

    async def test_nursery_start_returns_once_every_child_started(
        self, autojump_clock: Clock
    ) -> None:
        """``await nursery.start(sup.run)`` returns the supervisor once all children started."""
        log = Log()
        sup = Supervisor([spec(log, "a"), spec(log, "b", start_delay=2.0)])
        async with trio.open_nursery() as nursery:
            assert await nursery.start(sup.run) is sup
            assert starts(log) == ["a", "b"]
            assert {child.state for child in sup.which_children()} == {ChildState.RUNNING}
            await sup.stop()


class TestOneForOne:
    async def test_restarts_only_the_crashed_child(self, autojump_clock: Clock) -> None:
        """Under one for one, a crash restarts that child and leaves its siblings running."""
        log = Log()
        async with Supervisor([spec(log, "a"), spec(log, "b", crashes=[1.0]), spec(log, "c")]):
            await trio.sleep(2)
            assert after(log, "crash b") == ["start b"]

    async def test_restarted_child_records_its_restart(self, autojump_clock: Clock) -> None:
        """A restarted child is running again, with one restart and its crash as last exit."""
        log = Log()
        async with Supervisor([spec(log, "a", crashes=[1.0])]) as sup:
            await trio.sleep(2)
            child = info(sup, "a")
            assert (child.state, child.restarts) == (ChildState.RUNNING, 1)
            assert isinstance(child.last_exit, Crash)


class TestOneForAll:
    async def test_stops_the_others_newest_first_then_restarts_all_in_order(
        self, autojump_clock: Clock
    ) -> None:
        """Under one for all, the others stop in reverse start order, then all start in order."""
        log = Log()
        children = [spec(log, "a"), spec(log, "b", crashes=[1.0]), spec(log, "c")]
        async with Supervisor(children, strategy=RestartStrategy.ONE_FOR_ALL):
            await trio.sleep(2)
            assert after(log, "crash b") == [
                "cancel c",
                "cancel a",
                "start a",
                "start b",
                "start c",
            ]

    async def test_siblings_are_stopped_by_their_shutdown_spec(self, autojump_clock: Clock) -> None:
        """A group restart asks each sibling to stop and waits for it before the next."""
        log = Log()
        children = [
            spec(log, "a", stop=ask_to_stop, linger=1.0),
            spec(log, "b", crashes=[1.0]),
            spec(log, "c", stop=ask_to_stop, linger=1.0),
        ]
        async with Supervisor(children, strategy=RestartStrategy.ONE_FOR_ALL):
            await trio.sleep(5)
            assert after(log, "crash b")[:4] == ["stop c", "end c", "stop a", "end a"]

    async def test_group_restart_that_fails_partway_starts_over(
        self, autojump_clock: Clock
    ) -> None:
        """A child failing to start during a group restart makes the whole group restart."""
        log = Log()
        children = [
            spec(log, "a"),
            spec(log, "b", crashes=[1.0], fails_to_start=[False, True]),
            spec(log, "c"),
        ]
        async with Supervisor(children, strategy=RestartStrategy.ONE_FOR_ALL) as sup:
            await trio.sleep(2)
            assert after(log, "crash b") == [
                "cancel c",
                "cancel a",
                "start a",
                "start b",
                "crash b",
                "cancel a",
                "start a",
                "start b",
                "start c",
            ]
            assert sup.stats().total_restarts == 2

    @pytest.mark.parametrize(
        "strategy", [RestartStrategy.ONE_FOR_ALL, RestartStrategy.REST_FOR_ONE]
    )
    async def test_a_child_that_ends_for_good_as_it_restarts_lets_the_rest_start(
        self, autojump_clock: Clock, strategy: RestartStrategy
    ) -> None:
        """A sibling whose start raises ``FinalExit`` during a group restart is gone for
        good, and the children after it start all the same (as OTP goes on with the rest
        after a start that returns ``ignore``)."""
        log = Log()
        starts_of_b = 0

        async def b(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal starts_of_b
            starts_of_b += 1
            if starts_of_b > 1:
                raise FinalExit("not needed any more")
            task_status.started()
            await trio.sleep_forever()

        children = [spec(log, "a", crashes=[1.0]), ChildSpec("b", b), spec(log, "c")]
        async with Supervisor(children, strategy=strategy) as sup:
            await trio.sleep(2)
            states = {child.id: child.state for child in sup.which_children()}
            assert after(log, "crash a") == ["cancel c", "start a", "start c"]
        assert states == {"a": ChildState.RUNNING, "c": ChildState.RUNNING}

    async def test_a_group_restart_counts_once(self, autojump_clock: Clock) -> None:
        """Restarting the whole group is one restart towards the intensity."""
        log = Log()
        children = [spec(log, "a"), spec(log, "b", crashes=[1.0]), spec(log, "c")]
        async with Supervisor(children, strategy=RestartStrategy.ONE_FOR_ALL) as sup:
            await trio.sleep(2)
            stats = sup.stats()
            assert (stats.total_restarts, stats.restarts_in_window) == (1, 1)
            assert [child.restarts for child in sup.which_children()] == [1, 1, 1]


class TestRestForOne:
    async def test_restarts_the_failed_child_and_those_after_it(
        self, autojump_clock: Clock
    ) -> None:
        """Under rest for one, the children started after the failed one restart with it."""
        log = Log()
        children = [spec(log, "a"), spec(log, "b", crashes=[1.0]), spec(log, "c")]
        async with Supervisor(children, strategy=RestartStrategy.REST_FOR_ONE):
            await trio.sleep(2)
            assert after(log, "crash b") == ["cancel c", "start b", "start c"]

    async def test_last_child_restarts_alone(self, autojump_clock: Clock) -> None:
        """The newest child has no one after it, so it restarts alone."""
        log = Log()
        children = [spec(log, "a"), spec(log, "b"), spec(log, "c", crashes=[1.0])]
        async with Supervisor(children, strategy=RestartStrategy.REST_FOR_ONE):
            await trio.sleep(2)
            assert after(log, "crash c") == ["start c"]

    async def test_first_child_restarts_everyone(self, autojump_clock: Clock) -> None:
        """When the oldest child fails, every child is stopped newest first and restarted."""
        log = Log()
        children = [spec(log, "a", crashes=[1.0]), spec(log, "b"), spec(log, "c")]
        async with Supervisor(children, strategy=RestartStrategy.REST_FOR_ONE):
            await trio.sleep(2)
            assert after(log, "crash a") == [
                "cancel c",
                "cancel b",
                "start a",
                "start b",
                "start c",
            ]


class TestRestartTypes:
    async def test_permanent_child_restarts_after_a_crash(self, autojump_clock: Clock) -> None:
        """A permanent child that raises is started again."""
        log = Log()
        async with Supervisor([spec(log, "a", crashes=[1.0])]):
            await trio.sleep(2)
            assert starts(log) == ["a", "a"]

    async def test_permanent_child_restarts_after_a_normal_return(
        self, autojump_clock: Clock
    ) -> None:
        """A permanent child is started again even when it returns normally."""
        log = Log()
        async with Supervisor([spec(log, "a", return_after=1.0)]) as sup:
            await trio.sleep(2.5)
            assert starts(log) == ["a", "a", "a"]
            assert info(sup, "a").last_exit is None

    async def test_transient_child_restarts_after_a_crash(self, autojump_clock: Clock) -> None:
        """A transient child that raises is started again."""
        log = Log()
        async with Supervisor([spec(log, "a", restart=TRANSIENT, crashes=[1.0])]) as sup:
            await trio.sleep(2)
            assert starts(log) == ["a", "a"]
            assert info(sup, "a").state is ChildState.RUNNING

    async def test_transient_child_stays_down_after_a_normal_return(
        self, autojump_clock: Clock
    ) -> None:
        """A transient child that returns is not restarted but stays known, terminated."""
        log = Log()
        children = [spec(log, "a", restart=TRANSIENT, return_after=1.0), spec(log, "b")]
        async with Supervisor(children) as sup:
            await trio.sleep(5)
            assert starts(log) == ["a", "b"]
            child = info(sup, "a")
            assert (child.state, child.last_exit) == (ChildState.TERMINATED, None)

    async def test_temporary_child_is_forgotten_after_a_crash(self, autojump_clock: Clock) -> None:
        """A temporary child that raises is not restarted and disappears from the children."""
        log = Log()
        async with Supervisor(
            [spec(log, "a", restart=TEMPORARY, crashes=[1.0]), spec(log, "b")]
        ) as sup:
            await trio.sleep(5)
            assert starts(log) == ["a", "b"]
            assert ids(sup) == ["b"]

    async def test_temporary_child_is_forgotten_after_a_normal_return(
        self, autojump_clock: Clock
    ) -> None:
        """A temporary child that returns disappears from the children."""
        log = Log()
        async with Supervisor([spec(log, "a", restart=TEMPORARY, return_after=1.0)]) as sup:
            await trio.sleep(5)
            assert (starts(log), ids(sup)) == (["a"], [])

    async def test_temporary_sibling_stopped_by_a_group_restart_is_forgotten(
        self, autojump_clock: Clock
    ) -> None:
        """A temporary child stopped because a sibling restarts is not started again."""
        log = Log()
        children = [spec(log, "t", restart=TEMPORARY), spec(log, "b", crashes=[1.0])]
        async with Supervisor(children, strategy=RestartStrategy.ONE_FOR_ALL) as sup:
            await trio.sleep(2)
            assert after(log, "crash b") == ["cancel t", "start b"]
            assert ids(sup) == ["b"]

    async def test_transient_sibling_stopped_by_a_group_restart_restarts(
        self, autojump_clock: Clock
    ) -> None:
        """A transient child stopped because a sibling restarts is started again with it."""
        log = Log()
        children = [spec(log, "t", restart=TRANSIENT), spec(log, "b", crashes=[1.0])]
        async with Supervisor(children, strategy=RestartStrategy.ONE_FOR_ALL):
            await trio.sleep(2)
            assert after(log, "crash b") == ["cancel t", "start t", "start b"]

    async def test_transient_normal_exit_leaves_the_group_alone(
        self, autojump_clock: Clock
    ) -> None:
        """Under one for all, a transient child that returns restarts nobody."""
        log = Log()
        children = [spec(log, "a"), spec(log, "t", restart=TRANSIENT, return_after=1.0)]
        async with Supervisor(children, strategy=RestartStrategy.ONE_FOR_ALL) as sup:
            await trio.sleep(2)
            assert after(log, "return t") == []
            assert sup.stats().total_restarts == 0


class TestIntensity:
    async def test_restarts_within_the_limit_are_allowed(self, autojump_clock: Clock) -> None:
        """``max_restarts`` restarts within ``max_seconds`` keep the supervisor running."""
        log = Log()
        async with Supervisor([spec(log, "a", crashes=[1.0, 1.0, 1.0])], max_restarts=3) as sup:
            await trio.sleep(10)
            assert info(sup, "a").restarts == 3
            assert sup.stats().restarts_in_window == 3

    async def test_one_restart_too_many_stops_every_child(self, autojump_clock: Clock) -> None:
        """One restart above the limit stops the other children newest first and raises."""
        log = Log()
        children = [spec(log, "x"), spec(log, "a", crash_after=1.0), spec(log, "y")]
        with pytest.raises(RestartIntensityExceeded):
            async with Supervisor(children, max_restarts=3):
                await trio.sleep(100)
        assert starts(log).count("a") == 4
        assert log[-3:] == ["crash a", "cancel y", "cancel x"]

    async def test_error_carries_the_last_failure(self, autojump_clock: Clock) -> None:
        """``last_failure`` and ``__cause__`` are the exit that tipped the supervisor over."""
        log = Log()
        with pytest.raises(RestartIntensityExceeded) as caught:
            async with Supervisor([spec(log, "a", crash_after=1.0)], max_restarts=1):
                await trio.sleep(100)
        assert isinstance(caught.value.last_failure, Crash)
        assert caught.value.__cause__ is caught.value.last_failure

    async def test_intensity_is_counted_over_all_children(self, autojump_clock: Clock) -> None:
        """Restarts of different children add up in one window."""
        log = Log()
        children = [spec(log, "a", crashes=[1.0, 1.0]), spec(log, "b", crashes=[1.5, 1.5])]
        began = trio.current_time()
        with pytest.raises(RestartIntensityExceeded):
            async with Supervisor(children, max_restarts=3):
                await trio.sleep(100)
        assert trio.current_time() == pytest.approx(began + 3.0)

    async def test_normal_exits_of_permanent_children_count(self, autojump_clock: Clock) -> None:
        """Restarting a permanent child that returned counts towards the intensity."""
        log = Log()
        with pytest.raises(RestartIntensityExceeded) as caught:
            async with Supervisor([spec(log, "a", return_after=1.0)], max_restarts=2):
                await trio.sleep(100)
        assert caught.value.last_failure is None

    async def test_a_restart_that_fails_to_start_counts_as_a_crash(
        self, autojump_clock: Clock
    ) -> None:
        """A restart whose start raises is one more exit, restarted until the limit."""
        log = Log()
        child = spec(log, "a", crashes=[1.0], fails_to_start=[False, True, True, True])
        with pytest.raises(RestartIntensityExceeded) as caught:
            async with Supervisor([child], max_restarts=2):
                await trio.sleep(100)
        assert starts(log) == ["a", "a", "a"]
        assert str(caught.value.last_failure) == "a failed to start"

    async def test_old_restarts_fall_out_of_the_window(self, autojump_clock: Clock) -> None:
        """A child that crashes less often than the window allows is restarted forever."""
        log = Log()
        sup = Supervisor([spec(log, "a", crash_after=11.0)], max_restarts=1, max_seconds=10.0)
        async with sup:
            await trio.sleep(200)
            assert info(sup, "a").restarts == 18
            assert sup.stats().restarts_in_window == 1

    async def test_zero_max_restarts_gives_up_at_the_first_exit(
        self, autojump_clock: Clock
    ) -> None:
        """With ``max_restarts=0`` the first exit that calls for a restart ends the supervisor."""
        log = Log()
        with pytest.raises(RestartIntensityExceeded):
            async with Supervisor([spec(log, "a", crashes=[1.0])], max_restarts=0):
                await trio.sleep(100)
        assert starts(log) == ["a"]

    async def test_giving_up_is_counted(self, autojump_clock: Clock) -> None:
        """``stats().escalations`` counts the times the supervisor gave up."""
        log = Log()
        sup = Supervisor([spec(log, "a", crash_after=1.0)], max_restarts=1)
        with pytest.raises(RestartIntensityExceeded):
            async with sup:
                await trio.sleep(100)
        stats = sup.stats()
        assert (stats.escalations, stats.total_restarts) == (1, 1)

    async def test_nothing_restarts_after_giving_up(self, autojump_clock: Clock) -> None:
        """A restart still waiting for its backoff does not happen once the supervisor gave up."""
        log = Log()
        children = [
            spec(log, "a", crashes=[0.0]),  # restart admitted, delayed until t=2
            spec(log, "b", crashes=[1.0]),  # its restart at t=1 is one too many
            spec(log, "x", stop=ask_to_stop, linger=math.inf),  # holds the lock till t=5.5
        ]
        sup = Supervisor(children, max_restarts=1, backoff=RestartBackoff(initial=2.0, jitter=0))

        async def terminate_x_then_wait() -> None:
            async with sup:
                await trio.sleep(0.5)
                await sup.terminate_child("x")
                await trio.sleep(100)

        with pytest.raises(RestartIntensityExceeded):
            await terminate_x_then_wait()
        assert starts(log) == ["a", "b", "x"]


class TestEscalation:
    async def test_parent_restarts_a_subtree_that_gave_up(self, autojump_clock: Clock) -> None:
        """A child supervisor that gives up is a crashed child: its parent restarts it."""
        log = Log()
        sub = Supervisor([spec(log, "w", crashes=[1.0, 1.0])], max_restarts=1, name="sub")
        async with Supervisor([spec(log, "p"), sub.as_child("sub")]) as root:
            await trio.sleep(5)
            assert starts(log) == ["p", "w", "w", "w"]
            child = info(root, "sub")
            assert (child.state, child.restarts) == (ChildState.RUNNING, 1)
            assert isinstance(child.last_exit, RestartIntensityExceeded)
            assert info(sub, "w").state is ChildState.RUNNING

    async def test_subtree_stops_its_children_before_it_gives_up(
        self, autojump_clock: Clock
    ) -> None:
        """Before a subtree escalates, its other children are stopped newest first."""
        log = Log()
        sub = Supervisor(
            [spec(log, "u"), spec(log, "w", crashes=[1.0]), spec(log, "v")], max_restarts=0
        )
        async with Supervisor([sub.as_child("sub")]):
            await trio.sleep(2)
            assert after(log, "crash w") == [
                "cancel v",
                "cancel u",
                "start u",
                "start w",
                "start v",
            ]

    async def test_escalation_climbs_to_the_root(self, autojump_clock: Clock) -> None:
        """When the parent cannot restart the subtree either, the parent gives up too."""
        log = Log()
        sub = Supervisor([spec(log, "w", crash_after=1.0)], max_restarts=0, name="sub")
        root = Supervisor([spec(log, "p"), sub.as_child("sub")], max_restarts=1, name="root")
        with pytest.raises(RestartIntensityExceeded, match="root") as caught:
            async with root:
                await trio.sleep(100)
        assert isinstance(caught.value.last_failure, RestartIntensityExceeded)
        assert isinstance(caught.value.last_failure.last_failure, Crash)
        assert log[-1] == "cancel p"


class TestShutdown:
    async def test_children_stop_in_reverse_start_order(self, autojump_clock: Clock) -> None:
        """When the supervisor stops, its children are cancelled newest first."""
        log = Log()
        async with Supervisor([spec(log, name) for name in "abc"]):
            pass
        assert log[3:] == ["cancel c", "cancel b", "cancel a"]

    async def test_each_child_has_stopped_before_the_next_is_asked(
        self, autojump_clock: Clock
    ) -> None:
        """A child is asked to stop only once the newer one has finished."""
        log = Log()
        async with Supervisor([spec(log, name, stop=ask_to_stop, linger=1.0) for name in "ab"]):
            pass
        assert log[2:] == ["stop b", "end b", "stop a", "end a"]

    async def test_timed_shutdown_asks_then_cancels(self, autojump_clock: Clock) -> None:
        """With a number of seconds, the child is asked to stop, then cancelled that much later."""
        log = Log()
        async with Supervisor([spec(log, "a", stop=ask_to_stop, linger=math.inf, shutdown=2.0)]):
            pass
        assert log[1:] == ["stop a", "cancel a"]
        [asked], [cancelled] = log.when("stop a"), log.when("cancel a")
        assert cancelled - asked == pytest.approx(2.0)

    async def test_child_that_finishes_in_time_is_not_cancelled(
        self, autojump_clock: Clock
    ) -> None:
        """A child that finishes within its shutdown time ends by itself."""
        log = Log()
        async with Supervisor([spec(log, "a", stop=ask_to_stop, linger=1.5, shutdown=2.0)]):
            pass
        assert log[1:] == ["stop a", "end a"]

    async def test_brutal_kill_cancels_without_asking(self, autojump_clock: Clock) -> None:
        """``BRUTAL_KILL`` cancels the child at once and never calls its stop hook."""
        log = Log()
        began = trio.current_time()
        async with Supervisor([spec(log, "a", stop=ask_to_stop, shutdown=Shutdown.BRUTAL_KILL)]):
            pass
        assert log[1:] == ["cancel a"]
        assert log.when("cancel a") == [began]

    async def test_infinity_waits_as_long_as_it_takes(self, autojump_clock: Clock) -> None:
        """``INFINITY`` asks the child to stop and never cancels it."""
        log = Log()
        async with Supervisor(
            [spec(log, "a", stop=ask_to_stop, linger=1000.0, shutdown=Shutdown.INFINITY)]
        ):
            pass
        assert log[1:] == ["stop a", "end a"]
        [asked], [ended] = log.when("stop a"), log.when("end a")
        assert ended - asked == pytest.approx(1000.0)

    async def test_without_a_stop_hook_stopping_is_cancelling(self, autojump_clock: Clock) -> None:
        """A child without a stop hook is cancelled at once, whatever its shutdown time."""
        log = Log()
        began = trio.current_time()
        async with Supervisor([spec(log, "a", shutdown=30.0)]):
            pass
        assert log.when("cancel a") == [began]

    def test_a_subtree_waits_for_its_children(self) -> None:
        """``as_child`` makes a supervisor child that is asked to stop and waited for."""
        child = Supervisor().as_child("sub", restart=TRANSIENT)
        assert (child.id, child.shutdown, child.kind) == (
            "sub",
            Shutdown.INFINITY,
            ChildKind.SUPERVISOR,
        )
        assert (child.restart, child.stop is not None) == (TRANSIENT, True)

    async def test_a_subtree_stops_depth_first(self, autojump_clock: Clock) -> None:
        """A subtree stops its own children, newest first, in its place in the order."""
        log = Log()
        sub = Supervisor([spec(log, "b"), spec(log, "c")])
        async with Supervisor([spec(log, "a"), sub.as_child("sub"), spec(log, "d")]):
            pass
        assert log[4:] == ["cancel d", "cancel c", "cancel b", "cancel a"]


def quiet(log: Log, name: str, *, says: bool = True, **behaviour: Any) -> ChildSpec:
    """A helper child asked to stop by its hook whose ``quiet`` answers ``says``."""
    return attrs.evolve(spec(log, name, stop=ask_to_stop, **behaviour), quiet=lambda _: says)


class TestQuietChildren:
    async def test_quiet_children_stop_together_between_the_others_in_order(
        self, autojump_clock: Clock
    ) -> None:
        """Quiet children are asked at once and waited for together; the others still stop
        one after another, newest first, around them."""
        log = Log()
        children = [
            spec(log, "a", stop=ask_to_stop),
            quiet(log, "b", linger=1.0),
            quiet(log, "c", linger=1.0),
            spec(log, "d", stop=ask_to_stop),
        ]
        async with Supervisor(children):
            pass
        assert log[4:8] == ["stop d", "end d", "stop c", "stop b"]
        assert sorted(log[8:10]) == ["end b", "end c"]
        assert log[10:] == ["stop a", "end a"]
        [asked] = log.when("stop b")
        assert log.when("end b") == log.when("end c") == log.when("stop a") == [asked + 1.0]

    async def test_a_quiet_child_past_its_shutdown_time_is_cancelled(
        self, autojump_clock: Clock
    ) -> None:
        """A quiet child that does not end within its shutdown time is cancelled then."""
        log = Log()
        async with Supervisor([quiet(log, "a", linger=math.inf, shutdown=2.0)]):
            pass
        assert log[1:] == ["stop a", "cancel a"]
        [asked], [cancelled] = log.when("stop a"), log.when("cancel a")
        assert cancelled - asked == pytest.approx(2.0)

    async def test_a_child_not_quiet_now_stops_in_turn(self, autojump_clock: Clock) -> None:
        """A child whose ``quiet`` says False is stopped alone, after the newer one."""
        log = Log()
        children = [quiet(log, "a", says=False, linger=1.0), quiet(log, "b", linger=1.0)]
        async with Supervisor(children):
            pass
        assert log[2:] == ["stop b", "end b", "stop a", "end a"]


class TestRunScope:
    async def test_cancelling_a_childs_run_scope_kills_that_run(
        self, autojump_clock: Clock
    ) -> None:
        """``run_scope`` is the scope the supervisor kills a run with: cancelled, the child
        sees ``Cancelled``, and its run ends (a permanent child then starts again)."""
        log = Log()
        sup = Supervisor([spec(log, "a")])
        async with sup:
            scope = sup.run_scope("a")
            assert scope is not None
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert log[:3] == ["start a", "cancel a", "start a"]
            assert sup.run_scope("a") is not scope
            assert sup.run_scope("nobody") is None


class TestStopConcurrently:
    async def test_busy_children_stop_within_one_shutdown_time(self, autojump_clock: Clock) -> None:
        """With ``stop_concurrently`` every child is asked at once and waited for together:
        children that outlast their shutdown time are all cancelled after one of it."""
        log = Log()
        children = [spec(log, name, stop=ask_to_stop, linger=math.inf) for name in "abcd"]
        async with Supervisor(children, stop_concurrently=True):
            began = trio.current_time()
        assert trio.current_time() - began == pytest.approx(5.0)
        assert sorted(event for event in log if event.startswith("cancel")) == [
            "cancel a",
            "cancel b",
            "cancel c",
            "cancel d",
        ]
        assert log.when("stop a") == log.when("stop d") == [began]

    async def test_each_child_keeps_its_own_shutdown_time(self, autojump_clock: Clock) -> None:
        """Stopped together, a child is still cancelled at its own shutdown time, and one
        that finishes in time ends by itself."""
        log = Log()
        children = [
            spec(log, "short", stop=ask_to_stop, linger=math.inf, shutdown=1.0),
            spec(log, "long", stop=ask_to_stop, linger=math.inf, shutdown=3.0),
            spec(log, "quick", stop=ask_to_stop, linger=0.5, shutdown=3.0),
        ]
        async with Supervisor(children, stop_concurrently=True):
            began = trio.current_time()
        assert log.when("cancel short") == [began + 1.0]
        assert log.when("cancel long") == [began + 3.0]
        assert log.when("end quick") == [began + 0.5]

    async def test_a_child_stopping_may_terminate_a_sibling_stopping_with_it(
        self, autojump_clock: Clock
    ) -> None:
        """A child whose stop terminates a sibling being stopped at the same time gets the
        call back once that sibling has stopped: nobody waits for the lock it holds."""
        log = Log()
        done: list[float] = []

        async def stops_b(*, task_status: trio.TaskStatus[Handle]) -> None:
            handle = Handle(log, "a")
            task_status.started(handle)
            await handle.asked.wait()
            await sup.terminate_child("b")
            done.append(trio.current_time())

        sup = Supervisor(
            [
                spec(log, "b", stop=ask_to_stop, linger=2.0),
                ChildSpec("a", stops_b, stop=ask_to_stop),
            ],
            stop_concurrently=True,
        )
        async with sup:
            began = trio.current_time()
        assert log.when("end b") == [began + 2.0]
        assert done == [began + 2.0]
        assert [child.state for child in sup.which_children()] == [ChildState.TERMINATED] * 2

    async def test_by_default_children_stop_one_after_another(self, autojump_clock: Clock) -> None:
        """Without it, busy children's shutdown times add up: each waits for the newer."""
        log = Log()
        children = [spec(log, name, stop=ask_to_stop, linger=math.inf) for name in "ab"]
        async with Supervisor(children):
            began = trio.current_time()
        assert trio.current_time() - began == pytest.approx(10.0)


class TestErrorsWhileStopping:
    async def test_child_raising_when_cancelled_is_reported(
        self, autojump_clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A child that raises while it is stopped is logged, counted and kept as last exit."""
        log = Log()
        sup = Supervisor([spec(log, "a", raise_when_cancelled=True)])
        async with sup:
            pass
        [record] = [r for r in caplog.records if r.name == "supervisor"]
        assert record.levelno == logging.ERROR
        assert "'a'" in record.getMessage()
        assert sup.stats().stop_errors == 1
        assert isinstance(info(sup, "a").last_exit, Crash)

    async def test_child_raising_when_asked_to_stop_is_reported(
        self, autojump_clock: Clock
    ) -> None:
        """A child that raises instead of finishing when asked to stop is reported."""
        log = Log()
        sup = Supervisor([spec(log, "a", stop=ask_to_stop, raise_when_stopped=True)])
        async with sup:
            pass
        assert sup.stats().stop_errors == 1
        assert isinstance(info(sup, "a").last_exit, Crash)

    async def test_failing_stop_hook_is_reported_and_the_child_cancelled(
        self, autojump_clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A stop hook that raises is reported, and the child is cancelled instead."""
        log = Log()
        sup = Supervisor([spec(log, "a", stop=failing_stop)])
        async with sup:
            pass
        assert log[1:] == ["cancel a"]
        assert sup.stats().stop_errors == 1
        assert isinstance(info(sup, "a").last_exit, Crash)
        assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [info(sup, "a").last_exit]

    async def test_one_failing_child_does_not_stop_the_shutdown(
        self, autojump_clock: Clock
    ) -> None:
        """Children older than one that raised while stopping are still stopped in order."""
        log = Log()
        children = [spec(log, "a"), spec(log, "b", raise_when_cancelled=True), spec(log, "c")]
        async with Supervisor(children):
            pass
        assert log[3:] == ["cancel c", "cancel b", "cancel a"]

    async def test_terminate_child_reports_an_error_while_stopping(
        self, autojump_clock: Clock
    ) -> None:
        """``terminate_child`` of a child that raises while stopping reports, not raises."""
        log = Log()
        async with Supervisor([spec(log, "a", raise_when_cancelled=True)]) as sup:
            await sup.terminate_child("a")
            assert sup.stats().stop_errors == 1
            assert isinstance(info(sup, "a").last_exit, Crash)


class TestLogRecordsQuoteValuesBounded:
    async def test_a_restart_is_logged_short_whatever_the_id_and_the_error(
        self, autojump_clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A child whose id has a raising repr, crashing with a 10 MB message, is logged in
        lines of a few hundred characters that name it ``<unprintable ...>``."""
        crashes: list[None] = []

        async def crashes_once(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            if not crashes:
                crashes.append(None)
                raise Crash("x" * 10_000_000)
            await trio.sleep_forever()

        with caplog.at_level(logging.INFO, logger="supervisor"):
            async with Supervisor([ChildSpec(Unprintable(), crashes_once)]):
                await trio.testing.wait_all_tasks_blocked()
        messages = [record.getMessage() for record in caplog.records]
        [restart] = [message for message in messages if "restarting" in message]
        assert "<unprintable Unprintable>" in restart
        assert "Crash('xxx" in restart
        assert all(len(message) < 500 for message in messages)


class TestBackoff:
    async def test_restart_waits_the_initial_delay(self, autojump_clock: Clock) -> None:
        """The first restart after a crash waits ``initial`` seconds."""
        log = Log()
        began = trio.current_time()
        backoff = RestartBackoff(initial=2.0, jitter=0.0)
        async with Supervisor([spec(log, "a", crashes=[1.0])], backoff=backoff):
            await trio.sleep(10)
        assert log.when("start a") == [began, began + 3.0]

    async def test_consecutive_restarts_wait_longer_up_to_the_maximum(
        self, autojump_clock: Clock
    ) -> None:
        """Restarts in a row wait initial, initial*multiplier, ..., capped at maximum."""
        log = Log()
        backoff = RestartBackoff(initial=1.0, multiplier=2.0, maximum=4.0, jitter=0.0)
        began = trio.current_time()
        sup = Supervisor([spec(log, "a", crashes=[0.5] * 4)], backoff=backoff, max_restarts=10)
        async with sup:
            await trio.sleep(30)
        waits = [t - began for t in log.when("start a")]
        assert waits == pytest.approx([0.0, 1.5, 4.0, 8.5, 13.0])

    async def test_a_quiet_run_resets_the_backoff(self, autojump_clock: Clock) -> None:
        """A child that ran ``reset_after`` seconds waits ``initial`` again at its next crash."""
        log = Log()
        backoff = RestartBackoff(initial=1.0, multiplier=2.0, jitter=0.0, reset_after=10.0)
        began = trio.current_time()
        sup = Supervisor([spec(log, "a", crashes=[0.5, 0.5, 20.0, 0.5])], backoff=backoff)
        async with sup:
            await trio.sleep(60)
        waits = [t - began for t in log.when("start a")]
        assert waits == pytest.approx([0.0, 1.5, 4.0, 25.0, 27.5])

    async def test_supervisor_stays_responsive_while_a_restart_waits(
        self, autojump_clock: Clock
    ) -> None:
        """During a backoff, the child shows as restarting and other calls are served."""
        log = Log()
        backoff = RestartBackoff(initial=10.0, jitter=0.0)
        async with Supervisor([spec(log, "a", crashes=[1.0])], backoff=backoff) as sup:
            await trio.sleep(2)
            assert info(sup, "a").state is ChildState.RESTARTING
            with trio.fail_after(1):
                await sup.start_child(spec(log, "x"))
            assert starts(log) == ["a", "x"]
            await trio.sleep(10)
            assert starts(log) == ["a", "x", "a"]

    async def test_terminate_child_drops_a_waiting_restart(self, autojump_clock: Clock) -> None:
        """A child terminated during its backoff stays terminated."""
        log = Log()
        backoff = RestartBackoff(initial=10.0, jitter=0.0)
        async with Supervisor([spec(log, "a", crashes=[1.0])], backoff=backoff) as sup:
            await trio.sleep(2)
            await sup.terminate_child("a")
            await trio.sleep(20)
            assert starts(log) == ["a"]
            assert info(sup, "a").state is ChildState.TERMINATED

    async def test_stopping_does_not_wait_for_a_backoff(self, autojump_clock: Clock) -> None:
        """A supervisor stopped during a backoff stops at once and restarts nothing."""
        log = Log()
        backoff = RestartBackoff(initial=10.0, jitter=0.0)
        async with Supervisor([spec(log, "a", crashes=[1.0])], backoff=backoff):
            await trio.sleep(2)
            stopping = trio.current_time()
        assert trio.current_time() == stopping
        assert starts(log) == ["a"]


class Probe:
    """A health check that records each call and answers from a script.

    Each answer is returned, or raised if it is an exception, or ``"hang"`` never answers.
    Once the script runs out, the probe answers ``True``.
    """

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[float, object]] = []

    async def __call__(self, value: object) -> object:
        self.calls.append((trio.current_time(), value))
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        if answer == "hang":
            await trio.sleep_forever()
        return answer


class TestHealthChecks:
    async def test_probe_gets_the_started_value_every_interval(self, autojump_clock: Clock) -> None:
        """The check is called every ``interval`` with the value the child reported."""
        log = Log()
        probe = Probe()
        began = trio.current_time()
        check = HealthCheck(check=probe, interval=2.0)
        async with Supervisor([spec(log, "a", health_check=check)]) as sup:
            await trio.sleep(7)
            handle = info(sup, "a").value
        assert probe.calls == [(began + t, handle) for t in (2.0, 4.0, 6.0)]

    async def test_false_answer_restarts_the_child(self, autojump_clock: Clock) -> None:
        """A probe that answers False gets the child cancelled and restarted."""
        log = Log()
        check = HealthCheck(check=Probe(True, False), interval=2.0)
        async with Supervisor([spec(log, "a", health_check=check)]) as sup:
            await trio.sleep(5)
            assert log == ["start a", "cancel a", "start a"]
            assert log.when("cancel a") == [pytest.approx(4.0)]
            assert isinstance(info(sup, "a").last_exit, HealthCheckFailed)

    async def test_other_answers_count_as_healthy(self, autojump_clock: Clock) -> None:
        """Only False is a failing answer: None or any other value is healthy."""
        log = Log()
        check = HealthCheck(check=Probe(None, "fine", 0, []), interval=1.0)
        async with Supervisor([spec(log, "a", health_check=check)]):
            await trio.sleep(10)
            assert log == ["start a"]

    async def test_raising_probe_restarts_the_child(self, autojump_clock: Clock) -> None:
        """A probe that raises fails the child; the error is the failure's cause."""
        log = Log()
        error = ConnectionError("no answer")
        check = HealthCheck(check=Probe(error), interval=1.0)
        async with Supervisor([spec(log, "a", health_check=check)]) as sup:
            await trio.sleep(1.5)
            last_exit = info(sup, "a").last_exit
            assert isinstance(last_exit, HealthCheckFailed)
            assert last_exit.__cause__ is error
            assert starts(log) == ["a", "a"]

    async def test_slow_probe_times_out(self, autojump_clock: Clock) -> None:
        """A probe that does not answer within ``timeout`` fails the child."""
        log = Log()
        began = trio.current_time()
        check = HealthCheck(check=Probe("hang"), interval=2.0, timeout=0.5)
        async with Supervisor([spec(log, "a", health_check=check)]) as sup:
            await trio.sleep(3)
            assert log.when("cancel a") == [pytest.approx(began + 2.5)]
            assert isinstance(info(sup, "a").last_exit, HealthCheckFailed)

    async def test_health_failures_count_towards_the_intensity(self, autojump_clock: Clock) -> None:
        """A child that keeps failing its probe makes the supervisor give up."""
        log = Log()
        check = HealthCheck(check=Probe(*[False] * 10), interval=1.0)
        with pytest.raises(RestartIntensityExceeded) as caught:
            async with Supervisor([spec(log, "a", health_check=check)], max_restarts=2):
                await trio.sleep(100)
        assert isinstance(caught.value.last_failure, HealthCheckFailed)
        assert starts(log) == ["a", "a", "a"]

    async def test_restarted_child_is_probed_with_its_new_value(
        self, autojump_clock: Clock
    ) -> None:
        """After a restart the probe goes on, with the value of the new run."""
        log = Log()
        probe = Probe(False)
        check = HealthCheck(check=probe, interval=1.0)
        async with Supervisor([spec(log, "a", health_check=check)]) as sup:
            await trio.sleep(2.5)
            first, second = probe.calls[0][1], probe.calls[1][1]
            assert first is not second
            assert second is info(sup, "a").value

    async def test_child_being_stopped_is_not_probed(self, autojump_clock: Clock) -> None:
        """A child finishing after a stop request is not failed by its probe meanwhile."""
        log = Log()

        async def ready(handle: Handle) -> bool:
            return not handle.asked.is_set()

        check = HealthCheck(check=ready, interval=1.0)
        sup = Supervisor(
            [spec(log, "a", stop=ask_to_stop, linger=5.0, shutdown=10.0, health_check=check)]
        )
        async with sup:
            pass
        assert log == ["start a", "stop a", "end a"]
        assert sup.stats().stop_errors == 0
        assert info(sup, "a").last_exit is None


class TestAutoShutdown:
    async def test_any_significant_child_ending_ends_the_supervisor(
        self, autojump_clock: Clock
    ) -> None:
        """Under ANY_SIGNIFICANT, a significant child's normal exit stops the supervisor."""
        log = Log()
        children = [
            spec(log, "a"),
            spec(log, "s", restart=TRANSIENT, significant=True, return_after=3.0),
            spec(log, "b"),
        ]
        sup = Supervisor(children, auto_shutdown=AutoShutdown.ANY_SIGNIFICANT)
        began = trio.current_time()
        with trio.fail_after(100):
            await sup.run()
        assert trio.current_time() == pytest.approx(began + 3.0)
        assert after(log, "return s") == ["cancel b", "cancel a"]

    async def test_restarted_significant_child_does_not_end_it(self, autojump_clock: Clock) -> None:
        """A significant transient child that crashes is restarted, and the supervisor stays."""
        log = Log()
        children = [spec(log, "s", restart=TRANSIENT, significant=True, crashes=[1.0])]
        async with Supervisor(children, auto_shutdown=AutoShutdown.ANY_SIGNIFICANT) as sup:
            await trio.sleep(5)
            assert starts(log) == ["s", "s"]
            assert info(sup, "s").state is ChildState.RUNNING

    async def test_temporary_significant_child_ends_it_even_by_crashing(
        self, autojump_clock: Clock
    ) -> None:
        """A significant temporary child is never restarted, so any exit of it ends the run."""
        log = Log()
        children = [spec(log, "s", restart=TEMPORARY, significant=True, crash_after=1.0)]
        sup = Supervisor(children, auto_shutdown=AutoShutdown.ANY_SIGNIFICANT)
        with trio.fail_after(100):
            await sup.run()
        assert starts(log) == ["s"]

    async def test_all_significant_waits_for_every_significant_child(
        self, autojump_clock: Clock
    ) -> None:
        """Under ALL_SIGNIFICANT, the supervisor ends when the last significant child has."""
        log = Log()
        children = [
            spec(log, "s1", restart=TRANSIENT, significant=True, return_after=2.0),
            spec(log, "a"),
            spec(log, "s2", restart=TRANSIENT, significant=True, return_after=5.0),
        ]
        sup = Supervisor(children, auto_shutdown=AutoShutdown.ALL_SIGNIFICANT)
        began = trio.current_time()
        with trio.fail_after(100):
            await sup.run()
        assert trio.current_time() == pytest.approx(began + 5.0)
        assert log[-2:] == ["return s2", "cancel a"]

    async def test_insignificant_child_ending_does_not_end_it(self, autojump_clock: Clock) -> None:
        """A transient child that is not significant ends alone."""
        log = Log()
        children = [
            spec(log, "s", restart=TRANSIENT, significant=True),
            spec(log, "t", restart=TRANSIENT, return_after=1.0),
        ]
        async with Supervisor(children, auto_shutdown=AutoShutdown.ANY_SIGNIFICANT) as sup:
            await trio.sleep(5)
            assert info(sup, "s").state is ChildState.RUNNING
            assert info(sup, "t").state is ChildState.TERMINATED

    async def test_terminate_child_does_not_trigger_it(self, autojump_clock: Clock) -> None:
        """Stopping a significant child by hand does not end the supervisor."""
        log = Log()
        children = [spec(log, "s", restart=TRANSIENT, significant=True), spec(log, "a")]
        async with Supervisor(children, auto_shutdown=AutoShutdown.ANY_SIGNIFICANT) as sup:
            await sup.terminate_child("s")
            await trio.sleep(5)
            assert info(sup, "a").state is ChildState.RUNNING
            await sup.start_child(spec(log, "b"))  # still running: it accepts children
        assert "cancel a" in log

    async def test_terminated_significant_child_counts_as_ended_under_all(
        self, autojump_clock: Clock
    ) -> None:
        """Under ALL_SIGNIFICANT, one terminated by hand plus one that ends stop the run."""
        log = Log()
        children = [
            spec(log, "s1", restart=TRANSIENT, significant=True),
            spec(log, "s2", restart=TRANSIENT, significant=True, return_after=5.0),
        ]
        sup = Supervisor(children, auto_shutdown=AutoShutdown.ALL_SIGNIFICANT)
        began = trio.current_time()
        with trio.fail_after(100):
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                await sup.terminate_child("s1")
        assert trio.current_time() == pytest.approx(began + 5.0)
        assert log[-1] == "return s2"

    async def test_never_refuses_a_significant_child_added_later(
        self, autojump_clock: Clock
    ) -> None:
        """``start_child`` of a significant child under NEVER raises ``InvalidSpec``."""
        log = Log()
        async with Supervisor() as sup:
            with pytest.raises(InvalidSpec, match="significant"):
                await sup.start_child(spec(log, "s", restart=TRANSIENT, significant=True))
        assert log == []


class TestStopDuringRestart:
    async def test_stop_cancels_a_restart_that_never_reports_started(
        self, autojump_clock: Clock
    ) -> None:
        """A stop during a restart whose start hangs ends after the child's shutdown time."""
        runs: list[float] = []

        async def hangs_when_restarted(*, task_status: trio.TaskStatus[None]) -> None:
            runs.append(trio.current_time())
            if len(runs) > 1:
                await trio.sleep_forever()  # never reports started
            task_status.started()
            await trio.sleep(1)
            raise Crash("first run")

        tree = Supervisor([ChildSpec("a", hangs_when_restarted, shutdown=2.0)])
        async with trio.open_nursery() as nursery:
            await nursery.start(tree.run)
            await trio.sleep(1.5)
            began = trio.current_time()
            await tree.stop()
        assert runs == [0.0, 1.0]
        assert trio.current_time() - began == pytest.approx(2.0)

    async def test_cancelled_terminate_child_still_terminates_the_child(
        self, autojump_clock: Clock
    ) -> None:
        """If the caller of ``terminate_child`` gives up, the child is still stopped."""
        log = Log()
        async with Supervisor([spec(log, "a", stop=ask_to_stop, linger=3.0)]) as sup:
            with trio.move_on_after(1):
                await sup.terminate_child("a")
            assert info(sup, "a").state is ChildState.TERMINATED
            sup.delete_child("a")
        assert log == ["start a", "stop a", "cancel a"]

    async def test_group_restart_siblings_cannot_be_deleted_halfway(
        self, autojump_clock: Clock
    ) -> None:
        """While a group restarts, a sibling already stopped is restarting, not terminated."""
        log = Log()
        seen: list[ChildState] = []

        def note_c_then_stop(handle: Handle) -> None:
            seen.append(info(sup, "c").state)
            handle.stop()

        sup = Supervisor(
            [
                spec(log, "a", crashes=[1.0]),
                spec(log, "b", stop=note_c_then_stop),
                spec(log, "c", stop=ask_to_stop),
            ],
            strategy=RestartStrategy.ONE_FOR_ALL,
        )
        async with sup:
            await trio.sleep(2)
            with pytest.raises(ChildRunning):
                sup.delete_child("c")
        assert seen[0] is ChildState.RESTARTING

    async def test_stop_hook_that_raises_under_infinity_cancels_the_child(
        self, autojump_clock: Clock
    ) -> None:
        """An ``INFINITY`` child whose stop hook raises is cancelled, not waited for forever."""
        log = Log()
        async with Supervisor([spec(log, "a", stop=failing_stop, shutdown=Shutdown.INFINITY)]):
            pass
        assert log == ["start a", "cancel a"]


class TestChildrenByHand:
    async def test_stopping_cancels_a_child_stuck_starting_after_its_shutdown_time(
        self, autojump_clock: Clock
    ) -> None:
        """A ``start_child`` that never finishes does not hold up the supervisor's stop."""
        log = Log()
        failures: list[Exception] = []

        async def start_stuck(sup: Supervisor) -> None:
            try:
                await sup.start_child(spec(log, "stuck", start_delay=math.inf, shutdown=2.0))
            except ChildStartFailed as failure:
                failures.append(failure)

        async with trio.open_nursery() as nursery, Supervisor() as sup:
            nursery.start_soon(start_stuck, sup)
            await trio.testing.wait_all_tasks_blocked()
            began = trio.current_time()
        assert trio.current_time() - began == pytest.approx(2.0)
        assert log == ["start stuck", "cancel stuck"]
        assert len(failures) == 1

    async def test_forget_ended_drops_a_child_that_ended_for_good(
        self, autojump_clock: Clock
    ) -> None:
        """With ``forget_ended`` a transient child's normal return leaves no record."""
        log = Log()
        async with Supervisor(forget_ended=True) as sup:
            await sup.start_child(spec(log, "a", restart=TRANSIENT, return_after=1.0))
            await trio.sleep(2)
            assert sup.which_children() == []

    async def test_without_forget_ended_an_ended_child_stays_terminated(
        self, autojump_clock: Clock
    ) -> None:
        """By default, as in OTP, a child that ended for good stays known as terminated."""
        log = Log()
        async with Supervisor() as sup:
            await sup.start_child(spec(log, "a", restart=TRANSIENT, return_after=1.0))
            await trio.sleep(2)
            assert info(sup, "a").state is ChildState.TERMINATED

    async def test_start_child_starts_and_reports_it(self, autojump_clock: Clock) -> None:
        """``start_child`` returns the new child's info once it has started."""
        log = Log()
        async with Supervisor([spec(log, "a")]) as sup:
            child = await sup.start_child(spec(log, "b", start_delay=1.0))
            assert (child.id, child.state, child.restarts) == ("b", ChildState.RUNNING, 0)
            assert isinstance(child.value, Handle)
            assert ids(sup) == ["a", "b"]

    async def test_added_child_is_the_newest(self, autojump_clock: Clock) -> None:
        """A child added by hand is stopped first, as the last one started."""
        log = Log()
        async with Supervisor([spec(log, "a")]) as sup:
            await sup.start_child(spec(log, "b"))
        assert log[2:] == ["cancel b", "cancel a"]

    async def test_added_child_is_supervised(self, autojump_clock: Clock) -> None:
        """A child added by hand is restarted like the others."""
        log = Log()
        async with Supervisor() as sup:
            await sup.start_child(spec(log, "b", crashes=[1.0]))
            await trio.sleep(2)
            assert starts(log) == ["b", "b"]

    async def test_start_child_with_a_taken_id(self, autojump_clock: Clock) -> None:
        """A second child with the same id is refused with ``DuplicateChild``."""
        log = Log()
        async with Supervisor([spec(log, "a")]) as sup:
            with pytest.raises(DuplicateChild):
                await sup.start_child(spec(log, "a"))
            assert starts(log) == ["a"]

    async def test_start_child_that_fails_to_start(self, autojump_clock: Clock) -> None:
        """A child raising before it started is not added; the error is the cause."""
        log = Log()
        async with Supervisor() as sup:
            with pytest.raises(ChildStartFailed) as caught:
                await sup.start_child(spec(log, "a", fail_start=True))
            assert isinstance(caught.value.__cause__, Crash)
            assert caught.value.child_id == "a"
            assert ids(sup) == []

    async def test_terminate_child_keeps_it_terminated(self, autojump_clock: Clock) -> None:
        """A terminated child is stopped by its shutdown spec, kept, and not restarted."""
        log = Log()
        async with Supervisor([spec(log, "a", stop=ask_to_stop), spec(log, "b")]) as sup:
            await sup.terminate_child("a")
            await trio.sleep(10)
            assert log == ["start a", "start b", "stop a", "end a"]
            assert info(sup, "a").state is ChildState.TERMINATED
            assert sup.stats().total_restarts == 0

    async def test_terminate_child_forgets_a_temporary_child(self, autojump_clock: Clock) -> None:
        """A temporary child is forgotten once terminated."""
        log = Log()
        async with Supervisor([spec(log, "t", restart=TEMPORARY)]) as sup:
            await sup.terminate_child("t")
            assert ids(sup) == []

    async def test_restart_child_starts_a_terminated_child(self, autojump_clock: Clock) -> None:
        """``restart_child`` starts a terminated child again, outside the intensity."""
        log = Log()
        async with Supervisor([spec(log, "a")]) as sup:
            await sup.terminate_child("a")
            child = await sup.restart_child("a")
            assert (child.state, child.restarts) == (ChildState.RUNNING, 1)
            assert starts(log) == ["a", "a"]
            assert sup.stats().restarts_in_window == 0

    async def test_restart_child_of_a_running_child(self, autojump_clock: Clock) -> None:
        """``restart_child`` of a running child raises ``ChildRunning``."""
        log = Log()
        async with Supervisor([spec(log, "a")]) as sup:
            with pytest.raises(ChildRunning):
                await sup.restart_child("a")
            assert starts(log) == ["a"]

    async def test_restart_child_that_fails_to_start(self, autojump_clock: Clock) -> None:
        """A restart by hand that raises before started leaves the child terminated."""
        log = Log()
        async with Supervisor([spec(log, "a", fails_to_start=[False, True])]) as sup:
            await sup.terminate_child("a")
            with pytest.raises(ChildStartFailed) as caught:
                await sup.restart_child("a")
            child = info(sup, "a")
            assert child.state is ChildState.TERMINATED
            assert child.last_exit is caught.value.__cause__

    async def test_restart_child_while_it_waits_for_a_restart(self, autojump_clock: Clock) -> None:
        """A child waiting for its backoff is not terminated: ``restart_child`` refuses it."""
        log = Log()
        backoff = RestartBackoff(initial=10.0, jitter=0.0)
        async with Supervisor([spec(log, "a", crashes=[1.0])], backoff=backoff) as sup:
            await trio.sleep(2)
            with pytest.raises(ChildRunning):
                await sup.restart_child("a")
            assert starts(log) == ["a"]

    async def test_delete_child_forgets_a_terminated_child(self, autojump_clock: Clock) -> None:
        """A terminated child can be deleted; then its id is free again."""
        log = Log()
        async with Supervisor([spec(log, "a")]) as sup:
            await sup.terminate_child("a")
            sup.delete_child("a")
            assert ids(sup) == []
            await sup.start_child(spec(log, "a"))
            assert starts(log) == ["a", "a"]

    async def test_delete_child_of_a_running_child(self, autojump_clock: Clock) -> None:
        """A running child cannot be deleted."""
        log = Log()
        async with Supervisor([spec(log, "a")]) as sup:
            with pytest.raises(ChildRunning):
                sup.delete_child("a")
            assert ids(sup) == ["a"]

    @pytest.mark.parametrize("operation", ["terminate_child", "restart_child", "delete_child"])
    async def test_unknown_child(self, autojump_clock: Clock, operation: str) -> None:
        """An unknown id raises ``ChildNotFound``, a LookupError."""
        async with Supervisor() as sup:

            async def attempt() -> None:
                result = getattr(sup, operation)("nobody")
                if result is not None:
                    await result

            with pytest.raises(ChildNotFound) as caught:
                await attempt()
            assert isinstance(caught.value, LookupError)

    async def test_operations_before_running(self, autojump_clock: Clock) -> None:
        """Before it runs, the supervisor refuses to start or stop children."""
        log = Log()
        sup = Supervisor([spec(log, "a")])
        with pytest.raises(SupervisorNotRunning):
            await sup.start_child(spec(log, "b"))
        with pytest.raises(SupervisorNotRunning):
            await sup.terminate_child("a")
        assert log == []

    async def test_operations_after_stopping(self, autojump_clock: Clock) -> None:
        """Once stopped, the supervisor refuses to start children."""
        log = Log()
        sup = Supervisor([spec(log, "a")])
        async with sup:
            pass
        with pytest.raises(SupervisorNotRunning):
            await sup.start_child(spec(log, "b"))
        with pytest.raises(SupervisorNotRunning):
            await sup.restart_child("a")
        assert starts(log) == ["a"]


class TestIntrospection:
    async def test_which_children_lists_children_in_start_order(
        self, autojump_clock: Clock
    ) -> None:
        """``which_children`` shows every child in start order with its kind and type."""
        log = Log()
        sub = Supervisor()
        children = [spec(log, "w", restart=TRANSIENT), sub.as_child("sub")]
        async with Supervisor(children) as sup:
            assert [(c.id, c.kind, c.restart, c.state) for c in sup.which_children()] == [
                ("w", ChildKind.WORKER, TRANSIENT, ChildState.RUNNING),
                ("sub", ChildKind.SUPERVISOR, RestartType.PERMANENT, ChildState.RUNNING),
            ]
            assert info(sup, "sub").value is sub

    async def test_count_children(self, autojump_clock: Clock) -> None:
        """``count_children`` counts specs, running children, supervisors and workers."""
        log = Log()
        children = [spec(log, "a"), spec(log, "b"), Supervisor().as_child("sub")]
        async with Supervisor(children) as sup:
            await sup.terminate_child("b")
            counts = sup.count_children()
            assert (counts.specs, counts.active, counts.supervisors, counts.workers) == (3, 2, 1, 2)

    async def test_stats_counts_children_by_state(self, autojump_clock: Clock) -> None:
        """``stats().children`` has the number of children in each state."""
        log = Log()
        backoff = RestartBackoff(initial=10.0, jitter=0.0)
        children = [spec(log, "a"), spec(log, "b"), spec(log, "c", crashes=[1.0])]
        async with Supervisor(children, backoff=backoff) as sup:
            await sup.terminate_child("b")
            await trio.sleep(2)
            assert dict(sup.stats().children) == {
                ChildState.STARTING: 0,
                ChildState.RUNNING: 1,
                ChildState.HIBERNATED: 0,
                ChildState.RESTARTING: 1,
                ChildState.STOPPING: 0,
                ChildState.TERMINATED: 1,
            }

    async def test_stats_is_a_frozen_snapshot(self, autojump_clock: Clock) -> None:
        """A stats snapshot cannot be changed and does not follow later restarts."""
        log = Log()
        async with Supervisor([spec(log, "a", crashes=[1.0])]) as sup:
            before = sup.stats()
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                before.total_restarts = 5  # type: ignore[misc]
            await trio.sleep(2)
            assert (before.total_restarts, sup.stats().total_restarts) == (0, 1)

    async def test_restarts_leave_the_window_as_time_passes(self, autojump_clock: Clock) -> None:
        """``restarts_in_window`` drops once the restarts are older than ``max_seconds``."""
        log = Log()
        sup = Supervisor([spec(log, "a", crashes=[1.0, 1.0])], max_seconds=10.0)
        async with sup:
            await trio.sleep(3)
            assert sup.stats().restarts_in_window == 2
            await trio.sleep(10)
            assert (sup.stats().restarts_in_window, sup.stats().total_restarts) == (0, 2)

    async def test_current_child_inside_a_child(self, autojump_clock: Clock) -> None:
        """Inside a child's task, ``current_child()`` names its supervisor and its id."""
        seen: list[tuple[Supervisor, Hashable] | None] = []

        async def child() -> None:
            seen.append(named(current_child()))
            await trio.sleep_forever()

        async with Supervisor([ChildSpec("me", child)]) as sup:
            await trio.testing.wait_all_tasks_blocked()
        assert seen == [(sup, "me")]

    async def test_current_child_names_the_nearest_supervisor(self, autojump_clock: Clock) -> None:
        """A child of a subtree sees the subtree's supervisor, not the root."""
        seen: list[tuple[Supervisor, Hashable] | None] = []

        async def child() -> None:
            seen.append(named(current_child()))
            await trio.sleep_forever()

        sub = Supervisor([ChildSpec("leaf", child)])
        async with Supervisor([sub.as_child("sub")]):
            await trio.testing.wait_all_tasks_blocked()
        assert seen == [(sub, "leaf")]

    async def test_current_child_in_a_task_the_child_started(self, autojump_clock: Clock) -> None:
        """Tasks a child starts see the same ``current_child()`` as the child."""
        seen: list[tuple[Supervisor, Hashable] | None] = []

        async def helper() -> None:
            seen.append(named(current_child()))

        async def child() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(helper)
                await trio.sleep_forever()

        async with Supervisor([ChildSpec("me", child)]) as sup:
            await trio.testing.wait_all_tasks_blocked()
        assert seen == [(sup, "me")]

    async def test_current_child_outside_any_supervisor(self) -> None:
        """Outside a supervised task, ``current_child()`` is None."""
        assert current_child() is None

    async def test_current_child_repr_names_it_and_its_supervisor(
        self, autojump_clock: Clock
    ) -> None:
        seen: list[str] = []

        async def child() -> None:
            seen.append(repr(current_child()))
            await trio.sleep_forever()

        async with Supervisor([ChildSpec("me", child)], name="tree"):
            await trio.testing.wait_all_tasks_blocked()
        assert seen == ["<Child 'me' of tree>"]


class TestRunning:
    async def test_block_runs_children_around_its_body(self, autojump_clock: Clock) -> None:
        """``async with sup`` starts the children before the body and stops them after."""
        log = Log()
        async with Supervisor([spec(log, "a"), spec(log, "b")]):
            log.add("body")
        assert log == ["start a", "start b", "body", "cancel b", "cancel a"]

    async def test_block_raises_giving_up_unwrapped(self, autojump_clock: Clock) -> None:
        """When the supervisor gives up, the body is cancelled and the error raised as is."""
        log = Log()

        async def wait_in_the_block() -> None:
            async with Supervisor([spec(log, "a", crash_after=1.0)], max_restarts=1):
                await trio.sleep(100)
                log.add("body finished")

        with pytest.raises(RestartIntensityExceeded):
            await wait_in_the_block()
        assert "body finished" not in log

    async def test_block_raises_its_body_error_unwrapped(self, autojump_clock: Clock) -> None:
        """An error in the body stops the children and comes out unchanged."""
        log = Log()
        with pytest.raises(KeyError, match="body"):
            async with Supervisor([spec(log, "a")]):
                raise KeyError("body")
        assert log == ["start a", "cancel a"]

    async def test_block_raises_a_failed_start_unwrapped(self, autojump_clock: Clock) -> None:
        """A child failing its first start makes the block raise ``ChildStartFailed``."""
        log = Log()
        with pytest.raises(ChildStartFailed):
            async with Supervisor([spec(log, "a", fail_start=True)]):
                log.add("body")
        assert "body" not in log

    async def test_failed_start_stops_the_children_before_it(self, autojump_clock: Clock) -> None:
        """A child failing its first start stops those started before it, newest first."""
        log = Log()
        sup = Supervisor(
            [spec(log, "a"), spec(log, "b"), spec(log, "c", fail_start=True), spec(log, "d")]
        )
        async with trio.open_nursery() as nursery:
            with pytest.raises(ChildStartFailed) as caught:
                await nursery.start(sup.run)
        assert isinstance(caught.value.__cause__, Crash)
        assert log == ["start a", "start b", "start c", "crash c", "cancel b", "cancel a"]

    async def test_nursery_start_raises_giving_up_in_a_group(self, autojump_clock: Clock) -> None:
        """Run in a nursery, a supervisor that gives up fails that nursery."""
        log = Log()
        sup = Supervisor([spec(log, "a", crash_after=1.0)], max_restarts=1)
        with pytest.RaisesGroup(RestartIntensityExceeded):
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
        assert starts(log) == ["a", "a"]

    async def test_what_is_no_exception_ends_the_supervisor(self, autojump_clock: Clock) -> None:
        """A child that raises what is not an ``Exception`` (as an interrupt is) is not
        restarted: it ends the supervisor's run, after its other children stopped."""
        log = Log()

        class Fatal(BaseException):
            pass

        async def fatal(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await trio.sleep(1)
            raise Fatal

        with pytest.RaisesGroup(Fatal, flatten_subgroups=True):
            async with Supervisor([spec(log, "a"), ChildSpec("fatal", fatal)]):
                await trio.sleep(2)
        assert "cancel a" in log

    async def test_stop_returns_once_every_child_stopped(self, autojump_clock: Clock) -> None:
        """``await sup.stop()`` returns when all children have finished."""
        log = Log()
        sup = Supervisor([spec(log, "a", stop=ask_to_stop, linger=3.0)])
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await sup.stop()
            assert log == ["start a", "stop a", "end a"]
            assert info(sup, "a").state is ChildState.TERMINATED

    async def test_running_twice_at_once_is_refused(self, autojump_clock: Clock) -> None:
        """A supervisor that is running cannot be run a second time alongside."""
        async with Supervisor() as sup:
            with pytest.raises(SupervisorError, match="already running"):
                await sup.run()

    async def test_runs_again_from_its_specs(self, autojump_clock: Clock) -> None:
        """Run again after it stopped, it starts its own children; ones added by hand are gone."""
        log = Log()
        sup = Supervisor([spec(log, "a")])
        async with sup:
            await sup.start_child(spec(log, "b"))
        async with sup:
            assert ids(sup) == ["a"]
        assert starts(log) == ["a", "b", "a"]


class TestCancelledFromOutside:
    """A supervisor cancelled by its parent stops its children as ``stop`` does."""

    async def test_run_cancelled_stops_children_newest_first_each_asked(
        self, autojump_clock: Clock
    ) -> None:
        """``nursery.start(sup.run)`` whose nursery is cancelled: each child is asked to stop,
        newest first, and the next is asked only once the newer one has ended."""
        log = Log()
        sup = Supervisor([spec(log, name, stop=ask_to_stop, linger=1.0) for name in "abc"])
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            nursery.cancel_scope.cancel()
        assert log[3:] == ["stop c", "end c", "stop b", "end b", "stop a", "end a"]

    async def test_block_in_move_on_after_stops_children_within_their_shutdown_times(
        self, autojump_clock: Clock
    ) -> None:
        """``async with sup`` inside ``move_on_after``: children that do not finish are
        cancelled after their own shutdown time, one after another."""
        log = Log()
        children = [
            spec(log, "a", stop=ask_to_stop, linger=math.inf, shutdown=2.0),
            spec(log, "b", stop=ask_to_stop, linger=math.inf, shutdown=3.0),
        ]
        with trio.move_on_after(1.0):
            async with Supervisor(children):
                await trio.sleep_forever()
        assert log[2:] == ["stop b", "cancel b", "stop a", "cancel a"]
        assert log.when("cancel b") == [pytest.approx(4.0)]
        assert log.when("cancel a") == [pytest.approx(6.0)]

    async def test_a_cancelled_subtree_stops_depth_first(self, autojump_clock: Clock) -> None:
        """Cancelled from outside, a tree stops its subtree in its place in the order."""
        log = Log()
        sub = Supervisor([spec(log, "b", stop=ask_to_stop), spec(log, "c", stop=ask_to_stop)])
        tree = Supervisor([spec(log, "a", stop=ask_to_stop), sub.as_child("sub")])
        async with trio.open_nursery() as nursery:
            await nursery.start(tree.run)
            nursery.cancel_scope.cancel()
        assert log[3:] == ["stop c", "end c", "stop b", "end b", "stop a", "end a"]

    async def test_a_child_still_starting_gets_its_shutdown_time(
        self, autojump_clock: Clock
    ) -> None:
        """A child that another task is starting when the supervisor is cancelled may finish
        starting within its shutdown time; then it is stopped like the others."""
        log = Log()
        sup = Supervisor([spec(log, "a", stop=ask_to_stop)])
        async with trio.open_nursery() as outer, trio.open_nursery() as inner:
            await inner.start(sup.run)
            slow = spec(log, "b", stop=ask_to_stop, start_delay=1.0)
            outer.start_soon(sup.start_child, slow)
            await trio.sleep(0.5)
            inner.cancel_scope.cancel()
        assert log[2:] == ["stop b", "end b", "stop a", "end a"]
        assert log.when("stop b") == [pytest.approx(1.0)]


class TestNothingWaitsOnItself:
    async def test_a_child_terminating_itself_is_terminated(self, autojump_clock: Clock) -> None:
        """``terminate_child`` on itself ends the child at once (the call never returns to
        it), and the child is terminated, not restarted."""
        log = Log()
        returned = False

        async def self_terminating(sup: Supervisor) -> None:
            nonlocal returned
            await sup.terminate_child("self")
            returned = True

        async with Supervisor([spec(log, "a")]) as sup:
            with trio.fail_after(1):
                await sup.start_child(ChildSpec("self", functools.partial(self_terminating, sup)))
                await trio.testing.wait_all_tasks_blocked()
            assert info(sup, "self").state is ChildState.TERMINATED
            assert trio.current_time() == 0
        assert not returned

    async def test_a_child_terminating_itself_is_killed_at_once_while_the_lock_is_held(
        self, autojump_clock: Clock
    ) -> None:
        """A self-termination does not wait for another change in progress to end it."""
        log = Log()
        ended_at: list[float] = []
        go = trio.Event()

        async def self_terminating(sup: Supervisor) -> None:
            await go.wait()
            try:
                await sup.terminate_child("self")
            finally:
                ended_at.append(trio.current_time())

        slow = spec(log, "slow", stop=ask_to_stop, linger=math.inf, shutdown=5.0)
        async with Supervisor([slow]) as sup:
            await sup.start_child(ChildSpec("self", functools.partial(self_terminating, sup)))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sup.terminate_child, "slow")  # holds the lock for 5 s
                await trio.testing.wait_all_tasks_blocked()
                go.set()
            await trio.testing.wait_all_tasks_blocked()
            assert info(sup, "self").state is ChildState.TERMINATED
        assert ended_at == [0.0]

    async def test_a_child_in_a_subtree_terminating_the_subtree_ends_it(
        self, autojump_clock: Clock
    ) -> None:
        """A task deep in a subtree that terminates the subtree never waits for itself."""
        log = Log()

        async def terminates_its_subtree(sup: Supervisor) -> None:
            await sup.terminate_child("sub")

        async with Supervisor() as root:
            sub = Supervisor(
                [ChildSpec("x", functools.partial(terminates_its_subtree, root)), spec(log, "y")]
            )
            with trio.fail_after(30):
                await root.start_child(sub.as_child("sub"))
                await trio.testing.wait_all_tasks_blocked()
            assert info(root, "sub").state is ChildState.TERMINATED

    @pytest.mark.parametrize("operation", ["restart_child", "delete_child"])
    async def test_a_child_restarting_or_deleting_itself_gets_a_typed_error(
        self, operation: str, autojump_clock: Clock
    ) -> None:
        """A child cannot restart or delete itself: ``ChildIsCaller`` at once."""
        raised: list[BaseException] = []

        async def self_referring(sup: Supervisor) -> None:
            try:
                result = getattr(sup, operation)("self")
                if operation == "restart_child":
                    await result
            except SupervisorError as error:
                raised.append(error)
            await trio.sleep_forever()

        async with Supervisor() as sup:
            await sup.start_child(ChildSpec("self", functools.partial(self_referring, sup)))
            await trio.testing.wait_all_tasks_blocked()
        assert [type(error) for error in raised] == [ChildIsCaller]

    async def test_a_child_being_stopped_can_start_a_sibling(self, autojump_clock: Clock) -> None:
        """A child's cleanup that runs while ``terminate_child`` holds the supervisor may still
        start a sibling: it acts under that hold instead of waiting for it."""
        log = Log()

        async def starts_a_sibling_when_stopped(
            sup: Supervisor, task_status: trio.TaskStatus[Handle]
        ) -> None:
            handle = Handle(log, "x")
            task_status.started(handle)
            await handle.asked.wait()
            await sup.start_child(spec(log, "y"))

        async with Supervisor() as sup:
            await sup.start_child(
                ChildSpec(
                    "x",
                    functools.partial(starts_a_sibling_when_stopped, sup),
                    stop=ask_to_stop,
                )
            )
            await sup.terminate_child("x")
            assert trio.current_time() == 0
            assert info(sup, "y").state is ChildState.RUNNING
            assert info(sup, "x").state is ChildState.TERMINATED

    async def test_a_child_in_the_final_stop_starts_nothing_but_may_stop_a_sibling(
        self, autojump_clock: Clock
    ) -> None:
        """While the supervisor stops for good, the child it is stopping gets
        ``SupervisorNotRunning`` from ``start_child`` at once, and may stop an older sibling
        early (it would be stopped next anyway) without waiting for the supervisor."""
        log = Log()
        raised: list[type[BaseException]] = []

        async def calls_when_stopped(sup: Supervisor, task_status: trio.TaskStatus[Handle]) -> None:
            handle = Handle(log, "x")
            task_status.started(handle)
            await handle.asked.wait()
            try:
                await sup.start_child(spec(log, "y"))
            except SupervisorError as error:
                raised.append(type(error))
            await sup.terminate_child("a")
            log.add("x stopped a")

        async with Supervisor([spec(log, "a", stop=ask_to_stop)]) as sup:
            await sup.start_child(
                ChildSpec("x", functools.partial(calls_when_stopped, sup), stop=ask_to_stop)
            )
        assert raised == [SupervisorNotRunning]
        assert log[1:] == ["stop x", "stop a", "end a", "x stopped a"]
        assert trio.current_time() == 0


class TestCancelledByHand:
    """``terminate_child`` and ``restart_child`` cancelled by their caller either happened
    or did not: never half."""

    async def test_cancelled_terminate_child_still_terminates(self, autojump_clock: Clock) -> None:
        log = Log()
        retired: list[str] = []
        child = attrs.evolve(
            spec(log, "a", stop=ask_to_stop, linger=math.inf),
            retire=lambda child: retired.append(child.id),
        )
        async with Supervisor([child]) as sup:
            with trio.move_on_after(1.0):
                await sup.terminate_child("a")
            assert info(sup, "a").state is ChildState.TERMINATED
            assert retired == ["a"]
            assert "cancel a" in log

    async def test_cancelled_restart_child_did_not_happen(self, autojump_clock: Clock) -> None:
        log = Log()
        retired: list[str] = []
        child = attrs.evolve(
            spec(log, "a", fails_to_start=[False, False]),
            retire=lambda child: retired.append(child.id),
        )
        async with Supervisor([child]) as sup:
            await sup.terminate_child("a")
            retired.clear()
            slow = ChildSpec("b", functools.partial(worker, log, "b", start_delay=10.0))
            await sup.start_child(slow)
            await sup.terminate_child("b")
            with trio.move_on_after(1.0):
                await sup.restart_child("b")
            assert info(sup, "b").state is ChildState.TERMINATED
            assert info(sup, "b").restarts == 0
            assert "cancel b" in log
            await sup.restart_child("a")  # the supervisor is still usable
            assert info(sup, "a").state is ChildState.RUNNING


class TestRetireHook:
    """``retire`` is given the child that will not start again, so one function serves every
    child."""

    async def test_one_hook_learns_which_child_retires(self, autojump_clock: Clock) -> None:
        log = Log()
        retired: list[Hashable] = []

        def retire(child: CurrentChild) -> None:
            retired.append(child.id)

        children = [attrs.evolve(spec(log, name), retire=retire) for name in ("a", "b")]
        async with Supervisor(children) as sup:
            await sup.terminate_child("b")
            await sup.terminate_child("a")
            assert retired == ["b", "a"]

    async def test_a_retired_subtree_retires_its_children(self, autojump_clock: Clock) -> None:
        log = Log()
        retired: list[Hashable] = []
        leaf = attrs.evolve(spec(log, "leaf"), retire=lambda child: retired.append(child.id))
        async with Supervisor([Supervisor([leaf]).as_child("sub")]) as sup:
            await sup.terminate_child("sub")
            assert retired == ["leaf"]

    async def test_a_hook_that_raises_is_logged_and_the_supervisor_goes_on(
        self, autojump_clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        log = Log()

        def retire(_child: CurrentChild) -> None:
            raise Crash("retire")

        child = attrs.evolve(spec(log, "a"), retire=retire)
        async with Supervisor([child, spec(log, "b")]) as sup:
            await sup.terminate_child("a")
            await sup.restart_child("a")
            assert [c.state for c in sup.which_children()] == [ChildState.RUNNING] * 2
        [record] = [r for r in caplog.records if r.name == "supervisor" and r.exc_info]
        assert "retire hook of 'a'" in record.getMessage()
        assert isinstance(record.exc_info[1], Crash)  # type: ignore[index]


class TestOneSpecForManyChildren:
    """``start_child(spec, id=..., start=...)``: the child runs its own start under its own id,
    with the rest of a spec that other children share."""

    async def test_each_child_runs_its_own_start_under_its_own_id(
        self, autojump_clock: Clock
    ) -> None:
        log = Log()
        shared = spec(log, "template", restart=TRANSIENT)
        async with Supervisor() as sup:
            for name in ("a", "b"):
                await sup.start_child(shared, id=name, start=functools.partial(worker, log, name))
            assert [(c.id, c.restart) for c in sup.which_children()] == [
                ("a", TRANSIENT),
                ("b", TRANSIENT),
            ]
        assert starts(log) == ["a", "b"]

    async def test_a_crashed_child_restarts_with_its_own_start(self, autojump_clock: Clock) -> None:
        log = Log()
        shared = spec(log, "template")
        async with Supervisor() as sup:
            await sup.start_child(
                shared, id="a", start=functools.partial(worker, log, "a", crashes=[1.0])
            )
            await sup.start_child(shared, id="b", start=functools.partial(worker, log, "b"))
            await trio.sleep(2)
            assert (info(sup, "a").restarts, info(sup, "b").restarts) == (1, 0)
        assert starts(log) == ["a", "b", "a"]

    async def test_the_shared_retire_hook_learns_which_child_retires(
        self, autojump_clock: Clock
    ) -> None:
        log = Log()
        retired: list[Hashable] = []
        shared = attrs.evolve(spec(log, "template"), retire=lambda c: retired.append(c.id))
        async with Supervisor() as sup:
            for name in ("a", "b"):
                await sup.start_child(shared, id=name, start=functools.partial(worker, log, name))
            await sup.terminate_child("b")
            assert retired == ["b"]

    async def test_a_taken_id_is_refused(self, autojump_clock: Clock) -> None:
        log = Log()
        async with Supervisor([spec(log, "a")]) as sup:
            with pytest.raises(DuplicateChild):
                await sup.start_child(
                    spec(log, "b"), id="a", start=functools.partial(worker, log, "a")
                )

    @pytest.mark.parametrize(
        ("id", "start", "refused"), [(["x"], None, "hashable"), ("x", "not callable", "start")]
    )
    async def test_a_bad_id_or_start_is_refused(
        self, autojump_clock: Clock, id: Hashable, start: Any, refused: str
    ) -> None:
        log = Log()
        async with Supervisor() as sup:
            with pytest.raises(InvalidSpec, match=refused):
                await sup.start_child(spec(log, "b"), id=id, start=start)
            assert sup.which_children() == []


class TestChildContext:
    async def test_children_start_in_the_supervisors_context_not_the_callers(
        self, autojump_clock: Clock
    ) -> None:
        """A child started by ``start_child`` from a task with its own context variables does
        not inherit them: it runs in the supervisor's context."""
        caller_only: contextvars.ContextVar[str] = contextvars.ContextVar("caller_only")
        seen: list[str] = []

        async def child() -> None:
            seen.append(caller_only.get("unset"))
            await trio.sleep_forever()

        async with Supervisor() as sup:

            async def caller() -> None:
                caller_only.set("the caller's")
                await sup.start_child(ChildSpec("child", child))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)
        assert seen == ["unset"]


class TestBlockCancelledFromOutside:
    async def test_a_body_error_during_an_outside_cancel_propagates(
        self, autojump_clock: Clock
    ) -> None:
        """An error the block's body raises while the block is cancelled is not swallowed."""
        log = Log()

        async def body_raising_when_cancelled() -> None:
            with trio.move_on_after(1.0):
                async with Supervisor([spec(log, "a", stop=ask_to_stop)]):
                    try:
                        await trio.sleep_forever()
                    finally:
                        raise ValueError("from the body")

        with pytest.raises(ValueError, match="from the body"):
            await body_raising_when_cancelled()
        assert log[1:] == ["stop a", "end a"]

    async def test_a_block_cancelled_while_its_children_start_stops_them(
        self, autojump_clock: Clock
    ) -> None:
        """Cancelled while it starts its children, the block stops those that started."""
        log = Log()
        children = [spec(log, "a", stop=ask_to_stop), spec(log, "b", start_delay=5.0)]
        with trio.fail_after(30), trio.move_on_after(1.0):
            async with Supervisor(children):
                pytest.fail("the body runs only once every child has started")
        assert log[:2] == ["start a", "start b"]
        assert log[-2:] == ["stop a", "end a"]


class TestRemoveChild:
    async def test_remove_child_stops_it_and_later_runs_do_not_start_it(
        self, autojump_clock: Clock
    ) -> None:
        log = Log()
        sup = Supervisor([spec(log, "a"), spec(log, "b")])
        async with sup:
            await sup.remove_child("a")
            assert ids(sup) == ["b"]
        async with sup:  # a second run starts from the children it still has
            assert ids(sup) == ["b"]
        assert starts(log) == ["a", "b", "b"]

    async def test_remove_child_between_runs_forgets_it(self, autojump_clock: Clock) -> None:
        log = Log()
        sup = Supervisor([spec(log, "a"), spec(log, "b")])
        async with sup:
            pass
        await sup.remove_child("a")
        async with sup:
            assert ids(sup) == ["b"]

    async def test_remove_child_cancelled_before_it_stopped_changes_nothing(
        self, autojump_clock: Clock
    ) -> None:
        log = Log()
        slow = spec(log, "slow", stop=ask_to_stop, linger=math.inf, shutdown=5.0)
        async with Supervisor([spec(log, "a"), slow]) as sup:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sup.terminate_child, "slow")  # holds the lock for 5 s
                await trio.testing.wait_all_tasks_blocked()
                with trio.move_on_after(1.0):
                    await sup.remove_child("a")
            assert info(sup, "a").state is ChildState.RUNNING


class TestStopPathsUnderContention:
    """A child's own stop, its supervisor's stop and a cancel from outside, met at once."""

    @staticmethod
    def self_terminating_when_asked(sup: Supervisor, log: Log) -> ChildSpec:
        async def child(*, task_status: trio.TaskStatus[Handle]) -> None:
            handle = Handle(log, "x")
            task_status.started(handle)
            await handle.asked.wait()
            await sup.terminate_child("x")
            log.add("returned")

        return ChildSpec("x", child, shutdown=Shutdown.INFINITY, stop=ask_to_stop)

    def test_a_child_terminating_itself_during_the_final_stop_ends_at_once(self) -> None:
        """The final stop waits for the child (``INFINITY``) when it terminates itself: its
        stop ends at once instead of waiting for a lock the final stop holds."""
        log = Log()

        async def body() -> float:
            sup = Supervisor()
            async with sup:
                await sup.start_child(self.self_terminating_when_asked(sup, log))
            return trio.current_time()

        assert run_guarded(body) == 0.0
        assert "returned" not in log

    async def test_a_child_terminating_itself_while_being_terminated_ends_at_once(
        self, autojump_clock: Clock
    ) -> None:
        log = Log()
        async with Supervisor() as sup:
            await sup.start_child(self.self_terminating_when_asked(sup, log))
            await sup.terminate_child("x")
            assert info(sup, "x").state is ChildState.TERMINATED
            assert trio.current_time() == 0.0

    def test_a_cancelled_supervisor_starts_no_further_child(self) -> None:
        """Cancelled just as one child reports started, the supervisor starts no next one."""
        ran: list[str] = []

        async def body() -> None:
            async with trio.open_nursery() as nursery:

                async def first(*, task_status: trio.TaskStatus[None]) -> None:
                    task_status.started()
                    nursery.cancel_scope.cancel()
                    await trio.sleep_forever()

                async def second(*, task_status: trio.TaskStatus[None]) -> None:
                    ran.append("second")
                    task_status.started()

                sup = Supervisor([ChildSpec("first", first), ChildSpec("second", second)])
                await nursery.start(sup.run)

        for _ in range(20):
            run_guarded(body)
        assert ran == []

    async def test_a_block_cancelled_while_a_child_starts_is_a_quiet_stop(
        self, autojump_clock: Clock
    ) -> None:
        """A start cut short by the block's cancel is part of the stop, not a start failure."""
        log = Log()
        with trio.move_on_after(1) as scope:
            async with Supervisor([spec(log, "slow", start_delay=10.0, shutdown=0.5)]):
                pass
        assert scope.cancelled_caught

    async def test_entering_a_running_supervisor_fails_and_leaves_it_running(
        self, autojump_clock: Clock
    ) -> None:
        log = Log()
        sup = Supervisor([spec(log, "a")])
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            with pytest.raises(SupervisorError, match="already running"):
                async with sup:
                    pytest.fail("the body of a second block never runs")
            await trio.sleep(1)
            assert info(sup, "a").state is ChildState.RUNNING
            nursery.cancel_scope.cancel()

    async def test_a_task_a_child_started_elsewhere_waits_for_the_lock(
        self, autojump_clock: Clock
    ) -> None:
        """Only the child being stopped (and tasks under it) act under the stopper's hold; a
        task it started in another nursery waits its turn, so no two changes interleave."""
        running: list[str] = []
        most_at_once = 0

        async def other(*, task_status: trio.TaskStatus[Handle]) -> None:
            nonlocal most_at_once
            handle = Handle(Log(), "other")
            running.append("other")
            most_at_once = max(most_at_once, len(running))
            try:
                task_status.started(handle)
                await handle.asked.wait()
                with trio.CancelScope(shield=True):
                    await trio.sleep(3)  # its cleanup
            finally:
                running.remove("other")

        async with trio.open_nursery() as outer, Supervisor() as sup:

            async def stopping(*, task_status: trio.TaskStatus[Handle]) -> None:
                handle = Handle(Log(), "stopping")

                async def helper() -> None:  # carries the child's context, runs outside it
                    await trio.sleep(0.5)
                    await sup.terminate_child("other")

                outer.start_soon(helper)
                task_status.started(handle)
                await handle.asked.wait()
                await trio.sleep(0.5)

            await sup.start_child(ChildSpec("other", other, shutdown=10, stop=ask_to_stop))
            await sup.start_child(ChildSpec("stopping", stopping, shutdown=10, stop=ask_to_stop))
            await sup.terminate_child("stopping")
            await sup.terminate_child("other")
            assert running == []
            await sup.restart_child("other")
            assert most_at_once == 1


class TestHealthCheckContext:
    async def test_health_probes_run_in_the_supervisors_context(
        self, autojump_clock: Clock
    ) -> None:
        caller_only: contextvars.ContextVar[str] = contextvars.ContextVar(
            "caller_only", default="unset"
        )
        seen: list[str] = []

        async def probe(value: Any) -> bool:
            seen.append(caller_only.get())
            return True

        async with Supervisor() as sup:
            caller_only.set("the caller's")
            await sup.start_child(
                ChildSpec("a", plain_forever, health_check=HealthCheck(check=probe, interval=1.0))
            )
            await trio.sleep(1.5)
        assert seen == ["unset"]


async def plain_forever() -> None:
    await trio.sleep_forever()
