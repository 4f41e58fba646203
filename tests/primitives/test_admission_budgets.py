"""The admission budgets as plain objects, told the time: no Trio, no system."""

from __future__ import annotations

import math
from typing import Any

import pytest

from terraphim_actors import CircuitBreakerConfig, ConcurrencyLimit, RateLimit, TokenBudget
from terraphim_actors._core.protocols import AdmissionPolicy
from terraphim_actors._primitives.admission import AdmissionGate, Budgets, budgets_from
from terraphim_actors._primitives.circuit import CircuitBreaker
from terraphim_actors.errors import InvalidConfig


def as_policy(policy: AdmissionPolicy) -> AdmissionPolicy:
    """Each budget fits the admission seam (mypy checks it)."""
    return policy


class TestRateLimit:
    def test_admits_up_to_its_requests_in_a_window(self) -> None:
        limit = as_policy(RateLimit(requests=2, per=10.0))
        assert limit.admit(0.0)
        assert limit.admit(1.0)
        assert not limit.would_admit(5.0)
        assert not limit.admit(5.0)

    def test_a_place_frees_when_the_oldest_admission_leaves_the_window(self) -> None:
        limit = RateLimit(requests=2, per=10.0)
        limit.admit(0.0)
        limit.admit(1.0)
        assert limit.retry_at(5.0) == 10.0
        assert limit.admit(10.0)
        assert limit.retry_at(10.0) == 11.0

    def test_it_admits_at_the_time_it_names_however_that_rounds(self) -> None:
        """Admitted at 3.6 for 1 s, it names 4.6 (3.6 + 1.0), and admits then, though
        4.6 - 1.0 is 3.5999999999999996: refusing there while naming a time not to come
        left what waited for it waiting for ever."""
        limit = RateLimit(requests=1, per=1.0)
        limit.admit(3.6)
        assert limit.retry_at(4.0) == 4.6
        assert limit.would_admit(4.6)
        assert limit.retry_at(4.6) is None

    def test_the_estimate_counts_the_admissions_ahead_window_by_window(self) -> None:
        """Two per 10 s, admitted at 0 and 1: with three ahead, the fourth goes at 21."""
        limit = RateLimit(requests=2, per=10.0)
        limit.admit(0.0)
        limit.admit(1.0)
        assert [limit.admit_at(5.0, ahead, 0.0) for ahead in range(4)] == [10, 11, 20, 21]
        assert RateLimit(requests=2, per=10.0).admit_at(5.0, 1, 0.0) == 5.0

    def test_usage_counts_the_window(self) -> None:
        limit = RateLimit(requests=3, per=1.0)
        limit.admit(0.0)
        assert limit.usage(0.5).used == 1
        assert limit.usage(1.0).used == 0


class TestTokenBudget:
    def test_admits_while_below_and_counts_nothing_itself(self) -> None:
        budget = TokenBudget(tokens=100, per=60.0)
        assert budget.admit(0.0)
        assert budget.admit(0.0)
        assert budget.usage(0.0).used == 0

    def test_an_overdraft_delays_admission_until_it_ages_out(self) -> None:
        budget = TokenBudget(tokens=100, per=60.0)
        budget.charge(60, 0.0)
        budget.charge(90, 10.0)
        assert not budget.would_admit(20.0)
        # 150 spent: below 100 once the 60 charged at 0 is out.
        assert budget.retry_at(20.0) == 60.0
        assert budget.would_admit(60.0)

    def test_it_admits_at_the_time_it_names_however_that_rounds(self) -> None:
        """Charged over the limit at 3.6 for 1 s: it names 4.6 and admits then (as the rate
        limit does, though 4.6 - 1.0 < 3.6 in floating point)."""
        budget = TokenBudget(tokens=10, per=1.0)
        budget.charge(20, 3.6)
        assert budget.retry_at(4.0) == 4.6
        assert budget.would_admit(4.6)
        assert budget.retry_at(4.6) is None

    def test_a_single_charge_over_the_limit_waits_a_whole_period(self) -> None:
        budget = TokenBudget(tokens=10, per=5.0)
        budget.charge(1_000, 1.0)
        assert budget.retry_at(2.0) == 6.0


class TestConcurrencyLimit:
    def test_admits_up_to_its_limit_until_one_is_released(self) -> None:
        limit = ConcurrencyLimit(2)
        assert limit.admit(0.0)
        assert limit.admit(0.0)
        assert not limit.admit(0.0)
        # No time frees a place: only a release.
        assert limit.retry_at(0.0) == 0.0
        limit.release(1.0)
        assert limit.admit(1.0)

    def test_the_estimate_is_a_handling_time_for_each_round_of_places(self) -> None:
        limit = ConcurrencyLimit(2)
        limit.admit(0.0)
        assert limit.admit_at(0.0, 0, 3.0) == 0.0
        assert [limit.admit_at(0.0, ahead, 3.0) for ahead in (1, 2, 3)] == [3.0, 3.0, 6.0]


class TestBudgetsTogether:
    def test_admitted_only_when_every_budget_admits_and_counted_in_each(self) -> None:
        rate, slots = RateLimit(requests=1, per=10.0), ConcurrencyLimit(1)
        budgets = Budgets([rate, slots])
        slots.admit(0.0)  # the only slot is taken
        assert not budgets.admit(0.0)
        assert rate.would_admit(0.0)  # not spent on a refusal
        slots.release(0.0)
        assert budgets.admit(0.0)
        assert budgets.retry_at(0.0) == 10.0  # the latest of the times they name

    def test_a_hold_refuses_until_its_end(self) -> None:
        budgets = Budgets([])
        budgets.hold(5.0)
        assert not budgets.would_admit(4.0)
        assert budgets.retry_at(4.0) == 5.0
        assert budgets.admit(5.0)

    def test_waiting_entries_come_out_highest_priority_first_then_in_order(self) -> None:
        budgets = Budgets([])
        for entry, priority in [("a", 1), ("b", 3), ("c", 1), ("d", 3)]:
            budgets.wait(entry, priority)
        budgets.wait("first", 1, first=True)
        taken = [budgets.take_next() for _ in range(budgets.waiting)]
        assert taken == ["b", "d", "first", "a", "c"]

    def test_the_estimate_counts_only_what_waits_at_its_priority_or_above(self) -> None:
        budgets = Budgets([RateLimit(requests=1, per=1.0)])
        budgets.admit(0.0)
        budgets.wait("high", 3)
        budgets.wait("low", 0)
        assert budgets.admit_at(0.0, 3) == 2.0
        assert budgets.admit_at(0.0, 0) == 3.0
        budgets.hold(10.0)
        assert budgets.admit_at(0.0, 3) == 10.0

    def test_handling_time_is_a_moving_average_from_zero(self) -> None:
        budgets = Budgets([])
        assert budgets.handling_time == 0.0
        budgets.release(1.0, 1.0)
        budgets.release(2.0, 1.0)
        assert 0.0 < budgets.handling_time < 1.0


class TestGate:
    def test_an_open_circuit_refuses_before_the_budgets_count(self) -> None:
        breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=1, reset_timeout=5.0))
        rate = RateLimit(requests=1, per=10.0)
        gate = as_policy(AdmissionGate(Budgets([rate]), breaker))
        gate.record(False, 0.0)
        assert not gate.admit(1.0)
        assert rate.would_admit(1.0)
        assert gate.retry_at(1.0) == 5.0


class TestBadArguments:
    @pytest.mark.parametrize("value", [0, -1, 1.5, math.inf, math.nan, True, "2", None])
    def test_counts_must_be_positive_ints(self, value: Any) -> None:
        for make in (
            lambda: RateLimit(requests=value),
            lambda: TokenBudget(tokens=value),
            lambda: ConcurrencyLimit(value),
        ):
            with pytest.raises(InvalidConfig):
                make()

    @pytest.mark.parametrize("per", [0, -1.0, math.inf, math.nan, True, "60"])
    def test_periods_must_be_positive_and_finite(self, per: Any) -> None:
        with pytest.raises(InvalidConfig):
            RateLimit(requests=1, per=per)
        with pytest.raises(InvalidConfig):
            TokenBudget(tokens=1, per=per)

    @pytest.mark.parametrize("admission", [RateLimit(requests=1), [1], "x", None, [None]])
    def test_admission_must_be_a_list_of_budgets(self, admission: Any) -> None:
        with pytest.raises(InvalidConfig):
            budgets_from(admission)
