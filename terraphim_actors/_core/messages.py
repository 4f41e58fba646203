"""What travels between agents: priorities, options, the envelope, and its constructors."""

from __future__ import annotations

import enum
import math
import time
from typing import Any

import attrs
import trio

from ..errors import InvalidConfig
from .bounded_repr import bounded_repr
from .checks import MAX_SECONDS, check_count, check_instance, check_seconds, validator
from .ids import AgentId, MessageId, new_message_id
from .reply import ReplyHandle
from .reply_to import ReplyTo

__all__ = [
    "DeliveryGuarantee",
    "Envelope",
    "MessageKind",
    "MessageOptions",
    "Priority",
    "call",
    "cast",
    "info",
    "now",
]


class Priority(enum.IntEnum):
    """How urgent a message is: a mailbox hands out higher priorities first."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


class MessageKind(enum.Enum):
    """The gen_server kind of a message, which picks the handler that receives it."""

    CALL = "call"
    CAST = "cast"
    INFO = "info"


class DeliveryGuarantee(enum.Enum):
    """How hard the system tries to deliver a message (see ``DeliveryConfig``)."""

    #: Delivered at most once: never retried; a failure is counted and dead-lettered.
    AT_MOST_ONCE = "at-most-once"
    #: Retried until a handler returns normally, up to ``max_retries``: a handler may see a
    #: message more than once.
    AT_LEAST_ONCE = "at-least-once"
    #: At-least-once, and a recipient never handles again a message it completed (dedup by
    #: message id over a bounded window).
    EXACTLY_ONCE = "exactly-once"


@attrs.frozen(kw_only=True, cache_hash=True)  # hashed on every send that carries options
class MessageOptions:
    """Per-message options. ``None`` defers to the system's delivery configuration.

    Attributes:
        priority: the mailbox hands out higher priorities first, FIFO within one priority.
        timeout: seconds after its creation that the message stays worth delivering; later,
            it becomes an ``EXPIRED`` dead letter instead of reaching a handler.
        max_retries: redeliveries after the first try (retrying guarantees only).
        retry_delay: seconds before the first redelivery (retrying guarantees only).
        guarantee: the delivery guarantee for this message.

    Times are at most ``MAX_SECONDS`` (10**9 s), so that a deadline computed from them is
    finite; the system's own notifications, which never expire, are made by
    :func:`never_expiring`.
    """

    priority: Priority = attrs.field(
        default=Priority.NORMAL, validator=validator(check_instance, Priority)
    )
    timeout: float = attrs.field(default=30.0, validator=validator(check_seconds))
    max_retries: int | None = attrs.field(
        default=None, validator=validator(check_count, minimum=0, optional=True)
    )
    retry_delay: float | None = attrs.field(
        default=None, validator=validator(check_seconds, allow_zero=True, optional=True)
    )
    guarantee: DeliveryGuarantee | None = attrs.field(
        default=None, validator=validator(check_instance, DeliveryGuarantee, optional=True)
    )


def never_expiring(options: MessageOptions) -> MessageOptions:
    """A copy of ``options`` whose messages never expire: for the notifications the system
    sends itself (a ``Down`` must reach its monitor, however busy it was).

    A caller cannot ask for this: a timeout it gives is at most ``MAX_SECONDS``. An infinite
    timeout is safe here because the library only compares a message's expiry with the clock.
    """
    copy = attrs.evolve(options, timeout=MAX_SECONDS)
    object.__setattr__(copy, "timeout", math.inf)  # past the public bound, on purpose
    return copy


#: Shared options for each priority (indexed by it), so the hot path builds none. A tuple,
#: because an enum's hash is computed in Python and a tuple index is not.
_OPTIONS_BY_PRIORITY: tuple[MessageOptions, ...] = tuple(
    MessageOptions(priority=priority) for priority in Priority
)


def options_for(priority: Priority) -> MessageOptions:
    """The shared options of ``priority``.

    Raises:
        InvalidConfig: ``priority`` is not a ``Priority``.
    """
    if priority.__class__ is not Priority:
        raise InvalidConfig(f"priority must be a Priority, got {priority!r}")
    return _OPTIONS_BY_PRIORITY[priority]


DEFAULT_OPTIONS = _OPTIONS_BY_PRIORITY[Priority.NORMAL]


def now() -> float:
    """Trio's clock inside a run (so tests on ``MockClock`` see it), the monotonic clock outside."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


@attrs.define(kw_only=True, eq=False, repr=False)
class Envelope:
    """One message on its way: what it carries and everything needed to deliver it.

    The payload is any Python object, passed by reference: in-process delivery never copies or
    serializes it. ``attrs.evolve(envelope, recipient=...)`` readdresses a copy.
    """

    kind: MessageKind
    payload: Any
    sender: AgentId | None = None
    #: An ``AgentId``, or a registered name.
    recipient: AgentId | str | None = None
    options: MessageOptions = DEFAULT_OPTIONS
    id: MessageId = attrs.field(factory=new_message_id)
    created_at: float = attrs.field(factory=now)
    #: Redeliveries so far: 0 on the first try.
    attempt: int = 0
    #: Where a call's answer goes; ``None`` for casts and infos.
    reply: ReplyHandle | None = None
    #: Trio time after which the caller of a call no longer waits.
    deadline: float = math.inf
    #: A call's reply address as data, where its reply must cross a process boundary: set
    #: when its live slot is registered in a ``PendingCalls`` (to encode it), or by decoding
    #: (with no live slot); ``None`` on the local path, which answers through ``reply``.
    reply_to: ReplyTo | None = None

    @property
    def priority(self) -> Priority:
        """The priority from the message's options."""
        return self.options.priority

    @classmethod
    def for_send(
        cls,
        kind: MessageKind,
        payload: Any,
        sender: AgentId | None,
        recipient: AgentId,
        options: MessageOptions,
        created_at: float,
    ) -> Envelope:
        """Build an envelope on the hot path of a send: what the keyword constructor builds,
        without its keyword parsing and defaults (about half the cost of a cast)."""
        envelope = object.__new__(cls)
        envelope.kind = kind
        envelope.payload = payload
        envelope.sender = sender
        envelope.recipient = recipient
        envelope.options = options
        envelope.id = new_message_id()
        envelope.created_at = created_at
        envelope.attempt = 0
        envelope.reply = None
        envelope.deadline = math.inf
        envelope.reply_to = None
        return envelope

    def __repr__(self) -> str:
        """Short and safe for a log: the payload through a bounded repr."""
        return self.describe(bounded_repr(self.payload))

    def describe(self, payload: str) -> str:
        """The envelope as its repr shows it, with ``payload`` (already formatted, as the
        recipient's ``Agent.format_message`` gives it) in place of the payload's repr."""
        return (
            f"<{self.kind.value} #{int(self.id)} {self.priority.name}"
            f" {_address(self.sender)} -> {_address(self.recipient)}: {payload}>"
        )


def _address(agent: AgentId | str | None) -> str:
    if agent is None:
        return "-"
    if isinstance(agent, str):
        return agent
    return agent.name or repr(agent)


def cast(
    sender: AgentId | None,
    payload: Any,
    options: MessageOptions | None = None,
    *,
    recipient: AgentId | str | None = None,
) -> Envelope:
    """Build a fire-and-forget message (gen_server's cast)."""
    return Envelope(
        kind=MessageKind.CAST,
        payload=payload,
        sender=sender,
        recipient=recipient,
        options=DEFAULT_OPTIONS if options is None else options,
    )


def call(
    sender: AgentId | None,
    payload: Any,
    timeout: float,
    *,
    recipient: AgentId | str | None = None,
    options: MessageOptions | None = None,
) -> tuple[Envelope, ReplyHandle]:
    """Build a request that expects a reply (gen_server's call).

    Returns the envelope and the handle that the reply arrives on: ``await handle`` returns it,
    or raises ``CallTimeout`` once ``timeout`` seconds have passed since this call. The deadline
    is on Trio's clock, so a call is built inside a Trio run.

    Raises:
        InvalidConfig: ``timeout`` is not a positive number of seconds.
        RuntimeError: no Trio run is active.
    """
    check_seconds("timeout", timeout)
    deadline = trio.current_time() + timeout
    handle = ReplyHandle(deadline)
    envelope = Envelope(
        kind=MessageKind.CALL,
        payload=payload,
        sender=sender,
        recipient=recipient,
        options=DEFAULT_OPTIONS if options is None else options,
        reply=handle,
        deadline=deadline,
    )
    return envelope, handle


def info(
    payload: Any,
    *,
    recipient: AgentId | str | None = None,
    options: MessageOptions | None = None,
) -> Envelope:
    """Build a system notification or plain send (gen_server's info)."""
    return Envelope(
        kind=MessageKind.INFO,
        payload=payload,
        recipient=recipient,
        options=DEFAULT_OPTIONS if options is None else options,
    )
