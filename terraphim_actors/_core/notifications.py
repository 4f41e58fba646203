"""Why agents stop, and the typed notifications the system delivers as info messages."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from .ids import AgentId

if TYPE_CHECKING:
    from .protocols import Ref

__all__ = [
    "AgentExited",
    "AgentStarted",
    "Custom",
    "Down",
    "ExitReason",
    "HealthCheck",
    "MonitorRef",
    "StopReason",
    "SystemShutdown",
]


class StopReason(enum.Enum):
    """Why an agent stopped, when it did not crash (Erlang's exit atoms)."""

    #: It asked to stop, or was asked with ``system.stop``.
    NORMAL = "normal"
    #: Its system (or later its supervisor) is shutting down.
    SHUTDOWN = "shutdown"
    #: It did not stop within its shutdown time and was cancelled.
    KILLED = "killed"
    #: It was not running when a monitor was set on it.
    NOPROC = "noproc"
    #: Its node left the cluster (its heartbeats stopped): it may run on, out of reach.
    NOCONNECTION = "noconnection"


#: A normal reason, or the exception the agent crashed with.
ExitReason: TypeAlias = StopReason | BaseException


@attrs.frozen(eq=False)
class MonitorRef:
    """The handle of one monitor, to tell its ``Down`` apart and to remove it."""

    target: AgentId


@attrs.frozen
class Down:
    """Info sent to a monitoring agent once the monitored agent has stopped for good."""

    #: The ref of the agent that stopped (an ``AgentRef``; typed by the ``Ref`` protocol,
    #: which has its public members, as this plain data sits below the refs).
    ref: Ref
    reason: ExitReason
    monitor: MonitorRef


@attrs.frozen
class AgentStarted:
    """Lifecycle notification: an agent's instance finished ``on_start``."""

    agent_id: AgentId


@attrs.frozen
class AgentExited:
    """Lifecycle notification: an agent's instance ended, with why."""

    agent_id: AgentId
    reason: ExitReason


@attrs.frozen
class HealthCheck:
    """A typed payload for asking an agent how it is; the agent's own handler answers it."""


@attrs.frozen
class SystemShutdown:
    """Lifecycle notification: the message system is shutting down."""


@attrs.frozen
class Custom:
    """An application-defined system notification: a kind and data."""

    kind: str
    data: Any = None
