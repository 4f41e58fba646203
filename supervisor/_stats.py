"""Frozen snapshots of a supervisor and its children, for users and for tests."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping

import attrs

from ._spec import ChildKind, RestartType

__all__ = ["ChildCounts", "ChildInfo", "ChildState", "SupervisorStats"]


class ChildState(enum.Enum):
    """Where a child is in its life under its supervisor."""

    #: Started, not yet reported ``task_status.started``.
    STARTING = "starting"
    RUNNING = "running"
    #: Alive without a task: it ended its run with ``Hibernate`` and waits for ``wake_child``.
    HIBERNATED = "hibernated"
    #: Exited and waiting for its restart (its backoff delay, or its turn in a group restart).
    RESTARTING = "restarting"
    #: Being stopped by its supervisor.
    STOPPING = "stopping"
    #: Not running and not due to restart: stopped by ``terminate_child``, or exited for good.
    TERMINATED = "terminated"


@attrs.frozen(kw_only=True)
class ChildInfo:
    """One child as ``which_children`` sees it."""

    id: Hashable
    state: ChildState
    #: Times this child was started again after its first start.
    restarts: int
    #: What the child reported through ``task_status.started`` in its current run.
    value: object
    kind: ChildKind
    restart: RestartType
    #: How its last run ended: the exception, or ``None`` for a normal exit (or none yet).
    last_exit: BaseException | None


@attrs.frozen(kw_only=True)
class ChildCounts:
    """OTP's ``count_children``."""

    #: Children the supervisor knows of, running or not.
    specs: int
    #: Children running now, hibernated ones included (alive, as a hibernated OTP process is).
    active: int
    #: Children that are supervisors.
    supervisors: int
    #: Children that are workers.
    workers: int


@attrs.frozen(kw_only=True)
class SupervisorStats:
    """A snapshot of one supervisor's counters."""

    #: How many children are in each state.
    children: Mapping[ChildState, int]
    #: Restarts inside the current intensity window (the supervisor gives up above the limit).
    restarts_in_window: int
    #: Restarts since the supervisor was created (a group restart counts once).
    total_restarts: int
    #: Times this supervisor gave up and raised ``RestartIntensityExceeded``.
    escalations: int
    #: Children that raised while being stopped.
    stop_errors: int
