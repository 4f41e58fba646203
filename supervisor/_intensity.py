"""How often a supervisor may restart, and how long it waits before it does."""

from __future__ import annotations

import collections
import random

import attrs

from ._backoff import exponential_delay
from ._checks import check_count, check_factor, check_seconds, seconds

__all__ = ["RestartBackoff", "RestartWindow"]


class RestartWindow:
    """Restart times over a sliding window of ``max_seconds``: at most ``max_restarts`` fit.

    Unlike the crate we re-create, the count is supervisor-wide and old restarts fall out of
    the window, as in OTP: a supervisor that restarts now and then never gives up.
    """

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        check_count("max_restarts", max_restarts)
        check_seconds("max_seconds", max_seconds)
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._times: collections.deque[float] = collections.deque()

    def admit(self, now: float) -> bool:
        """Count a restart at ``now`` if it fits; False when it would make more than
        ``max_restarts`` in the window, meaning the supervisor must give up instead."""
        self._forget_before(now)
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True

    def count(self, now: float) -> int:
        """Restarts within the window that ends at ``now``."""
        self._forget_before(now)
        return len(self._times)

    def clear(self) -> None:
        self._times.clear()

    def _forget_before(self, now: float) -> None:
        horizon = now - self.max_seconds
        while self._times and self._times[0] <= horizon:
            self._times.popleft()


@attrs.frozen(kw_only=True)
class RestartBackoff:
    """Wait before a restart, longer after each crash in a row (OTP restarts at once).

    The n-th consecutive restart of a child waits ``initial * multiplier ** (n - 1)`` seconds,
    at most ``maximum``, plus a random fraction up to ``jitter`` of that (0 turns it off) so that
    siblings do not restart in lockstep. A child that ran for ``reset_after`` seconds without
    crashing starts again from ``initial``.

    Times are at most ``MAX_SECONDS`` (10**9 s), ``multiplier`` and ``jitter`` at most
    ``MAX_FACTOR`` (1000), so that every delay is a finite number.
    """

    initial: float = attrs.field(default=0.1, validator=seconds)
    multiplier: float = attrs.field(default=2.0)
    maximum: float = attrs.field(default=30.0, validator=seconds)
    jitter: float = attrs.field(default=0.1)
    reset_after: float = attrs.field(default=60.0, validator=seconds)
    _random: random.Random = attrs.field(factory=random.Random, eq=False, repr=False, alias="rng")

    @multiplier.validator
    def _check_multiplier(self, _attribute: object, value: float) -> None:
        check_factor("multiplier", value, minimum=1)

    @jitter.validator
    def _check_jitter(self, _attribute: object, value: float) -> None:
        check_factor("jitter", value, minimum=0)

    def delay(self, consecutive: int) -> float:
        """Seconds to wait before the ``consecutive``-th restart in a row (1 for the first)."""
        return exponential_delay(
            consecutive,
            initial=self.initial,
            multiplier=self.multiplier,
            maximum=self.maximum,
            jitter=self.jitter,
            rng=self._random,
        )
