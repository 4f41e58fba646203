"""Argument checks that fail with ``InvalidConfig``, for plain calls and as attrs validators.

One place decides what counts as a number of seconds, a count or a factor, so that every option
of the library accepts and refuses the same things: never ``bool``, never NaN or an infinity,
and never more than a bound that keeps the arithmetic done later with an accepted value (a
deadline, a backoff, a due time) finite and exact. A value that passes never fails later.

The checks themselves live in ``supervisor`` (the lower package, which imports nothing of ours),
made for an error class; this module binds them to ``InvalidConfig``, so that the supervisor's
options and ours draw the same lines.
"""

from __future__ import annotations

from supervisor._checks import MAX_COUNT, MAX_FACTOR, MAX_SECONDS, ArgumentChecks

from ..errors import InvalidConfig

__all__ = [
    "MAX_COUNT",
    "MAX_FACTOR",
    "MAX_SECONDS",
    "check_count",
    "check_factor",
    "check_instance",
    "check_seconds",
    "validator",
]

_CHECKS = ArgumentChecks(InvalidConfig)

check_seconds = _CHECKS.check_seconds
check_count = _CHECKS.check_count
check_factor = _CHECKS.check_factor
check_instance = _CHECKS.check_instance
validator = ArgumentChecks.validator
