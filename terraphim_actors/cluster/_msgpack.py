"""The bodies of what crosses between nodes, in MessagePack: a message, or a value alone.

The journal keeps the codec's JSON, which people can read and which lasts; a message on the wire
lives for milliseconds and is encoded and decoded once per hop, where the JSON codec (stdlib
``json`` and a walk in Python each way) cost about as much as the rest of a remote cast. So the
wire carries the same messages as msgpack through msgspec, whose encoding and typed decoding run
in C, and the envelope as an array: field names and the codec's ``{"$dict": ...}`` markers are
not repeated in every message.

The payload rules are the codec's, and so is its registry of payload types (one registry, shared
with the journal): ``None``, ``bool``, ``int`` of any size, ``float`` (``inf`` and ``nan``
included), ``str``, ``bytes``, lists, tuples, dicts with ``str`` keys, and instances of classes
registered with :func:`~terraphim_actors.register_payload`; anything else is refused. msgspec
would encode more (sets, dataclasses, dicts with int keys...), so a payload is checked and
rebuilt in Python on its way out, and what msgpack has no type for travels as an extension:

- an int beyond msgpack's 64 bits: its bytes, two's complement, big-endian;
- a tuple (msgpack has one array type; a tuple stays a tuple, as through the journal): its items;
- a registered payload: its tag and its fields as the codec's cattrs converter unstructures
  them, rebuilt by the codec on arrival (a tag that node does not know is an invalid message).

Ids are 128-bit ints, and msgpack's ints 64-bit: an id travels as its high and low 64 bits.
"""

from __future__ import annotations

import functools
import math
import types
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec.msgpack import Decoder, Encoder, Ext

from .._core.bounded_repr import bounded_repr
from .._core.codec import DEFAULT_CODEC, UNDECODABLE, TaggedPayload, decoded_options, too_deep
from .._core.ids import AgentId, MessageId
from .._core.messages import NO_HEADERS, Envelope, MessageKind, UnsealedEnvelope
from .._core.reply_to import ReplyTo
from ..errors import InvalidMessage, UnencodablePayload

__all__ = [
    "BATCH_OVERHEAD",
    "batch_of",
    "decode_batch",
    "decode_envelope",
    "decode_value",
    "encode_envelope",
    "encode_record",
    "encode_value",
]

#: The layout's version, the first item of every message.
FORMAT_VERSION = 1

#: Extension codes: what msgpack has no type for.
BIG_INT = 1
TUPLE = 2
PAYLOAD = 3

_LOW_BITS = 64
_LOW_MASK = (1 << _LOW_BITS) - 1
#: The ints msgpack carries as ints.
_SMALLEST = -(1 << 63)
_LARGEST = (1 << 64) - 1

_encoder = Encoder()


class _Message(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A message as the wire lays it out; decoding to it checks every field's type in C."""

    version: int
    id_high: int
    id_low: int
    kind: MessageKind
    payload: Any
    #: ``[uid, name]``, the uid as its 16 bytes.
    sender: tuple[bytes, str | None] | None
    recipient: str | tuple[bytes, str | None] | None
    priority: int
    timeout: float
    max_retries: int | None
    retry_delay: float | None
    guarantee: str | None
    created_at: float
    headers: dict[str, str]
    #: ``[node, correlation's high bits, its low bits]``.
    reply_to: tuple[int, int, int] | None


def encode_value(value: Any) -> bytes:
    """``value``, anything a payload may be, as msgpack.

    Raises:
        UnencodablePayload: it holds a value of a type the codec cannot carry.
    """
    return _encoder.encode(_checked(value))


def decode_value(body: bytes) -> Any:
    """The value :func:`encode_value` wrote as ``body``.

    Raises:
        InvalidMessage: ``body`` is not such a value, or names a payload tag that is not
            registered here.
    """
    try:
        return _values.decode(body)
    except InvalidMessage:
        raise
    except UNDECODABLE as e:
        raise InvalidMessage(f"not an encoded value: {bounded_repr(body)}") from e


def encode_envelope(envelope: Envelope) -> bytes:
    """The message ``envelope`` carries, as msgpack: what the codec would encode of it.

    Raises:
        UnencodablePayload: its payload holds a value of a type the codec cannot carry.
        InvalidMessage: one of its other fields is not what a message holds.
    """
    return _encoded(_document(envelope), envelope)


def encode_record(envelope: Envelope, age: float) -> bytes:
    """``envelope`` as one record of a batch (:func:`batch_of`): its age in seconds, its
    attempt, and its message as :func:`encode_envelope` lays it out.

    Raises:
        UnencodablePayload, InvalidMessage: as :func:`encode_envelope`.
    """
    return _encoded((age, envelope.attempt, _document(envelope)), envelope)


def batch_of(records: list[bytes]) -> bytes:
    """One body carrying ``records`` (each from :func:`encode_record`), in their order: a
    msgpack array of them, made by joining, without encoding any record again."""
    return b"".join((_ARRAY32, len(records).to_bytes(4, "big"), *records))


#: The bytes a batch adds to its records: the header of a msgpack array of up to 2**32 items.
BATCH_OVERHEAD = 5
_ARRAY32 = b"\xdd"


def decode_batch(body: bytes, now: float) -> list[Envelope]:
    """The envelopes of the records :func:`batch_of` joined into ``body``, in order, each made
    ``age`` seconds before ``now`` on this node's clock (see :func:`decode_envelope`).

    Raises:
        InvalidMessage: ``body`` is not a batch of messages, or one of them is not a message
            this node can read: the whole batch is refused, as one message would be.
    """
    try:
        envelopes = []
        for age, attempt, fields in _batches.decode(body):
            if not (math.isfinite(age) and age >= 0 and attempt >= 0):
                raise InvalidMessage(f"a record with age {age!r} and attempt {attempt!r}")
            envelopes.append(_envelope(fields, now - age, attempt))
        return envelopes
    except InvalidMessage:
        raise
    except UNDECODABLE as e:
        raise InvalidMessage(f"not a batch of messages: {bounded_repr(body)}") from e


def decode_envelope(body: bytes, created_at: float, attempt: int) -> Envelope:
    """The envelope of a message :func:`encode_envelope` wrote, made at ``created_at`` (on this
    node's clock), on ``attempt``, with no reply slot and no deadline (a call carries its reply
    address), and addressed to its recipient's name if it has one: a node finds its agents by
    name, the id may be of an agent elsewhere.

    Raises:
        InvalidMessage: ``body`` is not a message, or names a payload tag that is not
            registered here.
    """
    try:
        return _envelope(_messages.decode(body), created_at, attempt)
    except InvalidMessage:
        raise
    except UNDECODABLE as e:
        raise InvalidMessage(f"not an encoded message: {bounded_repr(body)}") from e


def _document(envelope: Envelope) -> list[Any]:
    """The fields of ``envelope``'s message as the wire lays them out (:class:`_Message`).

    Raises:
        UnencodablePayload: as :func:`_checked`.
        InvalidMessage: a field other than the payload is not what a message holds (an
            ``Envelope`` made other than by its keyword constructor is not checked, so a
            hand-made one may hold anything).
    """
    payload = _checked(envelope.payload)
    try:
        message_id = envelope.id
        options = envelope.options
        headers = envelope.headers
        reply_to = envelope.reply_to
        address = None
        if reply_to is not None:
            if reply_to.__class__ is not ReplyTo:
                raise InvalidMessage(f"a reply address must be a ReplyTo: {bounded_repr(reply_to)}")
            correlation = reply_to.correlation
            address = (reply_to.node, correlation >> _LOW_BITS, correlation & _LOW_MASK)
        return [
            FORMAT_VERSION,
            message_id >> _LOW_BITS,
            message_id & _LOW_MASK,
            envelope.kind,
            payload,
            _agent_out(envelope.sender),
            _agent_out(envelope.recipient),
            options.priority,
            options.timeout,
            options.max_retries,
            options.retry_delay,
            options.guarantee,
            envelope.created_at,
            {} if headers is NO_HEADERS else _headers_out(headers),
            address,
        ]
    except InvalidMessage:
        raise
    except (AttributeError, TypeError, ValueError) as error:
        raise _malformed(envelope) from error


def _encoded(document: Any, envelope: Envelope) -> bytes:
    try:
        return _encoder.encode(document)
    except (OverflowError, TypeError) as error:
        raise _malformed(envelope) from error


def _malformed(envelope: Envelope) -> InvalidMessage:
    return InvalidMessage(f"{bounded_repr(envelope)} has a field a message cannot hold")


def _envelope(fields: _Message, created_at: float, attempt: int) -> Envelope:
    """The envelope of decoded ``fields`` (see :func:`decode_envelope`)."""
    if fields.version != FORMAT_VERSION:
        raise InvalidMessage(f"unknown message format version {fields.version!r}")
    recipient: Any = fields.recipient
    if recipient.__class__ is tuple:
        recipient = _agent(*recipient) if recipient[1] is None else recipient[1]
    sender = fields.sender
    headers = fields.headers
    reply_to = fields.reply_to
    options = decoded_options(
        fields.priority,
        fields.timeout,
        fields.max_retries,
        fields.retry_delay,
        fields.guarantee,
    )
    envelope: Envelope = object.__new__(UnsealedEnvelope)
    envelope.id = MessageId(fields.id_high << _LOW_BITS | fields.id_low)
    envelope.kind = fields.kind
    envelope.payload = fields.payload
    envelope.sender = None if sender is None else _agent(*sender)
    envelope.recipient = recipient
    envelope.options = options
    envelope.created_at = created_at
    envelope.headers = types.MappingProxyType(headers) if headers else NO_HEADERS
    envelope.attempt = attempt
    envelope.reply = None
    envelope.deadline = math.inf
    envelope.reply_to = (
        None
        if reply_to is None
        else ReplyTo(
            node=reply_to[0],
            correlation=MessageId(reply_to[1] << _LOW_BITS | reply_to[2]),
        )
    )
    envelope.__class__ = Envelope
    return envelope


def _checked(value: Any) -> Any:
    """:func:`_out` of a payload, one nested deeper than Python's recursion limit refused too."""
    try:
        return _out(value)
    except RecursionError as error:
        raise too_deep(value) from error


def _out(value: Any) -> Any:
    """``value`` as msgspec may encode it: checked against the payload rules, with an
    extension for what msgpack has no type for."""
    cls = value.__class__
    if cls is str or cls is float or cls is bool or cls is bytes or value is None:
        return value
    if cls is int:
        if _SMALLEST <= value <= _LARGEST:
            return value
        return Ext(BIG_INT, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))
    if cls is list:
        return [_out(item) for item in value]
    if cls is dict:
        for key in value:
            if key.__class__ is not str:
                raise UnencodablePayload(
                    f"a payload's dict keys must be str, got {bounded_repr(key)}"
                )
        return {key: _out(item) for key, item in value.items()}
    if cls is tuple:
        return Ext(TUPLE, _encoder.encode([_out(item) for item in value]))
    tagged = value if cls is TaggedPayload else DEFAULT_CODEC.tagged(value)
    if tagged is None:
        raise UnencodablePayload(
            f"a payload of type {cls.__qualname__} cannot be encoded: register it with"
            f" terraphim_actors.register_payload, or send builtins ({bounded_repr(value)})"
        )
    return Ext(PAYLOAD, _encoder.encode((tagged.tag, _out(tagged.fields))))


def _extension(code: int, data: memoryview) -> Any:
    """The value an extension of :func:`_out` carries."""
    if code == BIG_INT:
        return int.from_bytes(data, "big", signed=True)
    if code == TUPLE:
        return tuple(_items.decode(data))
    if code == PAYLOAD:
        tag, fields = _tagged.decode(data)
        return DEFAULT_CODEC.structured(tag, fields)
    raise InvalidMessage(f"unknown msgpack extension {code}")


_values = Decoder(ext_hook=_extension)
_items = Decoder(list[Any], ext_hook=_extension)
_tagged = Decoder(tuple[str, dict[str, Any]], ext_hook=_extension)
_messages = Decoder(_Message, ext_hook=_extension)
_batches = Decoder(list[tuple[float, int, _Message]], ext_hook=_extension)


def _agent_out(agent: AgentId | str | None) -> Any:
    if agent is None or agent.__class__ is str:
        return agent
    if agent.__class__ is AgentId:
        assert isinstance(agent, AgentId)
        return (agent.uid.bytes, agent.name)
    raise InvalidMessage(f"an address must be an AgentId, a name or None: {bounded_repr(agent)}")


@functools.lru_cache(maxsize=4096)
def _agent(uid: bytes, name: str | None) -> AgentId:
    """The agent id of these decoded fields, made once for the many messages of one agent
    (ids never change, so they can be shared)."""
    return AgentId(uuid.UUID(bytes=uid), name=name)


def _headers_out(headers: Mapping[str, str]) -> dict[str, str]:
    if not all(k.__class__ is str and v.__class__ is str for k, v in headers.items()):
        raise InvalidMessage(f"headers map str to str: {bounded_repr(headers)}")
    return dict(headers)
