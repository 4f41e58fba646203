"""The timer service: one task fires every timer at its Trio time, unless it was cancelled."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import pytest
import trio
import trio.testing

from terraphim_actors._primitives.timers import TimerService
from terraphim_actors.errors import InvalidConfig

Clock = trio.testing.MockClock


@pytest.fixture
async def service(autojump_clock: Clock) -> AsyncIterator[TimerService]:
    """A running TimerService, stopped when the test ends.

    pytest-trio takes the clock from the test's own arguments, so a test using this fixture
    also asks for ``autojump_clock``.
    """
    assert isinstance(trio.lowlevel.current_clock(), Clock), "the test must ask for a clock"
    timers = TimerService()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        yield timers
        nursery.cancel_scope.cancel()


def recorder(fired: list[tuple[str, float]], name: str) -> Callable[[], None]:
    """A callback that records its name and the Trio time it ran at."""
    return lambda: fired.append((name, trio.current_time()))


class TestFiring:
    async def test_fires_at_its_deadline(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """A timer fires exactly ``delay`` seconds of Trio time after it was set."""
        fired: list[tuple[str, float]] = []
        start = trio.current_time()
        service.call_after(3.0, recorder(fired, "t"))
        await trio.sleep(10.0)
        assert fired == [("t", pytest.approx(start + 3.0))]

    async def test_does_not_fire_early(self, autojump_clock: Clock, service: TimerService) -> None:
        """Just before its deadline, a timer has not fired."""
        fired: list[tuple[str, float]] = []
        service.call_after(3.0, recorder(fired, "t"))
        await trio.sleep(2.99)
        assert fired == []
        assert len(service) == 1

    async def test_fires_in_deadline_order(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """Timers set out of order fire in the order of their deadlines."""
        fired: list[tuple[str, float]] = []
        start = trio.current_time()
        service.call_after(3.0, recorder(fired, "third"))
        service.call_after(1.0, recorder(fired, "first"))
        service.call_after(2.0, recorder(fired, "second"))
        await trio.sleep(5.0)
        assert fired == [
            ("first", pytest.approx(start + 1.0)),
            ("second", pytest.approx(start + 2.0)),
            ("third", pytest.approx(start + 3.0)),
        ]

    async def test_equal_deadlines_fire_in_the_order_set(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """Timers with one deadline fire in the order they were set."""
        fired: list[tuple[str, float]] = []
        deadline = trio.current_time() + 1.0
        for name in ["a", "b", "c"]:
            service.call_at(deadline, recorder(fired, name))
        await trio.sleep(2.0)
        assert [name for name, _ in fired] == ["a", "b", "c"]

    async def test_earlier_timer_set_while_sleeping_wakes_the_service(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """A timer due before the one the service sleeps towards still fires on time."""
        fired: list[tuple[str, float]] = []
        start = trio.current_time()
        service.call_after(10.0, recorder(fired, "late"))
        await trio.testing.wait_all_tasks_blocked()
        service.call_after(1.0, recorder(fired, "early"))
        await trio.sleep(2.0)
        assert fired == [("early", pytest.approx(start + 1.0))]

    async def test_zero_delay_fires_without_time_passing(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """A timer with no delay fires at the current Trio time."""
        fired: list[tuple[str, float]] = []
        start = trio.current_time()
        service.call_after(0, recorder(fired, "now"))
        await trio.testing.wait_all_tasks_blocked()
        assert fired == [("now", start)]

    async def test_timer_set_before_the_service_runs_fires(self, autojump_clock: Clock) -> None:
        """Timers set before ``run`` starts fire once it does."""
        timers = TimerService()
        fired: list[tuple[str, float]] = []
        start = trio.current_time()
        timers.call_after(2.0, recorder(fired, "queued"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.run)
            await trio.sleep(5.0)
            nursery.cancel_scope.cancel()
        assert fired == [("queued", pytest.approx(start + 2.0))]

    async def test_callback_can_set_another_timer(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """A callback may schedule a further timer, which fires at its own time."""
        fired: list[tuple[str, float]] = []
        start = trio.current_time()

        def first() -> None:
            fired.append(("first", trio.current_time()))
            service.call_after(2.0, recorder(fired, "second"))

        service.call_after(1.0, first)
        await trio.sleep(5.0)
        assert fired == [
            ("first", pytest.approx(start + 1.0)),
            ("second", pytest.approx(start + 3.0)),
        ]

    async def test_timer_is_done_after_firing(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """A fired timer is no longer pending and no longer counted."""
        timer = service.call_after(1.0, lambda: None)
        assert timer.pending
        await trio.sleep(2.0)
        assert not timer.pending
        assert len(service) == 0


class TestCancel:
    async def test_cancelled_timer_does_not_fire(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """A timer cancelled before its deadline never runs its callback."""
        fired: list[tuple[str, float]] = []
        timer = service.call_after(1.0, recorder(fired, "cancelled"))
        timer.cancel()
        await trio.sleep(5.0)
        assert fired == []

    def test_cancel_returns_true_once_then_false(self) -> None:
        """The first cancel reports it stopped the timer; later ones report nothing to stop."""
        timer = TimerService().call_at(10.0, lambda: None)
        assert timer.cancel() is True
        assert timer.cancel() is False
        assert not timer.pending

    async def test_cancel_after_firing_returns_false(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """Cancelling a timer that already fired reports that it was too late."""
        timer = service.call_after(1.0, lambda: None)
        await trio.sleep(2.0)
        assert timer.cancel() is False

    async def test_cancelling_one_timer_leaves_the_others(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """Only the cancelled timer is skipped; the rest fire on time."""
        fired: list[tuple[str, float]] = []
        start = trio.current_time()
        service.call_after(1.0, recorder(fired, "kept-1"))
        service.call_after(2.0, recorder(fired, "cancelled")).cancel()
        service.call_after(3.0, recorder(fired, "kept-3"))
        await trio.sleep(5.0)
        assert fired == [
            ("kept-1", pytest.approx(start + 1.0)),
            ("kept-3", pytest.approx(start + 3.0)),
        ]

    async def test_many_cancellations_keep_the_rest_on_time(
        self, autojump_clock: Clock, service: TimerService
    ) -> None:
        """After cancelling most of many timers, the count is right and the rest fire on time."""
        fired: list[tuple[str, float]] = []
        start = trio.current_time()
        timers = [service.call_after(1.0 + n, recorder(fired, str(n))) for n in range(200)]
        for number, timer in enumerate(timers):
            if number % 10:
                assert timer.cancel() is True
        assert len(service) == 20
        await trio.sleep(300.0)
        assert fired == [(str(n), pytest.approx(start + 1.0 + n)) for n in range(0, 200, 10)]
        assert len(service) == 0

    def test_len_counts_only_pending_timers(self) -> None:
        """``len(service)`` counts the timers still to fire."""
        service = TimerService()
        first = service.call_at(1.0, lambda: None)
        service.call_at(2.0, lambda: None)
        first.cancel()
        assert len(service) == 1


class TestValidation:
    @pytest.mark.parametrize("delay", [-1.0, -0.001, math.nan, True, "1", None])
    async def test_invalid_delay_is_refused(self, delay: object) -> None:
        """A negative, NaN, bool, str or missing delay raises InvalidConfig."""
        with pytest.raises(InvalidConfig, match="delay"):
            TimerService().call_after(delay, lambda: None)  # type: ignore[arg-type]
