"""The restart decision as a plain object: what an exit calls for, the intensity, which children
restart with the one that exited, and the backoff; no Trio run, times passed in."""

from __future__ import annotations

import random

import pytest

from supervisor import (
    ChildSpec,
    ChildState,
    EscalatedFailure,
    FinalExit,
    RestartBackoff,
    RestartStrategy,
    RestartType,
    Supervisor,
)
from supervisor._child import Child
from supervisor._restarts import ExitAction, RestartPolicy


async def _idle() -> None:
    """A child's start function; never run here."""


def children(*states: ChildState) -> list[Child]:
    """Children ``c0``, ``c1``, ... in start order, in the given states."""
    made = []
    supervisor = Supervisor()
    for number, state in enumerate(states):
        child = Child(ChildSpec(f"c{number}", _idle), supervisor, f"c{number}", _idle)
        child.state = state
        made.append(child)
    return made


def policy(
    strategy: RestartStrategy = RestartStrategy.ONE_FOR_ONE,
    *,
    max_restarts: int = 3,
    backoff: RestartBackoff | None = None,
) -> RestartPolicy:
    return RestartPolicy(strategy, max_restarts, 10.0, backoff)


RUNNING, TERMINATED = ChildState.RUNNING, ChildState.TERMINATED


class TestWhatAnExitCallsFor:
    @pytest.mark.parametrize(
        ("restart", "outcome", "action"),
        [
            (RestartType.PERMANENT, None, ExitAction.RESTART),
            (RestartType.PERMANENT, ValueError("boom"), ExitAction.RESTART),
            (RestartType.TRANSIENT, None, ExitAction.LEAVE),
            (RestartType.TRANSIENT, ValueError("boom"), ExitAction.RESTART),
            (RestartType.TEMPORARY, None, ExitAction.LEAVE),
            (RestartType.TEMPORARY, ValueError("boom"), ExitAction.LEAVE),
        ],
    )
    def test_the_restart_type_decides_by_how_the_child_ended(
        self, restart: RestartType, outcome: BaseException | None, action: ExitAction
    ) -> None:
        """A permanent child always restarts, a transient one only after an error, a
        temporary one never (OTP's table)."""
        assert RestartPolicy.on_exit(restart, outcome) is action

    @pytest.mark.parametrize("restart", list(RestartType))
    def test_an_escalated_failure_gives_up_whatever_the_restart_type(
        self, restart: RestartType
    ) -> None:
        """``EscalatedFailure`` makes the supervisor give up, whatever the child's type."""
        assert RestartPolicy.on_exit(restart, EscalatedFailure("up")) is ExitAction.ESCALATE

    @pytest.mark.parametrize("restart", list(RestartType))
    def test_a_final_exit_stops_the_child_for_good_whatever_the_restart_type(
        self, restart: RestartType
    ) -> None:
        """``FinalExit`` is never restarted, not even for a permanent child."""
        assert RestartPolicy.on_exit(restart, FinalExit("done")) is ExitAction.STOP_FOR_GOOD


class TestIntensity:
    def test_admits_up_to_max_restarts_in_the_window_then_refuses(self) -> None:
        """The restart window decides: ``max_restarts`` fit, the next one means give up."""
        restarts = policy(max_restarts=2)
        assert [restarts.admit(t) for t in (0.0, 1.0, 2.0)] == [True, True, False]
        assert restarts.window.count(2.0) == 2

    def test_restarts_older_than_the_window_make_room(self) -> None:
        """Times are passed in: a restart ``max_seconds`` old no longer counts."""
        restarts = policy(max_restarts=1)
        assert restarts.admit(0.0)
        assert restarts.admit(10.0)


class TestWhichChildrenRestart:
    def test_one_for_one_restarts_the_child_alone(self) -> None:
        """Only the child that exited."""
        c0, c1, c2 = children(RUNNING, RUNNING, RUNNING)
        assert policy(RestartStrategy.ONE_FOR_ONE).group([c0, c1, c2], c1) == [c1]

    def test_one_for_all_restarts_every_live_child_in_start_order(self) -> None:
        """Every child still live, in start order; one terminated for good stays down."""
        c0, c1, c2, c3 = children(RUNNING, TERMINATED, RUNNING, ChildState.RESTARTING)
        assert policy(RestartStrategy.ONE_FOR_ALL).group([c0, c1, c2, c3], c2) == [c0, c2, c3]

    def test_rest_for_one_restarts_the_child_and_the_live_ones_started_after_it(self) -> None:
        """The child and those after it in start order, not those before."""
        c0, c1, c2, c3 = children(RUNNING, RUNNING, TERMINATED, ChildState.STARTING)
        assert policy(RestartStrategy.REST_FOR_ONE).group([c0, c1, c2, c3], c1) == [c1, c3]

    def test_the_child_that_exited_is_in_its_group_whatever_its_state(self) -> None:
        """The failed child restarts even though its state is no longer live."""
        c0, c1 = children(RUNNING, TERMINATED)
        assert policy(RestartStrategy.ONE_FOR_ALL).group([c0, c1], c1) == [c0, c1]


class TestBackoff:
    def test_without_a_backoff_a_restart_is_at_once_and_not_counted(self) -> None:
        """No backoff: no wait, and restarts in a row are not counted."""
        [child] = children(RUNNING)
        assert policy().delay(child, 0.0) == 0.0
        assert child.consecutive_restarts == 0

    def test_each_restart_in_a_row_waits_longer(self) -> None:
        """The n-th restart in a row waits ``initial * multiplier ** (n - 1)``, capped."""
        backoff = RestartBackoff(initial=0.1, maximum=0.3, jitter=0, rng=random.Random(1))
        restarts = policy(backoff=backoff)
        [child] = children(RUNNING)
        delays: list[float] = []
        crashed_at = 0.0
        for _ in range(4):
            delays.append(restarts.delay(child, crashed_at))
            child.restarted_at = crashed_at + delays[-1]
            crashed_at = child.restarted_at + 0.01
        assert delays == pytest.approx([0.1, 0.2, 0.3, 0.3])
        assert child.consecutive_restarts == 4

    def test_reset_after_seconds_since_its_last_restart_start_the_count_again(self) -> None:
        """A child that crashes ``reset_after`` seconds or more after its last restart started
        it waits ``initial`` again, however many runs it had meanwhile (a sleeper's wakes)."""
        backoff = RestartBackoff(initial=0.1, reset_after=5.0, jitter=0, rng=random.Random(1))
        restarts = policy(backoff=backoff)
        [child] = children(RUNNING)
        child.restarted_at = 0.0
        restarts.delay(child, 0.01)
        restarts.delay(child, 4.99)
        assert restarts.delay(child, 5.0) == pytest.approx(0.1)
        assert child.consecutive_restarts == 1


class TestSupervisorSettings:
    def test_strategy_and_backoff_stay_assignable_attributes(self) -> None:
        """They were plain attributes before the restart decision moved into RestartPolicy,
        and assigning them still works."""
        supervisor = Supervisor()
        backoff = RestartBackoff(initial=2.0)
        supervisor.strategy = RestartStrategy.ONE_FOR_ALL
        supervisor.backoff = backoff
        assert (supervisor.strategy, supervisor.backoff) == (RestartStrategy.ONE_FOR_ALL, backoff)
