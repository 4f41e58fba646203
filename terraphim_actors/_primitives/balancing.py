"""Load balancing: which member of a pool gets the next message."""

from __future__ import annotations

import bisect
import enum
import hashlib
import itertools
import random
from collections.abc import Callable, Hashable, Iterator
from typing import Any

__all__ = ["Balancer", "LoadBalancing"]


class LoadBalancing(enum.Enum):
    """How a pool spreads messages over its members."""

    #: Each member in turn.
    ROUND_ROBIN = "round-robin"
    #: A member drawn at random (seeded per pool).
    RANDOM = "random"
    #: The member with the fewest messages waiting (its mailbox depth, plus one while busy).
    LEAST_LOADED = "least-loaded"
    #: The member that a key of the message hashes to, on a ring: the same key goes to the
    #: same member while it is available, and a member's absence moves only its own keys.
    CONSISTENT_HASH = "consistent-hash"


#: Points each member holds on the hash ring; more points spread keys more evenly.
_RING_POINTS = 100


def _stable_hash(value: object) -> int:
    """A hash of ``repr(value)`` that is the same in every process (``hash`` of a str is not)."""
    digest = hashlib.blake2b(repr(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Balancer:
    """Chooses a member for each message by one :class:`LoadBalancing` strategy.

    Members are given by position, and ``available(i)`` says whether member ``i`` may take a
    message now (running, circuit not open); the balancer skips those that may not.
    """

    def __init__(
        self,
        strategy: LoadBalancing,
        size: int,
        *,
        key: Callable[[Any], Hashable] | None = None,
        seed: int | None = None,
    ) -> None:
        self.strategy = strategy
        self._size = size
        self._key = key
        self._next = itertools.cycle(range(size))
        self._random = random.Random(seed)
        ring = sorted(
            (_stable_hash(f"{member}:{point}"), member)
            for member in range(size)
            for point in range(_RING_POINTS)
        )
        self._ring_hashes = [point for point, _ in ring]
        self._ring_members = [member for _, member in ring]

    def choose(
        self, payload: Any, available: Callable[[int], bool], load: Callable[[int], int]
    ) -> int | None:
        """The position of the member for a message carrying ``payload``, or ``None`` if no
        member is available."""
        strategy = self.strategy
        if strategy is LoadBalancing.ROUND_ROBIN:
            return self._first(available, (next(self._next) for _ in range(self._size)))
        if strategy is LoadBalancing.RANDOM:
            candidates = [member for member in range(self._size) if available(member)]
            return self._random.choice(candidates) if candidates else None
        if strategy is LoadBalancing.LEAST_LOADED:
            candidates = [member for member in range(self._size) if available(member)]
            return min(candidates, key=load) if candidates else None
        return self._first(available, self._ring_walk(payload))

    def _ring_walk(self, payload: Any) -> Iterator[int]:
        """Members in ring order from the point that ``payload``'s key hashes to."""
        key = payload if self._key is None else self._key(payload)
        start = bisect.bisect(self._ring_hashes, _stable_hash(key))
        members = self._ring_members
        for step in range(len(members)):
            yield members[(start + step) % len(members)]

    @staticmethod
    def _first(available: Callable[[int], bool], order: Iterator[int]) -> int | None:
        for member in order:
            if available(member):
                return member
        return None
