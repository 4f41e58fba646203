"""terraphim-actors: Erlang/OTP-style message passing for AI agents, built on Trio.

Agents are Trio tasks, each owning a priority-ordered mailbox; they talk through ``call``
(request and reply), ``cast`` (fire and forget) and ``info`` (notifications), gen_server style.
Every agent runs under a supervisor (the ``supervisor`` package, whose names used with agents
are re-exported here), which restarts it by OTP's rules. Messages travel under a delivery
guarantee (at most once, at least once with retries, exactly once by dedup), past a circuit
breaker per recipient, and pools spread them over several instances of an agent.
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

from ._agent import Agent, Caller, Context, DeferredReply, Directive, NotHandled
from ._balancing import LoadBalancing
from ._circuit import CircuitBreakerConfig, CircuitState
from ._dead_letters import DeadLetter, DeadLetterReason
from ._dedup import DedupWindow
from ._delivery import DeliveryConfig, DeliveryManager, DeliveryStats, RetryCandidate
from ._ids import AgentId, MessageId, new_message_id
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
from ._pool import PoolRef
from ._protocol import ReplyHandle
from ._ref import AgentRef
from ._router import MessageRouter, RouterConfig, RouterStats
from ._system import MessageSystem, MessageSystemConfig, SystemStats, open_message_system
from ._timers import Timer

__all__ = [
    "Agent",
    "AgentExited",
    "AgentId",
    "AgentRef",
    "AgentStarted",
    "Caller",
    "ChildSpec",
    "CircuitBreakerConfig",
    "CircuitState",
    "Context",
    "Custom",
    "DeadLetter",
    "DeadLetterReason",
    "DedupWindow",
    "DeferredReply",
    "DeliveryConfig",
    "DeliveryGuarantee",
    "DeliveryManager",
    "DeliveryStats",
    "Directive",
    "Down",
    "Envelope",
    "ExitReason",
    "HealthCheck",
    "LoadBalancing",
    "Mailbox",
    "MailboxConfig",
    "MailboxStats",
    "MessageId",
    "MessageKind",
    "MessageOptions",
    "MessageRouter",
    "MessageSystem",
    "MessageSystemConfig",
    "MonitorRef",
    "NotHandled",
    "OverflowPolicy",
    "PoolRef",
    "Priority",
    "ReplyHandle",
    "RestartBackoff",
    "RestartIntensityExceeded",
    "RestartStrategy",
    "RestartType",
    "RetryCandidate",
    "RouterConfig",
    "RouterStats",
    "Shutdown",
    "StopReason",
    "Supervisor",
    "SystemShutdown",
    "SystemStats",
    "Timer",
    "call",
    "cast",
    "info",
    "new_message_id",
    "open_message_system",
]
