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

from ._behaviour.agent import Agent, Caller, Context, DeferredReply, Directive, NotHandled
from ._behaviour.refs import AgentRef, PoolRef
from ._core.codec import register_payload
from ._core.ids import AgentId, MessageId, new_message_id
from ._core.instruments import Instrument
from ._core.messages import (
    DeliveryGuarantee,
    Envelope,
    MessageKind,
    MessageOptions,
    Priority,
    call,
    cast,
    info,
)
from ._core.notifications import (
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
from ._core.reply import ReplyHandle
from ._delivery.dead_letters import DeadLetter, DeadLetterReason
from ._delivery.pipeline import DeliveryConfig, DeliveryManager, DeliveryStats, RetryCandidate
from ._primitives.admission import (
    AdmissionStats,
    BudgetUsage,
    ConcurrencyLimit,
    RateLimit,
    TokenBudget,
)
from ._primitives.balancing import LoadBalancing
from ._primitives.circuit import CircuitBreakerConfig, CircuitState
from ._primitives.dedup import DedupWindow
from ._primitives.mailbox import Mailbox, MailboxConfig, MailboxStats, OverflowPolicy
from ._primitives.timers import Timer
from ._routing.router import RouterConfig, RouterStats
from ._system.custom_router import MessageRouter
from ._system.system import MessageSystem, MessageSystemConfig, SystemStats, open_message_system

__all__ = [
    "AdmissionStats",
    "Agent",
    "AgentExited",
    "AgentId",
    "AgentRef",
    "AgentStarted",
    "BudgetUsage",
    "Caller",
    "ChildSpec",
    "CircuitBreakerConfig",
    "CircuitState",
    "ConcurrencyLimit",
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
    "Instrument",
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
    "RateLimit",
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
    "TokenBudget",
    "call",
    "cast",
    "info",
    "new_message_id",
    "open_message_system",
    "register_payload",
]
