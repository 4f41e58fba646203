"""What travels between agents: priorities, options, the immutable message and the envelope
that carries it on one attempt, and their constructors."""

from __future__ import annotations

import enum
import math
import time
import types
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from ..errors import InvalidConfig, InvalidMessage
from .bounded_repr import bounded_repr
from .checks import MAX_SECONDS, check_count, check_instance, check_seconds, validator
from .ids import AgentId, MessageId, new_message_id
from .reply import ReplyHandle
from .reply_to import ReplyTo

__all__ = [
    "DeliveryGuarantee",
    "Envelope",
    "Message",
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
        raise InvalidConfig(f"priority must be a Priority, got {bounded_repr(priority)}")
    return _OPTIONS_BY_PRIORITY[priority]


DEFAULT_OPTIONS = _OPTIONS_BY_PRIORITY[Priority.NORMAL]


def now() -> float:
    """Trio's clock inside a run (so tests on ``MockClock`` see it), the monotonic clock outside."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


#: A message's headers when it has none: shared, and read-only like every message's.
NO_HEADERS: Mapping[str, str] = types.MappingProxyType({})


#: A message's fields.
MESSAGE_FIELDS = (
    "id",
    "kind",
    "payload",
    "sender",
    "recipient",
    "options",
    "created_at",
    "headers",
)
#: What an envelope adds to its message, and may change: the state of one attempt at
#: delivering it.
PER_ATTEMPT = ("attempt", "reply", "deadline", "reply_to")


class Message:
    """One message as its sender made it: what it says, from whom, to whom, how it is to be
    delivered. It never changes once built (assigning a field raises ``AttributeError``): a
    retry, a journal's record and a copy decoded on another node are the same message, known
    by its id, which is also how messages compare.
    """

    __slots__ = MESSAGE_FIELDS

    #: Unique across processes and restarts (see ``MessageId``): how dedup knows a message.
    id: MessageId
    kind: MessageKind
    #: Any Python object, passed by reference: in-process delivery never copies it.
    payload: Any
    sender: AgentId | None
    #: An ``AgentId``, or a registered name.
    recipient: AgentId | str | None
    options: MessageOptions
    #: When it was made (Trio's clock inside a run): its expiry counts from here.
    created_at: float
    #: Free-form string metadata (a trace context, a tenant), carried by the codec.
    headers: Mapping[str, str]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"{name!r} of a message cannot be set: a message does not change once built"
            " (evolve() makes a changed copy)"
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{name!r} of a message cannot be deleted: it does not change")

    @property
    def priority(self) -> Priority:
        """The priority from the message's options."""
        return self.options.priority

    def __eq__(self, other: object) -> bool:
        """A message is known by its id, as dedup knows it: its copies (readdressed, retried,
        decoded elsewhere) are the same message, and two sends of equal content are two."""
        return isinstance(other, Message) and self.id == other.id

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.id)


class Envelope(Message):
    """A message on its way in this process: the message's fields, which never change, and
    beside them the state of one attempt at delivering it: ``attempt``, and for a call its live
    reply slot, its deadline and its reply address (only these can be assigned).

    ``Envelope(kind=..., payload=...)`` makes a new message; ``envelope.evolve(recipient=...)``
    readdresses a copy of the same message; ``envelope.message`` is the bare message, as a
    journal or the wire keeps it. The payload is any Python object, passed by reference:
    in-process delivery never copies or serializes it.
    """

    __slots__ = PER_ATTEMPT

    #: Redeliveries so far: 0 on the first try.
    attempt: int
    #: Where a call's answer goes; ``None`` for casts and infos.
    reply: ReplyHandle | None
    #: Trio time after which the caller of a call no longer waits.
    deadline: float
    #: A call's reply address as data, where its reply must cross a process boundary: set
    #: when its live slot is registered in a ``PendingCalls`` (to encode it), or by decoding
    #: (with no live slot); ``None`` on the local path, which answers through ``reply``.
    reply_to: ReplyTo | None

    def __new__(
        cls,
        *,
        kind: MessageKind,
        payload: Any,
        sender: AgentId | None = None,
        recipient: AgentId | str | None = None,
        options: MessageOptions = DEFAULT_OPTIONS,
        id: MessageId | None = None,
        created_at: float | None = None,
        headers: Mapping[str, str] = NO_HEADERS,
        attempt: int = 0,
        reply: ReplyHandle | None = None,
        deadline: float = math.inf,
        reply_to: ReplyTo | None = None,
    ) -> Envelope:
        """A message (a new one: a fresh id and the current time, unless given) on its first
        attempt, unless given another."""
        envelope = cls.for_send(
            kind,
            payload,
            sender,
            recipient,
            options,
            now() if created_at is None else created_at,
            reply,
            deadline,
        )
        if id is not None:
            object.__setattr__(envelope, "id", id)
        if headers is not NO_HEADERS:
            object.__setattr__(envelope, "headers", headers)
        envelope.attempt = attempt
        envelope.reply_to = reply_to
        check_envelope(envelope)
        return envelope

    @classmethod
    def for_send(
        cls,
        kind: MessageKind,
        payload: Any,
        sender: AgentId | None,
        recipient: AgentId | str | None,
        options: MessageOptions,
        created_at: float,
        reply: ReplyHandle | None = None,
        deadline: float = math.inf,
    ) -> Envelope:
        """A new message on its first attempt, built on the hot path of a send: what the
        keyword constructor builds, without its keyword parsing (about half the cost of a
        cast).

        It is built as an ``UnsealedEnvelope``, whose fields are set at C speed, then sealed
        by taking its class: 170 ns where ``object.__setattr__`` per field costs 600 ns, and
        the fields are read as fast as any slot's. ``AgentRef`` spells it out for its sends
        (a change of the fields here is one there too).
        """
        envelope: Envelope = object.__new__(UnsealedEnvelope)
        envelope.id = new_message_id()
        envelope.kind = kind
        envelope.payload = payload
        envelope.sender = sender
        envelope.recipient = recipient
        envelope.options = options
        envelope.created_at = created_at
        envelope.headers = NO_HEADERS
        envelope.attempt = 0
        envelope.reply = reply
        envelope.deadline = deadline
        envelope.reply_to = None
        envelope.__class__ = Envelope
        return envelope

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in PER_ATTEMPT:
            Message.__setattr__(self, name, value)
        object.__setattr__(self, name, value)

    @property
    def message(self) -> Message:
        """The bare message, without this attempt's state."""
        message: Message = object.__new__(_UnsealedMessage)
        for name in MESSAGE_FIELDS:
            object.__setattr__(message, name, getattr(self, name))
        message.__class__ = Message
        return message

    def evolve(self, **changes: Any) -> Envelope:
        """A copy with ``changes`` made (to message fields or the attempt's state): the same
        message, with the same id unless ``id`` is among them, on the same attempt unless
        ``attempt`` is."""
        copy: Envelope = object.__new__(UnsealedEnvelope)
        for name in MESSAGE_FIELDS + PER_ATTEMPT:
            object.__setattr__(copy, name, changes.pop(name, getattr(self, name)))
        if changes:
            raise TypeError(f"an envelope has no field {', '.join(map(repr, changes))}")
        copy.__class__ = Envelope
        return copy

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


def check_envelope(envelope: Envelope) -> None:
    """Refuse an envelope a sender built with a field of the wrong kind, before anything
    counts it: past the send, a bad field breaks its recipient outside any handler (an
    unhashable id in the dedup window, a ``created_at`` no clock compares with), where it
    would be neither handled nor a dead letter.

    Raises:
        InvalidMessage: a field is not of its type (the message names it).
    """
    fields: tuple[tuple[str, object, tuple[type, ...], bool], ...] = (
        ("kind", envelope.kind, (MessageKind,), False),
        ("id", envelope.id, (int,), False),
        ("sender", envelope.sender, (AgentId,), True),
        ("recipient", envelope.recipient, (AgentId, str), True),
        ("options", envelope.options, (MessageOptions,), False),
        ("created_at", envelope.created_at, (int, float), False),
        ("deadline", envelope.deadline, (int, float), False),
        ("headers", envelope.headers, (Mapping,), False),
        ("attempt", envelope.attempt, (int,), False),
        ("reply", envelope.reply, (ReplyHandle,), True),
        ("reply_to", envelope.reply_to, (ReplyTo,), True),
    )
    for name, value, types_, optional in fields:
        if (value is None and optional) or (
            isinstance(value, types_) and not isinstance(value, bool)
        ):
            continue
        raise InvalidMessage(f"an envelope's {name} cannot be {bounded_repr(value)}")
    try:
        created_at_finite = math.isfinite(envelope.created_at)
        deadline_nan = math.isnan(envelope.deadline)
    except OverflowError:  # an int beyond any float
        raise InvalidMessage("an envelope's times must be numbers a float can hold") from None
    if not created_at_finite:
        raise InvalidMessage(
            f"an envelope's created_at must be finite: {bounded_repr(envelope.created_at)}"
        )
    if deadline_nan:
        raise InvalidMessage("an envelope's deadline cannot be NaN")
    if envelope.attempt < 0:
        raise InvalidMessage(
            f"an envelope's attempt cannot be negative: {bounded_repr(envelope.attempt)}"
        )
    if not all(type(k) is str and type(v) is str for k, v in envelope.headers.items()):
        raise InvalidMessage("an envelope's headers must map strings to strings")


class _UnsealedMessage(Message):
    """A ``Message`` being built: its fields can be set, until it takes ``Message``'s class."""

    __slots__ = ()
    # Both, so that the type's one attribute-setting slot is object's own, at C speed.
    __setattr__ = object.__setattr__  # type: ignore[assignment]
    __delattr__ = object.__delattr__


class UnsealedEnvelope(Envelope):
    """An ``Envelope`` being built: its fields can be set, until it takes ``Envelope``'s class.

    Only for a hot path that builds an envelope inline (an ``AgentRef``'s send): it sets every
    field of ``MESSAGE_FIELDS`` and ``PER_ATTEMPT``, as :meth:`Envelope.for_send` does, then
    assigns ``__class__ = Envelope`` before the envelope leaves its hands.
    """

    __slots__ = ()
    # Both, so that the type's one attribute-setting slot is object's own, at C speed.
    __setattr__ = object.__setattr__  # type: ignore[assignment]
    __delattr__ = object.__delattr__


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
