"""``Balancer``: which member of a pool each strategy chooses."""

from __future__ import annotations

import collections
from collections.abc import Callable

import pytest

from terraphim_actors import LoadBalancing
from terraphim_actors._primitives.balancing import Balancer


def everyone(member: int) -> bool:
    """Every member is available."""
    return True


def idle(member: int) -> int:
    """Every member has nothing waiting."""
    return 0


def all_but(*unavailable: int) -> Callable[[int], bool]:
    """Every member except those given is available."""
    return lambda member: member not in unavailable


def picks(
    balancer: Balancer,
    payloads: list[object],
    available: Callable[[int], bool] = everyone,
    load: Callable[[int], int] = idle,
) -> list[int | None]:
    """The member chosen for each payload, in turn."""
    return [balancer.choose(payload, available, load) for payload in payloads]


class TestRoundRobin:
    def test_cycles_in_order(self) -> None:
        """Each member in turn, starting from the first."""
        balancer = Balancer(LoadBalancing.ROUND_ROBIN, 3)
        assert picks(balancer, ["m"] * 7) == [0, 1, 2, 0, 1, 2, 0]

    def test_skips_unavailable_members(self) -> None:
        """An unavailable member is passed over; the others keep their turns."""
        balancer = Balancer(LoadBalancing.ROUND_ROBIN, 3)
        assert picks(balancer, ["m"] * 4, all_but(1)) == [0, 2, 0, 2]

    def test_member_back_in_turn_once_available(self) -> None:
        """A member that becomes available again gets its turn again."""
        balancer = Balancer(LoadBalancing.ROUND_ROBIN, 3)
        assert picks(balancer, ["m"] * 2, all_but(1)) == [0, 2]
        assert picks(balancer, ["m"] * 3) == [0, 1, 2]


class TestRandom:
    def test_same_seed_repeats_the_choices(self) -> None:
        """Two balancers with the same seed choose the same members in the same order."""
        first = Balancer(LoadBalancing.RANDOM, 5, seed=42)
        second = Balancer(LoadBalancing.RANDOM, 5, seed=42)
        assert picks(first, ["m"] * 50) == picks(second, ["m"] * 50)

    def test_uses_every_member(self) -> None:
        """Over many picks every member is chosen, and none is chosen outside the pool."""
        balancer = Balancer(LoadBalancing.RANDOM, 4, seed=1)
        assert set(picks(balancer, ["m"] * 400)) == {0, 1, 2, 3}

    def test_never_chooses_an_unavailable_member(self) -> None:
        """Only available members are drawn."""
        balancer = Balancer(LoadBalancing.RANDOM, 4, seed=3)
        assert set(picks(balancer, ["m"] * 200, all_but(0, 2))) == {1, 3}


class TestLeastLoaded:
    def test_picks_the_smallest_load(self) -> None:
        """The member with the fewest messages waiting is chosen."""
        loads = [3, 1, 0, 2]
        balancer = Balancer(LoadBalancing.LEAST_LOADED, 4)
        assert balancer.choose("m", everyone, loads.__getitem__) == 2

    def test_picks_the_smallest_load_among_available(self) -> None:
        """An unavailable member is not chosen, however idle it is."""
        loads = [3, 1, 0, 2]
        balancer = Balancer(LoadBalancing.LEAST_LOADED, 4)
        assert balancer.choose("m", all_but(2), loads.__getitem__) == 1

    def test_follows_the_loads_as_they_change(self) -> None:
        """Each choice reads the loads afresh."""
        loads = [0, 0, 0]
        balancer = Balancer(LoadBalancing.LEAST_LOADED, 3)
        chosen = []
        for _ in range(3):
            member = balancer.choose("m", everyone, loads.__getitem__)
            assert member is not None
            chosen.append(member)
            loads[member] += 1
        assert sorted(chosen) == [0, 1, 2]


class TestConsistentHash:
    def test_same_key_goes_to_the_same_member(self) -> None:
        """A payload is sent to one member, every time."""
        balancer = Balancer(LoadBalancing.CONSISTENT_HASH, 4)
        assert len(set(picks(balancer, ["user-17"] * 20))) == 1

    def test_key_function_decides_what_is_hashed(self) -> None:
        """Payloads with the same key go to the same member, whatever else they carry."""
        balancer = Balancer(LoadBalancing.CONSISTENT_HASH, 4, key=lambda payload: payload[0])
        payloads: list[object] = [("user-17", index) for index in range(20)]
        assert len(set(picks(balancer, payloads))) == 1

    def test_same_key_same_member_across_balancers(self) -> None:
        """The mapping is stable: a second balancer of the same size agrees with the first."""
        keys: list[object] = [f"key-{index}" for index in range(100)]
        first = Balancer(LoadBalancing.CONSISTENT_HASH, 5)
        second = Balancer(LoadBalancing.CONSISTENT_HASH, 5)
        assert picks(first, keys) == picks(second, keys)

    def test_spreads_many_keys_over_all_members(self) -> None:
        """A thousand keys reach every member, none of them with most of the keys."""
        balancer = Balancer(LoadBalancing.CONSISTENT_HASH, 4)
        counts = collections.Counter(picks(balancer, [f"key-{index}" for index in range(1000)]))
        assert set(counts) == {0, 1, 2, 3}
        assert max(counts.values()) < 500

    def test_unavailable_member_moves_only_its_own_keys(self) -> None:
        """While a member is unavailable its keys go elsewhere; every other key stays put."""
        balancer = Balancer(LoadBalancing.CONSISTENT_HASH, 4)
        keys: list[object] = [f"key-{index}" for index in range(500)]
        before = picks(balancer, keys)
        after = picks(balancer, keys, all_but(2))
        moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
        assert moved
        assert all(old == 2 and new not in (2, None) for old, new in moved)
        assert 2 not in after

    def test_keys_return_when_the_member_is_back(self) -> None:
        """Once the member is available again, its keys go back to it."""
        balancer = Balancer(LoadBalancing.CONSISTENT_HASH, 4)
        keys: list[object] = [f"key-{index}" for index in range(200)]
        before = picks(balancer, keys)
        picks(balancer, keys, all_but(1))
        assert picks(balancer, keys) == before


@pytest.mark.parametrize("strategy", list(LoadBalancing))
def test_no_available_member_gives_none(strategy: LoadBalancing) -> None:
    """With every member unavailable, no strategy chooses one."""
    balancer = Balancer(strategy, 3, seed=0)
    assert balancer.choose("m", lambda member: False, idle) is None


@pytest.mark.parametrize("strategy", list(LoadBalancing))
def test_single_member_always_chosen(strategy: LoadBalancing) -> None:
    """A pool of one always gets its one member, whatever the strategy."""
    balancer = Balancer(strategy, 1, seed=0)
    assert picks(balancer, ["a", "b", "c"]) == [0, 0, 0]
