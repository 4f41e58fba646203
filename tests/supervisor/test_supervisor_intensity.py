"""The restart window (how many restarts fit in a period) and the restart backoff."""

from __future__ import annotations

import math
import random

import attrs
import pytest

from supervisor import InvalidSpec, RestartBackoff
from supervisor._checks import MAX_FACTOR, MAX_SECONDS
from supervisor._intensity import RestartWindow


class TestRestartWindow:
    def test_admits_up_to_max_restarts(self) -> None:
        """``max_restarts`` restarts within the window are all admitted."""
        window = RestartWindow(3, 10.0)
        assert [window.admit(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
        assert window.count(2.0) == 3

    def test_refuses_one_more_than_max_restarts(self) -> None:
        """The restart that would make more than ``max_restarts`` in the window is refused."""
        window = RestartWindow(3, 10.0)
        for t in (0.0, 1.0, 2.0):
            window.admit(t)
        assert not window.admit(3.0)

    def test_a_refused_restart_is_not_counted(self) -> None:
        """Refusing a restart leaves the count as it was."""
        window = RestartWindow(1, 10.0)
        window.admit(0.0)
        window.admit(1.0)
        assert window.count(1.0) == 1

    def test_zero_max_restarts_refuses_the_first(self) -> None:
        """With ``max_restarts=0`` no restart is ever admitted."""
        assert not RestartWindow(0, 10.0).admit(0.0)

    def test_restarts_older_than_the_window_fall_out(self) -> None:
        """A restart ``max_seconds`` or more ago no longer counts."""
        window = RestartWindow(2, 10.0)
        window.admit(0.0)
        window.admit(1.0)
        assert window.count(9.99) == 2
        assert window.count(10.0) == 1
        assert window.count(11.0) == 0

    def test_window_slides_with_each_restart(self) -> None:
        """The window is sliding: only the oldest restart falls out, not a whole bucket."""
        window = RestartWindow(3, 10.0)
        for t in (0.0, 5.0, 9.0):
            assert window.admit(t)
        assert window.admit(10.5)  # the restart at 0 has fallen out
        assert not window.admit(11.0)  # those at 5, 9 and 10.5 are still in

    def test_restarting_now_and_then_never_gives_up(self) -> None:
        """One restart per period, forever, always fits in a window of one."""
        window = RestartWindow(1, 10.0)
        assert all(window.admit(t * 10.5) for t in range(1000))

    def test_clear_forgets_every_restart(self) -> None:
        """After ``clear`` the window is empty."""
        window = RestartWindow(1, 10.0)
        window.admit(0.0)
        window.clear()
        assert window.admit(1.0)

    @pytest.mark.parametrize(("max_restarts", "max_seconds"), [(-1, 1.0), (True, 1.0), (1, 0)])
    def test_bad_limits(self, max_restarts: int, max_seconds: float) -> None:
        """The limits are an int >= 0 and a number of seconds above 0."""
        with pytest.raises(InvalidSpec):
            RestartWindow(max_restarts, max_seconds)


def fixed(**options: float) -> RestartBackoff:
    """A backoff without jitter, so that its delays are exact."""
    return RestartBackoff(jitter=0.0, **options)


class TestRestartBackoff:
    def test_first_restart_waits_initial(self) -> None:
        """The first restart in a row waits ``initial``."""
        assert fixed(initial=0.5).delay(1) == 0.5

    def test_delay_grows_by_the_multiplier(self) -> None:
        """The n-th restart in a row waits ``initial * multiplier ** (n - 1)``."""
        backoff = fixed(initial=1.0, multiplier=3.0, maximum=1000.0)
        assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [1.0, 3.0, 9.0, 27.0]

    def test_delay_is_capped_at_maximum(self) -> None:
        """No restart waits longer than ``maximum`` (before jitter)."""
        backoff = fixed(initial=1.0, multiplier=2.0, maximum=5.0)
        assert [backoff.delay(n) for n in (3, 4, 5)] == [4.0, 5.0, 5.0]

    def test_a_huge_streak_waits_maximum(self) -> None:
        """A very long streak of restarts waits ``maximum`` rather than overflowing."""
        assert fixed(initial=1.0, multiplier=2.0, maximum=5.0).delay(100_000) == 5.0

    def test_multiplier_one_waits_the_same_each_time(self) -> None:
        """A multiplier of 1 is a constant delay."""
        backoff = fixed(initial=2.0, multiplier=1.0)
        assert {backoff.delay(n) for n in range(1, 20)} == {2.0}

    def test_jitter_adds_up_to_its_fraction(self) -> None:
        """With jitter, each delay lies between the base delay and ``base * (1 + jitter)``."""
        backoff = RestartBackoff(
            initial=1.0, multiplier=2.0, maximum=100.0, jitter=0.5, rng=random.Random(1)
        )
        for n in (1, 2, 3):
            base = 2.0 ** (n - 1)
            delays = [backoff.delay(n) for _ in range(200)]
            assert all(base <= delay <= base * 1.5 for delay in delays)
            assert len(set(delays)) > 1

    def test_jitter_applies_above_the_maximum(self) -> None:
        """The cap applies before the jitter: a capped delay may exceed ``maximum`` by it."""
        backoff = RestartBackoff(initial=10.0, maximum=10.0, jitter=0.5, rng=random.Random(3))
        delays = [backoff.delay(5) for _ in range(200)]
        assert max(delays) > 10.0
        assert all(10.0 <= delay <= 15.0 for delay in delays)

    def test_seeded_rng_makes_delays_reproducible(self) -> None:
        """Two backoffs with equally seeded ``rng`` wait the same delays."""
        first = RestartBackoff(jitter=0.3, rng=random.Random(42))
        second = RestartBackoff(jitter=0.3, rng=random.Random(42))
        assert [first.delay(n) for n in range(1, 8)] == [second.delay(n) for n in range(1, 8)]

    def test_defaults(self) -> None:
        """The defaults: 0.1 s doubling up to 30 s, 10 % jitter, reset after a quiet minute."""
        backoff = RestartBackoff()
        assert (backoff.initial, backoff.multiplier, backoff.maximum) == (0.1, 2.0, 30.0)
        assert (backoff.jitter, backoff.reset_after) == (0.1, 60.0)

    def test_is_frozen(self) -> None:
        """A backoff cannot be changed after it was made."""
        backoff = RestartBackoff()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            backoff.initial = 1.0  # type: ignore[misc]

    @pytest.mark.parametrize(
        "options",
        [
            {"initial": 0},
            {"initial": -1.0},
            {"multiplier": 0.5},
            {"multiplier": True},
            {"multiplier": math.nan},
            {"maximum": 0},
            {"jitter": -0.1},
            {"jitter": math.nan},
            {"reset_after": 0},
        ],
    )
    def test_bad_options(self, options: dict[str, float]) -> None:
        """Delays are positive seconds, the multiplier at least 1, the jitter at least 0."""
        with pytest.raises(InvalidSpec, match=next(iter(options))):
            RestartBackoff(**options)

    @pytest.mark.parametrize(
        ("option", "value", "bound"),
        [
            ("multiplier", 10**400, "1000"),
            ("multiplier", math.inf, "1000"),
            ("jitter", math.inf, "1000"),
            ("jitter", MAX_FACTOR + 1, "1000"),
            ("initial", math.inf, "1e+09"),
            ("maximum", 10**400, "1e+09"),
            ("reset_after", MAX_SECONDS * 2, "1e+09"),
        ],
    )
    def test_an_option_beyond_its_bound_is_refused(
        self, option: str, value: float, bound: str
    ) -> None:
        """Times stop at ``MAX_SECONDS``, the multiplier and the jitter at ``MAX_FACTOR``: every
        delay stays a finite number; the message says the bound."""
        with pytest.raises(InvalidSpec, match=option) as caught:
            RestartBackoff(**{option: value})
        assert bound in str(caught.value)

    @pytest.mark.parametrize("multiplier", [MAX_FACTOR, int(MAX_FACTOR)])
    def test_the_largest_options_give_finite_delays_at_any_restart(self, multiplier: float) -> None:
        """The largest multiplier (float or int), time and jitter, at the first restart and
        the millionth: every delay is finite and capped."""
        backoff = RestartBackoff(
            initial=MAX_SECONDS,
            multiplier=multiplier,
            maximum=MAX_SECONDS,
            jitter=MAX_FACTOR,
            reset_after=MAX_SECONDS,
        )
        for consecutive in (1, 2, 1_000, 1_000_000):
            assert MAX_SECONDS <= backoff.delay(consecutive) <= MAX_SECONDS * (1 + MAX_FACTOR)
