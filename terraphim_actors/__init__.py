"""terraphim-actors: Erlang/OTP-style message passing for AI agents, built on Trio.

Agents are Trio tasks, each owning a priority-ordered mailbox; they talk through ``call``
(request and reply), ``cast`` (fire and forget) and ``info`` (notifications), gen_server style.
Every agent runs under a supervisor (the ``supervisor`` package, whose names used with agents
are re-exported here), which restarts it by OTP's rules.
"""

from supervisor import (
    ChildSpec,
    RestartBackoff,
    RestartIntensityExceeded,
    RestartStrategy,
    RestartType,
    Shutdown,
    Supervisor,
)

from ._agent import Agent, Context, DeferredReply, NotHandled
from ._dead_letters import DeadLetter, DeadLetterReason
from ._ids import AgentId, MessageId
from ._mailbox import Mailbox, MailboxConfig, MailboxStats, OverflowPolicy
from ._messages import (
    DeliveryGuarantee,
    Envelope,
    MessageKind,
    MessageOptions,
    Priority,
    call,
    cast,
    info,
)
from ._notifications import (
    AgentExited,
    AgentStarted,
    Custom,
    Down,
    ExitReason,
    HealthCheck,
    MonitorRef,
    StopReason,
    SystemShutdown,
)
from ._protocol import ReplyHandle
from ._ref import AgentRef
from ._system import MessageSystem, MessageSystemConfig, SystemStats, open_message_system
from ._timers import Timer

__all__ = [
    "Agent",
    "AgentExited",
    "AgentId",
    "AgentRef",
    "AgentStarted",
    "ChildSpec",
    "Context",
    "Custom",
    "DeadLetter",
    "DeadLetterReason",
    "DeferredReply",
    "DeliveryGuarantee",
    "Down",
    "Envelope",
    "ExitReason",
    "HealthCheck",
    "Mailbox",
    "MailboxConfig",
    "MailboxStats",
    "MessageId",
    "MessageKind",
    "MessageOptions",
    "MessageSystem",
    "MessageSystemConfig",
    "MonitorRef",
    "NotHandled",
    "OverflowPolicy",
    "Priority",
    "ReplyHandle",
    "RestartBackoff",
    "RestartIntensityExceeded",
    "RestartStrategy",
    "RestartType",
    "Shutdown",
    "StopReason",
    "Supervisor",
    "SystemShutdown",
    "SystemStats",
    "Timer",
    "call",
    "cast",
    "info",
    "open_message_system",
]
