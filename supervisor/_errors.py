"""The errors the supervisor package raises.

Each is a :class:`SupervisorError` and, where one fits, a subclass of the closest builtin::

    SupervisorError
     ├── InvalidSpec               (also ValueError)   a child spec or option out of range
     ├── DuplicateChild            (also ValueError)   a child with that id already exists
     ├── ChildNotFound             (also LookupError)  no child with that id
     ├── ChildRunning                                  the operation needs a stopped child
     │    └── ChildIsCaller                            a child asked to restart or delete itself
     ├── ChildStartFailed                              a child raised before it had started
     ├── HealthCheckFailed                             a child's health check failed
     ├── SupervisorNotRunning      (also RuntimeError) the supervisor is not running
     ├── TooManyChildren                               a dynamic supervisor is at max_children
     └── RestartIntensityExceeded                      too many restarts: the supervisor gave up

``Hibernate``, ``FinalExit`` and ``EscalatedFailure`` are raised by children, to their supervisor.
"""

from __future__ import annotations

from collections.abc import Hashable

from ._bounded_repr import bounded_repr

__all__ = [
    "ChildIsCaller",
    "ChildNotFound",
    "ChildRunning",
    "ChildStartFailed",
    "DuplicateChild",
    "EscalatedFailure",
    "FinalExit",
    "HealthCheckFailed",
    "Hibernate",
    "InvalidSpec",
    "RestartIntensityExceeded",
    "SupervisorError",
    "SupervisorNotRunning",
    "TooManyChildren",
]


class SupervisorError(Exception):
    """Base class of every error the supervisor package raises."""


class InvalidSpec(SupervisorError, ValueError):
    """A child spec or a supervisor option is out of range or of the wrong type."""


class DuplicateChild(SupervisorError, ValueError):
    """The supervisor already has a child with that id."""


class ChildNotFound(SupervisorError, LookupError):
    """The supervisor has no child with that id."""


class ChildRunning(SupervisorError):
    """The child must be terminated first (``restart_child`` and ``delete_child`` need that)."""


class ChildIsCaller(ChildRunning):
    """A child (or a task of its subtree) asked its own supervisor to restart or delete it:
    it is running, since it is asking, and waiting for that would mean waiting for itself."""


class ChildStartFailed(SupervisorError):
    """A child raised before it reported that it had started; the error is in ``__cause__``."""

    def __init__(self, child_id: Hashable, error: BaseException) -> None:
        super().__init__(f"child {bounded_repr(child_id)} failed to start: {bounded_repr(error)}")
        self.child_id = child_id
        self.__cause__ = error


class EscalatedFailure(SupervisorError):
    """A child ended with this to make its supervisor fail: the supervisor gives up as when it
    exceeds its restart intensity (raising ``RestartIntensityExceeded``), whatever the
    intensity left. The child's own error is the ``__cause__``."""


class FinalExit(SupervisorError):
    """A child ended with this to stop for good: its supervisor neither restarts it, whatever
    its restart type, nor keeps it. The child's own error is the ``__cause__``."""


class Hibernate(SupervisorError):
    """A child ended its run with this to hibernate (OTP's ``hibernate``): it gives up its task
    and stays, neither exited nor restarted, until :meth:`Supervisor.wake_child` starts its
    next run, which is no restart and counts toward nothing.

    Stopping a hibernated child starts that run first, so that it can clean up as it stops,
    when ``wake_to_stop`` is true (or it has no stop hook, or is killed); otherwise the stop
    starts nothing: its spec's stop hook, given the value its last run reported, must stop
    it at once.
    """

    def __init__(self, *, wake_to_stop: bool = True) -> None:
        super().__init__("the child hibernates")
        self.wake_to_stop = wake_to_stop


class HealthCheckFailed(SupervisorError):
    """A child's health check raised, said no, or did not answer in time."""


class SupervisorNotRunning(SupervisorError, RuntimeError):
    """The supervisor has not started yet, or has stopped."""


class TooManyChildren(SupervisorError):
    """A dynamic supervisor already runs ``max_children`` children."""


class RestartIntensityExceeded(SupervisorError):
    """More than ``max_restarts`` restarts within ``max_seconds``: the supervisor stopped.

    Its children are all stopped when this is raised. A parent supervisor treats it as the crash
    of that child, so the failure climbs the tree until a supervisor can restart the subtree.
    ``last_failure`` (also ``__cause__``) is the exit that tipped it over.
    """

    def __init__(
        self,
        supervisor: str,
        max_restarts: int,
        max_seconds: float,
        last_failure: BaseException | None,
    ) -> None:
        super().__init__(
            f"{supervisor}: more than {max_restarts} restarts within {max_seconds} s; "
            f"last failure: {bounded_repr(last_failure)}"
        )
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.last_failure = last_failure
        self.__cause__ = last_failure
