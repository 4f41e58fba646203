"""Exponential backoff with jitter: the one formula for every wait after a failure.

A supervisor's restart delay and the delivery layer's retry delay grow the same way, so they
are computed in one place, through tenacity's ``wait_exponential`` (which caps the growth
before it can overflow), with a jitter drawn from a generator the caller owns, so that a
seeded run repeats exactly. It lives here, in the lower package, so that both can use it.
"""

from __future__ import annotations

import random

import tenacity

__all__ = ["exponential_delay"]

#: What a ``RetryCallState`` must name as its owner; tenacity's wait functions never read it.
_OWNER = tenacity.Retrying()


def exponential_delay(
    attempt: int,
    *,
    initial: float,
    multiplier: float,
    maximum: float,
    jitter: float,
    rng: random.Random,
) -> float:
    """Seconds to wait before try number ``attempt`` after failures (1 for the first):
    ``initial * multiplier ** (attempt - 1)``, at most ``maximum``, plus a random fraction up to
    ``jitter`` of that (0 turns it off; no random number is drawn then). An ``initial`` of 0
    waits 0, however many tries came before."""
    if initial:
        wait = tenacity.wait_exponential(  # in floats: an int base would build ever larger ints
            multiplier=initial, exp_base=float(multiplier), max=maximum
        )
        state = tenacity.RetryCallState(_OWNER, None, (), {})
        state.attempt_number = attempt
        delay = wait(state)
    else:
        delay = 0.0
    return delay * (1 + rng.uniform(0, jitter)) if jitter else delay
