"""The codec: a message as bytes, for the journal and the wire, and back.

In-process delivery never serializes (a payload travels by reference); only a boundary that
must outlive the process or leave it (a durable journal, a transport to another node) encodes.
The format is JSON in ASCII, ``Infinity`` and ``NaN`` allowed as Python's ``json`` reads and
writes them, one object per message::

    {"v": 1, "id": ..., "kind": "cast", "payload": ..., "sender": ..., "recipient": ...,
     "options": {...}, "created_at": ..., "headers": {...}, "reply_to": null}

A payload is built from ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, lists,
tuples and dicts with ``str`` keys, and instances of attrs classes and dataclasses registered
with :func:`register_payload` under a stable tag; nothing else, and never pickle (which would
run code named by the bytes). Registered classes are rebuilt from their fields by cattrs, each
field by its annotation; a registered class is itself again wherever it appears.

What a message *is* is encoded; this attempt's local state is not: ``attempt``, ``deadline``
(a time on this process's Trio clock) and ``reply`` (a live slot a caller waits on, meaningless
in another process) are dropped, so a decoded call has no reply slot. Encoding never raises for
them. A call's reply crosses processes as an address instead: ``reply_to``, a
:class:`~terraphim_actors._core.reply_to.ReplyTo` (``{"node": ..., "correlation": ...}``, or
``null``), which whoever encodes a live call first gets by registering its slot in the system's
``PendingCalls``; a decoded call carries it, and the far side's answer goes back to it. The
codec only writes the address and reads it back; it never registers or answers. Bytes written
before ``reply_to`` and ``headers`` existed read back with neither.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import types
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
import msgspec
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn

from ..errors import InvalidConfig, InvalidMessage, UnencodablePayload
from .bounded_repr import bounded_repr
from .ids import AgentId, MessageId
from .messages import (
    NO_HEADERS,
    DeliveryGuarantee,
    Envelope,
    MessageKind,
    MessageOptions,
    Priority,
    never_expiring,
)
from .reply_to import ReplyTo

__all__ = ["Codec", "decode", "encode", "register_payload"]

_T = TypeVar("_T", bound=type)

#: The format's version, written into every message so that a later format can read this one.
FORMAT_VERSION = 1

_SCALARS = (type(None), bool, int, float, str)


class _NonFinite:
    """A float JSON has no number for (an infinity, NaN), marked on its way to the bytes so
    that the fast encoder refuses the document and the standard one writes it."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value


def _non_finite(value: Any) -> float:
    if value.__class__ is _NonFinite:
        return value.value
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def _number(value: Any) -> Any:
    """``value`` as a document holds it: a non-finite float marked (see :class:`_NonFinite`)."""
    return _NonFinite(value) if value.__class__ is float and value - value != 0.0 else value


#: The encoders, built once (``json.dumps`` builds one per call). msgspec's writes the
#: documents of nearly every message, in a tenth of the standard one's time; the standard one
#: writes what msgspec would not write as this format says: a non-finite float (msgspec writes
#: ``null``), which it refuses as a marked value, and text beyond ASCII (msgspec writes UTF-8
#: where ``json`` escapes it). Both write JSON that ``json.loads`` reads back the same; only
#: the spelling of some floats differs (``1e-7`` for ``1e-07``).
_FAST = msgspec.json.Encoder()
_JSON = json.JSONEncoder(separators=(",", ":"), default=_non_finite)


def _dumps(document: Any) -> bytes:
    try:
        data = _FAST.encode(document)
    except (TypeError, ValueError):  # a marked float; text that is not Unicode; a huge int
        return _standard_dumps(document)
    return data if data.isascii() else _standard_dumps(document)


def _standard_dumps(document: Any) -> bytes:
    try:
        return _JSON.encode(document).encode("ascii")
    except ValueError as error:
        # The documents are built here and hold no cycle; what the standard encoder refuses
        # is an int of more digits than Python converts to text (4300 by default), and the
        # id, the one unbounded int of a message's own, is checked before: it is the payload's.
        raise UnencodablePayload(
            f"a payload holds an int too long to write as JSON: {error}"
        ) from error


#: What decoding raises for bytes that are not a message: JSON that is not one, a field of
#: the wrong type or out of range (a float beyond a double's range), a payload nested past
#: Python's recursion limit, fields that do not fit a registered class. The cluster's wire
#: format refuses the same set, so that both report any such bytes as ``InvalidMessage``.
UNDECODABLE = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    OverflowError,
    RecursionError,
    cattrs.BaseValidationError,
)


def too_deep(value: Any) -> UnencodablePayload:
    """The error for a payload that holds itself, or is nested past Python's recursion limit:
    both end an encoder's walk with a ``RecursionError``, which is not the typed error a sender
    is promised (and a payload that cannot be walked cannot be decoded either)."""
    return UnencodablePayload(
        f"a payload that holds itself or is nested too deeply to encode: {bounded_repr(value)}"
    )


@attrs.frozen
class TaggedPayload:
    """A registered payload on its way to bytes: its tag and its unstructured fields (see
    :meth:`Codec.tagged`).

    A marker object rather than a dict, so that a user's dict that happens to look like a
    tagged value is never mistaken for one."""

    tag: str
    fields: dict[str, Any]


class Codec:
    """Encodes messages to bytes and back, with its own registry of payload types.

    The module's :func:`encode`, :func:`decode` and :func:`register_payload` use one shared
    codec; a separate ``Codec()`` keeps a registry apart (for tests, or one per wire format).
    """

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self._tags: dict[type, str] = {}
        self._structure: dict[type, Callable[[Any, Any], Any]] = {}
        self._unstructure: dict[type, Callable[[Any], dict[str, Any]]] = {}
        # Tuples stay tuples (cattrs makes lists of them), so that a field annotated ``Any``
        # gets back the very value it held.
        self._converter = cattrs.Converter(unstruct_collection_overrides={tuple: tuple})
        # Predicate hooks on the exact class, not class-keyed ones: a hook registered for a
        # class also catches its subclasses, which would then be written under the parent's
        # tag and come back as the parent (cattrs' include_subclasses has the same trap, and
        # knows only the subclasses that exist when it is called).
        self._converter.register_unstructure_hook_func(
            lambda cls: cls in self._tags, self._unstructure_registered
        )
        self._converter.register_structure_hook_func(
            lambda cls: cls in self._tags, self._structure_registered
        )
        # A field annotated ``object`` holds anything the payload may hold, as ``Any`` does.
        self._converter.register_structure_hook_func(
            lambda cls: cls is object, lambda value, _: value
        )

    def register_payload(self, cls: _T, *, tag: str | None = None) -> _T:
        """Let instances of ``cls`` (an attrs class or a dataclass) travel as payloads, under
        ``tag`` (by default the class's module and qualified name). Returns ``cls``, so that it
        works as a class decorator; registering a class again under its tag does nothing.

        The tag is what the bytes name, so it must stay the same for as long as encoded
        messages may be read (in a journal, or by other nodes): give one explicitly if the
        class may move or be renamed.

        Raises:
            InvalidConfig: ``cls`` is not an attrs class or a dataclass, ``tag`` is not a
                non-empty ``str``, or the tag or the class is already registered otherwise.
        """
        if not isinstance(cls, type) or not (attrs.has(cls) or dataclasses.is_dataclass(cls)):
            raise InvalidConfig(
                f"a payload type must be an attrs class or a dataclass: {bounded_repr(cls)}"
            )
        if tag is None:
            tag = f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(tag, str) or not tag:
            raise InvalidConfig(f"a payload tag must be a non-empty str, got {bounded_repr(tag)}")
        if self._classes.get(tag, cls) is not cls:
            raise InvalidConfig(
                f"payload tag {bounded_repr(tag)} is already taken by"
                f" {bounded_repr(self._classes[tag])}"
            )
        if self._tags.get(cls, tag) != tag:
            raise InvalidConfig(
                f"{bounded_repr(cls)} is already registered as {bounded_repr(self._tags[cls])}"
            )
        if cls in self._tags:
            return cls
        try:
            structure = make_dict_structure_fn(cls, self._converter)
            unstructure = make_dict_unstructure_fn(cls, self._converter)
        except cattrs.errors.StructureHandlerNotFoundError as e:
            raise InvalidConfig(
                f"{bounded_repr(cls)} has a field cattrs cannot rebuild: {e}"
            ) from e
        self._structure[cls] = structure
        self._unstructure[cls] = unstructure
        self._classes[tag] = cls
        self._tags[cls] = tag
        return cls

    def encode(self, envelope: Envelope) -> bytes:
        """The message ``envelope`` carries, as bytes (see the module's docstring).

        Raises:
            InvalidMessage: ``envelope`` is not an ``Envelope``.
            UnencodablePayload: the payload holds a value of a type this codec cannot carry.
        """
        if not isinstance(envelope, Envelope):
            raise InvalidMessage(f"only an Envelope can be encoded, got {bounded_repr(envelope)}")
        payload = self._payload_to_json(envelope.payload)
        try:
            document = {
                "v": FORMAT_VERSION,
                "id": _id_to_json(envelope.id),
                "kind": envelope.kind.value,
                "payload": payload,
                "sender": _agent_to_json(envelope.sender),
                "recipient": _agent_to_json(envelope.recipient),
                "options": _options_to_json(envelope.options),
                "created_at": _number(float(envelope.created_at)),
                "headers": _headers_to_json(envelope.headers),
                "reply_to": _reply_to_to_json(envelope.reply_to),
            }
        except InvalidMessage:
            raise
        except (AttributeError, TypeError, ValueError, OverflowError) as error:
            # Only the keyword constructor checks an Envelope (``for_send``, ``evolve`` and the
            # per-attempt fields do not, as that would cost every send), so a hand-made one
            # can hold anything: a kind that is not a MessageKind, headers that are not a
            # mapping, options that are not MessageOptions.
            raise InvalidMessage(
                f"{bounded_repr(envelope)} has a field a message cannot hold"
            ) from error
        return _dumps(document)

    def decode(self, data: bytes, *, attempt: int = 0, created_at: float | None = None) -> Envelope:
        """The envelope of a message :meth:`encode` wrote, on its first attempt (or on
        ``attempt``), with no reply slot and no deadline (a call carries its reply address,
        ``reply_to``, if it had one), created when its bytes say (or at ``created_at``: a
        reader that knows the time on its own clock, as a journal does, passes it here
        rather than copying the envelope to change it).

        Raises:
            InvalidMessage: ``data`` is not a message this codec wrote, or names a payload
                tag that is not registered here.
        """
        try:
            document = json.loads(data)
            if document["v"] != FORMAT_VERSION:
                raise InvalidMessage(
                    f"unknown message format version {bounded_repr(document['v'])}"
                )
            return Envelope(
                id=MessageId(_exact(document["id"], int)),
                kind=MessageKind(document["kind"]),
                payload=self._from_json(document["payload"]),
                sender=_sender_from_json(document["sender"]),
                recipient=_agent_from_json(document["recipient"]),
                options=_options_from_json(document["options"]),
                created_at=float(_exact(document["created_at"], float))
                if created_at is None
                else created_at,
                headers=_headers_from_json(document.get("headers")),
                reply_to=_reply_to_from_json(document.get("reply_to")),
                attempt=attempt,
            )
        except InvalidMessage:
            raise
        except UNDECODABLE as e:
            raise InvalidMessage(f"not an encoded message: {bounded_repr(data)}") from e

    def encode_value(self, value: Any) -> bytes:
        """``value``, anything a payload may be, alone as bytes: a call's answer on the wire.

        Raises:
            UnencodablePayload: it holds a value of a type this codec cannot carry.
        """
        return _dumps(self._payload_to_json(value))

    def decode_value(self, data: bytes) -> Any:
        """The value :meth:`encode_value` wrote as ``data``.

        Raises:
            InvalidMessage: ``data`` is not a value this codec wrote, or names a payload tag
                that is not registered here.
        """
        try:
            return self._from_json(json.loads(data))
        except InvalidMessage:
            raise
        except UNDECODABLE as e:
            raise InvalidMessage(f"not an encoded value: {bounded_repr(data)}") from e

    def _payload_to_json(self, value: Any) -> Any:
        """:meth:`_to_json` of a payload, one that holds itself or is nested too deeply
        refused as such."""
        try:
            return self._to_json(value)
        except RecursionError as error:
            raise too_deep(value) from error

    def _to_json(self, value: Any) -> Any:
        cls = value.__class__
        if cls in _SCALARS:
            return _NonFinite(value) if cls is float and value - value != 0.0 else value
        if cls is list:
            return [self._to_json(item) for item in value]
        if cls is tuple:
            return {"$tuple": [self._to_json(item) for item in value]}
        if cls is bytes:
            return {"$bytes": base64.b64encode(value).decode("ascii")}
        if cls is dict:
            for key in value:
                if key.__class__ is not str:
                    raise UnencodablePayload(
                        f"a payload's dict keys must be str, got {bounded_repr(key)}"
                    )
            return {"$dict": {key: self._to_json(item) for key, item in value.items()}}
        if cls is TaggedPayload:
            fields = value.fields
            return {"$payload": value.tag, "fields": {k: self._to_json(fields[k]) for k in fields}}
        if cls in self._tags:
            return self._to_json(self._converter.unstructure(value))
        raise UnencodablePayload(
            f"a payload of type {cls.__qualname__} cannot be encoded: register it with"
            f" terraphim_actors.register_payload, or send builtins ({bounded_repr(value)})"
        )

    def _from_json(self, value: Any) -> Any:
        if value.__class__ is list:
            return [self._from_json(item) for item in value]
        if value.__class__ is not dict:
            return value
        if "$dict" in value:
            return {key: self._from_json(item) for key, item in value["$dict"].items()}
        if "$tuple" in value:
            return tuple(self._from_json(item) for item in value["$tuple"])
        if "$bytes" in value:
            return base64.b64decode(value["$bytes"], validate=True)
        if "$payload" in value:
            tag = value["$payload"]
            cls = self._classes.get(tag)
            if cls is None:
                raise InvalidMessage(f"payload tag {bounded_repr(tag)} is not registered")
            fields = {key: self._from_json(item) for key, item in value["fields"].items()}
            return self._structure[cls](fields, cls)
        raise InvalidMessage(f"not an encoded payload: {bounded_repr(value)}")

    def tagged(self, value: Any) -> TaggedPayload | None:
        """``value`` as its tag and its fields, unstructured by this codec's converter, if its
        class is registered here (a registered value within them is a ``TaggedPayload`` too),
        else ``None``: for a format other than this codec's JSON that carries the same payloads
        (the cluster's wire), so that there is one registry."""
        return self._unstructure_registered(value) if value.__class__ in self._tags else None

    def structured(self, tag: str, fields: dict[str, Any]) -> Any:
        """The registered payload that :meth:`tagged` described as ``tag`` and ``fields``, its
        fields decoded (a registered value within them already rebuilt).

        Raises:
            InvalidMessage: ``tag`` is not registered here, or the fields do not fit its class.
        """
        cls = self._classes.get(tag)
        if cls is None:
            raise InvalidMessage(f"payload tag {bounded_repr(tag)} is not registered")
        try:
            return self._structure[cls](fields, cls)
        except InvalidMessage:
            raise
        except UNDECODABLE as e:
            raise InvalidMessage(
                f"not the fields of a {bounded_repr(tag)}: {bounded_repr(fields)}"
            ) from e

    def _unstructure_registered(self, value: Any) -> TaggedPayload:
        cls = value.__class__
        return TaggedPayload(self._tags[cls], self._unstructure[cls](value))

    @staticmethod
    def _structure_registered(value: Any, cls: type) -> Any:
        # Payloads are decoded from the leaves up, so a registered field is already built.
        if value.__class__ is not cls:
            raise InvalidMessage(f"expected a {cls.__qualname__}, got {bounded_repr(value)}")
        return value


def _exact(value: Any, cls: type) -> Any:
    """``value`` if JSON gave it as ``cls`` (an int is a float here, not a bool)."""
    if value.__class__ is bool or not isinstance(value, int if cls is int else (int, float)):
        raise InvalidMessage(f"expected a {cls.__qualname__}, got {bounded_repr(value)}")
    return value


#: Message ids are 128 bits: an incarnation above a 64-bit counter (see ``ids``).
_ID_LIMIT = 1 << 128


def _id_to_json(message_id: Any) -> int:
    if message_id.__class__ is not int or not 0 <= message_id < _ID_LIMIT:
        raise InvalidMessage(f"a message id is an int of 128 bits: {bounded_repr(message_id)}")
    return message_id


def _agent_to_json(agent: AgentId | str | None) -> Any:
    if agent is None or agent.__class__ is str:
        return agent
    if agent.__class__ is AgentId:
        assert isinstance(agent, AgentId)
        return {"uid": agent.uid.hex, "name": agent.name}
    raise InvalidMessage(f"an address must be an AgentId, a name or None: {bounded_repr(agent)}")


def _agent_from_json(value: Any) -> AgentId | str | None:
    if value is None or value.__class__ is str:
        return value
    name = value["name"]
    if name is not None and name.__class__ is not str:
        raise InvalidMessage(f"an agent's name must be a str: {bounded_repr(name)}")
    return AgentId(uuid.UUID(hex=value["uid"]), name=name)


def _sender_from_json(value: Any) -> AgentId | None:
    sender = _agent_from_json(value)
    if sender.__class__ is str:
        raise InvalidMessage(f"a sender must be an AgentId or None: {bounded_repr(sender)}")
    return sender  # type: ignore[return-value]


def _headers_to_json(headers: Mapping[str, str]) -> dict[str, str]:
    if headers is NO_HEADERS:  # nearly every message's
        return {}
    if not all(k.__class__ is str and v.__class__ is str for k, v in headers.items()):
        raise InvalidMessage(f"headers map str to str: {bounded_repr(headers)}")
    return dict(headers)


def _headers_from_json(value: Any) -> Mapping[str, str]:
    if value is None or value == {}:
        return NO_HEADERS
    if value.__class__ is not dict:
        raise InvalidMessage(f"headers must be an object: {bounded_repr(value)}")
    return types.MappingProxyType(_headers_to_json(value))


def _reply_to_to_json(reply_to: ReplyTo | None) -> Any:
    if reply_to is None:
        return None
    if reply_to.__class__ is not ReplyTo:
        raise InvalidMessage(f"a reply address must be a ReplyTo: {bounded_repr(reply_to)}")
    return {"node": int(reply_to.node), "correlation": int(reply_to.correlation)}


def _reply_to_from_json(value: Any) -> ReplyTo | None:
    if value is None:
        return None
    return ReplyTo(
        node=_exact(value["node"], int),
        correlation=MessageId(_exact(value["correlation"], int)),
    )


@functools.lru_cache(maxsize=256)
def _options_to_json(options: MessageOptions) -> dict[str, Any]:
    """The document of ``options``: made once per options (immutable, their hash cached, and
    few distinct in a system), shared by the documents of every message that carries them,
    which only read it."""
    guarantee = options.guarantee
    return {
        "priority": int(options.priority),
        "timeout": _number(options.timeout),
        "max_retries": options.max_retries,
        "retry_delay": _number(options.retry_delay),
        "guarantee": None if guarantee is None else guarantee.value,
    }


def _options_from_json(value: dict[str, Any]) -> MessageOptions:
    return decoded_options(
        value["priority"],
        value["timeout"],
        value["max_retries"],
        value["retry_delay"],
        value["guarantee"],
    )


@functools.lru_cache(maxsize=256)
def decoded_options(
    priority: Any, timeout: Any, max_retries: Any, retry_delay: Any, guarantee: Any
) -> MessageOptions:
    """The options these decoded fields describe: checked once, then shared (they are
    immutable, and a system's messages carry few distinct ones), which saves their
    validation on every message decoded from a journal or the wire."""
    options = MessageOptions(
        priority=Priority(priority),
        # The system's own notifications never expire; no caller can ask for that.
        timeout=30.0 if timeout == math.inf else timeout,
        max_retries=max_retries,
        retry_delay=retry_delay,
        guarantee=None if guarantee is None else DeliveryGuarantee(guarantee),
    )
    return never_expiring(options) if timeout == math.inf else options


#: The codec that :func:`register_payload`, :func:`encode` and :func:`decode` share.
DEFAULT_CODEC = Codec()


def register_payload(cls: _T, *, tag: str | None = None) -> _T:
    """Let instances of ``cls`` (an attrs class or a dataclass) travel as payloads through the
    journal and the wire, under ``tag`` (by default ``module.QualifiedName``). Works as a class
    decorator. See :meth:`Codec.register_payload`.

    Raises:
        InvalidConfig: ``cls`` is not an attrs class or a dataclass, or the tag or the class
            is already registered otherwise.
    """
    return DEFAULT_CODEC.register_payload(cls, tag=tag)


def encode(envelope: Envelope) -> bytes:
    """``envelope``'s message as bytes, through the shared codec (:meth:`Codec.encode`)."""
    return DEFAULT_CODEC.encode(envelope)


def decode(data: bytes, *, attempt: int = 0, created_at: float | None = None) -> Envelope:
    """The envelope that :func:`encode` wrote as ``data`` (:meth:`Codec.decode`)."""
    return DEFAULT_CODEC.decode(data, attempt=attempt, created_at=created_at)
