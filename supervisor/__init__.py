"""OTP supervision trees for Trio tasks.

A :class:`Supervisor` runs child tasks in one nursery and restarts them by OTP's rules: a
strategy (one for one, one for all, rest for one), a restart type per child (permanent,
transient, temporary), a restart intensity that escalates to the parent when exceeded, and an
orderly shutdown in reverse start order. It knows nothing of messages or agents: any async
function can be a child.

    async with Supervisor([ChildSpec("worker", worker)]) as supervisor:
        ...
"""

from ._dynamic import DynamicSupervisor
from ._errors import (
    ChildIsCaller,
    ChildNotFound,
    ChildRunning,
    ChildStartFailed,
    DuplicateChild,
    EscalatedFailure,
    FinalExit,
    HealthCheckFailed,
    Hibernate,
    InvalidSpec,
    RestartIntensityExceeded,
    SupervisorError,
    SupervisorNotRunning,
    TooManyChildren,
)
from ._intensity import RestartBackoff
from ._spec import ChildKind, ChildSpec, HealthCheck, RestartType, Shutdown
from ._stats import ChildCounts, ChildInfo, ChildState, SupervisorStats
from ._supervisor import AutoShutdown, CurrentChild, RestartStrategy, Supervisor, current_child

__all__ = [
    "AutoShutdown",
    "ChildCounts",
    "ChildInfo",
    "ChildIsCaller",
    "ChildKind",
    "ChildNotFound",
    "ChildRunning",
    "ChildSpec",
    "ChildStartFailed",
    "ChildState",
    "CurrentChild",
    "DuplicateChild",
    "DynamicSupervisor",
    "EscalatedFailure",
    "FinalExit",
    "HealthCheck",
    "HealthCheckFailed",
    "Hibernate",
    "InvalidSpec",
    "RestartBackoff",
    "RestartIntensityExceeded",
    "RestartStrategy",
    "RestartType",
    "Shutdown",
    "Supervisor",
    "SupervisorError",
    "SupervisorNotRunning",
    "SupervisorStats",
    "TooManyChildren",
    "current_child",
]
