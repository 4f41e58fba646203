"""What the test kit raises: a failed expectation, and the crash it injects."""

from __future__ import annotations

__all__ = ["ExpectationFailed", "InjectedFault"]


class ExpectationFailed(AssertionError):
    """A probe did not receive what the test expected, or not in time.

    An ``AssertionError``, so that pytest reports it as a failed assertion, not as an error.
    """


class InjectedFault(Exception):
    """What a wrapped handler raises when the injector crashes it.

    A plain ``Exception``, as a bug in a handler would be: the agent crashes, its supervisor
    restarts it, and the message is retried or dead-lettered by its guarantee.
    """
